"""Is a new release of the bundled model at least as fast? Its default path side by side with another weights file.

    python benchmarks/release_speed.py --against OLD.safetensors [--rounds 30]

Times ``pspnet.Segmenter(...)(frame)`` with precision ``auto`` (what ``pspnet predict`` and ``serve`` run: BN
folded, channels_last, native bf16 where the CPU has it) on the bundled sample frame (360x480), for the bundled
weights and for ``--against`` (e.g. the previous release from git history), plus torchvision's
LRASPP-MobileNetV3-Large in fp32 eager (random init: only its speed matters), the real-time model a user would try
instead. Calls are interleaved round by round, so drift on a shared machine hits every model alike; the CPU's
flags and the thread count are printed with the figures.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from pspnet.benchmark.measure import timed
from pspnet.device import cpu_flags
from pspnet.inference.fast import FastPath, fast_model
from pspnet.inference.segmenter import Segmenter
from pspnet.model.bundled import SAMPLE_IMAGE
from pspnet.model.pspnet import PSPNet


def lraspp() -> Callable[[np.ndarray], object]:
    """torchvision's LRASPP-MobileNetV3-Large, fp32 eager, on the same frame (ImageNet-normalised, batch 1)."""
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=11).eval()
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)

    def run(frame: np.ndarray) -> object:
        x = (torch.from_numpy(frame).permute(2, 0, 1).float() / 255 - mean) / std
        with torch.inference_mode():
            return net(x[None])["out"].argmax(1)

    return run


def previous_path(weights: Path) -> Callable[[np.ndarray], object]:
    """``weights`` as Segmenter ran them before 2026-11-30: timm's stride-2 convs padding their input with
    F.pad (same labels, bit for bit; tests/test_export.py checks the two paths agree)."""
    seg = Segmenter(weights, precision="auto")
    seg._net = fast_model(seg.model, FastPath(seg.precision, seg.precision, fold_bn=True, channels_last=True,
                                              fp32_stem=True), seg.device)
    return seg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", type=Path, required=True, help="the other weights file (.safetensors)")
    parser.add_argument("--rounds", type=int, default=30, help="timed calls of each model (after 3 warm-up rounds)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--previous-path", action="store_true",
                        help="also time --against through the default path as it was before 2026-11-30 "
                             "(timm's TF 'same' padding: F.pad before each stride-2 conv)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")

    frame = np.array(Image.open(SAMPLE_IMAGE).convert("RGB"))  # writable: torch.from_numpy warns otherwise
    models: dict[str, Callable[[np.ndarray], object]] = {
        "bundled (this checkout)": Segmenter("camvid", precision="auto"),
        f"{args.against.name}": Segmenter(PSPNet.from_pretrained(args.against), precision="auto"),
        "torchvision LRASPP-MobileNetV3 fp32": lraspp(),
    }
    if args.previous_path:
        models[f"{args.against.name}, the previous default path"] = previous_path(args.against)
    times: dict[str, list[float]] = {name: [] for name in models}
    for i in range(args.rounds + 3):
        for name, call in models.items():
            ms = 1000 * timed(lambda: call(frame), cpu)
            if i >= 3:
                times[name].append(ms)

    wanted = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8"}
    flags = " ".join(sorted(cpu_flags() & wanted)) or "none of avx2/avx512/amx"
    precision = models["bundled (this checkout)"].precision
    print(f"{args.threads} threads; CPU flags: {flags}; Segmenter precision: {precision}; "
          f"frame {frame.shape[0]}x{frame.shape[1]}")
    base = statistics.median(times["bundled (this checkout)"])
    for name, ms in times.items():
        med = statistics.median(ms)
        p90 = sorted(ms)[int(0.9 * (len(ms) - 1))]
        print(f"  {name:40s} median {med:6.1f} ms  p90 {p90:6.1f} ms  {1000 / med:5.1f} frames/s  "
              f"{med / base:4.2f}x the bundled time")


if __name__ == "__main__":
    main()
