"""Dataset evaluation: confusion matrix over every pixel, then metrics, JSON and pictures.

For two classes the foreground probability is also binned into a precision-recall curve, and a
``threshold`` on it can replace the argmax (argmax is the same as threshold 0.5). Per video sequence
(``evaluate_by_sequence``): one drive that dominates a split (CamVid val is a single drive) hides how a model does
on another one, so each sequence gets its own confusion matrix; the overall metrics are their sum.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

from pspnet.data.datasets import SEQUENCE_PATTERN, SegmentationDataset, sequence_of
from pspnet.device import autocast
from pspnet.engine.metrics import ConfusionMatrix, Metrics, PRCurve, SequenceMetrics
from pspnet.errors import PSPNetError
from pspnet.files import save_figure
from pspnet.inference.ort import OrtModel, uses_onnxruntime
from pspnet.inference.predict import check_mode, predict_probs, threshold_prediction  # noqa: F401 (engine's API too)
from pspnet.inference.segmenter import default_net, path_name
from pspnet.model.bundled import load


def evaluate(model: nn.Module, dataset: Dataset, num_classes: int, mode: str = "whole",
             crop: Sequence[int] | None = None, scales: Sequence[float] = (1.0,), flip: bool = False,
             device: torch.device | str = "cpu", precision: str = "fp32", progress: bool = True,
             class_names: Sequence[str] | None = None, threshold: float | None = None,
             positive: int = 1, sequences: Sequence[str] | None = None) -> Metrics:
    """mIoU, Dice etc. of ``model`` on ``dataset`` (normalised images, masks with 255 = ignore), one image at
    a time. Two classes: ``threshold`` on class ``positive``'s probability replaces the argmax, and the
    metrics carry the precision-recall curve of class ``positive``. ``sequences``: the sequence of each item;
    the metrics then also carry one set per sequence (``metrics.per_sequence``), from the same pass."""
    if threshold is not None and num_classes != 2:
        raise PSPNetError(f"a foreground threshold needs two classes, the model has {num_classes}")
    if num_classes == 2 and positive not in (0, 1):
        raise PSPNetError(f"positive must be class 0 or 1, got {positive}")
    if sequences is not None and len(sequences) != len(dataset):
        raise PSPNetError(f"{len(sequences)} sequence names for {len(dataset)} items")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes)
    by_sequence: dict[str, ConfusionMatrix] = {}
    curve = PRCurve(positive) if num_classes == 2 else None
    align = getattr(model, "align_corners", True)
    try:
        for i in tqdm(range(len(dataset)), desc="eval", disable=not progress, leave=False):
            image, mask = dataset[i]
            with autocast(device, precision):
                probs = predict_probs(model, image[None].to(device), num_classes, mode, crop, scales, flip, align)
            pred = probs.argmax(1) if threshold is None else threshold_prediction(probs, threshold, positive)
            cm.update(pred[0], mask)
            if sequences is not None:
                by_sequence.setdefault(sequences[i], ConfusionMatrix(num_classes)).update(pred[0], mask)
            if curve is not None:
                curve.update(probs[0, positive], mask)
    finally:
        model.train(was_training)
    names = class_names or getattr(dataset, "class_names", None)
    metrics = cm.compute(names)
    metrics.threshold = threshold
    metrics.pr_curve = curve.compute() if curve is not None else None
    if sequences is not None:
        frames = dict(sorted(Counter(sequences).items()))
        per = {s: by_sequence[s].compute(names) for s in frames}
        metrics.per_sequence = SequenceMetrics(replace(metrics), per, frames)  # a copy: no cycle
    return metrics


def evaluate_by_sequence(model: nn.Module, dataset: SegmentationDataset | Subset, num_classes: int,
                         pattern: str = SEQUENCE_PATTERN, device: torch.device | str = "cpu",
                         precision: str = "fp32", progress: bool = True,
                         class_names: Sequence[str] | None = None, **evaluate_options) -> SequenceMetrics:
    """``evaluate`` with one set of metrics per sequence (file-name prefix ``pattern``, see
    ``datasets.sequence_of``) beside the overall ones. ``dataset`` may be a ``Subset`` of a segmentation dataset
    (``--limit``); ``evaluate_options`` are ``evaluate``'s mode, crop, scales, flip, threshold and positive."""
    metrics = evaluate(model, dataset, num_classes, device=device, precision=precision, progress=progress,
                       class_names=class_names or _base_dataset(dataset).class_names,
                       sequences=sequence_names(dataset, pattern), **evaluate_options)
    return metrics.per_sequence


def _base_dataset(dataset: SegmentationDataset | Subset) -> SegmentationDataset:
    return dataset.dataset if isinstance(dataset, Subset) else dataset


def sequence_names(dataset: SegmentationDataset | Subset, pattern: str = SEQUENCE_PATTERN) -> list[str]:
    """The sequence of each item of ``dataset`` (a segmentation dataset or a ``Subset`` of one)."""
    base = _base_dataset(dataset)
    indices = list(dataset.indices) if isinstance(dataset, Subset) else range(len(base))
    return [sequence_of(base.pairs[i][0], pattern) for i in indices]


def evaluate_model(model: "str | Path | nn.Module", dataset: str, data_root: str | Path, split: str = "val",
                   mode: str = "whole", crop: Sequence[int] | None = None, scales: Sequence[float] = (1.0,),
                   flip: bool = False, device: str = "auto", precision: str = "auto",
                   out_dir: str | Path | None = None, limit: int | None = None, progress: bool = True,
                   backend: str = "torch", threshold: float | None = None, positive: int = 1,
                   eval_scale: float | None = None, by_sequence: bool = False, **dataset_options) -> Metrics:
    """Evaluate a model (a PSPNet, a weights path, a bundled name or an .onnx file) on a dataset split; with
    ``out_dir`` also write metrics.json, per_class_iou.png, confusion_matrix.png (and pr_curve.png for two
    classes) there. It runs what ``pspnet predict`` runs (``default_net``: ``precision="auto"`` may put the head in
    int8; ``"fp32"`` gives the plain model's labels). ``threshold``/``positive``: see ``evaluate``. ``eval_scale``
    overrides the model's own when ``model`` is a name or path the torch backend loads. ``by_sequence``: the
    metrics also carry one set per video sequence (file-name prefix, the dataset option ``sequence_pattern``) in
    ``metrics.per_sequence``.

    ``backend="onnxruntime"`` measures the deployed ONNX graph itself (an .onnx file: export others first, e.g.
    with ``pspnet.export.onnx.cached_onnx``)."""
    from torch.utils.data import Subset

    from pspnet.data import build_dataset
    from pspnet.data.transforms import eval_transforms
    from pspnet.device import resolve_device

    check_mode(mode, crop)
    if crop is not None and len(crop) == 1:
        crop = (crop[0], crop[0])
    dev = resolve_device("cpu" if uses_onnxruntime(model, backend) else device)
    if uses_onnxruntime(model, backend):
        model = net = OrtModel(model)
        prec, path = "fp32", "onnxruntime fp32"
    else:
        if isinstance(model, (str, Path)):
            model = load(model, eval_scale)
        # what predict and serve run (BN folded, fused, bf16/int8 where chosen), so the score is theirs
        net, prec, int8_layers = default_net(model.to(dev), dev, precision)
        path = path_name(net, model, prec, int8_layers)
    ds = build_dataset(dataset, data_root, split, eval_transforms(model.config["mean"], model.config["std"]),
                       **dataset_options)
    if ds.num_classes != model.num_classes:
        raise PSPNetError(f"the model predicts {model.num_classes} classes but {dataset} at {data_root} has "
                          f"{ds.num_classes}")
    names = ds.class_names
    subset = Subset(ds, range(min(limit, len(ds)))) if limit else ds
    pattern = dataset_options.get("sequence_pattern", SEQUENCE_PATTERN)
    sequences = sequence_names(subset, pattern) if by_sequence else None
    metrics = evaluate(net, subset, ds.num_classes, mode, crop, scales, flip, dev, prec, progress, names,
                       threshold, positive, sequences)
    metrics.path = path
    if out_dir is not None:
        write_report(metrics, out_dir)
    return metrics


def write_report(metrics: Metrics, out_dir: str | Path) -> list[Path]:
    """metrics.json, per-class IoU/Dice/precision/recall bars, a row-normalised confusion-matrix heat map,
    and for two classes the precision-recall curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pspnet.engine.curves import plot_pr_curve

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics.to_dict(), indent=2))

    names = metrics.class_names
    series = [("IoU", metrics.iou, "#3b7dd8"), ("Dice", metrics.dice, "#2ca25f"),
              ("precision", metrics.precision, "#e6a23c"), ("recall", metrics.recall, "#9467bd")]
    series = [s for s in series if s[1]]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 4.2))
    x = np.arange(len(names))
    for k, (label, values, colour) in enumerate(series):
        pos = x - 0.4 + width * (k + 0.5)
        bars = ax.bar(pos, [100 * v if v is not None else 0.0 for v in values], width, color=colour, label=label)
        if len(names) <= 12 or label == "IoU":
            for b, v in zip(bars, values):
                ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 1, "absent" if v is None else f"{100 * v:.1f}",
                        ha="center", fontsize=6 if len(series) > 1 else 7, rotation=90 if len(series) > 2 else 0)
    ax.axhline(100 * metrics.miou, color="#d8553b", ls="--", lw=1, label=f"mIoU {100 * metrics.miou:.1f}")
    if metrics.dice:
        ax.axhline(100 * metrics.mdice, color="#2ca25f", ls=":", lw=1, label=f"mDice {100 * metrics.mdice:.1f}")
    ax.set_xticks(x, names, rotation=45 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    ax.set_ylabel("%")
    ax.set_ylim(0, 118)
    ax.legend(loc="upper center", ncol=len(series) + 2, fontsize=7, frameon=False)
    ax.set_title("Per-class IoU, Dice, precision and recall" if len(series) > 1 else "Per-class IoU")
    fig.tight_layout()
    save_figure(fig, out / "per_class_iou.png")

    cm = np.asarray(metrics.confusion_matrix, dtype=np.float64)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = max(5, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if len(names) <= 30:
        for i in range(len(names)):
            for j in range(len(names)):
                if norm[i, j] >= 0.01:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title("Confusion matrix (rows normalised)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    save_figure(fig, out / "confusion_matrix.png")
    files = [out / "metrics.json", out / "per_class_iou.png", out / "confusion_matrix.png"]
    if metrics.per_sequence is not None:
        files.append(plot_sequences(metrics.per_sequence, out / "per_sequence_iou.png"))
    if metrics.pr_curve is not None:
        files.append(plot_pr_curve(metrics.pr_curve, out / "pr_curve.png", names[metrics.pr_curve["positive"]],
                                   metrics.threshold))
    return files


def plot_sequences(result: SequenceMetrics, path: Path) -> Path:
    """Class IoU per sequence as a heat map (sequences as rows, the overall last, mIoU as the first column): where
    one drive falls behind the others, and in which classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = result.overall.class_names
    rows = [*result.sequences.items(), ("overall", result.overall)]
    grid = np.array([[m.miou] + [np.nan if v is None else v for v in m.iou] for _, m in rows]) * 100
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names) + 3), 0.45 * len(rows) + 1.8))
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    if len(names) <= 30:
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                ax.text(j, i, "abs" if np.isnan(grid[i, j]) else f"{grid[i, j]:.1f}", ha="center", va="center",
                        fontsize=6, fontweight="bold" if j == 0 else "normal")
        ax.set_xticks(range(len(names) + 1), ["mIoU", *names], rotation=45, ha="right", fontsize=7)
    labels = [f"{s} ({result.frames[s]})" for s in result.sequences] + [f"overall ({sum(result.frames.values())})"]
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.axhline(len(rows) - 1.5, color="black", lw=0.8)
    ax.axvline(0.5, color="black", lw=0.8)
    ax.set_title("IoU % per sequence (frames)")
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    save_figure(fig, path)
    return path
