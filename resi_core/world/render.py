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
from functools import lru_cache

import numpy as np

# ((y0, y1, x0, x1) clipped to the canvas, bool mask of the box or None for the whole box)
Shape = tuple[tuple[int, int, int, int], np.ndarray | None]


@dataclass(frozen=True)
class VisiblePart:
    kind: str  # "face", "hair", "hat", "wheel", "window" or "lane mark"
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


Color = tuple[float, float, float]  # RGB 0..255


def hsv(h: float, s: float, v: float) -> Color:
    """RGB in 0..255 from HSV in 0..1 (hue wraps)."""
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return r * 255.0, g * 255.0, b * 255.0


class Draws:
    """A scene's random numbers: scalars from pre-drawn blocks of one numpy Generator.

    Composition needs hundreds of scalar draws per image; one `Generator.uniform` call costs
    microseconds, a list read a fraction of that. Same generator state -> same draws.
    """

    __slots__ = ("gen", "_block", "_next")

    def __init__(self, gen: np.random.Generator) -> None:
        self.gen = gen
        self._block: list[float] = []
        self._next = 0

    def random(self) -> float:
        """Uniform in [0, 1)."""
        i = self._next
        if i >= len(self._block):
            self._block, i = self.gen.random(256).tolist(), 0
        self._next = i + 1
        return self._block[i]

    def uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        return low + (high - low) * self.random()

    def integers(self, low: int, high: int) -> int:
        """Uniform integer in [low, high)."""
        return min(low + int(self.random() * (high - low)), high - 1)

    def normal(self, loc: float = 0.0, scale: float = 1.0) -> float:
        """Gaussian (Box-Muller)."""
        radius = math.sqrt(-2.0 * math.log(1.0 - self.random()))
        return loc + scale * radius * math.cos(2.0 * math.pi * self.random())


@dataclass(frozen=True)
class Fill:
    """How a shape is colored: flat, two-color stripes or a gradient, times texture noise.

    Patterns use image coordinates relative to `origin` (y, x) with period/extent `scale` px,
    so all shapes of one object share one continuous texture.
    """

    color: Color
    color2: Color | None = None
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
        self._fills: list[Fill] = [Fill((0.0, 0.0, 0.0))]
        self._fill_index: dict[int, int] = {}
        # Stroke 0 is "nothing painted": no object (-1), no part (-1), fill 0 (black).
        self._stroke_obj, self._stroke_part, self._stroke_fill = [-1], [-1], [0]

    def add_object(self, kind: str) -> int:
        self._objects.append(_Drawn(kind, -1))
        return len(self._objects) - 1

    def add_part(self, obj: int, kind: str) -> int:
        self._parts.append(_Drawn(kind, obj))
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
        dy = self.ys[b[0] : b[1]] - cy
        dy *= rx / ry  # scaled to a circle of radius rx
        dy *= dy
        dx = self.xs[:, b[2] : b[3]] - cx
        dx *= dx
        return b, dy + dx <= rx * rx

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

    def second_stripes(self, shape: Shape | None, fill: Fill) -> Shape | None:
        """The pixels of `shape` that the stripes `fill` colors with its second color (`colors` computes
        the same stripe parity), e.g. to paint them again as a part with the same fill, which leaves
        the image unchanged."""
        if shape is None:
            return None
        (y0, y1, x0, x1), mask = shape
        sy, sx, offset = (np.float32(v) for v in _pattern_coefficients(fill))
        t = self.ys[y0:y1] * sy
        t = t + self.xs[:, x0:x1] * sx
        t -= offset
        odd = (np.floor(t).astype(np.int32) & 1).astype(bool)
        return (y0, y1, x0, x1), odd if mask is None else odd & mask

    def colors(self, noise: np.ndarray, gain: np.ndarray, cast: Color) -> np.ndarray:
        """[3, H, W] float32 planar RGB of the painted fills, textured and lit.

        Each pixel is its fill's color times (1 + fill noise amount * `noise`) ([H, W], std ~1),
        times the lighting `gain` ([H, W]) and the per-channel color `cast`.
        """
        rows = []
        c0, c1, c2 = cast
        patterned = False
        for f in self._fills:
            c = f.color
            if f.pattern == "flat":  # pattern coordinate u = 0, so t = 0
                rows.append((0.0, 0.0, 0.0, 0.0, f.noise, c[0] * c0, c[1] * c1, c[2] * c2, 0.0, 0.0, 0.0))
                continue
            # Pattern coordinate u = y*sy + x*sx - offset.
            patterned, d = True, f.color2 or c
            sy, sx, offset = _pattern_coefficients(f)
            stripes = f.pattern == "stripes"
            rows.append((float(stripes), sy, sx, offset, f.noise, c[0] * c0, c[1] * c1, c[2] * c2,
                         (d[0] - c[0]) * c0, (d[1] - c[1]) * c1, (d[2] - c[2]) * c2))
        # One row per fill parameter: 1-D `take`s are far faster than 2-D fancy indexing.
        table = np.array(rows, np.float32).T.copy()  # [11, F]
        fid = np.array(self._stroke_fill, np.intp).take(self.strokes)  # [H, W]
        if patterned:
            is_stripes, sy, sx, offset = (row.take(fid) for row in table[:4])  # each [H, W]
            t = self.ys * sy
            t += self.xs * sx
            t -= offset
            stripes = (np.floor(t).astype(np.int32) & 1).astype(np.float32)  # integer parity: float % is slow
            np.clip(t, 0.0, 1.0, out=t)
            stripes -= t
            stripes *= is_stripes
            t += stripes  # stripe parity for stripes, clipped u for gradients
        shade = table[4].take(fid)
        shade *= noise
        shade += 1.0
        shade *= gain
        rgb = np.empty((3, self.height, self.width), np.float32)
        for k in range(3):
            channel = table[5 + k].take(fid)
            if patterned:
                channel += table[8 + k].take(fid) * t
            np.multiply(channel, shade, out=rgb[k])
        return rgb

    def finish(self, domain: str, image: np.ndarray) -> Scene:
        """Freeze into a Scene: visible masks per object and part instance (empty ones dropped)."""
        part_map = np.array(self._stroke_part, np.intp).take(self.strokes)  # [H, W], -1 = no part
        owner_map = np.array(self._stroke_obj, np.intp).take(self.strokes)
        part_area = np.bincount(part_map.ravel() + 1, minlength=len(self._parts) + 1)
        owner_area = np.bincount(owner_map.ravel() + 1, minlength=len(self._objects) + 1)
        parts_of: dict[int, list[VisiblePart]] = {}
        for p, drawn in enumerate(self._parts):
            if part_area[p + 1]:
                parts_of.setdefault(drawn.owner, []).append(VisiblePart(drawn.kind, _frozen(part_map == p)))
        objects = []
        for k, drawn in enumerate(self._objects):
            if owner_area[k + 1]:
                objects.append(VisibleObject(drawn.kind, _frozen(owner_map == k), tuple(parts_of.get(k, ()))))
        return Scene(image=image, domain=domain, objects=tuple(objects))


def _pattern_coefficients(fill: Fill) -> tuple[float, float, float]:
    """(sy, sx, offset) of a patterned fill: its pattern coordinate is u = y·sy + x·sx − offset."""
    sy, sx = math.sin(fill.angle) / fill.scale, math.cos(fill.angle) / fill.scale
    offset = fill.origin[0] * sy + fill.origin[1] * sx - (0.0 if fill.pattern == "stripes" else 0.5)
    return sy, sx, offset


def _frozen(mask: np.ndarray) -> np.ndarray:
    mask.flags.writeable = False  # shared by several label spaces' annotations
    return mask


def _uniform_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-mean, unit-std float32 noise; uniform because it is ~8x cheaper than a normal draw."""
    noise = rng.random(shape, dtype=np.float32)
    noise -= 0.5
    noise *= math.sqrt(12.0)
    return noise


@lru_cache(maxsize=8)
def _ramps(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Lighting-gradient coordinates -0.5..0.5: [H, 1] and [1, W] float32 (read-only, shared)."""
    ys = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None]
    xs = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
    ys.flags.writeable = xs.flags.writeable = False
    return ys, xs


def develop(cv: Canvas, rng: Draws, blur: bool = False) -> np.ndarray:
    """Camera: textured colors, lighting gradient, color cast, optional softness, noise -> HxWx3 uint8."""
    height, width = cv.height, cv.width
    # Texture noise: fine grain plus 4-px blotches, std about 1, one [H, W] field for all fills.
    noise = _uniform_noise(rng.gen, (height // 4 + 1, width // 4 + 1)) * 0.85
    noise = noise.repeat(4, axis=0).repeat(4, axis=1)[:height, :width]
    fine = _uniform_noise(rng.gen, (height, width))
    fine *= 0.5
    noise += fine
    brightness = rng.uniform(0.65, 1.25)
    angle = rng.uniform(0, 2 * math.pi)
    ramp_y, ramp_x = _ramps(height, width)
    slope = rng.uniform(0.0, 0.6)
    gain = ramp_y * (brightness * slope * math.sin(angle)) + ramp_x * (brightness * slope * math.cos(angle))
    gain += brightness  # [H, W]
    cast = (rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.15))
    rgb = cv.colors(noise, gain, cast)  # [3, H, W]
    # Sensor noise shared by the channels (luminance grain): a third of the cost of per-channel noise.
    grain = _uniform_noise(rng.gen, (height, width))
    grain *= rng.uniform(2.0, 10.0)
    rgb += grain
    if blur:
        # A 2x2 box filter: a softer lens than the other domains' cameras.
        rgb[:, :-1] = 0.5 * (rgb[:, :-1] + rgb[:, 1:])
        rgb[:, :, :-1] = 0.5 * (rgb[:, :, :-1] + rgb[:, :, 1:])
    np.clip(rgb, 0, 255, out=rgb)
    planes = rgb.astype(np.uint8)  # truncates
    return np.stack((planes[0], planes[1], planes[2]), axis=-1)  # planar -> HxWx3
