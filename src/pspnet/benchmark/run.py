"""The study runner: interleaved timing of the cases, correctness on CamVid val, training, scaling, sliding window.

``run_benchmark(BenchConfig(...))`` returns one JSON-able dict; ``pspnet.benchmark.report`` prints
and plots it. Cases are timed round-robin, one call each per round with the starting case rotated,
so a background load slows every case alike and the ratios stay meaningful. The correctness rule
for a path is >= 99.5% argmax agreement with fp32 eager over CamVid val on the bundled (trained)
model: the PSPNet-R50 has random weights (no trained R50 is shipped) and its near-tied logits make
its own agreement a pessimistic, unrepresentative number. The sliding-window study runs in a
child process (``slide_main``) so that its peak RSS is what a user's process would need.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from pspnet.benchmark.cases import Case, CaseFactory, build_model, frame, load_cases, model_cases, torch_paths
from pspnet.benchmark.measure import PeakMemory, machine_info, matmul_peaks, number_formats, peak_rss_mb, timed
from pspnet.device import autocast, native_bf16, resolve_device
from pspnet.errors import PSPNetError
from pspnet.inference.fast import FastPath, fast_call, fast_model

logger = logging.getLogger(__name__)

MIN_AGREEMENT = 0.995  # a path is correct if its argmax agrees with fp32 eager on this share of pixels


@dataclass
class BenchConfig:
    """What ``run_benchmark`` measures; the defaults are the full run of docs/deploy.md, less the data.

    ``camvid`` is a CamVid root: its train/ calibrates int8 and its val/ checks every path of the
    bundled model; without it there is no int8 case and correctness is judged on the benchmark frame.
    ``cases`` names extra case factories (see ``pspnet.benchmark.cases.load_cases``).
    """

    model: str = "pspnet_resnet50"
    num_classes: int = 21
    size: tuple[int, int] = (473, 473)
    repeats: int = 5
    warmup: int = 1
    device: str = "cpu"
    threads: int | None = None
    bundled: str | None = "camvid"
    bundled_size: tuple[int, int] = (360, 480)
    cases: tuple[str, ...] = ()
    onnx: bool = True
    int8: bool = True
    compile: bool = False
    camvid: str | None = None
    calib_count: int = 16
    int8_float: tuple[str, ...] = ("sensitive", "backbone")
    val: bool = True
    val_limit: int | None = None
    train: bool = True
    train_size: tuple[int, int] = (256, 256)
    train_batch: int = 2
    scaling: bool = True
    scaling_sizes: tuple[int, ...] = (256, 384, 512, 768, 1024)
    scaling_batches: tuple[int, ...] = (1, 2, 4, 8)
    slide: bool = True
    slide_image: tuple[int, int] = (1024, 2048)
    slide_crop: tuple[int, int] = (473, 473)
    peak_seconds: float = 1.0


@dataclass
class _Suite:
    """The cases of one run and what the later steps need to know about them."""

    spec: dict[str, Any]  # builds the main model again in the sliding-window child
    model: nn.Module
    label: str  # row-name prefix of the main model, e.g. "PSPNet-R50"
    fastpaths: list[FastPath]
    cases: list[Case]
    prefixes: dict[str, str]  # "main" / "bundled" -> row-name prefix
    bundled_cases: list[Case] = field(default_factory=list)
    bundled_config: dict[str, Any] = field(default_factory=dict)


def run_benchmark(cfg: BenchConfig) -> dict[str, Any]:
    """Run everything ``cfg`` asks for; returns the JSON-able result (see ``pspnet.benchmark.report``)."""
    camvid = Path(cfg.camvid) if cfg.camvid else None
    if camvid is not None and not camvid.is_dir():
        raise PSPNetError(f"CamVid root {camvid} is not a directory (it needs train/ for int8 and val/ for the check)")
    factories = [load_cases(spec) for spec in cfg.cases]  # before any measuring: a bad file fails at once
    before = torch.get_num_threads()
    try:
        with tempfile.TemporaryDirectory(prefix="pspnet-bench-") as workdir:
            return _run(cfg, camvid, factories, Path(workdir))
    finally:
        torch.set_num_threads(before)  # ``cfg.threads`` is for this run only


def _run(cfg: BenchConfig, camvid: Path | None, factories: list[CaseFactory], workdir: Path) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    threads = cfg.threads or torch.get_num_threads()
    started = time.time()
    result: dict[str, Any] = {"config": asdict(cfg), "machine": machine_info(device)}
    formats = number_formats(device, cfg.int8)
    logger.info("measuring matmul peaks ...")
    peaks = result["matmul_peak_gflops"] = matmul_peaks(device, formats, cfg.peak_seconds)

    suite = _collect_cases(cfg, device, camvid, workdir, threads, result)
    for factory in factories:
        suite.cases += factory(cfg.num_classes, cfg.size, device)
    logger.info("timing %d cases x %d rounds, interleaved ...", len(suite.cases), cfg.repeats)
    time_interleaved(suite.cases, cfg.repeats, cfg.warmup, device)
    logger.info("measuring matmul peaks again (the best of both counts: background load only lowers them) ...")
    for k, v in matmul_peaks(device, formats, cfg.peak_seconds).items():
        peaks[k] = max(filter(None, (v, peaks[k])), default=None)
    rows = result["rows"] = summarize(suite.cases, peaks)

    val_agreement = _check_on_camvid_val(cfg, suite, camvid, result) if cfg.val else {}
    judge(rows, suite.prefixes, val_agreement)
    result["summary"] = best_paths(rows, suite.prefixes, val_agreement)

    _run_studies(cfg, suite, rows, device, threads, result)
    result["seconds"] = time.time() - started
    return result


def _check_on_camvid_val(cfg: BenchConfig, suite: _Suite, camvid: Path | None,
                         result: dict[str, Any]) -> dict[str, float]:
    """Every path of the bundled model over CamVid val (into ``result["val"]``); its agreement by path name."""
    if not (suite.bundled_cases and suite.bundled_cases[0].error is None and camvid and (camvid / "val").is_dir()):
        logger.info("no CamVid val check (it needs the bundled model and CamVid val, --camvid %s): correctness "
                    "judged on the benchmark frame only", camvid)
        return {}
    result["val"] = val_accuracy(suite.bundled_cases, suite.bundled_config, camvid, cfg.val_limit)
    return {r["name"].removeprefix(suite.prefixes["bundled"] + " "): r["agreement"] for r in result["val"]["rows"]}


def _collect_cases(cfg: BenchConfig, device: torch.device, camvid: Path | None, workdir: Path, threads: int,
                   result: dict[str, Any]) -> _Suite:
    """The main model's cases, then the bundled model's; records the bundled weights' hash in ``result``."""
    spec = {"name": cfg.model, "num_classes": cfg.num_classes, "seed": 0}
    model = build_model(spec)
    label = cfg.model.removeprefix("pspnet_").replace("resnet", "PSPNet-R")
    x = frame(cfg.size, model.config["mean"], model.config["std"], device=device)
    fastpaths = torch_paths(device, cfg.compile)
    calib = camvid / "train" if camvid else None
    ort = dict(onnx=cfg.onnx, int8=cfg.int8, calib_dir=calib, calib_count=cfg.calib_count, workdir=workdir,
               threads=threads, int8_float=cfg.int8_float)
    suite = _Suite(spec, model, label, fastpaths, model_cases(label, "ours", model, x, device, fastpaths, **ort),
                   {"main": label})
    if cfg.bundled:
        from pspnet.model.bundled import BUNDLED, WEIGHTS_DIR, load

        bundled = load(cfg.bundled).eval()
        suite.bundled_config = bundled.config
        # which weights were measured (the bundled file changes between releases)
        weights = WEIGHTS_DIR / BUNDLED[cfg.bundled]
        result["bundled_weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
        bx = frame(cfg.bundled_size, bundled.config["mean"], bundled.config["std"], device=device)
        suite.prefixes["bundled"] = f"bundled {cfg.bundled}"
        suite.bundled_cases = model_cases(suite.prefixes["bundled"], "bundled", bundled, bx, device, fastpaths, **ort)
        suite.cases += suite.bundled_cases
    return suite


def _run_studies(cfg: BenchConfig, suite: _Suite, rows: list[dict[str, Any]], device: torch.device, threads: int,
                 result: dict[str, Any]) -> None:
    """Training step, then scaling and sliding window with the fastest correct PyTorch path of the main model."""
    if cfg.train:
        logger.info("training step, fp32 vs AMP ...")
        result["training"] = training_step(suite.model, device, cfg.train_size, cfg.train_batch,
                                           max(2, cfg.repeats // 2))
    fastest = _fastest_torch_path(rows, suite.label, suite.fastpaths)
    if cfg.scaling:
        logger.info("scaling with %s ...", fastest.name)
        result["scaling"] = scaling(suite.model, fastest, device, cfg.scaling_sizes, cfg.scaling_batches, cfg.size,
                                    max(1, min(cfg.repeats, 2)))
        result["scaling"]["model"] = suite.label
    if cfg.slide and device.type == "cpu":
        logger.info("sliding window on %dx%d in a fresh process ...", cfg.slide_image[1], cfg.slide_image[0])
        result["sliding_window"] = sliding_window_rss(suite.spec, fastest, cfg.slide_image, cfg.slide_crop, threads)
        result["sliding_window"]["model"] = suite.label


def _fastest_torch_path(rows: list[dict[str, Any]], label: str, fastpaths: Sequence[FastPath]) -> FastPath:
    """The fastest correct PyTorch path of the main model, without compile (each new size would recompile)."""
    by_name = {f"{label} {p.name}": p for p in fastpaths if not p.compile}
    correct = [r for r in rows if r.get("correct") and r["name"] in by_name]
    return by_name[min(correct, key=lambda r: r["median_ms"])["name"]] if correct else fastpaths[0]


# ---- timing and judging the cases ---------------------------------------------------------------------------

def time_interleaved(cases: list[Case], repeats: int, warmup: int, device: torch.device) -> None:
    """Warm every case up (measuring its peak memory), then ``repeats`` rounds of one timed call per case.

    The starting case rotates each round. Memory is sampled in the warm-up only, so the sampling
    thread never competes with a timed call.
    """
    for c in cases:
        try:
            with PeakMemory(device) as mem:
                out = c.run()
            c.peak_bytes = mem.peak
            c.labels = out.float().argmax(1).cpu()
            for _ in range(warmup - 1):
                c.run()
        except Exception as err:  # one broken case must not sink the whole table
            c.error = f"{type(err).__name__}: {err}"
            logger.warning("%s: failed (%s)", c.name, c.error)
    live = [c for c in cases if c.error is None]
    for r in range(repeats):
        k = r % max(len(live), 1)
        for c in live[k:] + live[:k]:
            c.times.append(timed(c.run, device))
        logger.info("round %d/%d done", r + 1, repeats)


def summarize(cases: list[Case], peaks: dict[str, float | None]) -> list[dict[str, Any]]:
    """One row per case: latency, throughput, GFLOP/s and its share of the peak, memory, agreement, speedup."""
    by_name = {c.name: c for c in cases}
    rows = []
    for c in cases:
        row: dict[str, Any] = {"name": c.name, "group": c.group, "size": list(c.size), "format": c.number_format,
                               "note": c.note, "setup_s": round(c.setup_s, 2), "error": c.error}
        if c.times:
            med = statistics.median(c.times)
            row.update(median_ms=1e3 * med, min_ms=1e3 * min(c.times), max_ms=1e3 * max(c.times),
                       spread_pct=100 * (max(c.times) - min(c.times)) / med, images_per_s=c.x.shape[0] / med,
                       peak_mb=c.peak_bytes / 2**20, gflop=c.gflop)
            if c.gflop:
                row["gflops"] = c.gflop / med
                peak = peaks.get(c.number_format)
                row["pct_of_peak"] = 100 * row["gflops"] / peak if peak else None
            ref = by_name.get(c.ref) if c.ref else None
            if ref is not None and ref.labels is not None and c.labels is not None and ref.times:
                row["agreement"] = float((ref.labels == c.labels).float().mean())
                row["speedup_vs_fp32_eager"] = statistics.median(ref.times) / med
        rows.append(row)
    return rows


@torch.no_grad()
def val_accuracy(cases: list[Case], config: dict[str, Any], camvid_root: Path,
                 limit: int | None = None) -> dict[str, Any]:
    """Argmax agreement with fp32 eager and mIoU of each case of one model (config) over CamVid val, whole images."""
    from pspnet.data import build_dataset
    from pspnet.data.transforms import eval_transforms
    from pspnet.engine.metrics import ConfusionMatrix

    ds = build_dataset("camvid", camvid_root, "val", eval_transforms(config["mean"], config["std"]))
    live = [c for c in cases if c.error is None]
    ref = live[0]
    n = min(limit or len(ds), len(ds))
    logger.info("CamVid val: %d paths of %s on %d frames ...", len(live), ref.name.removesuffix(" fp32 eager"), n)
    matrices = {c.name: ConfusionMatrix(config["num_classes"]) for c in live}
    agree = {c.name: 0 for c in live}
    pixels = 0
    for i in range(n):
        image, mask = ds[i]
        x = image[None].to(ref.x.device)
        labels = {c.name: c.forward(x).float().argmax(1).cpu() for c in live}
        pixels += labels[ref.name].numel()
        for c in live:
            matrices[c.name].update(labels[c.name][0], mask)
            agree[c.name] += int((labels[c.name] == labels[ref.name]).sum())
    base = matrices[ref.name].compute().miou
    rows = []
    for c in live:
        miou = matrices[c.name].compute().miou
        rows.append({"name": c.name, "agreement": agree[c.name] / pixels, "miou": miou, "miou_change": miou - base})
    return {"frames": n, "size": list(ds[0][0].shape[-2:]), "rows": rows}


def judge(rows: list[dict[str, Any]], prefixes: dict[str, str], val_agreement: dict[str, float]) -> None:
    """Set ``correct`` on every row of our models: its path's CamVid val agreement where measured, else its own."""
    for r in rows:
        key = next((k for k, p in prefixes.items() if r["name"].startswith(p + " ")), None)
        if key is None or "agreement" not in r:
            continue
        suffix = r["name"].removeprefix(prefixes[key] + " ")
        r["correct"] = val_agreement.get(suffix, r["agreement"]) >= MIN_AGREEMENT


def best_paths(rows: list[dict[str, Any]], prefixes: dict[str, str], val_agreement: dict[str, float]) -> dict[str, Any]:
    """Per model (main, bundled): the fastest correct path, its speedup and throughput, and ORT fp32's speedup."""
    summary: dict[str, Any] = {"correct_by": "CamVid val agreement of the bundled model" if val_agreement
                               else "agreement on the benchmark frame"}
    for key, prefix in prefixes.items():
        ok = [r for r in rows if r.get("correct") and r["name"].startswith(prefix + " ")]
        if not ok:
            continue
        best = min(ok, key=lambda r: r["median_ms"])
        summary[key] = {"best_path": best["name"], "speedup_vs_fp32_eager": best["speedup_vs_fp32_eager"],
                        "images_per_s": best["images_per_s"], "agreement": best["agreement"]}
        ort = next((r for r in rows if r["name"] == f"{prefix} ORT fp32" and "speedup_vs_fp32_eager" in r), None)
        if ort:
            summary[key]["ort_speedup"] = ort["speedup_vs_fp32_eager"]
    return summary


# ---- training step, scaling, sliding window ---------------------------------------------------------------------

def training_step(model: nn.Module, device: torch.device, size: Sequence[int], batch: int,
                  repeats: int) -> dict[str, Any]:
    """Images/s of a full SGD step (forward with aux, loss, backward, update), fp32 vs AMP, interleaved."""
    amp = "bf16" if native_bf16(device) else ("fp16" if device.type == "cuda" else None)
    modes = ["fp32"] + ([amp] if amp else [])
    nets, opts, scalers = {}, {}, {}
    for mode in modes:
        nets[mode] = copy.deepcopy(model).to(device).train()
        opts[mode] = torch.optim.SGD(nets[mode].parameters(), lr=1e-3, momentum=0.9)
        scalers[mode] = torch.amp.GradScaler(device.type, enabled=mode == "fp16")
    x = torch.randn(batch, 3, *size, device=device)
    y = torch.randint(0, model.config["num_classes"], (batch, *size), device=device)
    crit = nn.CrossEntropyLoss(ignore_index=255)

    def step(mode: str) -> None:
        net, opt, scaler = nets[mode], opts[mode], scalers[mode]
        opt.zero_grad(set_to_none=True)
        with autocast(device, mode):
            main, aux = net(x, return_aux=True) if model.aux is not None else (net(x), None)
            loss = crit(main.float(), y) + (0.4 * crit(aux.float(), y) if aux is not None else 0)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for mode in modes:
        step(mode)
    times: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(repeats):
        for mode in (modes if r % 2 == 0 else modes[::-1]):
            times[mode].append(timed(lambda mode=mode: step(mode), device))
    result: dict[str, Any] = {"size": list(size), "batch": batch, "amp": amp}
    for mode in modes:
        med = statistics.median(times[mode])
        result[mode] = {"median_s": med, "images_per_s": batch / med}
    if amp:
        result["amp_speedup"] = result["fp32"]["median_s"] / result[amp]["median_s"]
    logger.info("training step done: %s img/s", json.dumps({m: result[m]["images_per_s"] for m in modes}))
    return result


def scaling(model: nn.Module, fastpath: FastPath, device: torch.device, sizes: Sequence[int],
            batches: Sequence[int], batch_size_px: Sequence[int], repeats: int) -> dict[str, Any]:
    """Latency of one path over square input sizes (batch 1) and over batch sizes (at ``batch_size_px``)."""
    net = fast_model(model, fastpath, device)
    mean, std = model.config["mean"], model.config["std"]

    def measure(size: Sequence[int], batch: int) -> dict[str, Any]:
        x = frame(size, mean, std, batch, device)
        fast_call(net, x, fastpath)
        med = statistics.median(timed(lambda: fast_call(net, x, fastpath), device) for _ in range(repeats))
        return {"size": list(size), "batch": batch, "median_ms": 1e3 * med, "images_per_s": batch / med}

    out: dict[str, Any] = {"path": fastpath.name, "by_size": [], "by_batch": []}
    for s in sizes:
        out["by_size"].append(measure((s, s), 1))
        logger.info("scaling %dpx: %.0f ms", s, out["by_size"][-1]["median_ms"])
    for b in batches:
        out["by_batch"].append(measure(batch_size_px, b))
        logger.info("scaling batch %d: %.0f ms", b, out["by_batch"][-1]["median_ms"])
    return out


def sliding_window_rss(model_spec: dict[str, Any], fastpath: FastPath, image_size: Sequence[int],
                       crop: Sequence[int], threads: int) -> dict[str, Any]:
    """Sliding-window inference on an (H, W) image in a fresh process; returns its time and peak RSS.

    A fresh process, so that the peak RSS is what a user's ``pspnet predict --mode slide`` would need
    (interpreter, torch and model included), not what this benchmark happened to allocate before.
    """
    job = json.dumps({"model": model_spec, "fastpath": asdict(fastpath), "image_size": list(image_size),
                      "crop": list(crop), "threads": threads})
    cmd = [sys.executable, "-c", "import sys; from pspnet.benchmark.run import slide_main; slide_main(sys.argv[1])",
           job]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def slide_main(job_json: str) -> None:
    """The sliding-window child process: runs the job, prints one JSON line with time and peak RSS."""
    from pspnet.inference.predict import predict_probs

    job = json.loads(job_json)
    torch.set_num_threads(job["threads"])
    model = build_model(job["model"])
    fastpath = FastPath(**job["fastpath"])
    net = fast_model(model, fastpath, "cpu")
    h, w = job["image_size"]
    x = frame((h, w), model.config["mean"], model.config["std"])
    base = peak_rss_mb()
    t = time.perf_counter()
    probs = predict_probs(lambda crop: fast_call(net, crop, fastpath), x, model.config["num_classes"], "slide",
                          job["crop"], align_corners=model.config.get("align_corners", True))
    seconds = time.perf_counter() - t
    print(json.dumps({"image_size": [h, w], "crop": job["crop"], "path": fastpath.name,
                      "precision": fastpath.precision, "seconds": seconds, "peak_rss_mb": peak_rss_mb(),
                      "peak_rss_before_mb": base, "output_shape": list(probs.shape)}))
