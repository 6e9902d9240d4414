"""Pictures of curves: training (train loss, val mIoU and mDice against iterations) and the
precision-recall curve of a two-class model's foreground."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from pspnet.files import save_figure


def plot_history(history: Sequence[dict], path: str | Path, title: str = "Training",
                 stage_starts: Sequence[int] = ()) -> Path:
    """Draw the records that ``engine.train`` keeps (``loss``, ``val_miou`` and, when present,
    ``val_mdice`` and per-sequence ``val_miou_by_sequence`` entries) to a PNG.

    ``stage_starts`` marks where a staged recipe switched to its next run (a dashed line each).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    train = [h for h in history if "loss" in h]
    val = [h for h in history if "val_miou" in h]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if train:
        its = np.array([h["iteration"] for h in train])
        loss = np.array([h["loss"] for h in train])
        # markers where the points are few: a run shorter than log_every has one record, and a one-point line
        # draws nothing
        k = len(loss) // 30  # the smoothing window, when there are enough points to smooth
        ax.plot(its, loss, color="#9bb7e0" if k > 1 else "#1f5fbf", lw=0.8, label="train loss",
                marker="o" if len(loss) < 10 else None, ms=4)
        if k > 1:
            smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
            ax.plot(its[k - 1:], smooth, color="#1f5fbf", lw=2, label=f"train loss (mean of {k})")
    for i, start in enumerate(stage_starts):
        ax.axvline(start, color="grey", ls="--", lw=1)
        ax.annotate(f"stage {i + 2}", (start, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                    textcoords="offset points", fontsize=8, color="grey")
    ax.set_xlabel("iteration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole iterations, also on short runs
    if train and len({h["iteration"] for h in history}) == 1:  # a lone record: matplotlib would span it by +-0.2
        ax.set_xlim(history[0]["iteration"] - 1, history[0]["iteration"] + 1)
    ax.set_ylabel("training loss (every term)")
    ax.grid(alpha=0.3)
    lines, labels = ax.get_legend_handles_labels()
    if val:
        ax2 = ax.twinx()
        ax2.plot([h["iteration"] for h in val], [100 * h["val_miou"] for h in val], "o-", color="#d8553b",
                 label="val mIoU")
        for i, h in enumerate(val):  # alternate above/below so dense evaluations stay readable
            ax2.annotate(f"{100 * h['val_miou']:.1f}", (h["iteration"], 100 * h["val_miou"]), fontsize=7,
                         textcoords="offset points", xytext=(0, 6 if i % 2 == 0 else -12), ha="center")
        sequences = sorted({s for h in val for s in h.get("val_miou_by_sequence", {})})
        for s, colour in zip(sequences, ("#8c564b", "#9467bd", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")):
            each = [h for h in val if s in h.get("val_miou_by_sequence", {})]
            ax2.plot([h["iteration"] for h in each], [100 * h["val_miou_by_sequence"][s] for h in each], ".:",
                     color=colour, lw=1, label=f"val mIoU {s}")
        dice = [h for h in val if h.get("val_mdice") is not None]
        if dice:
            ax2.plot([h["iteration"] for h in dice], [100 * h["val_mdice"] for h in dice], "s--", color="#2ca25f",
                     ms=4, label="val mDice")
        ax2.set_ylabel("val mIoU / mDice (%)" if dice else "val mIoU (%)")
        ax2.set_ylim(0, 100)
        l2, lb2 = ax2.get_legend_handles_labels()
        lines, labels = lines + l2, labels + lb2
    # below the axes: inside, any corner can hide a curve or an evaluation's label
    ax.legend(lines, labels, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=min(len(labels), 5), fontsize=8,
              frameon=False)
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_pr_curve(curve: dict, path: str | Path, class_name: str = "foreground",
                  threshold: float | None = None) -> Path:
    """The precision-recall curve of ``metrics.PRCurve.compute()`` with its best-F1 point and the threshold
    in use (argmax is 0.5 for two classes) marked, iso-F1 lines for reading Dice off the picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rec, prec, thr = (np.asarray(curve[k]) for k in ("recall", "precision", "thresholds"))
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for f in (0.2, 0.4, 0.6, 0.8):  # points of equal F1 (= Dice for two classes)
        r = np.linspace(f / (2 - f) + 1e-6, 1, 100)
        ax.plot(r, f * r / (2 * r - f), color="#cccccc", lw=0.8)
        ax.annotate(f"F1 {f}", (1, f / (2 - f)), fontsize=7, color="#999999", xytext=(-28, 3),
                    textcoords="offset points")
    ap = curve.get("average_precision")
    ax.plot(rec, prec, color="#1f5fbf", lw=2, label=f"{class_name}" + (f" (AP {ap:.3f})" if ap is not None else ""))
    best_t = curve["best_threshold"]
    k = int(np.abs(thr - best_t).argmin())
    ax.plot(rec[k], prec[k], "o", color="#2ca25f", label=f"best F1 {curve['best_f1']:.3f} at threshold {best_t:.2f}")
    used = 0.5 if threshold is None else threshold
    k = int(np.abs(thr - used).argmin())
    ax.plot(rec[k], prec[k], "s", color="#d8553b",
            label=f"threshold {used:.2f}" + (" (argmax)" if threshold is None else ""))
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel(f"recall ({class_name})")
    ax.set_ylabel(f"precision ({class_name})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(f"Precision-recall over the threshold on p({class_name})")
    fig.tight_layout()
    return save_figure(fig, path)
