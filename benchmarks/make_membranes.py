"""A synthetic thin-structure binary dataset: electron-microscopy-like frames of cells and their membranes.

Grayscale images of textured cells (Voronoi cells warped by a smooth field, so borders curve) separated
by thin dark membranes 2-5 px wide, with dark organelles inside the cells as distractors, blur and
noise; masks are 0 on membranes and 255 inside cells, as in public EM membrane sets. Use it to measure a
recipe for thin, rare structures without shipping real data:

    python benchmarks/make_membranes.py DIR --train 20 --val 10
    pspnet check-data --dataset folder --data-root DIR

writes ``DIR/{train,val}/{images,masks}/frame_NNN.png`` (never over existing files).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Noise with features about ``size / cells`` px wide, in [-1, 1] (bicubic upsampling of a coarse grid)."""
    coarse = rng.uniform(-1, 1, (cells + 1, cells + 1)).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC)
    return np.clip(np.asarray(img), -1, 1)


def make_frame(rng: np.random.Generator, size: int = 512, cell_px: float = 42.0, noise: float = 9.0,
               blur: float = 1.2) -> tuple[np.ndarray, np.ndarray]:
    """One (image, mask) pair, both (size, size) uint8; mask 0 = membrane, 255 = cell. ``noise`` (grey levels)
    and ``blur`` (Gaussian radius, px) make it harder."""
    grid = np.arange(-cell_px / 2, size + cell_px, cell_px)
    seeds = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    seeds = (seeds + rng.uniform(-0.4, 0.4, seeds.shape) * cell_px).astype(np.float32)  # jittered grid: no slivers
    n = len(seeds)
    y, x = np.mgrid[:size, :size].astype(np.float32)
    warp = cell_px * 0.3
    yw = y + warp * _smooth_noise(rng, size, max(2, size // 96))
    xw = x + warp * _smooth_noise(rng, size, max(2, size // 96))
    # the nearest and second-nearest seed of every pixel: a border where the two are nearly equally far
    d1 = np.full((size, size), np.inf, np.float32)
    d2 = np.full((size, size), np.inf, np.float32)
    owner = np.zeros((size, size), np.int32)
    for i, (sy, sx) in enumerate(seeds):
        d = np.sqrt((yw - sy) ** 2 + (xw - sx) ** 2)
        closer = d < d1
        d2 = np.where(closer, d1, np.minimum(d2, d))
        owner = np.where(closer, i, owner)
        d1 = np.where(closer, d, d1)
    width = 3.5 + 1.5 * _smooth_noise(rng, size, max(2, size // 64))  # d2 - d1 < w: lines about w px wide, 2-5
    membrane = (d2 - d1) < width
    mask = np.where(membrane, 0, 255).astype(np.uint8)

    tone = rng.uniform(0.55, 0.8, n).astype(np.float32)[owner]  # each cell its own grey
    texture = 0.06 * _smooth_noise(rng, size, size // 8) + 0.04 * _smooth_noise(rng, size, size // 3)
    img = tone + texture
    organelles = rng.uniform(0, size, (n * 2, 2))  # dark round blobs inside cells: not membranes
    for oy, ox in organelles:
        r = rng.uniform(2.5, 6.0)
        blob = (y - oy) ** 2 + (x - ox) ** 2 < r * r
        img = np.where(blob & ~membrane, img - rng.uniform(0.15, 0.3), img)
    img = np.where(membrane, 0.22 + 0.08 * _smooth_noise(rng, size, size // 16), img)
    img8 = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(blur))
    arr = np.asarray(img8).astype(np.float32) + rng.normal(0, noise, (size, size))
    return np.clip(arr, 0, 255).astype(np.uint8), mask


def write_dataset(out: str | Path, train: int = 20, val: int = 10, size: int = 512, seed: int = 0,
                  noise: float = 9.0, blur: float = 1.2) -> Path:
    """``out/{train,val}/{images,masks}/frame_NNN.png``; refuses to write over existing files."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for sub in ("images", "masks"):
            (out / split / sub).mkdir(parents=True, exist_ok=True)
        for k in range(count):
            image, mask = make_frame(rng, size, noise=noise, blur=blur)
            for sub, arr in (("images", image), ("masks", mask)):
                path = out / split / sub / f"frame_{k:03d}.png"
                if path.exists():
                    raise SystemExit(f"{path}: already exists; choose an empty folder")
                Image.fromarray(arr).save(path)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--train", type=int, default=20)
    p.add_argument("--val", type=int, default=10)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=9.0, help="std of the added Gaussian noise, grey levels")
    p.add_argument("--blur", type=float, default=1.2, help="Gaussian blur radius in px (larger: fuzzier membranes)")
    a = p.parse_args()
    write_dataset(a.out, a.train, a.val, a.size, a.seed, a.noise, a.blur)
    masks = [np.asarray(Image.open(m)) for m in sorted((a.out / "train" / "masks").glob("*.png"))]
    share = float(np.mean([(m == 0).mean() for m in masks])) if masks else 0.0
    print(f"wrote {a.train} train + {a.val} val frames of {a.size}x{a.size} to {a.out}; membranes {100 * share:.1f}% "
          "of the training pixels")


if __name__ == "__main__":
    main()
