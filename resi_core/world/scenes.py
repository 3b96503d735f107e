"""Scene composition: stuff, things and their parts, drawn per domain (SPEC §6).

Domains are the source datasets' image distributions:
- street: wide side view, horizon mid-high, many small people and vehicles along a road band;
- portrait: one or two close-up people (large faces) before a backdrop or outdoors;
- drive: forward-facing road camera, road to a vanishing point, trees and grass on the sides,
  vehicles seen from behind, a softer lens;
- parts: a close-up side view of one large vehicle (wheels and windows big), often cropped.

Colors come from wide, overlapping palettes and every object gets its own texture, so no
class can be told from another by color alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from resi_core.world.render import Canvas, Color, Draws, Fill, Scene, develop, hsv

Rng = Draws


def pick(rng: Rng, options: tuple[str, ...], weights: tuple[float, ...] | None = None) -> str:
    """One of `options` (weights sum to 1); much cheaper than Generator.choice for a handful."""
    if weights is None:
        return options[int(rng.random() * len(options))]
    x, acc = rng.random(), 0.0
    for option, w in zip(options, weights, strict=True):
        acc += w
        if x < acc:
            return option
    return options[-1]


# Palettes ---------------------------------------------------------------------------------
def any_color(rng: Rng) -> Color:
    """Clothes, car paint, hats, walls: any hue, any saturation, mid brightness."""
    return hsv(rng.random(), rng.uniform(0.05, 0.85), rng.uniform(0.15, 0.95))


def skin_color(rng: Rng) -> Color:
    return hsv(rng.uniform(0.0, 0.11), rng.uniform(0.2, 0.65), rng.uniform(0.3, 0.95))


def hair_color(rng: Rng) -> Color:
    if rng.random() < 0.15:  # dyed
        return any_color(rng)
    return hsv(rng.uniform(0.0, 0.13), rng.uniform(0.1, 0.8), rng.uniform(0.05, 0.75))


def sky_color(rng: Rng) -> Color:
    style = rng.random()
    if style < 0.55:
        return hsv(rng.uniform(0.52, 0.66), rng.uniform(0.2, 0.7), rng.uniform(0.55, 1.0))
    if style < 0.8:  # overcast
        return hsv(rng.random(), rng.uniform(0.0, 0.12), rng.uniform(0.4, 0.95))
    return hsv(rng.uniform(-0.05, 0.12), rng.uniform(0.3, 0.8), rng.uniform(0.5, 1.0))  # dusk


def road_color(rng: Rng) -> Color:
    return hsv(rng.uniform(0.0, 0.7), rng.uniform(0.0, 0.25), rng.uniform(0.15, 0.65))


def green_color(rng: Rng) -> Color:
    """Grass and foliage: greens, olives and dry or autumn browns."""
    if rng.random() < 0.2:
        return hsv(rng.uniform(0.03, 0.13), rng.uniform(0.3, 0.8), rng.uniform(0.25, 0.8))
    return hsv(rng.uniform(0.13, 0.42), rng.uniform(0.25, 0.85), rng.uniform(0.2, 0.75))


def dark_color(rng: Rng) -> Color:
    return hsv(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.03, 0.3))


def glass_color(rng: Rng) -> Color:
    return hsv(rng.uniform(0.45, 0.7), rng.uniform(0.0, 0.5), rng.uniform(0.1, 0.85))


def textured(rng: Rng, color: Color, origin: tuple[float, float], size: float, rich: float = 0.5) -> Fill:
    """A Fill around `color`: flat, stripes or gradient (probability `rich`), always with some noise."""
    noise = float(rng.uniform(0.02, 0.18))
    if rng.random() >= rich:
        return Fill(color, noise=noise)
    pattern = "stripes" if rng.random() < 0.5 else "gradient"
    if rng.random() < 0.5:  # a shifted hue, or the same hue lighter or darker
        shift = (rng.uniform(0.4, 1.4), rng.uniform(0.4, 1.4), rng.uniform(0.4, 1.4))
    else:
        shift = (rng.uniform(0.5, 1.3),) * 3
    color2 = tuple(min(max(c * k + rng.normal(0, 20), 0.0), 255.0) for c, k in zip(color, shift, strict=True))
    scale = size * (rng.uniform(0.05, 0.25) if pattern == "stripes" else rng.uniform(0.5, 1.2))
    return Fill(color, color2, pattern, rng.uniform(0, math.pi), max(scale, 1.5), origin, noise)


# Things -----------------------------------------------------------------------------------
def draw_person(cv: Canvas, rng: Rng, cx: float, foot: float, height: float) -> None:
    """A standing person seen from the front (or back): legs, torso, arms, head with face and hair or hat."""
    obj = cv.add_object("person")
    h, r = height, 0.085 * height  # r: head half-width
    head_cy = foot - h + 1.15 * r
    shoulder, hip = head_cy + 1.15 * r + 0.03 * h, foot - 0.45 * h
    tw = rng.uniform(0.12, 0.17) * h  # half torso width
    origin = (foot - h / 2, cx)
    shirt = textured(rng, any_color(rng), origin, h, rich=0.6)
    pants = textured(rng, any_color(rng), origin, h, rich=0.3)
    skin = Fill(skin_color(rng), noise=rng.uniform(0.0, 0.08))
    hair = textured(rng, hair_color(rng), (head_cy, cx), r * 2, rich=0.3)
    back_view = rng.random() < 0.12
    detailed = r >= 1.5  # hands, eyes and mouth would be sub-pixel on far-away people

    if detailed:
        for side in (-1, 1):
            cv.paint(obj, cv.rect(hip - 0.02 * h, foot, cx + side * 0.02 * h, cx + side * 0.85 * tw), pants)
        cv.paint(obj, cv.rect(shoulder, hip + 0.03 * h, cx - tw, cx + tw, rounded=True), shirt)
        for side in (-1, 1):
            x_in, x_out = cx + side * (tw - 0.01 * h), cx + side * (tw + 0.06 * h)
            cv.paint(obj, cv.rect(shoulder + 0.01 * h, hip + 0.04 * h, min(x_in, x_out), max(x_in, x_out)), shirt)
            cv.paint(obj, cv.ellipse(hip + 0.06 * h, (x_in + x_out) / 2, 0.035 * h, 0.03 * h), skin)
        cv.paint(obj, cv.rect(head_cy + 0.8 * r, shoulder + 0.01 * h, cx - 0.4 * r, cx + 0.4 * r), skin)
    else:  # far away: legs, and torso with arms, as one block each (fewer, cheaper paints)
        cv.paint(obj, cv.rect(hip - 0.02 * h, foot, cx - 0.85 * tw, cx + 0.85 * tw), pants)
        cv.paint(obj, cv.rect(head_cy + r, hip + 0.04 * h, cx - tw - 0.05 * h, cx + tw + 0.05 * h), shirt)

    headwear = pick(rng, ("short", "long", "hat"), (0.45, 0.3, 0.25))
    hair_part = cv.add_part(obj, "hair") if headwear != "hat" or back_view else -1
    if headwear == "long":
        cv.paint(obj, cv.ellipse(head_cy + 0.5 * r, cx, 1.6 * r, 1.25 * r), hair, hair_part)
    if back_view:
        cv.paint(obj, cv.ellipse(head_cy, cx, 1.15 * r, r), hair, hair_part)
    else:
        face = cv.add_part(obj, "face")
        cv.paint(obj, cv.ellipse(head_cy, cx, 1.15 * r, r), skin, face)
        eye = Fill(dark_color(rng))
        for side in (-1, 1) if detailed else ():
            cv.paint(obj, cv.ellipse(head_cy - 0.05 * r, cx + side * 0.38 * r, 0.13 * r, 0.13 * r), eye, face)
        if detailed:
            cv.paint(obj, cv.rect(head_cy + 0.5 * r, head_cy + 0.62 * r, cx - 0.3 * r, cx + 0.3 * r), eye, face)
    if headwear == "hat":
        hat = cv.add_part(obj, "hat")
        hat_fill = textured(rng, any_color(rng), (head_cy, cx), r * 2, rich=0.4)
        cv.paint(obj, cv.rect(head_cy - 1.6 * r, head_cy - 0.45 * r, cx - 0.85 * r, cx + 0.85 * r, True), hat_fill, hat)
        brim = rng.uniform(1.1, 1.6) * r
        cv.paint(obj, cv.rect(head_cy - 0.65 * r, head_cy - 0.4 * r, cx - brim, cx + brim), hat_fill, hat)
    elif not back_view:
        volume = rng.uniform(1.0, 1.25)
        cap = cv.ellipse(head_cy - 0.15 * r, cx, 1.05 * r * volume, 1.08 * r * volume, y_max=head_cy - 0.35 * r)
        cv.paint(obj, cap, hair, hair_part)


def _wheel(cv: Canvas, rng: Rng, obj: int, cy: float, cx: float, radius: float) -> None:
    part = cv.add_part(obj, "wheel")
    cv.paint(obj, cv.ellipse(cy, cx, radius, radius), Fill(dark_color(rng), noise=0.1), part)
    if radius < 2:  # a hubcap would be sub-pixel
        return
    hub = hsv(rng.random(), rng.uniform(0, 0.2), rng.uniform(0.4, 0.9))
    cv.paint(obj, cv.ellipse(cy, cx, 0.5 * radius, 0.5 * radius), Fill(hub, noise=0.05), part)


def _window(cv: Canvas, rng: Rng, obj: int, shape_args: tuple, origin: tuple[float, float], size: float) -> None:
    glass = textured(rng, glass_color(rng), origin, size, rich=0.7)
    cv.paint(obj, cv.trapezoid(*shape_args), glass, cv.add_part(obj, "window"))


def draw_car(cv: Canvas, rng: Rng, cx: float, foot: float, length: float, rear: bool = False) -> None:
    """A car: side view (body, cabin, two windows, two wheels) or rear view (rear window, wheel bottoms)."""
    obj = cv.add_object("car")
    L = length
    paint = textured(rng, any_color(rng), (foot - 0.3 * L, cx), L, rich=0.35)
    light = Fill(hsv(rng.uniform(-0.05, 0.15), rng.uniform(0.2, 0.9), rng.uniform(0.6, 1.0)))
    if rear:
        w = 0.8 * L
        for side in (-1, 1):
            part = cv.add_part(obj, "wheel")
            x0, x1 = cx + side * 0.46 * w, cx + side * 0.3 * w
            cv.paint(obj, cv.rect(foot - 0.14 * w, foot, min(x0, x1), max(x0, x1)), Fill(dark_color(rng)), part)
        cv.paint(obj, cv.trapezoid(foot - 0.78 * w, foot - 0.44 * w, (cx - 0.33 * w, cx + 0.33 * w),
                                   (cx - 0.46 * w, cx + 0.46 * w)), paint)
        cv.paint(obj, cv.rect(foot - 0.46 * w, foot - 0.1 * w, cx - 0.5 * w, cx + 0.5 * w, rounded=True), paint)
        _window(cv, rng, obj, (foot - 0.74 * w, foot - 0.5 * w, (cx - 0.28 * w, cx + 0.28 * w),
                               (cx - 0.39 * w, cx + 0.39 * w)), (foot, cx), w)
        for side in (-1, 1):
            x0, x1 = cx + side * 0.45 * w, cx + side * 0.32 * w
            cv.paint(obj, cv.rect(foot - 0.38 * w, foot - 0.3 * w, min(x0, x1), max(x0, x1)), light)
        return
    s = 1.0 if rng.random() < 0.5 else -1.0  # facing right or left

    def x(u: float) -> float:
        return cx + s * u * L

    cv.paint(obj, cv.trapezoid(foot - 0.58 * L, foot - 0.34 * L, (x(-0.22), x(0.14)), (x(-0.36), x(0.31))), paint)
    cv.paint(obj, cv.rect(foot - 0.37 * L, foot - 0.08 * L, cx - 0.5 * L, cx + 0.5 * L, rounded=True), paint)
    for top, bottom in (((-0.19, -0.05), (-0.30, -0.05)), ((-0.01, 0.11), (-0.01, 0.25))):
        _window(cv, rng, obj, (foot - 0.55 * L, foot - 0.37 * L, (x(top[0]), x(top[1])),
                               (x(bottom[0]), x(bottom[1]))), (foot, cx), L)
    if L >= 24:
        cv.paint(obj, cv.rect(foot - 0.3 * L, foot - 0.24 * L, min(x(0.44), x(0.5)), max(x(0.44), x(0.5))), light)
    for u in (-0.3, 0.3):
        _wheel(cv, rng, obj, foot - 0.11 * L, x(u), 0.11 * L)


def draw_truck(cv: Canvas, rng: Rng, cx: float, foot: float, length: float, rear: bool = False) -> None:
    """A truck: cargo box plus cab with one window and three wheels (side), or box and wheels (rear)."""
    obj = cv.add_object("truck")
    L = length
    box_fill = textured(rng, any_color(rng), (foot - 0.4 * L, cx), L, rich=0.5)
    cab_fill = textured(rng, any_color(rng), (foot - 0.4 * L, cx), L, rich=0.3)
    chassis = Fill(dark_color(rng), noise=0.05)
    if rear:
        w = 0.55 * L
        for side in (-1, 1):
            part = cv.add_part(obj, "wheel")
            x0, x1 = cx + side * 0.47 * w, cx + side * 0.28 * w
            cv.paint(obj, cv.rect(foot - 0.16 * w, foot, min(x0, x1), max(x0, x1)), Fill(dark_color(rng)), part)
        cv.paint(obj, cv.rect(foot - 0.2 * w, foot - 0.1 * w, cx - 0.5 * w, cx + 0.5 * w), chassis)
        cv.paint(obj, cv.rect(foot - 1.1 * w, foot - 0.18 * w, cx - 0.5 * w, cx + 0.5 * w), box_fill)
        return
    s = 1.0 if rng.random() < 0.5 else -1.0

    def x(u: float) -> float:
        return cx + s * u * L

    cv.paint(obj, cv.rect(foot - 0.16 * L, foot - 0.08 * L, cx - 0.5 * L, cx + 0.5 * L), chassis)
    cv.paint(obj, cv.rect(foot - 0.6 * L, foot - 0.13 * L, min(x(-0.5), x(0.17)), max(x(-0.5), x(0.17))), box_fill)
    cv.paint(obj, cv.rect(foot - 0.45 * L, foot - 0.1 * L, min(x(0.19), x(0.5)), max(x(0.19), x(0.5)), True), cab_fill)
    wx = (min(x(0.3), x(0.45)), max(x(0.3), x(0.45)))
    _window(cv, rng, obj, (foot - 0.41 * L, foot - 0.29 * L, wx, wx), (foot, cx), L)
    for u in (-0.36, -0.2, 0.36):
        _wheel(cv, rng, obj, foot - 0.08 * L, x(u), 0.08 * L)


def draw_tree(cv: Canvas, rng: Rng, cx: float, foot: float, height: float) -> None:
    """A tree: trunk plus a round (one to three blobs) or conifer crown."""
    obj = cv.add_object("tree")
    h = height
    bark = textured(rng, hsv(rng.uniform(0.02, 0.12), rng.uniform(0.2, 0.7), rng.uniform(0.1, 0.5)), (foot, cx), h, 0.3)
    tw = rng.uniform(0.03, 0.06) * h
    cv.paint(obj, cv.rect(foot - 0.55 * h, foot, cx - tw, cx + tw), bark)
    leaves = Fill(green_color(rng), noise=rng.uniform(0.1, 0.35))
    if rng.random() < 0.35:
        for k in range(3):
            y0 = foot - h + k * 0.22 * h
            half = (0.12 + 0.1 * k) * h
            cv.paint(obj, cv.trapezoid(y0, y0 + 0.3 * h, (cx - 0.02 * h, cx + 0.02 * h), (cx - half, cx + half)), leaves)
        return
    for _ in range(rng.integers(1, 4)):
        cy = foot - h * rng.uniform(0.6, 0.75)
        cv.paint(obj, cv.ellipse(cy, cx + rng.uniform(-0.12, 0.12) * h, rng.uniform(0.2, 0.3) * h,
                                 rng.uniform(0.18, 0.3) * h), leaves)


def draw_thing(cv: Canvas, rng: Rng, kind: str, cx: float, foot: float, size: float, rear: bool = False) -> None:
    """Dispatch by kind; `size` is a person's height, a vehicle's length or a tree's height in px."""
    if kind == "person":
        draw_person(cv, rng, cx, foot, size)
    elif kind == "car":
        draw_car(cv, rng, cx, foot, size, rear)
    elif kind == "truck":
        draw_truck(cv, rng, cx, foot, size, rear)
    else:
        draw_tree(cv, rng, cx, foot, size)


# Stuff ------------------------------------------------------------------------------------
def draw_sky(cv: Canvas, rng: Rng, bottom: float) -> None:
    obj = cv.add_object("sky")
    top, low = sky_color(rng), sky_color(rng) if rng.random() < 0.3 else None
    if low is None:
        lighter = rng.uniform(1.0, 1.4)
        low = (min(top[0] * lighter, 255.0), min(top[1] * lighter, 255.0), min(top[2] * lighter, 255.0))
    fill = Fill(top, low, "gradient", math.pi / 2, max(bottom, 1.0), (bottom / 2, 0.0), rng.uniform(0.0, 0.05))
    cv.paint(obj, cv.rect(0, bottom, 0, cv.width), fill)
    cloud = Fill(hsv(0, 0, rng.uniform(0.7, 1.0)), noise=0.05)
    for _ in range(rng.integers(0, 4)):
        cy, cx = rng.uniform(0, bottom), rng.uniform(0, cv.width)
        cv.paint(obj, cv.ellipse(cy, cx, rng.uniform(0.02, 0.06) * cv.height, rng.uniform(0.06, 0.2) * cv.width,
                                 y_max=bottom), cloud)


def draw_grass(cv: Canvas, rng: Rng, top: float) -> None:
    obj = cv.add_object("grass")
    fill = textured(rng, green_color(rng), (top, 0.0), cv.height, rich=0.3)
    cv.paint(obj, cv.rect(top, cv.height, 0, cv.width), Fill(fill.color, fill.color2, fill.pattern, fill.angle,
                                                            fill.scale, fill.origin, rng.uniform(0.1, 0.4)))


def draw_road(cv: Canvas, rng: Rng, y0: float, y1: float, top: tuple[float, float], bottom: tuple[float, float],
              lane_x: tuple[float, float] | None = None) -> None:
    """Road surface as a trapezoid; dashed lane marks (a part of the road, "lane mark") along the center line."""
    obj = cv.add_object("road")
    fill = textured(rng, road_color(rng), (y0, 0.0), cv.height, rich=0.2)
    cv.paint(obj, cv.trapezoid(y0, y1, top, bottom), fill)
    if rng.random() < 0.7:
        lane = cv.add_part(obj, "lane mark")
        mark = Fill(hsv(rng.uniform(0.1, 0.17), rng.uniform(0, 0.8), rng.uniform(0.7, 1.0)), noise=0.05)
        if lane_x is None:  # horizontal road band seen from the side: one dashed line, a striped thin rect
            y, period = (y0 + y1) / 2, rng.uniform(5.0, 10.0)
            dashes = Fill(fill.color, mark.color, "stripes", 0.0, period, (y, rng.uniform(0, period)), 0.05)
            band = cv.rect(y - 0.6, y + 0.6, 0, cv.width)
            cv.paint(obj, band, dashes)
            cv.paint(obj, cv.second_stripes(band, dashes), dashes, lane)  # the dashes again, as the part
        else:  # forward view: dashes shrinking toward the vanishing point
            for t in (0.15, 0.35, 0.6, 0.9):
                y, hh = y0 + t * (y1 - y0), 0.08 * t * (y1 - y0)
                xc = lane_x[0] + t * (lane_x[1] - lane_x[0])
                cv.paint(obj, cv.rect(y - hh, y + hh, xc - 0.4 - 1.2 * t, xc + 0.4 + 1.2 * t), mark, lane)


def draw_backdrop(cv: Canvas, rng: Rng, kind: str, y0: float, y1: float, x0: float, x1: float) -> None:
    """Unlabeled clutter (a wall or building): no label space has a class for it."""
    obj = cv.add_object(kind)
    cv.paint(obj, cv.rect(y0, y1, x0, x1), textured(rng, any_color(rng), (y0, x0), max(y1 - y0, 4.0), rich=0.6))


# Domains ----------------------------------------------------------------------------------
def street(cv: Canvas, rng: Rng) -> bool:
    """Wide side view: sky, buildings, a grass strip, a road band; many small people and vehicles."""
    H, W = cv.height, cv.width
    horizon = rng.uniform(0.3, 0.5) * H
    road_top, road_bottom = horizon + rng.uniform(0.08, 0.2) * H, rng.uniform(0.8, 1.05) * H
    draw_sky(cv, rng, horizon)
    for _ in range(rng.integers(0, 4)):
        x0 = rng.uniform(-0.1, 0.9) * W
        draw_backdrop(cv, rng, "building", horizon - rng.uniform(0.05, 0.25) * H, horizon, x0, x0 + rng.uniform(0.1, 0.3) * W)
    draw_grass(cv, rng, horizon)
    draw_road(cv, rng, road_top, road_bottom, (-1, W + 1), (-1, W + 1))
    things = []
    for _ in range(rng.integers(5, 15)):
        kind = pick(rng, ("person", "car", "truck", "tree"), (0.45, 0.27, 0.12, 0.16))
        low = road_top if kind in ("car", "truck") else horizon + 0.02 * H
        foot = rng.uniform(low, H * 1.02) if kind != "tree" else rng.uniform(horizon + 1, road_top + 2)
        depth = foot - horizon  # perspective: nearer (lower) objects are bigger
        # A wide-angle camera: things are small even near the bottom edge.
        size = depth * {"person": rng.uniform(0.25, 0.45), "car": rng.uniform(0.5, 0.75),
                        "truck": rng.uniform(0.8, 1.2), "tree": rng.uniform(1.0, 2.2)}[kind] + 3
        things.append((foot, kind, rng.uniform(-0.05, 1.05) * W, size))
    for foot, kind, cx, size in sorted(things, key=lambda t: t[0]):
        draw_thing(cv, rng, kind, cx, foot, size)
    return False


def portrait(cv: Canvas, rng: Rng) -> bool:
    """One or two close-up people, faces large, before a wall or an outdoor background."""
    H, W = cv.height, cv.width
    if rng.random() < 0.5:
        draw_backdrop(cv, rng, "wall", 0, H, 0, W)
    else:
        horizon = rng.uniform(0.3, 0.8) * H
        draw_sky(cv, rng, horizon)
        draw_grass(cv, rng, horizon)
        if rng.random() < 0.5:
            draw_road(cv, rng, horizon + 0.1 * H, H, (-1, W + 1), (-1, W + 1))
        for _ in range(rng.integers(0, 3)):
            kind = pick(rng, ("car", "truck", "tree", "person"))
            foot = horizon + rng.uniform(0.02, 0.2) * H
            draw_thing(cv, rng, kind, rng.uniform(0, W), foot, rng.uniform(0.3, 0.9) * H)
    for _ in range(1 if rng.random() < 0.7 else 2):
        head_r = rng.uniform(0.09, 0.24) * H  # head half-width
        height = head_r / 0.085
        head_cy = rng.uniform(0.2, 0.6) * H
        draw_person(cv, rng, rng.uniform(0.15, 0.85) * W, head_cy - 1.15 * head_r + height, height)
    return False


def drive(cv: Canvas, rng: Rng) -> bool:
    """Forward road camera: vanishing point, trees and grass on both sides, vehicles from behind."""
    H, W = cv.height, cv.width
    horizon, vx = rng.uniform(0.25, 0.45) * H, rng.uniform(0.35, 0.65) * W
    half_bottom = rng.uniform(0.5, 1.0) * W
    draw_sky(cv, rng, horizon)
    draw_grass(cv, rng, horizon)
    draw_road(cv, rng, horizon, H, (vx - 1, vx + 1), (vx - half_bottom, vx + half_bottom), (vx, vx))

    def road_x(foot: float, t: float) -> float:  # t in -1..1 across the road at this depth
        return vx + t * half_bottom * (foot - horizon) / (H - horizon)

    things = []
    for _ in range(rng.integers(3, 10)):  # roadside trees
        foot = rng.uniform(horizon + 2, H)
        side = 1 if rng.random() < 0.5 else -1
        things.append((foot, "tree", road_x(foot, side * rng.uniform(1.1, 2.5)), (foot - horizon) * rng.uniform(1.2, 2.5) + 4, False))
    for _ in range(rng.integers(1, 6)):
        foot = rng.uniform(horizon + 2, H * 1.05)
        kind = pick(rng, ("car", "truck"), (0.75, 0.25))
        things.append((foot, kind, road_x(foot, rng.uniform(-0.7, 0.7)), (foot - horizon) * rng.uniform(1.1, 1.6) + 3,
                       rng.random() < 0.8))
    for _ in range(rng.integers(0, 5)):
        foot = rng.uniform(horizon + 2, H * 1.02)
        side = 1 if rng.random() < 0.5 else -1
        things.append((foot, "person", road_x(foot, side * rng.uniform(0.8, 1.4)),
                       (foot - horizon) * rng.uniform(0.6, 1.0) + 3, False))
    for foot, kind, cx, size, rear in sorted(things, key=lambda t: t[0]):
        draw_thing(cv, rng, kind, cx, foot, size, rear)
    return True


def parts(cv: Canvas, rng: Rng) -> bool:
    """A close-up side view of one big vehicle (often cropped), maybe another behind or a person in front."""
    H, W = cv.height, cv.width
    horizon = rng.uniform(0.2, 0.6) * H
    draw_sky(cv, rng, horizon)
    if rng.random() < 0.5:
        draw_backdrop(cv, rng, "building", horizon - rng.uniform(0.1, 0.3) * H, horizon + 0.05 * H, 0, W)
    draw_grass(cv, rng, horizon)
    draw_road(cv, rng, horizon + rng.uniform(0.0, 0.15) * H, H, (-1, W + 1), (-1, W + 1))
    if rng.random() < 0.3:
        draw_thing(cv, rng, pick(rng, ("car", "truck")), rng.uniform(0, W), horizon + 0.3 * (H - horizon),
                   rng.uniform(0.4, 1.0) * W)
    kind = pick(rng, ("car", "truck"), (0.65, 0.35))
    length = rng.uniform(0.7, 1.6) * W
    draw_thing(cv, rng, kind, rng.uniform(0.2, 0.8) * W, rng.uniform(0.8, 1.1) * H, length)
    if rng.random() < 0.2:
        draw_person(cv, rng, rng.uniform(0, W), H * rng.uniform(1.0, 1.3), H * rng.uniform(0.6, 1.1))
    return False


DOMAINS: dict[str, Callable[[Canvas, Rng], bool]] = {
    "street": street, "portrait": portrait, "drive": drive, "parts": parts,
}


def compose(domain: str, gen: np.random.Generator, height: int, width: int) -> Scene:
    """Draw one scene of `domain` at height x width px; the image is HxWx3 uint8 RGB."""
    cv, rng = Canvas(height, width), Draws(gen)
    soft = DOMAINS[domain](cv, rng)  # returns whether the domain's camera is soft
    image = develop(cv, rng, blur=soft)
    return cv.finish(domain, image)
