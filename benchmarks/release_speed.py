"""Is a new release of the bundled model at least as fast? Its default path side by side with the previous one.

    git worktree add ../pspnet-previous PREVIOUS_COMMIT     # the previous release: its code and its weights
    python benchmarks/release_speed.py --against-checkout ../pspnet-previous [--against OLD.safetensors ...]

Times ``pspnet.Segmenter(...)(frame)`` with precision ``auto`` (what ``pspnet predict`` and ``serve`` run: BN
folded, channels_last, native bf16 where the CPU has it, the head's calibrated convs in int8 where it has AVX512-VNNI
and no AMX) on this checkout's bundled sample frame (360x480; an older checkout may not name it), for

- the bundled model of this checkout;
- ``--against-checkout DIR``: the bundled model of another checkout, run by that checkout's code (``DIR/src`` first
  on the Python path), so a change to the path is timed as users had it, not as this checkout would run old weights;
- ``--against FILE``: another weights file through this checkout's path;
- torchvision's LRASPP-MobileNetV3-Large in fp32 eager (random init: only its speed matters), the real-time model a
  user would try instead.

Each model runs in a process of its own, as ``pspnet predict`` runs it: in a process that has run other models,
glibc has raised its mmap threshold and large buffers no longer page-fault, which changes the ranking (a model
whose path allocates a fresh 30 MB buffer per frame measured 0.82x in a shared process and 1.1x alone). The
processes are interleaved round by round, so drift on a shared machine hits every model alike; the figure per
model is the median over its processes of each process's median call. The CPU's flags and the thread count are
printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

WANTED_FLAGS = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8"}


def lraspp() -> Callable[[object], object]:
    """torchvision's LRASPP-MobileNetV3-Large, fp32 eager, on the same frame (ImageNet-normalised, batch 1)."""
    import torch
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=11).eval()
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)

    def run(frame: object) -> object:
        x = (torch.from_numpy(frame).permute(2, 0, 1).float() / 255 - mean) / std
        with torch.inference_mode():
            return net(x[None])["out"].argmax(1)

    return run


def worker(spec: str, calls: int, threads: int, frame_path: Path, precision: str) -> None:
    """Time one model (``bundled``, ``lraspp`` or ``weights:PATH``) on ``frame_path`` in this process; print one JSON
    line. Uses only what every release has (``Segmenter``): it also runs under an older checkout."""
    import numpy as np
    import torch
    from PIL import Image

    import pspnet
    from pspnet.inference.segmenter import Segmenter

    torch.set_num_threads(threads)
    frame = np.array(Image.open(frame_path).convert("RGB"))  # writable: torch.from_numpy warns otherwise
    if spec == "lraspp":
        call, precision = lraspp(), "fp32"
    else:
        seg = Segmenter("camvid" if spec == "bundled" else spec.removeprefix("weights:"), precision=precision)
        call, precision = seg, seg.precision
        if getattr(seg, "int8_layers", None):  # releases before int8 have no such attribute
            precision += " + int8 " + ", ".join(seg.int8_layers)
    for _ in range(3):
        call(frame)
    ms = []
    for _ in range(calls):
        start = time.perf_counter()
        call(frame)
        ms.append(1000 * (time.perf_counter() - start))
    print(json.dumps({"ms": statistics.median(ms), "p90": sorted(ms)[int(0.9 * (len(ms) - 1))],
                      "precision": precision, "pspnet": str(Path(pspnet.__file__).parent)}))


def run_process(spec: str, calls: int, threads: int, src: Path | None, precision: str) -> dict:
    # this checkout's sample frame, for every model
    from pspnet.model.bundled import SAMPLE_IMAGE

    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, __file__, "--worker", spec, "--calls", str(calls), "--threads", str(threads),
                          "--precision", precision,
                          "--frame", str(SAMPLE_IMAGE)], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{spec} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against-checkout", type=Path, help="another checkout (e.g. a git worktree of the previous "
                        "release): its bundled model, run by its own code")
    parser.add_argument("--against", type=Path, action="append", default=[],
                        help="another weights file or model folder, run by this checkout; may be repeated")
    parser.add_argument("--processes", type=int, default=4, help="processes per model, interleaved (default 4)")
    parser.add_argument("--calls", type=int, default=30, help="timed calls per process, after 3 warm-up calls")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="the pspnet models' precision: fp32 times the path `auto` takes on a CPU without native "
                             "bf16 (run with ONEDNN_MAX_CPU_ISA=AVX2 to also use only AVX2 kernels)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--frame", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.calls, args.threads, args.frame, args.precision)

    this_src = Path(__file__).resolve().parents[1] / "src"
    models: dict[str, tuple[str, Path | None]] = {"bundled (this checkout)": ("bundled", this_src)}
    if args.against_checkout:
        src = args.against_checkout.resolve() / "src"
        if not (src / "pspnet").is_dir():
            raise SystemExit(f"{args.against_checkout}: no src/pspnet in it (a checkout of pspnet is needed)")
        models[f"bundled ({args.against_checkout.name})"] = ("bundled", src)
    for weights in args.against:
        if not weights.exists():
            raise SystemExit(f"{weights}: no such file or folder")
        models[str(weights)] = (f"weights:{weights.resolve()}", this_src)
    models["torchvision LRASPP-MobileNetV3 fp32"] = ("lraspp", None)

    results: dict[str, list[dict]] = {name: [] for name in models}
    for round_ in range(args.processes):
        for name, (spec, src) in models.items():
            results[name].append(run_process(spec, args.calls, args.threads, src, args.precision))
        print(f"round {round_ + 1}/{args.processes}: " + ", ".join(
            f"{name} {runs[-1]['ms']:.1f} ms" for name, runs in results.items()), flush=True)

    from pspnet.device import cpu_flags

    flags = " ".join(sorted(cpu_flags() & WANTED_FLAGS)) or "none of avx2/avx512/amx"
    print(f"{args.threads} threads; CPU flags: {flags}; frame 360x480; {args.processes} processes per model, "
          f"{args.calls} calls each")
    base = statistics.median(r["ms"] for r in results["bundled (this checkout)"])
    for name, runs in results.items():
        med = statistics.median(r["ms"] for r in runs)
        per_process = ", ".join(f"{r['ms']:.1f}" for r in runs)
        print(f"  {name:40s} median {med:6.1f} ms ({per_process}; p90 {statistics.median(r['p90'] for r in runs):.1f})"
              f"  {1000 / med:5.1f} frames/s  {med / base:4.2f}x the bundled time  [{runs[0]['precision']}; "
              f"{runs[0]['pspnet'] if name != 'torchvision LRASPP-MobileNetV3 fp32' else 'torchvision'}]")


if __name__ == "__main__":
    main()
