"""Is a set of teachers stronger than the model it would teach? Held-out mIoU of their averaged probabilities.

    python benchmarks/teacher_ensembles.py runs/xtail/lite2 runs/xtail/distill_short [--precision bf16]
        [--eval-scale 1.0] [--data-root ../shared/datasets/camvid]

Distillation (``teachers:``) trains on the average of the teachers' softmax, so that average, read as labels, is
the most a distilled stage can hope to pass on. Each model (a weights file or run folder) reads every frame of
the tail split's held-out part (drive 0006R0 and 0001TP's later third, which no tail-split run trains on:
benchmarks/camvid_tail_split.py), the softmaxes are averaged, and the argmax is scored per sequence and per class.
Give one model to score it alone on the same path. A run folder stands for its ``last.safetensors``, the weights a
stage ends with and that ``teachers:`` and the release use: its ``best.safetensors`` was picked by this very
held-out score, so scoring it would report a chosen checkpoint as the run's result.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pspnet.data import build_dataset
from pspnet.data.transforms import eval_transforms
from pspnet.engine.evaluate import evaluate, sequence_names
from pspnet.model.pspnet import PSPNet

SPLIT = {"holdout_sequences": ["0006R0"], "holdout_tails": {"0001TP": 0.33}, "holdout_from": "train+val"}


def end_of_run(path: str) -> Path:
    """A weights file as given; a run folder's ``last.safetensors``, never the held-out-picked ``best``."""
    if not Path(path).is_dir():
        return Path(path)
    last = Path(path) / "last.safetensors"
    if not last.is_file():
        raise SystemExit(f"{path}: a run folder without last.safetensors (the run has not finished)")
    return last


class Averaged(nn.Module):
    """Log of the models' averaged softmax: its argmax is the ensemble's label."""

    def __init__(self, models: list[PSPNet]):
        super().__init__()
        self.models = nn.ModuleList(models)
        self.align_corners = models[0].align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([F.softmax(m(x).float(), 1) for m in self.models]).mean(0).clamp_min(1e-8).log()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="weights files or run folders")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--eval-scale", type=float, default=1.0, help="every model reads frames enlarged by this")
    parser.add_argument("--data-root", default="../shared/datasets/camvid")
    args = parser.parse_args()
    models = [PSPNet.from_pretrained(end_of_run(m), aux=False, eval_scale=args.eval_scale).eval()
              for m in args.models]
    first = models[0]
    held = build_dataset("camvid", args.data_root, "holdout", eval_transforms(first.config["mean"], first.config["std"]),
                         **SPLIT)
    metrics = evaluate(Averaged(models), held, held.num_classes, precision=args.precision, progress=True,
                       class_names=first.class_names, sequences=sequence_names(held))
    print(f"{' + '.join(args.models)} ({args.precision}, {args.eval_scale:g}x): mIoU {100 * metrics.miou:.2f}  "
          + "  ".join(f"{s} {100 * m.miou:.2f}" for s, m in metrics.per_sequence.sequences.items()))
    print("per class: " + ", ".join(f"{n} {'-' if v is None else f'{100 * v:.1f}'}"
                                    for n, v in zip(first.class_names, metrics.iou)))


if __name__ == "__main__":
    main()
