"""Pictures of predictions: palette PNGs, colour overlays with a class legend, confidence maps."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pspnet.errors import PSPNetError


def palette_array(palette: Sequence[Sequence[int]]) -> np.ndarray:
    return np.asarray(palette, dtype=np.uint8).reshape(-1, 3)


def label_png(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> Image.Image:
    """A mode-P PNG: pixel values are the class indices, the palette makes it look right in a viewer."""
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = palette_array(palette)[:256].flatten().tolist()
    img.putpalette(flat + [0] * (768 - len(flat)))
    return img


def mask_png(labels: np.ndarray, mask_values: Sequence[int]) -> Image.Image:
    """Class ids written as the stored value of each class (``mask_values[i]`` for class i), 8-bit grey, or
    16-bit for values above 255: masks in the user's own terms, e.g. 0/255 for a binary model."""
    table = np.asarray(mask_values, dtype=np.int64)
    if labels.size and int(labels.max()) >= len(table):
        raise PSPNetError(f"class ids up to {int(labels.max())} but only {len(table)} mask values {table.tolist()}")
    if table.min(initial=0) < 0 or table.max(initial=0) > 65535:
        raise PSPNetError(f"mask values {table.tolist()}: each must be in [0, 65535] to be written as a PNG")
    data = table[labels]
    return Image.fromarray(data.astype(np.uint8)) if table.max(initial=0) < 256 else Image.fromarray(
        data.astype(np.uint16))


# Stand-ins for palette colours too dark to see over an image (the VOC palette's black class 0).
VISIBLE = [(0, 255, 255), (255, 220, 0), (255, 0, 255), (0, 255, 0), (255, 128, 0), (0, 128, 255)]


def visible_palette(palette: Sequence[Sequence[int]]) -> list[list[int]]:
    """``palette`` with every near-black colour replaced by a bright one it does not use yet, so every class,
    class 0 included, shows in an overlay (the label PNG keeps the model's own palette)."""
    out = [list(map(int, c)) for c in palette]
    spare = [list(c) for c in VISIBLE if list(c) not in out]
    for i, c in enumerate(out):
        if sum(c) < 90 and spare:
            out[i] = spare.pop(0)
    return out


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    pal = palette_array(palette)
    return pal[np.clip(labels, 0, len(pal) - 1)]


def overlay(image: Image.Image, labels: np.ndarray, palette: Sequence[Sequence[int]],
            class_names: Sequence[str] | None = None, alpha: float = 0.5, legend: bool = True) -> Image.Image:
    """Blend class colours over the image; with ``legend`` add a panel of the classes present and their share."""
    palette = visible_palette(palette)
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
