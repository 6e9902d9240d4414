"""Confusion-matrix metrics: mIoU, mAcc, aAcc and per-class IoU/accuracy.

A class that appears neither in the ground truth nor in the predictions of the whole dataset has
no defined IoU: it is reported as absent (None) and left out of the means, not counted as 0 or NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from pspnet.meta import default_class_names


class ConfusionMatrix:
    """Accumulates ``matrix[gt, pred]`` pixel counts over a dataset, ignoring one label."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        pred, target = pred.flatten().cpu().long(), target.flatten().cpu().long()
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        if target.numel() and (target.max() >= self.num_classes or target.min() < 0):
            raise ValueError(f"target labels {target.unique().tolist()} exceed {self.num_classes} classes")
        self.matrix += torch.bincount(target * self.num_classes + pred, minlength=self.num_classes**2).view(
            self.num_classes, self.num_classes)

    def compute(self, class_names: Sequence[str] | None = None) -> "Metrics":
        return Metrics.from_matrix(self.matrix.numpy(), class_names)


@dataclass
class Metrics:
    miou: float
    macc: float
    aacc: float
    iou: list[float | None]
    acc: list[float | None]
    class_names: list[str]
    confusion_matrix: list[list[int]]

    @classmethod
    def from_matrix(cls, matrix: np.ndarray, class_names: Sequence[str] | None = None) -> "Metrics":
        matrix = np.asarray(matrix, dtype=np.float64)
        n = matrix.shape[0]
        tp = np.diag(matrix)
        gt = matrix.sum(1)
        pred = matrix.sum(0)
        union = gt + pred - tp
        iou = [float(tp[i] / union[i]) if union[i] > 0 else None for i in range(n)]
        acc = [float(tp[i] / gt[i]) if gt[i] > 0 else None for i in range(n)]
        present_iou = [v for v in iou if v is not None]
        present_acc = [v for v in acc if v is not None]
        return cls(
            miou=float(np.mean(present_iou)) if present_iou else 0.0,
            macc=float(np.mean(present_acc)) if present_acc else 0.0,
            aacc=float(tp.sum() / matrix.sum()) if matrix.sum() else 0.0,
            iou=iou, acc=acc,
            class_names=list(class_names) if class_names else default_class_names(n),
            confusion_matrix=matrix.astype(np.int64).tolist(),
        )

    def to_dict(self) -> dict:
        return {
            "miou": self.miou, "macc": self.macc, "aacc": self.aacc,
            "per_class": {name: {"iou": i, "acc": a} for name, i, a in zip(self.class_names, self.iou, self.acc)},
            "class_names": self.class_names, "confusion_matrix": self.confusion_matrix,
        }

    def table(self) -> str:
        """A plain-text per-class table for the terminal."""
        fmt = lambda v: "absent" if v is None else f"{100 * v:6.2f}"  # noqa: E731
        width = max(len(n) for n in self.class_names)
        lines = [f"{'class':<{width}}    IoU     Acc"]
        lines += [f"{n:<{width}} {fmt(i):>6}  {fmt(a):>6}" for n, i, a in zip(self.class_names, self.iou, self.acc)]
        lines.append(f"mIoU {100 * self.miou:.2f}  mAcc {100 * self.macc:.2f}  aAcc {100 * self.aacc:.2f}")
        return "\n".join(lines)
