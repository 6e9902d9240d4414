"""Reading images and masks with errors that name the file and the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pspnet.errors import PSPNetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


def open_image(path: str | Path, decode: bool = True) -> Image.Image:
    """Open an image, decoding every pixel unless ``decode`` is False (then only the header is read).

    Every way this can fail is a ``PSPNetError`` naming the file and the problem.
    """
    path = Path(path)
    if not path.exists():
        raise PSPNetError(f"{path}: no such file")
    if path.is_dir():
        raise PSPNetError(f"{path}: is a directory, expected an image file")
    if path.stat().st_size == 0:
        raise PSPNetError(f"{path}: file is empty (0 bytes)")
    try:
        img = Image.open(path)
        if decode:
            img.load()
    except PermissionError as err:
        raise PSPNetError(f"{path}: cannot read the file (permission denied)") from err
    except UnidentifiedImageError as err:
        raise PSPNetError(f"{path}: not an image file PIL can decode") from err
    except Image.DecompressionBombError as err:  # a small file that would decode to gigabytes
        raise PSPNetError(f"{path}: refused, too many pixels to decode safely ({err})") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise PSPNetError(f"{path}: corrupt or truncated image ({err})") from err
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Grayscale, RGBA (on black), palette, CMYK and 16-bit images become 8-bit RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.max() > 0 else 1.0
        img = Image.fromarray((arr / hi * 255).round().astype(np.uint8))
    if img.mode == "RGBA" or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGB", img.size)
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")


def read_image(path: str | Path) -> Image.Image:
    """An 8-bit RGB image from any common format and mode."""
    return to_rgb(open_image(path))


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
