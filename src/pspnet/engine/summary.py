"""What a run is about to do (the start-of-run summary) and whether it has collapsed to one class."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import torch

from pspnet.errors import PSPNetError

SHARE_SAMPLE = 500  # masks read for the class pixel shares when no class weights need them all


def frame_pixels(dataset: Any, indices: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
    """Labelled pixels per class in each of the frames ``indices`` (frames x classes), and each mask's size."""
    n = dataset.num_classes
    rows, sizes = [], []
    for i in indices:
        mask = dataset.load_mask(int(i))
        rows.append(np.bincount(mask[mask != 255].ravel(), minlength=n)[:n])
        sizes.append(mask.size)
    return np.array(rows, dtype=np.int64).reshape(-1, n), np.array(sizes, dtype=np.int64)


def pixel_counts(dataset: Any, limit: int | None = None,
                 frames: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Per class: labelled pixels, pixels of the images the class appears in, and how many masks were read.

    ``limit`` reads that many masks spread evenly over the dataset instead of all of them; ``frames`` is
    ``frame_pixels`` of the whole dataset, already read, so no mask is read again.
    """
    if frames is None:
        size = len(dataset)
        indices = range(size) if limit is None or size <= limit else np.linspace(0, size - 1, limit).round().astype(int)
        frames = frame_pixels(dataset, indices)
    counts, sizes = frames
    return counts.sum(axis=0).astype(float), ((counts > 0) * sizes[:, None]).sum(axis=0).astype(float), len(counts)


def loss_weights(spec: str | list[float] | None, dataset: Any,
                 counts: tuple[np.ndarray, np.ndarray, int] | None = None) -> torch.Tensor | None:
    """Per-class loss weights; median frequency balancing (SegNet) lifts rare classes such as poles.

    The frequency of a class is its pixel count over the pixels of the images it appears in.
    """
    if spec is None:
        return None
    n = dataset.num_classes
    if isinstance(spec, (list, tuple)):
        if len(spec) != n:
            raise PSPNetError(f"class_weights has {len(spec)} values for {n} classes; give one per class")
        return torch.tensor(spec, dtype=torch.float32)
    if spec not in ("median_frequency", "sqrt_median_frequency"):
        raise PSPNetError(f"class_weights must be a list, 'median_frequency' or 'sqrt_median_frequency', got {spec!r}")
    pixels, image_pixels, _ = counts if counts is not None else pixel_counts(dataset)
    freq = pixels / np.maximum(image_pixels, 1)
    weights = np.where(freq > 0, np.median(freq[freq > 0]) / np.maximum(freq, 1e-12), 0.0)
    if spec == "sqrt_median_frequency":
        weights = np.sqrt(weights)
    return torch.tensor(weights, dtype=torch.float32)


def format_summary(rows: Sequence[tuple[str, str]], class_names: Sequence[str], shares: np.ndarray,
                   weights: torch.Tensor | None, masks_read: int, total: int) -> str:
    """The summary as aligned text: key-value rows, then one line per class (pixel share, loss weight)."""
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    sampled = "" if masks_read >= total else f", from {masks_read} of {total} masks"
    lines.append(f"{'classes':<{width}}  {len(class_names)} (pixel share in train{sampled}; loss weight)")
    name_width = max(len(n) for n in class_names)
    for i, name in enumerate(class_names):
        weight = "1" if weights is None else f"{float(weights[i]):.3g}"
        lines.append(f"  {name:<{name_width}}  {100 * shares[i]:6.2f}%  x{weight}")
    return "\n".join(lines)


def collapse_warning(confusion: Sequence[Sequence[int]], class_names: Sequence[str], iteration: int,
                     threshold: float = 0.95) -> str | None:
    """A warning when the model predicts (almost) only one class on the val set, naming the usual fixes.

    Such a run's mIoU sits at the majority class's share over the class count and its pixel accuracy at
    the majority's share: numbers that look like slow progress but are a collapse.
    """
    matrix = np.asarray(confusion, dtype=np.float64)
    total = matrix.sum()
    if total == 0:
        return None
    predicted = matrix.sum(0) / total
    top = int(predicted.argmax())
    if predicted[top] < threshold:
        return None
    truth_share = matrix.sum(1)[top] / total
    return (f"iteration {iteration}: the model predicts '{class_names[top]}' for {100 * predicted[top]:.1f}% of val "
            f"pixels (its true share is {100 * truth_share:.1f}%): training has collapsed to one class. Likely fixes: "
            "class weights (--set class_weights=sqrt_median_frequency), a lower --lr or --warmup-iters, an ImageNet "
            "backbone (--backbone-weights FILE or the default model), a Dice loss for thin or rare classes (--loss ce_dice), "
            "or the stride-4 skip decoder (--set model_kwargs='{decoder_channels: 128}'); small custom data: "
            "--config binary")
