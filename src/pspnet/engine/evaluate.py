"""Dataset evaluation: confusion matrix over every pixel, then metrics, JSON and pictures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from pspnet.device import autocast
from pspnet.engine.metrics import ConfusionMatrix, Metrics
from pspnet.errors import PSPNetError
from pspnet.inference.ort import OrtModel, uses_onnxruntime
from pspnet.inference.predict import predict_probs
from pspnet.model.bundled import load


def evaluate(model: nn.Module, dataset: Dataset, num_classes: int, mode: str = "whole",
             crop: Sequence[int] | None = None, scales: Sequence[float] = (1.0,), flip: bool = False,
             device: torch.device | str = "cpu", precision: str = "fp32", progress: bool = True,
             class_names: Sequence[str] | None = None) -> Metrics:
    """mIoU etc. of ``model`` on ``dataset`` (normalised images, masks with 255 = ignore), one image at a time."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes)
    align = getattr(model, "align_corners", True)
    try:
        for i in tqdm(range(len(dataset)), desc="eval", disable=not progress, leave=False):
            image, mask = dataset[i]
            with autocast(device, precision):
                probs = predict_probs(model, image[None].to(device), num_classes, mode, crop, scales, flip, align)
            cm.update(probs.argmax(1)[0], mask)
    finally:
        model.train(was_training)
    return cm.compute(class_names or getattr(dataset, "class_names", None))


def evaluate_model(model: "str | Path | nn.Module", dataset: str, data_root: str | Path, split: str = "val",
                   mode: str = "whole", crop: Sequence[int] | None = None, scales: Sequence[float] = (1.0,),
                   flip: bool = False, device: str = "auto", precision: str = "auto",
                   out_dir: str | Path | None = None, limit: int | None = None, progress: bool = True,
                   backend: str = "torch", **dataset_options) -> Metrics:
    """Evaluate a model (a PSPNet, a weights path, a bundled name or an .onnx file) on a dataset split; with
    ``out_dir`` also write metrics.json, per_class_iou.png and confusion_matrix.png there.

    ``backend="onnxruntime"`` measures the deployed ONNX graph itself (an .onnx file: export others first, e.g.
    with ``pspnet.export.onnx.cached_onnx``)."""
    from torch.utils.data import Subset

    from pspnet.data import build_dataset
    from pspnet.data.transforms import eval_transforms
    from pspnet.device import resolve_device, resolve_precision

    if mode not in ("whole", "slide"):
        raise PSPNetError(f"mode must be 'whole' or 'slide', got {mode!r}")
    if mode == "slide" and not crop:
        raise PSPNetError("slide mode needs a crop size (--crop H W), e.g. the training crop")
    if crop is not None and len(crop) == 1:
        crop = (crop[0], crop[0])
    if uses_onnxruntime(model, backend):
        model, device, precision = OrtModel(model), "cpu", "fp32"
    elif isinstance(model, (str, Path)):
        model = load(model)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    ds = build_dataset(dataset, data_root, split, eval_transforms(model.config["mean"], model.config["std"]),
                       **dataset_options)
    if ds.num_classes != model.num_classes:
        raise PSPNetError(f"the model predicts {model.num_classes} classes but {dataset} at {data_root} has "
                          f"{ds.num_classes}")
    names = ds.class_names
    subset = Subset(ds, range(min(limit, len(ds)))) if limit else ds
    metrics = evaluate(model.to(dev), subset, ds.num_classes, mode, crop, scales, flip, dev, prec, progress, names)
    if out_dir is not None:
        write_report(metrics, out_dir)
    return metrics


def write_report(metrics: Metrics, out_dir: str | Path) -> list[Path]:
    """metrics.json, a per-class IoU bar chart and a row-normalised confusion-matrix heat map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics.to_dict(), indent=2))

    names = metrics.class_names
    ious = [100 * v if v is not None else 0.0 for v in metrics.iou]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names) + 2), 4))
    bars = ax.bar(range(len(names)), ious, color="#3b7dd8")
    for b, v in zip(bars, metrics.iou):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 1, "absent" if v is None else f"{100 * v:.1f}",
                ha="center", fontsize=7)
    ax.axhline(100 * metrics.miou, color="#d8553b", ls="--", label=f"mIoU {100 * metrics.miou:.1f}")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 105)
    ax.legend(loc="upper right")
    ax.set_title("Per-class IoU")
    fig.tight_layout()
    fig.savefig(out / "per_class_iou.png", dpi=120)
    plt.close(fig)

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
    fig.savefig(out / "confusion_matrix.png", dpi=120)
    plt.close(fig)
    return [out / "metrics.json", out / "per_class_iou.png", out / "confusion_matrix.png"]
