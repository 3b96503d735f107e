"""Raster primitives of the generated world: a canvas that paints shapes back to front.

Every paint records which object (and which part instance) is on top at each pixel, so the
visible masks after occlusion fall out of the painting order (painter's algorithm).
Shapes are boolean masks inside their clipped bounding box, computed from broadcast 1-D
coordinate vectors; there are no per-pixel Python loops.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np

# ((y0, y1, x0, x1) clipped to the canvas, bool mask of the box or None for the whole box)
Shape = tuple[tuple[int, int, int, int], np.ndarray | None]


@dataclass(frozen=True)
class VisiblePart:
    kind: str  # "face", "hair", "hat", "wheel" or "window"
    mask: np.ndarray  # bool HxW, pixels where this part is on top


@dataclass(frozen=True)
class VisibleObject:
    kind: str  # stuff: "sky", "road", "grass"; things: "person", "car", "truck", "tree"; clutter
    mask: np.ndarray  # bool HxW, pixels where this object is on top (its parts included)
    parts: tuple[VisiblePart, ...]


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # HxWx3 uint8 RGB
    domain: str  # which source dataset's image distribution it was drawn from
    objects: tuple[VisibleObject, ...]  # back to front


def hsv(h: float, s: float, v: float) -> np.ndarray:
    """RGB float32 in 0..255 from HSV in 0..1 (hue wraps)."""
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32) * 255.0


@dataclass(frozen=True)
class Fill:
    """How a shape is colored: flat, two-color stripes or a gradient, times texture noise.

    Patterns use image coordinates relative to `origin` (y, x) with period/extent `scale` px,
    so all shapes of one object share one continuous texture.
    """

    color: np.ndarray  # (3,) float32 RGB 0..255
    color2: np.ndarray | None = None
    pattern: str = "flat"  # "flat" | "stripes" | "gradient"
    angle: float = 0.0
    scale: float = 8.0
    origin: tuple[float, float] = (0.0, 0.0)
    noise: float = 0.0  # relative amplitude of multiplicative texture noise


_PATTERNS = {"flat": 0, "stripes": 1, "gradient": 2}


@dataclass
class _Drawn:
    kind: str
    owner: int  # the object a part belongs to; -1 for objects
    box: list[int]  # union of painted boxes, [y0, y1, x0, x1]


class Canvas:
    """Paints shapes back to front into a stroke map; colors are composed once in `finish`.

    Each paint call is a stroke (object, part instance, fill). Keeping only the top stroke
    per pixel makes a paint one masked assignment; colors, owners and parts are then table
    look-ups over the whole image, which is what keeps rendering fast.
    """

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width
        # Top stroke per pixel, 0 = nothing. intp, so the `take` look-ups need no index conversion.
        self.strokes = np.zeros((height, width), np.intp)
        self.ys = np.arange(height, dtype=np.float32)[:, None] + 0.5  # pixel centers, [H, 1]
        self.xs = np.arange(width, dtype=np.float32)[None, :] + 0.5  # [1, W]
        self._objects: list[_Drawn] = []
        self._parts: list[_Drawn] = []
        self._fills: list[Fill] = [Fill(np.zeros(3, np.float32))]
        self._fill_index: dict[int, int] = {}
        # Stroke 0 is "nothing painted": no object (-1), no part (-1), fill 0 (black).
        self._stroke_obj, self._stroke_part, self._stroke_fill = [-1], [-1], [0]

    def add_object(self, kind: str) -> int:
        self._objects.append(_Drawn(kind, -1, [self.height, 0, self.width, 0]))
        return len(self._objects) - 1

    def add_part(self, obj: int, kind: str) -> int:
        self._parts.append(_Drawn(kind, obj, [self.height, 0, self.width, 0]))
        return len(self._parts) - 1

    # Shapes -----------------------------------------------------------------------------
    def box(self, y0: float, y1: float, x0: float, x1: float) -> tuple[int, int, int, int] | None:
        """Pixels whose centers fall in [y0, y1) x [x0, x1), clipped; None when empty."""
        iy0, iy1 = max(round(y0), 0), min(round(y1), self.height)
        ix0, ix1 = max(round(x0), 0), min(round(x1), self.width)
        if iy1 <= iy0 or ix1 <= ix0:
            return None
        return iy0, iy1, ix0, ix1

    def rect(self, y0: float, y1: float, x0: float, x1: float, rounded: bool = False) -> Shape | None:
        """Axis-aligned rectangle; `rounded` cuts the corners (a superellipse of power 4)."""
        b = self.box(y0, y1, x0, x1)
        if b is None or not rounded:
            return None if b is None else (b, None)
        cy, cx, ry, rx = (y0 + y1) / 2, (x0 + x1) / 2, max((y1 - y0) / 2, 0.5), max((x1 - x0) / 2, 0.5)
        dy = ((self.ys[b[0] : b[1]] - cy) / ry) ** 2
        dx = ((self.xs[:, b[2] : b[3]] - cx) / rx) ** 2
        return b, dy * dy + dx * dx <= 1.0

    def ellipse(self, cy: float, cx: float, ry: float, rx: float, y_max: float | None = None) -> Shape | None:
        """Filled axis-aligned ellipse, optionally cut off below `y_max`."""
        ry, rx = max(ry, 0.5), max(rx, 0.5)
        b = self.box(cy - ry, cy + ry if y_max is None else min(cy + ry, y_max), cx - rx, cx + rx)
        if b is None:
            return None
        dy = (self.ys[b[0] : b[1]] - cy) / ry
        dx = (self.xs[:, b[2] : b[3]] - cx) / rx
        return b, dy * dy + dx * dx <= 1.0

    def trapezoid(
        self, y0: float, y1: float, top: tuple[float, float], bottom: tuple[float, float]
    ) -> Shape | None:
        """Rows y0..y1 whose x-extent goes linearly from `top` (xl, xr) to `bottom` (xl, xr)."""
        top, bottom = tuple(sorted(top)), tuple(sorted(bottom))
        b = self.box(y0, y1, min(top[0], bottom[0]), max(top[1], bottom[1]))
        if b is None:
            return None
        t = (self.ys[b[0] : b[1]] - y0) / max(y1 - y0, 1e-3)  # [h, 1]
        xl = top[0] + (bottom[0] - top[0]) * t
        xr = top[1] + (bottom[1] - top[1]) * t
        xs = self.xs[:, b[2] : b[3]]
        return b, (xs >= xl) & (xs < xr)

    # Painting ---------------------------------------------------------------------------
    def paint(self, obj: int, shape: Shape | None, fill: Fill, part: int = -1) -> None:
        """Paint `shape` on top of everything so far, as object `obj` (and part instance `part`)."""
        if shape is None:
            return
        (y0, y1, x0, x1), mask = shape
        fill_id = self._fill_index.get(id(fill))
        if fill_id is None:
            fill_id = self._fill_index[id(fill)] = len(self._fills)
            self._fills.append(fill)
        stroke = len(self._stroke_obj)
        self._stroke_obj.append(obj)
        self._stroke_part.append(part)
        self._stroke_fill.append(fill_id)
        if mask is None:
            self.strokes[y0:y1, x0:x1] = stroke
        else:
            self.strokes[y0:y1, x0:x1][mask] = stroke
        for drawn in (self._objects[obj], self._parts[part]) if part >= 0 else (self._objects[obj],):
            b = drawn.box
            b[0], b[1], b[2], b[3] = min(b[0], y0), max(b[1], y1), min(b[2], x0), max(b[3], x1)

    def colors(self, noise: np.ndarray) -> np.ndarray:
        """[H, W, 3] float32 RGB of the painted fills, textured with `noise` ([H, W], std ~1)."""
        rows = []
        for f in self._fills:
            # Pattern coordinate u = y*sy + x*sx - offset; flat fills get u = 0, so t = 0.
            flat = f.pattern == "flat"
            sy = 0.0 if flat else math.sin(f.angle) / f.scale
            sx = 0.0 if flat else math.cos(f.angle) / f.scale
            offset = f.origin[0] * sy + f.origin[1] * sx - (0.0 if flat or f.pattern == "stripes" else 0.5)
            color2 = f.color if f.color2 is None else f.color2
            rows.append((f.pattern == "stripes", sy, sx, offset, f.noise, *f.color, *(color2 - f.color)))
        # One row per fill parameter: 1-D `take`s are far faster than 2-D fancy indexing.
        table = np.ascontiguousarray(np.array(rows, np.float32).T)  # [11, F]
        fid = np.array(self._stroke_fill, np.intp).take(self.strokes)  # [H, W]
        is_stripes, sy, sx, offset, amount = (row.take(fid) for row in table[:5])  # each [H, W]
        u = self.ys * sy + self.xs * sx - offset
        stripes = (np.floor(u).astype(np.int32) & 1).astype(np.float32)  # integer parity: float % is slow
        t = np.where(is_stripes > 0, stripes, np.clip(u, 0.0, 1.0))
        shade = 1.0 + amount * noise
        rgb = np.empty((self.height, self.width, 3), np.float32)
        for k in range(3):
            rgb[..., k] = (table[5 + k].take(fid) + table[8 + k].take(fid) * t) * shade
        return rgb

    def finish(self, domain: str, image: np.ndarray) -> Scene:
        """Freeze into a Scene: visible masks per object and part instance (empty ones dropped)."""
        part_map = np.array(self._stroke_part, np.int16).take(self.strokes)  # [H, W]
        owner_map = np.array(self._stroke_obj, np.int16).take(self.strokes)
        parts_of: dict[int, list[VisiblePart]] = {}
        for p, drawn in enumerate(self._parts):
            mask = self._visible(part_map, p, drawn.box)
            if mask is not None:
                parts_of.setdefault(drawn.owner, []).append(VisiblePart(drawn.kind, mask))
        objects = []
        for k, drawn in enumerate(self._objects):
            mask = self._visible(owner_map, k, drawn.box)
            if mask is not None:
                objects.append(VisibleObject(drawn.kind, mask, tuple(parts_of.get(k, ()))))
        return Scene(image=image, domain=domain, objects=tuple(objects))

    def _visible(self, top: np.ndarray, index: int, box: list[int]) -> np.ndarray | None:
        y0, y1, x0, x1 = box
        if y1 <= y0:
            return None
        local = top[y0:y1, x0:x1] == index
        if not local.any():
            return None
        mask = np.zeros((self.height, self.width), bool)
        mask[y0:y1, x0:x1] = local
        mask.flags.writeable = False  # shared by several label spaces' annotations
        return mask


def _uniform_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-mean, unit-std float32 noise; uniform because it is ~8x cheaper than a normal draw."""
    return (rng.random(shape, dtype=np.float32) - 0.5) * math.sqrt(12.0)


def _texture_noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """[H, W] float32 zero-mean noise with fine grain plus 4-px blotches, std about 1."""
    fine = _uniform_noise(rng, (height, width))
    coarse = _uniform_noise(rng, (height // 4 + 1, width // 4 + 1))
    coarse = coarse.repeat(4, axis=0).repeat(4, axis=1)[:height, :width]
    return 0.5 * fine + 0.85 * coarse


def develop(cv: Canvas, rng: np.random.Generator, blur: bool = False) -> np.ndarray:
    """Camera: textured colors, lighting gradient, color cast, optional softness, noise -> HxWx3 uint8."""
    height, width = cv.height, cv.width
    rgb = cv.colors(_texture_noise(rng, height, width))
    brightness = rng.uniform(0.65, 1.25)
    angle = rng.uniform(0, 2 * math.pi)
    ys = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None]
    xs = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
    gain = brightness * (1.0 + rng.uniform(0.0, 0.6) * (ys * math.sin(angle) + xs * math.cos(angle)))  # [H, W]
    cast = rng.uniform(0.85, 1.15, 3).astype(np.float32)
    # Sensor noise shared by the channels (luminance grain): half the cost of per-channel noise.
    grain = _uniform_noise(rng, (height, width, 1)) * rng.uniform(2.0, 10.0)
    rgb *= gain[..., None] * cast
    rgb += grain
    if blur:
        # A 2x2 box filter: a softer lens than the other domains' cameras.
        rgb[:-1] = 0.5 * (rgb[:-1] + rgb[1:])
        rgb[:, :-1] = 0.5 * (rgb[:, :-1] + rgb[:, 1:])
    np.clip(rgb, 0, 255, out=rgb)
    return rgb.astype(np.uint8)
