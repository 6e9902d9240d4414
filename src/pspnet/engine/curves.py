"""Training curves as a picture: train loss (raw and smoothed) and val mIoU against iterations."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def plot_history(history: Sequence[dict], path: str | Path, title: str = "Training",
                 stage_starts: Sequence[int] = ()) -> Path:
    """Draw the records that ``engine.train`` keeps (``loss`` and ``val_miou`` entries) to a PNG.

    ``stage_starts`` marks where a staged recipe switched to its next run (a dashed line each).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    train = [h for h in history if "loss" in h]
    val = [h for h in history if "val_miou" in h]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if train:
        its = np.array([h["iteration"] for h in train])
        loss = np.array([h["loss"] for h in train])
        ax.plot(its, loss, color="#9bb7e0", lw=0.8, label="train loss")
        k = max(1, len(loss) // 30)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(its[k - 1:], smooth, color="#1f5fbf", lw=2, label=f"train loss (mean of {k})")
    for i, start in enumerate(stage_starts):
        ax.axvline(start, color="grey", ls="--", lw=1)
        ax.annotate(f"stage {i + 2}", (start, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                    textcoords="offset points", fontsize=8, color="grey")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (main + 0.4 aux)")
    ax.grid(alpha=0.3)
    lines, labels = ax.get_legend_handles_labels()
    if val:
        ax2 = ax.twinx()
        ax2.plot([h["iteration"] for h in val], [100 * h["val_miou"] for h in val], "o-", color="#d8553b",
                 label="val mIoU")
        for i, h in enumerate(val):  # alternate above/below so dense evaluations stay readable
            ax2.annotate(f"{100 * h['val_miou']:.1f}", (h["iteration"], 100 * h["val_miou"]), fontsize=7,
                         textcoords="offset points", xytext=(0, 6 if i % 2 == 0 else -12), ha="center")
        ax2.set_ylabel("val mIoU (%)")
        ax2.set_ylim(0, 100)
        l2, lb2 = ax2.get_legend_handles_labels()
        lines, labels = lines + l2, labels + lb2
    ax.legend(lines, labels, loc="center right")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
