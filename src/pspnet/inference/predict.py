"""Whole-image, sliding-window, multi-scale and flip inference on one normalised image.

Sliding windows follow semseg: crops of the training size with stride 2/3 of the crop, the image
padded with zeros (the mean colour after normalisation) when smaller than the crop. Probabilities
are accumulated in place, so memory stays at one (classes, H, W) buffer plus one crop.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pspnet.errors import PSPNetError


def _forward(model: nn.Module, x: torch.Tensor, flip: bool) -> torch.Tensor:
    probs = model(x).float().softmax(1)
    if flip:
        probs = probs + model(x.flip(-1)).float().softmax(1).flip(-1)
    return probs


def sliding_window(model: nn.Module, x: torch.Tensor, num_classes: int, crop: Sequence[int],
                   stride: Sequence[int] | None = None, flip: bool = False) -> torch.Tensor:
    """Class probabilities (N, C, H, W) from overlapping crops."""
    n, _, h, w = x.shape
    ch, cw = crop
    sh, sw = stride or (math.ceil(ch * 2 / 3), math.ceil(cw * 2 / 3))
    ph, pw = max(ch - h, 0), max(cw - w, 0)
    if ph or pw:
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    H, W = x.shape[-2:]
    out = torch.zeros(n, num_classes, H, W, device=x.device)
    count = torch.zeros(1, 1, H, W, device=x.device)
    rows = max(math.ceil((H - ch) / sh), 0) + 1
    cols = max(math.ceil((W - cw) / sw), 0) + 1
    for r in range(rows):
        for c in range(cols):
            y0, x0 = min(r * sh, H - ch), min(c * sw, W - cw)
            out[..., y0:y0 + ch, x0:x0 + cw] += _forward(model, x[..., y0:y0 + ch, x0:x0 + cw], flip)
            count[..., y0:y0 + ch, x0:x0 + cw] += 1
    out /= count
    return out[..., ph // 2:ph // 2 + h, pw // 2:pw // 2 + w]


# Whole-image inference on more pixels than this is refused (activations would need tens of GB), and so is
# a sliding window larger than it; slide mode holds one window at a time, so its images may be larger.
MAX_WHOLE_IMAGE_PIXELS = 16_000_000


def check_mode(mode: str, crop: Sequence[int] | None) -> None:
    """The inference mode and its crop, checked once for every entry point (CLI, Segmenter, evaluate, predict_probs)."""
    if mode not in ("whole", "slide"):
        raise PSPNetError(f"mode must be 'whole' or 'slide', got {mode!r}")
    if mode == "slide" and (not crop or any(int(c) < 1 for c in crop)):
        raise PSPNetError(f"--mode slide needs --crop H W: it needs a crop size > 0, e.g. the training crop; got {crop}")
    if crop and int(crop[0]) * int(crop[-1]) > MAX_WHOLE_IMAGE_PIXELS:  # eval's --crop S means S x S
        raise PSPNetError(f"--crop {' '.join(map(str, crop))}: a window above {MAX_WHOLE_IMAGE_PIXELS / 1e6:.0f} MP "
                          "would need more memory than whole-image inference is allowed (e.g. --crop 512 512)")


@torch.no_grad()
def predict_probs(model: nn.Module, x: torch.Tensor, num_classes: int, mode: str = "whole",
                  crop: Sequence[int] | None = None, scales: Sequence[float] = (1.0,), flip: bool = False,
                  align_corners: bool = True) -> torch.Tensor:
    """Averaged class probabilities (N, C, H, W) for normalised images ``x`` at their own size.

    ``mode`` is ``whole`` (one forward pass per scale) or ``slide`` (crops of size ``crop``).
    """
    check_mode(mode, crop)
    h, w = x.shape[-2:]
    total = None
    for s in scales:
        xs = x if s == 1.0 else F.interpolate(x, (max(1, round(h * s)), max(1, round(w * s))), mode="bilinear",
                                              align_corners=align_corners)
        probs = sliding_window(model, xs, num_classes, crop, flip=flip) if mode == "slide" else _forward(model, xs, flip)
        if s != 1.0:
            probs = F.interpolate(probs, (h, w), mode="bilinear", align_corners=align_corners)
        total = probs if total is None else total.add_(probs)
    return total / (len(scales) * (2 if flip else 1))


def threshold_prediction(probs: torch.Tensor, threshold: float, positive: int = 1) -> torch.Tensor:
    """Two-class labels from probabilities (N, 2, H, W): ``positive`` where its probability >= ``threshold``."""
    if probs.shape[1] != 2:
        raise PSPNetError(f"a foreground threshold needs a two-class model, this one has {probs.shape[1]} classes")
    if not 0.0 <= threshold <= 1.0:
        raise PSPNetError(f"threshold must be a probability in [0, 1], got {threshold}")
    fg = probs[:, positive] >= threshold
    return torch.where(fg, positive, 1 - positive)
