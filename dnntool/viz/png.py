"""The scene as a PNG, drawn with OpenCV (anti-aliased lines and Hershey text; no browser)."""

from __future__ import annotations

import math

from dnntool.viz.scene import (
    EDGE_COLOUR,
    LABEL_COLOUR,
    LABEL_SIZE,
    LINE_GAP,
    PAD_X,
    PAD_Y,
    TEXT_COLOUR,
    Point,
    Scene,
    line_sizes,
    segments,
)

#: pixels per layout unit by default, and the largest side and area a PNG may have
DEFAULT_SCALE, MAX_SIDE, MAX_PIXELS = 2.0, 32000, 40_000_000
_SHIFT = 4  # OpenCV fixed-point bits for sub-pixel drawing
_ONE = 1 << _SHIFT


def png_scale(width: float, height: float, scale: float = DEFAULT_SCALE) -> float:
    """``scale``, reduced so that the image stays within MAX_SIDE and MAX_PIXELS."""
    s = min(scale, MAX_SIDE / max(width, height, 1.0))
    return min(s, math.sqrt(MAX_PIXELS / max(width * height, 1.0)))


def png_size(scene: Scene, scale: float = DEFAULT_SCALE) -> tuple[int, int]:
    """(width, height) in pixels of the PNG of a scene."""
    s = png_scale(scene.width, scene.height, scale)
    return math.ceil(scene.width * s), math.ceil(scene.height * s)


def _bgr(hex_colour: str) -> tuple[int, int, int]:
    v = int(hex_colour.lstrip("#"), 16)
    return (v & 255, (v >> 8) & 255, v >> 16)


def _fixed(points: list[Point], s: float):
    import numpy as np

    return np.array([[round(x * s * _ONE), round(y * s * _ONE)] for x, y in points], dtype=np.int32)


def _polyline(points: list[Point], rankdir: str) -> list[Point]:
    """A route flattened to line segments (curves sampled)."""
    out = [points[0]]
    for op, pts in segments(points, rankdir):
        if op == "L":
            out.append(pts[0])
            continue
        (x0, y0), (c1x, c1y), (c2x, c2y), (x1, y1) = out[-1], *pts
        for i in range(1, 13):
            t = i / 12
            a, b, c, d = (1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t * t * (1 - t), t**3
            out.append((a * x0 + b * c1x + c * c2x + d * x1, a * y0 + b * c1y + c * c2y + d * y1))
    return out


def _rounded(x: float, y: float, w: float, h: float, r: float) -> list[Point]:
    pts: list[Point] = []
    for cx, cy, a0 in ((x + w - r, y + r, -90), (x + w - r, y + h - r, 0), (x + r, y + h - r, 90), (x + r, y + r, 180)):
        for k in range(5):
            a = math.radians(a0 + k * 22.5)
            pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return pts


def _arrow(line: list[Point], size: float = 7.0) -> list[Point]:
    """An arrowhead at the end of a polyline, along its last segment."""
    (x0, y0), (x, y) = line[-2], line[-1]
    d = math.hypot(x - x0, y - y0) or 1.0
    dx, dy = (x - x0) / d, (y - y0) / d
    bx, by = x - dx * size, y - dy * size
    return [(x, y), (bx - dy * size * 0.45, by + dx * size * 0.45), (bx + dy * size * 0.45, by - dx * size * 0.45)]


class _Text:
    """Hershey fonts scaled so their capital height matches the SVG's text."""

    def __init__(self, s: float):
        import cv2

        self.cv2 = cv2
        self.s = s
        self.fonts = {False: cv2.FONT_HERSHEY_SIMPLEX, True: cv2.FONT_HERSHEY_DUPLEX}
        self.cap = {b: cv2.getTextSize("H", f, 1.0, 1)[0][1] for b, f in self.fonts.items()}

    def draw(self, img, text: str, x: float, baseline: float, size: float, bold: bool, colour,
             centre: bool = False, max_w: float | None = None) -> None:
        cv2 = self.cv2
        font = self.fonts[bold]
        fs = 0.72 * size * self.s / self.cap[bold]
        thick = 2 if bold and fs > 0.55 else 1
        w = cv2.getTextSize(text, font, fs, thick)[0][0]
        if max_w is not None and w > max_w * self.s:
            fs *= max_w * self.s / w
            w = cv2.getTextSize(text, font, fs, thick)[0][0]
        px = x * self.s - (w / 2 if centre else 0)
        cv2.putText(img, text, (round(px), round(baseline * self.s)), font, fs, colour, thick, cv2.LINE_AA)


def render_png(scene: Scene, scale: float = DEFAULT_SCALE) -> bytes:
    """PNG bytes of the scene, ``scale`` pixels per unit (less for very large nets)."""
    import cv2
    import numpy as np

    s = png_scale(scene.width, scene.height, scale)
    w, h = png_size(scene, scale)
    img = np.full((h, w, 3), 255, np.uint8)
    edge, label, text = _bgr(EDGE_COLOUR), _bgr(LABEL_COLOUR), _bgr(TEXT_COLOUR)
    thick = max(1, round(1.2 * s))
    rd = scene.rankdir
    for ev in scene.edges:
        if len(ev.points) < 2:
            continue
        line = _polyline(ev.points, rd)
        cv2.polylines(img, [_fixed(line, s)], False, edge, thick, cv2.LINE_AA, _SHIFT)
        cv2.fillPoly(img, [_fixed(_arrow(line), s)], edge, cv2.LINE_AA, _SHIFT)
    for st in scene.stubs:
        cv2.polylines(img, [_fixed([st.start, st.end], s)], False, edge, thick, cv2.LINE_AA, _SHIFT)
        cv2.fillPoly(img, [_fixed(_arrow([st.start, st.end]), s)], edge, cv2.LINE_AA, _SHIFT)
    fonts = _Text(s)
    for lb in scene.labels:
        fonts.draw(img, lb.text, lb.x, lb.y, LABEL_SIZE, False, label)
    for nv in scene.nodes:
        b = nv.box
        outline = _fixed(_rounded(b.x, b.y, b.w, b.h, 5.0), s)
        cv2.fillPoly(img, [outline], _bgr(nv.fill), cv2.LINE_AA, _SHIFT)
        cv2.polylines(img, [outline], True, _bgr(nv.stroke), max(1, round(s)), cv2.LINE_AA, _SHIFT)
        top = b.y + PAD_Y + 1
        for i, line in enumerate(nv.lines):
            size, bold = line_sizes(i)
            fonts.draw(img, line, b.cx, top + 0.8 * size, size, bold, text, centre=True, max_w=b.w - PAD_X)
            top += size + LINE_GAP
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:  # pragma: no cover - OpenCV reports no reason
        raise RuntimeError("OpenCV could not encode the PNG")
    return buf.tobytes()
