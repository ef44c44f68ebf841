"""Weight-sweep pictures (numpy / PIL): a contact sheet, a caption band under every tile, and a chart of likeness
against weight, one line per start step. Sizes are the constants below (docs/design.md, "Likeness")."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

TILE_MAX = 384
CAPTION_H = 44
GAP = 8
CHART_SIZE = (768, 512)  # width, height
BACKGROUND, TEXT = (24, 24, 28), (235, 235, 240)
SERIES = [(70, 160, 255), (255, 140, 60), (90, 210, 120), (230, 90, 200), (240, 220, 80), (160, 160, 160)]


def tile_size(width: int, height: int) -> tuple[int, int]:
    s = min(1.0, TILE_MAX / max(width, height))
    return max(1, round(width * s)), max(1, round(height * s))


def grid_columns(n: int, columns: int = 0) -> int:
    return max(1, min(n, columns)) if columns > 0 else max(1, math.ceil(math.sqrt(n)))


def sheet_size(n: int, width: int, height: int, columns: int = 0) -> tuple[int, int]:
    """(width, height) of the contact sheet for n images of width x height."""
    tw, th = tile_size(width, height)
    cols = grid_columns(n, columns)
    rows = math.ceil(n / cols)
    return GAP + cols * (tw + GAP), GAP + rows * (th + CAPTION_H + GAP)


def font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable with FreeType (Pillow >= 10.1)
    except TypeError:
        return ImageFont.load_default()


def contact_sheet(images: Sequence[np.ndarray], captions: Sequence[Sequence[str]], columns: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 sheet of equally sized (h, w, 3) uint8 images, caption lines under each tile."""
    from PIL import Image, ImageDraw

    n = len(images)
    h, w = images[0].shape[:2]
    tw, th = tile_size(w, h)
    cols = grid_columns(n, columns)
    sheet = Image.new("RGB", sheet_size(n, w, h, columns), BACKGROUND)
    d = ImageDraw.Draw(sheet)
    caption = font(14)
    for i, (img, lines) in enumerate(zip(images, captions)):
        x, y = GAP + (i % cols) * (tw + GAP), GAP + (i // cols) * (th + CAPTION_H + GAP)
        sheet.paste(Image.fromarray(np.ascontiguousarray(img)).resize((tw, th), Image.LANCZOS), (x, y))
        for k, text in enumerate(lines[:2]):
            d.text((x + 2, y + th + 4 + 18 * k), text, fill=TEXT, font=caption)
    return np.asarray(sheet)


def likeness_chart(weights: Sequence[float], similarities: Sequence[float], start_steps: Sequence[float],
                   title: str = "likeness against weight") -> np.ndarray:
    """(CHART_SIZE[1], CHART_SIZE[0], 3) uint8 line chart: similarity (y) against weight (x), a line per start step."""
    from PIL import Image, ImageDraw

    W, H = CHART_SIZE
    img = Image.new("RGB", CHART_SIZE, BACKGROUND)
    d = ImageDraw.Draw(img)
    big, small = font(16), font(12)
    left, right, top, bottom = 70, W - 150, 40, H - 50
    xs, ys = list(map(float, weights)), list(map(float, similarities))
    x0, x1 = min(xs), max(xs)
    if x1 - x0 < 1e-9:
        x0, x1 = x0 - 0.5, x1 + 0.5
    y0, y1 = min(0.0, min(ys)), max(1.0, max(ys))

    def px(x: float, y: float) -> tuple[float, float]:
        return left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top)

    d.text((left, 10), title, fill=TEXT, font=big)
    d.rectangle((left, top, right, bottom), outline=(120, 120, 130))
    for k in range(6):  # y grid and labels
        yv = y0 + (y1 - y0) * k / 5
        _, yy = px(x0, yv)
        d.line((left, yy, right, yy), fill=(55, 55, 62))
        d.text((8, yy - 7), f"{yv:.2f}", fill=TEXT, font=small)
    for xv in sorted(set(xs)):
        xx, _ = px(xv, y0)
        d.line((xx, bottom, xx, bottom + 5), fill=(120, 120, 130))
        d.text((xx - 12, bottom + 8), f"{xv:g}", fill=TEXT, font=small)
    d.text(((left + right) / 2 - 20, H - 22), "weight", fill=TEXT, font=small)
    d.text((8, top - 22), "similarity", fill=TEXT, font=small)
    for s_i, start in enumerate(sorted(set(start_steps))):
        colour = SERIES[s_i % len(SERIES)]
        pts = sorted((x, y) for x, y, s in zip(xs, ys, start_steps) if s == start)
        coords = [px(x, y) for x, y in pts]
        if len(coords) > 1:
            d.line(coords, fill=colour, width=2)
        for cx, cy in coords:
            d.ellipse((cx - 4, cy - 4, cx + 4, cy + 4), fill=colour)
        ly = top + 22 * s_i
        d.line((right + 15, ly + 8, right + 35, ly + 8), fill=colour, width=3)
        d.text((right + 42, ly), f"start {start:g}", fill=TEXT, font=small)
    return np.asarray(img)
