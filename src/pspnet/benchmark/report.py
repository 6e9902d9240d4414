"""Reporting a benchmark result: the terminal table, the JSON file and the PNG chart.

Everything here reads only the dict that ``pspnet.benchmark.run.run_benchmark`` returns, so a
saved JSON result can be printed or plotted again later (``format_table(json.load(f))``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pspnet.benchmark.run import MIN_AGREEMENT
from pspnet.files import atomic_write_text, save_figure


def format_table(result: dict[str, Any]) -> str:
    """The terminal report: machine, matmul peaks, one line per case, then accuracy, training, scaling, memory."""
    m = result["machine"]
    peaks = result["matmul_peak_gflops"]
    lines = [f"{m['cpu']} | {m['cores_available']} cores, {m['torch_threads']} threads | flags: "
             f"{' '.join(m['cpu_flags']) or '-'} | torch {m['torch']}"
             + (f" | GPU {m['gpu']}" if m.get("gpu") else " | no GPU"),
             "matmul peak (GFLOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items() if v),
             ""]
    w = max([42] + [len(r["name"]) for r in result["rows"]])
    head = (f"{'case':<{w}} {'size':>9} {'median ms':>10} {'spread':>7} {'img/s':>7} {'GFLOP':>7} {'GFLOP/s':>8} "
            f"{'%peak':>6} {'mem MB':>7} {'agree':>7} {'speedup':>7}")
    lines += [head, "-" * len(head)]
    for r in result["rows"]:
        if r.get("error"):
            lines.append(f"{r['name']:<{w}} failed: {r['error']}")
            continue
        f = lambda v, fmt: (format(v, fmt) if isinstance(v, (int, float)) else "-")  # noqa: E731
        lines.append(f"{r['name']:<{w}} {r['size'][0]:>4}x{r['size'][1]:<4} {f(r.get('median_ms'), '10.1f')} "
                     f"{f(r.get('spread_pct'), '6.0f')}% {f(r.get('images_per_s'), '7.2f')} {f(r.get('gflop'), '7.1f')} "
                     f"{f(r.get('gflops'), '8.1f')} {f(r.get('pct_of_peak'), '6.0f')} {f(r.get('peak_mb'), '7.0f')} "
                     f"{f(100 * r['agreement'] if 'agreement' in r else None, '6.2f')}"
                     f"{'%' if 'agreement' in r else ' '} {f(r.get('speedup_vs_fp32_eager'), '6.2f')}"
                     f"{'x' if 'speedup_vs_fp32_eager' in r else ' '}"
                     + {True: "", False: " not correct", None: ""}[r.get("correct")])
    lines.append("agree: argmax agreement with the same model's fp32 eager on this frame; speedup: vs that case")
    if "val" in result:
        v = result["val"]
        lines += ["", f"CamVid val, {v['frames']} frames at {v['size'][0]}x{v['size'][1]}, vs fp32 eager:"]
        lines += [f"  {r['name']:<{w}} agreement {100 * r['agreement']:6.2f}%  mIoU {100 * r['miou']:5.2f}% "
                  f"({100 * r['miou_change']:+.2f})" for r in v["rows"]]
    lines.append(f"correct = >= {100 * MIN_AGREEMENT:.1f}% agreement, judged by {result['summary']['correct_by']}")
    for key, s in result["summary"].items():
        if key == "correct_by":
            continue
        lines.append(f"best correct path ({key}): {s['best_path']}: {s['speedup_vs_fp32_eager']:.2f}x fp32 eager, "
                     f"{s['images_per_s']:.2f} img/s, agreement {100 * s['agreement']:.2f}%"
                     + (f"; ORT fp32 {s['ort_speedup']:.2f}x" if "ort_speedup" in s else ""))
    if "training" in result:
        t = result["training"]
        amp = t.get("amp")
        lines.append(f"training step (batch {t['batch']}, {t['size'][0]}x{t['size'][1]}): fp32 "
                     f"{t['fp32']['images_per_s']:.2f} img/s" + (f", AMP {amp} {t[amp]['images_per_s']:.2f} img/s "
                                                                 f"({t['amp_speedup']:.2f}x)" if amp else ""))
    if "scaling" in result:
        s = result["scaling"]
        lines.append(f"scaling ({s['model']}, {s['path']}): "
                     + ", ".join(f"{r['size'][0]}px {r['median_ms']:.0f} ms" for r in s["by_size"]))
        lines.append("  batch: " + ", ".join(f"{r['batch']}: {r['median_ms']:.0f} ms ({r['images_per_s']:.2f} img/s)"
                                             for r in s["by_batch"]))
    if "sliding_window" in result:
        s = result["sliding_window"]
        if "error" in s:
            lines.append(f"sliding window: failed ({s['error']})")
        else:
            lines.append(f"sliding window {s['image_size'][1]}x{s['image_size'][0]} ({s['model']}, crop "
                         f"{s['crop'][0]}x{s['crop'][1]}, {s['path']}): {s['seconds']:.1f} s, peak RSS "
                         f"{s['peak_rss_mb']:.0f} MB")
    lines.append(f"total {result.get('seconds', 0):.0f} s; load average at start {m.get('load_average')}")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """A PNG: latency per case (bars, spread as error bars) and, if measured, latency vs size and batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "median_ms" in r]
    ncols = 3 if "scaling" in result else 1
    fig, axes = plt.subplots(1, ncols, figsize=(7 + 4.5 * (ncols - 1), max(4.0, 0.35 * len(rows) + 1.5)),
                             gridspec_kw={"width_ratios": [2] + [1] * (ncols - 1)})
    axes = np.atleast_1d(axes)
    colors = {"ours": "#d8553b", "fast": "#3b7dd8", "bundled": "#4caf50", "peer": "#999999"}
    ax = axes[0]
    names = [r["name"] for r in rows][::-1]
    med = np.array([r["median_ms"] for r in rows][::-1])
    lo = med - np.array([r["min_ms"] for r in rows][::-1])
    hi = np.array([r["max_ms"] for r in rows][::-1]) - med
    ax.barh(range(len(rows)), med, xerr=[lo, hi], color=[colors.get(r["group"], "#777") for r in rows][::-1])
    ax.set_yticks(range(len(rows)), names, fontsize=7)
    ax.set_xlabel("median latency (ms), bars: min..max")
    ax.set_title(f"{result['machine']['cpu'][:40]}, {result['machine']['torch_threads']} threads", fontsize=8)
    if "scaling" in result:
        s = result["scaling"]
        axes[1].plot([r["size"][0] for r in s["by_size"]], [r["median_ms"] for r in s["by_size"]], "o-")
        axes[1].set_xlabel("input size (px, square, batch 1)")
        axes[1].set_ylabel("latency (ms)")
        axes[1].set_title(f"{s['model']} {s['path']}", fontsize=8)
        axes[2].plot([r["batch"] for r in s["by_batch"]], [r["images_per_s"] for r in s["by_batch"]], "o-")
        axes[2].set_xlabel(f"batch ({s['by_batch'][0]['size'][0]}x{s['by_batch'][0]['size'][1]})")
        axes[2].set_ylabel("images/s")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    """The whole result as indented JSON; values JSON has no type for (paths) as strings."""
    atomic_write_text(path, json.dumps(result, indent=2, default=str))
    return Path(path)
