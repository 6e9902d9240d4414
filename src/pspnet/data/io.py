"""Reading images and masks: one decoder for the CLI, the Python API, the server and the datasets.

Only the documented formats are decoded (``FORMATS``: a DDS, TGA, PCX or EPS file is refused before
any Pillow plugin parses it), EXIF orientation is applied so labels match what a viewer shows, and
every way decoding can fail (missing, unreadable, truncated, malformed, decompression bomb) is a
``PSPNetError`` naming the file and the problem: one line and exit 2 in the CLI, a 400 in the server.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from pspnet.errors import PSPNetError
from pspnet.files import require_file

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
# Pillow format ids tried, in this order (the JPEG opener also reads the multi-picture JPEGs phones write).
FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF", "PPM")
FORMATS_TEXT = "JPEG, PNG, BMP, TIFF, WebP, GIF, PPM"


class ImageTooLarge(PSPNetError):
    """The header declares more pixels than the caller allows (the server answers 413, not 400)."""


ImageLike = Union[str, Path, Image.Image, np.ndarray, torch.Tensor]


def open_image(source: str | Path | bytes, decode: bool = True, *, name: str | None = None,
               max_pixels: int | None = None) -> Image.Image:
    """Open a file or in-memory bytes; decode every pixel (EXIF orientation applied) unless ``decode`` is False.

    With ``decode=False`` only the header is read: format, mode and size (before any EXIF rotation).
    ``max_pixels`` refuses larger images from the header, before a byte is decompressed. ``name`` is
    what errors call the source (default: the path, or "image" for bytes).
    """
    fp: str | Path | BinaryIO
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "image"
        if not source:
            raise PSPNetError(f"{label}: empty (0 bytes)")
        fp = io.BytesIO(source)
    else:
        fp = require_file(source, "an image file")
        label = name or str(fp)
    try:
        img = Image.open(fp, formats=FORMATS)
    except PermissionError as err:
        raise PSPNetError(f"{label}: cannot read the file (permission denied)") from err
    except UnidentifiedImageError as err:
        raise PSPNetError(f"{label}: not an image file PIL can decode as one of the accepted formats "
                          f"({FORMATS_TEXT})") from err
    except Image.DecompressionBombError as err:  # a small file that would decode to gigabytes
        raise PSPNetError(f"{label}: refused, too many pixels to decode safely ({err})") from err
    except Exception as err:  # noqa: BLE001 - a malformed header can raise anything inside a plugin
        raise PSPNetError(f"{label}: corrupt image header ({type(err).__name__}: {err})") from err
    w, h = img.size
    if w < 1 or h < 1:
        raise PSPNetError(f"{label}: image has no pixels ({w}x{h})")
    if max_pixels is not None and w * h > max_pixels:
        raise ImageTooLarge(f"{label}: image of {w}x{h} ({w * h / 1e6:.1f} MP) is above the limit of "
                            f"{max_pixels / 1e6:.1f} MP; downscale it first")
    return load_image(img, label) if decode else img


def load_image(img: Image.Image, name: str) -> Image.Image:
    """Decode the pixels of an image opened by ``open_image(..., decode=False)`` and apply EXIF orientation."""
    try:
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
    except Exception as err:  # noqa: BLE001 - truncated data, malformed EXIF, plugin bugs: all the file's fault
        fmt = f"{img.format}: " if img.format else ""
        raise PSPNetError(f"{name}: corrupt or truncated image ({fmt}{type(err).__name__}: {err})") from err
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Grayscale, RGBA (on black), palette, CMYK and 16-bit images become 8-bit RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0).clip(min=0)
        hi = arr.max() if arr.max() > 0 else 1.0
        img = Image.fromarray((arr / hi * 255).round().astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGB", img.size)
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img if img.mode == "RGB" else img.convert("RGB")


def decode_rgb(source: str | Path | bytes | Image.Image, name: str | None = None,
               max_pixels: int | None = None) -> Image.Image:
    """8-bit RGB, upright, from a path, bytes, or an image opened with ``decode=False``."""
    if isinstance(source, Image.Image):
        label = name or "image"
        img = load_image(source, label)
    else:
        label = name or (str(source) if isinstance(source, (str, Path)) else "image")
        img = open_image(source, name=label, max_pixels=max_pixels)
    try:
        return to_rgb(img)
    except Exception as err:  # noqa: BLE001 - an odd mode a plugin produced
        raise PSPNetError(f"{label}: cannot convert {img.mode} pixels to RGB ({type(err).__name__}: {err})") from err


def read_image(path: str | Path) -> Image.Image:
    """An 8-bit RGB image, upright, from any accepted format and mode."""
    return decode_rgb(path)


def read_mask(path: str | Path) -> np.ndarray:
    """A label map as a 2-D integer array: palette PNGs give their indices, 16-bit stays 16-bit."""
    path = Path(path)
    img = open_image(path)
    if img.mode in ("RGB", "RGBA"):
        return np.asarray(img.convert("RGB"))  # colour-coded mask: the dataset maps colours to ids
    if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
        raise PSPNetError(f"{path}: mask mode {img.mode} is not a label map (expected L, P, 16-bit or RGB)")
    return np.asarray(img)


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, in a stable order."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def spread_evenly(items: list[Path], count: int) -> list[Path]:
    """``count`` of ``items`` (all if fewer), first and last included: calibration frames from across a folder."""
    return [items[round(i * (len(items) - 1) / max(count - 1, 1))] for i in range(min(count, len(items)))]


def to_pil(image: ImageLike) -> Image.Image:
    """PIL RGB from a path, PIL image, HWC/HW uint8 array or CHW tensor (uint8 or float 0..1)."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim != 3 or t.shape[0] not in (1, 3, 4):
            raise PSPNetError(f"image tensor must be (C, H, W) with C in 1, 3, 4, got {tuple(t.shape)}")
        if t.is_floating_point():
            t = (t.clamp(0, 1) * 255).round()
        image = t.to(torch.uint8).permute(1, 2, 0).numpy()
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
            raise PSPNetError(f"image array must be (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
        if arr.dtype != np.uint8:
            if np.issubdtype(arr.dtype, np.floating):
                arr = (np.clip(arr, 0, 1) * 255).round()
            arr = arr.astype(np.uint8)
        return to_rgb(Image.fromarray(arr))
    raise PSPNetError(f"unsupported image type {type(image).__name__}")


def to_input(images: Sequence[Image.Image], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Same-sized RGB images as the model's input: (N, 3, H, W) float32, scaled to 0..1, then (x - mean) / std."""
    arr = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
