"""Frames per second of ``pspnet predict`` locally and on Ray (1 and 2 replicas), and where the time goes.

    PYTHONPATH=src python benchmarks/predict_throughput.py --frames 24 --large-frames 4 --json out.json

Frames are real CamVid val frames (../shared/datasets/camvid, else the bundled sample) at 360x480, and the
same frames resized to 1024x2048. Each engine writes label PNGs and overlays into a fresh folder. Reported:
end to end (model/replica start included) and steady state (from the manifest's finish times, first frame
excluded), plus a per-stage split (decode, model, encode+write) measured in this process.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "datasets" / "camvid" / "val"
SAMPLE = ROOT / "src" / "pspnet" / "samples" / "camvid_0016E5_08059.jpg"


def make_frames(folder: Path, n: int, size: tuple[int, int] | None) -> Path:
    sources = sorted(CAMVID.glob("*.png"))[:n] if CAMVID.is_dir() else [SAMPLE] * n
    folder.mkdir(parents=True)
    for i, src in enumerate(sources):
        im = Image.open(src).convert("RGB")
        if size:
            im = im.resize((size[1], size[0]), Image.BILINEAR)
        im.save(folder / f"frame_{i:05d}.png")
    return folder


def steady_rate(out: Path, batch: int) -> float:
    """Frames after the first batch over the time they took: start-up (model load, replicas) excluded."""
    times = []
    for part in (out / ".pspnet").glob("manifest-*.csv"):
        with open(part, newline="") as f:
            times += [float(r["finished"]) for r in csv.DictReader(f) if r.get("finished") and not r["error"]]
    times.sort()
    if len(times) <= batch or times[-1] <= times[batch - 1]:
        return float("nan")
    return (len(times) - batch) / (times[-1] - times[batch - 1])


def run_engine(engine: str, src: Path, out: Path, workers: int, batch: int, device: str) -> dict:
    from pspnet.inference.batch import OutputOptions, prepare, run_local

    seg_kwargs = {"model": "camvid", "device": device, "precision": "fp32", "batch_size": batch}
    plan, fp = prepare([str(src)], out, OutputOptions(), {"engine": engine, **seg_kwargs})
    start, cpu = time.perf_counter(), time.process_time()
    if engine == "local":
        from pspnet.inference.segmenter import Segmenter

        summary = run_local(Segmenter(**seg_kwargs), plan, out, fp, 0.5, batch)
    else:
        from pspnet.inference.distributed import run_ray

        summary = run_ray(plan, out, fp, seg_kwargs, 0.5, batch, workers, progress=False)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert not summary.failed, summary.failed
    row = {"engine": engine, "workers": workers, "frames": summary.frames, "end_to_end_fps": summary.frames / wall,
           "steady_fps": steady_rate(out, batch)}
    if engine == "local":  # the work is in this process: its CPU time is the core-seconds a frame costs
        row["cpu_s_per_frame"] = cpu / summary.frames
    return row


def stages(src: Path, n: int, device: str) -> dict:
    """Seconds per frame in each stage, one process, the engine's own functions."""
    from pspnet.data.io import read_image
    from pspnet.inference.segmenter import Segmenter
    from pspnet.inference.visualize import label_png

    seg = Segmenter("camvid", device=device, precision="fp32", batch_size=1)
    files = sorted(src.glob("*.png"))[:n]
    t = {"decode": 0.0, "model": 0.0, "encode_label": 0.0, "encode_overlay": 0.0}
    seg.probs(read_image(files[0]))  # warm-up
    for f in files:
        a = time.perf_counter()
        im = read_image(f)
        b = time.perf_counter()
        probs = seg.probs(im)
        c = time.perf_counter()
        labels = probs.argmax(0).astype(np.uint8)
        with tempfile.TemporaryFile() as fh:
            label_png(labels, seg.palette).save(fh, format="PNG")
            d = time.perf_counter()
            seg.overlay(im, labels).save(fh, format="PNG")
        e = time.perf_counter()
        t["decode"] += b - a
        t["model"] += c - b
        t["encode_label"] += d - c
        t["encode_overlay"] += e - d
    return {k: v / len(files) for k, v in t.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=24, help="frames at 360x480")
    ap.add_argument("--large-frames", type=int, default=4, help="frames at 1024x2048 (0: skip)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--engines", default="local,ray1,ray2")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    engines = args.engines.split(",")
    results = {"cpus": os.cpu_count(), "device": args.device, "runs": []}
    work = Path(tempfile.mkdtemp(prefix="pspnet-throughput-"))
    ray = None
    if any(e.startswith("ray") for e in engines):
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
    try:
        sizes = [("360x480", None, args.frames)] + ([("1024x2048", (1024, 2048), args.large_frames)]
                                                   if args.large_frames else [])
        for name, size, n in sizes:
            src = make_frames(work / f"in-{name}", n, size)
            results[f"stages_{name}"] = stages(src, min(n, 4), args.device)
            print(name, "stages (s/frame):", {k: round(v, 4) for k, v in results[f"stages_{name}"].items()}, flush=True)
            for engine in engines:
                workers = int(engine[3:]) if engine.startswith("ray") else 1
                row = run_engine("ray" if workers and engine.startswith("ray") else "local", src,
                                 work / f"out-{name}-{engine}", workers, args.batch_size, args.device)
                row["size"] = name
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
    finally:
        if ray is not None:
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
