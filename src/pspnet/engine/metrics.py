"""Confusion-matrix metrics: mIoU, mDice, mAcc, aAcc, per-class IoU, Dice (F1), precision and recall;
and, for two classes, a precision-recall curve over the foreground probability.

A class that appears neither in the ground truth nor in the predictions of the whole dataset has
no defined IoU or Dice: it is reported as absent (None) and left out of the means, not counted as 0 or NaN.
Per-class accuracy is the class's recall (kept under both names).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

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


class PRCurve:
    """Precision and recall of one class at every threshold on its probability, from two histograms
    (pixels of the class and the rest per probability bin), so memory stays ``2 x bins`` for any dataset."""

    def __init__(self, positive: int = 1, bins: int = 1000, ignore_index: int = 255):
        self.positive, self.bins, self.ignore_index = positive, bins, ignore_index
        self.pos = torch.zeros(bins + 1, dtype=torch.int64)
        self.neg = torch.zeros(bins + 1, dtype=torch.int64)

    def update(self, prob: torch.Tensor, target: torch.Tensor) -> None:
        """``prob``: the class's probability per pixel; ``target``: class ids of the same shape."""
        prob, target = prob.flatten().float().cpu(), target.flatten().cpu()
        keep = target != self.ignore_index
        idx = (prob[keep].clamp(0, 1) * self.bins).floor().long()
        is_pos = target[keep] == self.positive
        self.pos += torch.bincount(idx[is_pos], minlength=self.bins + 1)
        self.neg += torch.bincount(idx[~is_pos], minlength=self.bins + 1)

    def compute(self, points: int = 101) -> dict[str, Any]:
        """Thresholds k/bins, precision and recall at each (pixel predicted positive when prob >= threshold),
        average precision (the step integral of precision over recall), and the threshold with the best F1."""
        tp = self.pos.flip(0).cumsum(0).flip(0).double()  # pixels of the class at or above each bin
        fp = self.neg.flip(0).cumsum(0).flip(0).double()
        total = tp[0].item()
        recall = tp / max(total, 1)
        precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp(min=1), torch.ones_like(tp))
        f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                         torch.zeros_like(tp))
        thresholds = torch.arange(self.bins + 1, dtype=torch.float64) / self.bins
        # recall falls as the threshold rises: AP = sum of precision x the recall it adds
        ap = float((precision[:-1] * (recall[:-1] - recall[1:])).sum() + precision[-1] * recall[-1])
        best = int(f1.argmax())
        keep = np.unique(np.linspace(0, self.bins, points).round().astype(int))
        return {"positive": self.positive, "thresholds": thresholds[keep].tolist(),
                "precision": precision[keep].tolist(), "recall": recall[keep].tolist(),
                "average_precision": ap if total else None, "best_f1": float(f1[best]),
                "best_threshold": float(thresholds[best])}


def _ratio(num: float, den: float, undefined: bool) -> float | None:
    """num/den; None for a class absent from truth and predictions, 0 where only the denominator is 0."""
    if undefined:
        return None
    return float(num / den) if den > 0 else 0.0


@dataclass
class Metrics:
    miou: float
    macc: float
    aacc: float
    iou: list[float | None]
    acc: list[float | None]
    class_names: list[str]
    confusion_matrix: list[list[int]]
    dice: list[float | None] = field(default_factory=list)
    precision: list[float | None] = field(default_factory=list)
    recall: list[float | None] = field(default_factory=list)
    mdice: float = 0.0
    threshold: float | None = None  # two classes: the foreground threshold the predictions used
    pr_curve: dict[str, Any] | None = None  # two classes: PRCurve.compute()
    path: str | None = None  # how the predictions were computed, e.g. "bf16 + int8 cls.0" (evaluate_model)
    per_sequence: SequenceMetrics | None = None  # evaluate(sequences=...): one set per video sequence

    @classmethod
    def from_matrix(cls, matrix: np.ndarray, class_names: Sequence[str] | None = None) -> "Metrics":
        matrix = np.asarray(matrix, dtype=np.float64)
        n = matrix.shape[0]
        tp = np.diag(matrix)
        gt = matrix.sum(1)
        pred = matrix.sum(0)
        union = gt + pred - tp
        absent = union == 0
        iou = [float(tp[i] / union[i]) if union[i] > 0 else None for i in range(n)]
        acc = [float(tp[i] / gt[i]) if gt[i] > 0 else None for i in range(n)]
        dice = [_ratio(2 * tp[i], gt[i] + pred[i], absent[i]) for i in range(n)]
        precision = [_ratio(tp[i], pred[i], absent[i]) for i in range(n)]
        present_iou = [v for v in iou if v is not None]
        present_acc = [v for v in acc if v is not None]
        present_dice = [v for v in dice if v is not None]
        return cls(
            miou=float(np.mean(present_iou)) if present_iou else 0.0,
            macc=float(np.mean(present_acc)) if present_acc else 0.0,
            aacc=float(tp.sum() / matrix.sum()) if matrix.sum() else 0.0,
            iou=iou, acc=acc,
            class_names=list(class_names) if class_names else default_class_names(n),
            confusion_matrix=matrix.astype(np.int64).tolist(),
            dice=dice, precision=precision, recall=list(acc),
            mdice=float(np.mean(present_dice)) if present_dice else 0.0,
        )

    def to_dict(self) -> dict:
        per_class = {name: {"iou": self.iou[i], "acc": self.acc[i], "dice": self.dice[i],
                            "precision": self.precision[i], "recall": self.recall[i]}
                     for i, name in enumerate(self.class_names)}
        out = {"miou": self.miou, "mdice": self.mdice, "macc": self.macc, "aacc": self.aacc, "per_class": per_class,
               "class_names": self.class_names, "confusion_matrix": self.confusion_matrix}
        if self.threshold is not None:
            out["threshold"] = self.threshold
        if self.pr_curve is not None:
            out["pr_curve"] = self.pr_curve
        if self.path is not None:
            out["path"] = self.path
        if self.per_sequence is not None:
            out["sequences"] = self.per_sequence.to_dict()["sequences"]
        return out

    def table(self) -> str:
        """A plain-text per-class table for the terminal."""
        fmt = lambda v: "absent" if v is None else f"{100 * v:6.2f}"  # noqa: E731
        width = max(len(n) for n in self.class_names)
        lines = [f"{'class':<{width}}    IoU    Dice    Prec  Recall"]
        lines += [f"{n:<{width}} {fmt(i):>6}  {fmt(d):>6}  {fmt(p):>6}  {fmt(r):>6}"
                  for n, i, d, p, r in zip(self.class_names, self.iou, self.dice, self.precision, self.recall)]
        lines.append(f"mIoU {100 * self.miou:.2f}  mDice {100 * self.mdice:.2f}  mAcc {100 * self.macc:.2f}  "
                     f"aAcc {100 * self.aacc:.2f}" + (f"  ({self.path})" if self.path else ""))
        if self.pr_curve is not None:
            c = self.pr_curve
            name = self.class_names[c["positive"]]
            used = f"threshold {self.threshold:.2f}" if self.threshold is not None else "argmax"
            ap = "n/a" if c["average_precision"] is None else f"{c['average_precision']:.3f}"
            lines.append(f"{name} (predicted where its probability >= threshold): {used}; average precision {ap}; "
                         f"best Dice/F1 {c['best_f1']:.3f} at threshold {c['best_threshold']:.2f}")
        if self.per_sequence is not None:
            lines += ["", "IoU % per sequence:", self.per_sequence.table()]
        return "\n".join(lines)


@dataclass
class SequenceMetrics:
    """Overall metrics plus one ``Metrics`` per sequence and its frame count."""

    overall: Metrics
    sequences: dict[str, Metrics]
    frames: dict[str, int]

    def to_dict(self) -> dict:
        return {**self.overall.to_dict(),
                "sequences": {s: {"frames": self.frames[s], **m.to_dict()} for s, m in self.sequences.items()}}

    def table(self) -> str:
        """Sequences as rows, classes as columns (IoU %), overall last; 'abs' where a class is absent."""
        names = self.overall.class_names
        short = [n[:6] for n in names]
        width = max([len("overall")] + [len(s) for s in self.sequences])
        head = f"{'sequence':<{width}} frames   mIoU " + " ".join(f"{n:>6}" for n in short)
        rows = [head]
        for label, m, n in [*((s, m, self.frames[s]) for s, m in self.sequences.items()),
                            ("overall", self.overall, sum(self.frames.values()))]:
            cells = " ".join("   abs" if v is None else f"{100 * v:6.1f}" for v in m.iou)
            rows.append(f"{label:<{width}} {n:>6} {100 * m.miou:6.2f} {cells}")
        return "\n".join(rows)
