"""Per-sequence evaluation: mIoU of every video drive of a split beside the overall number.

One drive that dominates a split (CamVid val is a single drive) hides how a model does on another one, so
the report gives each sequence its own confusion matrix; the overall metrics are their sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from pspnet.data.datasets import SEQUENCE_PATTERN, SegmentationDataset, group_by_sequence
from pspnet.engine.evaluate import evaluate
from pspnet.engine.metrics import Metrics


@dataclass
class SequenceMetrics:
    """Overall metrics plus one ``Metrics`` per sequence and its frame count."""

    overall: Metrics
    sequences: dict[str, Metrics]
    frames: dict[str, int]

    @classmethod
    def from_matrices(cls, matrices: dict[str, np.ndarray], frames: dict[str, int],
                      class_names: Sequence[str] | None = None) -> "SequenceMetrics":
        per = {s: Metrics.from_matrix(m, class_names) for s, m in matrices.items()}
        overall = Metrics.from_matrix(sum(np.asarray(m, dtype=np.int64) for m in matrices.values()), class_names)
        return cls(overall, per, dict(frames))

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


def evaluate_by_sequence(model: nn.Module, dataset: SegmentationDataset | Subset, num_classes: int,
                         pattern: str = SEQUENCE_PATTERN, device: torch.device | str = "cpu",
                         precision: str = "fp32", progress: bool = True,
                         class_names: Sequence[str] | None = None, **evaluate_options) -> SequenceMetrics:
    """``evaluate`` run sequence by sequence (file-name prefix ``pattern``, see ``datasets.sequence_of``).

    ``dataset`` may be a ``Subset`` of a segmentation dataset (``--limit``); ``evaluate_options`` are
    ``evaluate``'s mode, crop, scales and flip.
    """
    base, indices = (dataset.dataset, list(dataset.indices)) if isinstance(dataset, Subset) else (
        dataset, list(range(len(dataset))))
    chosen = set(indices)
    groups = {s: [i for i in idx if i in chosen] for s, idx in group_by_sequence(base, pattern).items()}
    groups = {s: idx for s, idx in groups.items() if idx}
    names = class_names or base.class_names
    matrices = {}
    for sequence, idx in groups.items():
        metrics = evaluate(model, Subset(base, idx), num_classes, device=device, precision=precision,
                           progress=progress, class_names=names, **evaluate_options)
        matrices[sequence] = np.asarray(metrics.confusion_matrix, dtype=np.int64)
    return SequenceMetrics.from_matrices(matrices, {s: len(i) for s, i in groups.items()}, names)
