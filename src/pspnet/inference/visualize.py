"""Pictures of predictions: palette PNGs, colour overlays with a class legend, confidence maps."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def palette_array(palette: Sequence[Sequence[int]]) -> np.ndarray:
    return np.asarray(palette, dtype=np.uint8).reshape(-1, 3)


def label_png(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> Image.Image:
    """A mode-P PNG: pixel values are the class indices, the palette makes it look right in a viewer."""
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = palette_array(palette)[:256].flatten().tolist()
    img.putpalette(flat + [0] * (768 - len(flat)))
    return img


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    pal = palette_array(palette)
    return pal[np.clip(labels, 0, len(pal) - 1)]


def overlay(image: Image.Image, labels: np.ndarray, palette: Sequence[Sequence[int]],
            class_names: Sequence[str] | None = None, alpha: float = 0.5, legend: bool = True) -> Image.Image:
    """Blend class colours over the image; with ``legend`` add a panel of the classes present and their share."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    blended = (1 - alpha) * rgb + alpha * colorize(labels, palette).astype(np.float32)
    out = Image.fromarray(blended.round().astype(np.uint8))
    if not legend or class_names is None:
        return out
    counts = np.bincount(labels.ravel(), minlength=len(class_names))
    present = [(i, counts[i] / labels.size) for i in np.argsort(-counts) if counts[i] > 0]
    font_size = max(11, min(18, out.height // 30))
    font = ImageFont.load_default(size=font_size)
    row = font_size + 6
    width = max(160, int(font_size * 0.6 * (max(len(class_names[i]) for i, _ in present) + 8)) + row + 12)
    panel = Image.new("RGB", (width, max(out.height, row * len(present) + 12)), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    pal = palette_array(palette)
    for k, (i, share) in enumerate(present):
        y = 6 + k * row
        draw.rectangle([6, y, 6 + row - 6, y + row - 6], fill=tuple(int(c) for c in pal[i]), outline=(0, 0, 0))
        draw.text((row + 6, y), f"{class_names[i]} {100 * share:.1f}%", fill=(0, 0, 0), font=font)
    canvas = Image.new("RGB", (out.width + panel.width, max(out.height, panel.height)), (255, 255, 255))
    canvas.paste(out, (0, 0))
    canvas.paste(panel, (out.width, 0))
    return canvas


def confidence_png(probs_max: np.ndarray) -> Image.Image:
    """Max-softmax confidence as an 8-bit grey image (255 = certain)."""
    return Image.fromarray((np.clip(probs_max, 0, 1) * 255).round().astype(np.uint8), mode="L")
