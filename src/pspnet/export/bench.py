"""``pspnet benchmark``: every inference path, the bundled model and peer models in one interleaved run.

All cases see the same frame (the bundled CamVid sample, resized, normalised per model) and are
timed round-robin, one call each per round with the starting case rotated, so a background load
slows every case alike and the ratios stay meaningful. Reported per case: median latency and
spread (min..max), images/s, GFLOP (``torch.utils.flop_counter`` on the meta device), achieved
GFLOP/s and its share of the machine's measured matmul peak for that number format, peak memory
(CUDA allocator peak, or the RSS rise sampled every millisecond on the CPU), and argmax agreement
with the same model in fp32 eager. With CamVid present, every path of the bundled (trained) model is
also run over CamVid val for argmax agreement and mIoU against fp32: the correctness rule for a path
is >= 99.5% agreement there, since the PSPNet-R50 has random weights (no trained R50 is shipped) and
its near-tied logits make its own agreement a pessimistic, unrepresentative number.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from pspnet.inference.fast import FastPath, fast_call, fast_model
from pspnet.model.pspnet import IMAGENET_MEAN, IMAGENET_STD
from pspnet.device import cpu_flags, native_bf16, resolve_device

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "camvid_0016E5_08059.jpg"
CAMVID = Path(__file__).resolve().parents[4] / "shared" / "datasets" / "camvid"  # beside a source checkout
# case names of the int8 variants, by which convs stay in float (see pspnet.export.quantize)
INT8_NAMES = {"classifier": "ORT int8 all", "sensitive": "ORT int8", "backbone": "ORT int8 head"}
MIN_AGREEMENT = 0.995  # a path is correct if its argmax agrees with fp32 eager on this share of pixels


# ---- measuring ------------------------------------------------------------------------------------------------

def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim() -> None:
    """Give freed heap back to the OS so the next RSS rise measures the next case, not reuse."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory above the starting point during a block: CUDA allocator, or sampled RSS on the CPU."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0
        self._stop = threading.Event()

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif os.path.exists("/proc/self/statm"):
            _trim()
            self._base = _rss_bytes()
            self._max = self._base
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, _rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, _rss_bytes()) - self._base


def gflop(model: nn.Module, shape: Sequence[int]) -> float | None:
    """Forward GFLOP (multiply-add = 2) counted on the meta device, so it costs no compute."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        meta = copy.deepcopy(model).to("meta").eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            meta(torch.empty(*shape, device="meta"))
        return counter.get_total_flops() / 1e9
    except Exception:  # a model the meta device cannot run: count on the real device instead
        try:
            counter = FlopCounterMode(display=False)
            with counter, torch.no_grad():
                model(torch.zeros(*shape, device=next(model.parameters()).device))
            return counter.get_total_flops() / 1e9
        except Exception:
            return None


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, seconds: float = 1.0) -> float | None:
    """Best GFLOP/s of an n x n matmul in ``dtype`` (int8 via torch._int_mm): the machine's practical peak."""
    try:
        if dtype == torch.int8:
            a = torch.randint(-64, 64, (n, n), dtype=torch.int8, device=device)
            op: Callable[[], Any] = lambda: torch._int_mm(a, a)  # noqa: E731
        else:
            a = torch.randn(n, n, device=device).to(dtype)
            op = lambda: a @ a  # noqa: E731
        op()
        best, end = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < end:
            best = min(best, _timed(op, device))
        return 2 * n**3 / best / 1e9
    except Exception:
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(call: Callable[[], Any], device: torch.device) -> float:
    """Seconds that one ``call()`` takes, with the device synchronised before and after."""
    _sync(device)
    t = time.perf_counter()
    call()
    _sync(device)
    return time.perf_counter() - t


# ---- cases ---------------------------------------------------------------------------------------------------

@dataclass
class Case:
    """One thing to time: ``run()`` returns logits for the shared frame."""

    name: str
    group: str  # ours | fast | bundled | peer
    forward: Callable[[torch.Tensor], torch.Tensor]  # normalised (N, 3, H, W) -> logits
    x: torch.Tensor
    number_format: str = "fp32"  # fp32 | bf16 | fp16 | int8: which matmul peak to compare with
    gflop: float | None = None
    ref: str | None = None  # the fp32 eager case of the same model, for argmax agreement
    setup_s: float = 0.0  # export / quantize / compile time, paid once
    note: str = ""
    times: list[float] = field(default_factory=list)
    peak_bytes: int = 0
    labels: torch.Tensor | None = None
    error: str | None = None

    def run(self) -> torch.Tensor:
        return self.forward(self.x)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.x.shape[-2]), int(self.x.shape[-1])


def frame(size: Sequence[int], mean: Sequence[float], std: Sequence[float], batch: int = 1,
          device: torch.device | str = "cpu") -> torch.Tensor:
    """The sample frame resized to ``size`` (H, W) and normalised, repeated ``batch`` times."""
    from PIL import Image

    from pspnet.data.io import read_image

    im = read_image(SAMPLE).resize((int(size[1]), int(size[0])), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(im, np.float32).copy()).permute(2, 0, 1)[None] / 255.0
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return x.repeat(batch, 1, 1, 1).to(device)


def torch_paths(device: torch.device, compile: bool = False) -> list[FastPath]:
    """The PyTorch paths worth timing on ``device``; bf16 only where it is native, fp16 only on CUDA."""
    paths = [FastPath("fp32 eager"), FastPath("fp32 fold+NHWC", fold_bn=True, channels_last=True)]
    if native_bf16(device):
        paths += [FastPath("bf16 autocast fold+NHWC", "bf16", True, True),
                  FastPath("bf16 weights fold+NHWC", "bf16", True, True, cast_weights=True),
                  FastPath("bf16 fp32-stem fold+NHWC", "bf16", True, True, fp32_stem=True)]
    if device.type == "cuda":
        paths += [FastPath("fp16 weights fold+NHWC", "fp16", True, True, cast_weights=True),
                  FastPath("fp16 fp32-stem fold+NHWC", "fp16", True, True, fp32_stem=True)]
    if compile:
        best = paths[-1]
        paths.append(FastPath(f"compile {best.name}", best.precision, True, True, fp32_stem=best.fp32_stem,
                              compile=True))
    return paths


def model_cases(label: str, group: str, model: nn.Module, x: torch.Tensor, device: torch.device,
                paths: Sequence[FastPath], onnx: bool = False, int8: bool = False,
                calib_dir: Path | None = None, calib_count: int = 16, workdir: Path | None = None,
                threads: int | None = None, int8_float: Sequence[str] = ("sensitive", "backbone"),
                log: Callable[[str], None] = print) -> list[Case]:
    """Cases for one of our models: each fast path, then ONNX Runtime fp32 and int8 (one per ``int8_float``)."""
    flops = gflop(model, x.shape)
    ref = f"{label} fp32 eager"
    fast_group = "fast" if group == "ours" else group
    cases = []
    for p in paths:
        t = time.perf_counter()
        net = fast_model(model, p, device)
        case = Case(f"{label} {p.name}", group if p.name == "fp32 eager" else fast_group,
                    lambda x, net=net, p=p: fast_call(net, x, p), x, p.precision, flops,
                    None if p.name == "fp32 eager" else ref)
        if p.compile:
            log(f"compiling {case.name} (once) ...")
            case.run()
        case.setup_s = time.perf_counter() - t
        cases.append(case)
    if not (onnx or int8) or device.type != "cpu":
        return cases
    from pspnet.export.onnx import export_onnx
    from pspnet.inference.ort import OrtModel

    workdir = workdir or Path(tempfile.mkdtemp(prefix="pspnet-bench-"))
    fp32_path = workdir / f"{label.replace(' ', '_')}.onnx"
    t = time.perf_counter()
    log(f"exporting {label} to ONNX ...")
    export_onnx(model, fp32_path, size=(min(x.shape[-2], 256), min(x.shape[-1], 256)), check=False)
    export_s = time.perf_counter() - t
    if onnx:
        cases.append(Case(f"{label} ORT fp32", fast_group, OrtModel(fp32_path, threads=threads), x, "fp32", flops,
                          ref, export_s))
    if int8 and (calib_dir is None or not Path(calib_dir).is_dir()):
        log(f"int8 skipped for {label}: no calibration frames at {calib_dir} (calibrating on noise would be wrong)")
    elif int8:
        from pspnet.export.quantize import quantize_onnx

        for keep_float in int8_float:
            t = time.perf_counter()
            log(f"quantizing {label} to int8 ({keep_float} convs in float) on {calib_count} frames of {calib_dir} ...")
            q = quantize_onnx(fp32_path, workdir / f"{fp32_path.stem}_int8_{keep_float}.onnx", calib_dir,
                              calib_count, x.shape[-2:], keep_float=keep_float)
            cases.append(Case(f"{label} {INT8_NAMES[keep_float]}", fast_group, OrtModel(q["path"], threads=threads), x,
                              "int8", flops, ref, export_s + time.perf_counter() - t,
                              note=f"static QDQ, {q['frames']} calibration frames, {keep_float} convs in float"))
    return cases


def peer_cases(num_classes: int, size: Sequence[int], device: torch.device,
               log: Callable[[str], None] = print) -> list[Case]:
    """segmentation_models_pytorch PSPNet (r50, r18) and torchvision DeepLabV3/FCN-R50, random init, fp32 eager."""
    x = frame(size, IMAGENET_MEAN, IMAGENET_STD, device=device)
    models: list[tuple[str, Callable[[], nn.Module], str]] = []
    try:
        import segmentation_models_pytorch as smp

        for enc in ("resnet50", "resnet18"):
            models.append((f"smp PSPNet-{enc.replace('resnet', 'R')}",
                           lambda enc=enc: _PadTo(smp.PSPNet(enc, encoder_weights=None, classes=num_classes), 8),
                           "encoder depth 3, no dilation (1/8 features from 3 stages); input zero-padded to a "
                           "multiple of 8, which smp requires"))
    except ImportError:
        log("segmentation_models_pytorch not installed (pip install segmentation-models-pytorch): no smp peers")
    from torchvision.models import segmentation as tvseg

    models += [("torchvision DeepLabV3-R50", lambda: tvseg.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False), "output stride 8"),
               ("torchvision FCN-R50", lambda: tvseg.fcn_resnet50(
                   weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False), "output stride 8")]
    cases = []
    for name, build, note in models:
        torch.manual_seed(0)
        net = _OutOnly(build().eval().to(device))

        def forward(x: torch.Tensor, m: nn.Module = net) -> torch.Tensor:
            with torch.inference_mode():
                return m(x)

        cases.append(Case(name, "peer", forward, x, "fp32", gflop(net, x.shape), note=note))
    return cases


class _PadTo(nn.Module):
    """Pad the input bottom/right to a multiple of ``multiple`` and crop the logits back (smp refuses other sizes)."""

    def __init__(self, net: nn.Module, multiple: int):
        super().__init__()
        self.net, self.multiple = net, multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = -h % self.multiple, -w % self.multiple
        return self.net(torch.nn.functional.pad(x, (0, pw, 0, ph)))[..., :h, :w]


class _OutOnly(nn.Module):
    """torchvision segmentation models return a dict; keep the logits."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out["out"] if isinstance(out, dict) else out


def time_interleaved(cases: list[Case], repeats: int, warmup: int, device: torch.device,
                     log: Callable[[str], None] = print) -> None:
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
            log(f"{c.name}: failed ({c.error})")
    live = [c for c in cases if c.error is None]
    for r in range(repeats):
        k = r % max(len(live), 1)
        for c in live[k:] + live[:k]:
            c.times.append(_timed(c.run, device))
        log(f"round {r + 1}/{repeats} done")


@torch.no_grad()
def val_accuracy(cases: list[Case], config: dict[str, Any], camvid_root: Path, limit: int | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Argmax agreement with fp32 eager and mIoU of each case of one model (config) over CamVid val, whole images."""
    from pspnet.data import build_dataset
    from pspnet.data.transforms import eval_transforms
    from pspnet.engine.metrics import ConfusionMatrix

    ds = build_dataset("camvid", camvid_root, "val", eval_transforms(config["mean"], config["std"]))
    live = [c for c in cases if c.error is None]
    ref = live[0]
    n = min(limit or len(ds), len(ds))
    log(f"CamVid val: {len(live)} paths of {ref.name.removesuffix(' fp32 eager')} on {n} frames ...")
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


def summarize(cases: list[Case], peaks: dict[str, float | None]) -> list[dict[str, Any]]:
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


# ---- training step, scaling, sliding window ---------------------------------------------------------------------

def training_step(model: nn.Module, device: torch.device, size: Sequence[int], batch: int, repeats: int,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Images/s of a full SGD step (forward with aux, loss, backward, update), fp32 vs AMP, interleaved."""
    amp = "bf16" if native_bf16(device) else ("fp16" if device.type == "cuda" else None)
    nets, opts, scalers = {}, {}, {}
    modes = ["fp32"] + ([amp] if amp else [])
    for mode in modes:
        net = copy.deepcopy(model).to(device).train()
        nets[mode] = net
        opts[mode] = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
        scalers[mode] = torch.amp.GradScaler(device.type, enabled=mode == "fp16")
    x = torch.randn(batch, 3, *size, device=device)
    y = torch.randint(0, model.config["num_classes"], (batch, *size), device=device)
    crit = nn.CrossEntropyLoss(ignore_index=255)
    times: dict[str, list[float]] = {m: [] for m in modes}

    def step(mode: str) -> None:
        from pspnet.device import autocast

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
    for r in range(repeats):
        for mode in (modes if r % 2 == 0 else modes[::-1]):
            times[mode].append(_timed(lambda: step(mode), device))
    result: dict[str, Any] = {"size": list(size), "batch": batch, "amp": amp}
    for mode in modes:
        med = statistics.median(times[mode])
        result[mode] = {"median_s": med, "images_per_s": batch / med}
    if amp:
        result["amp_speedup"] = result["fp32"]["median_s"] / result[amp]["median_s"]
    log(f"training step done: {json.dumps({m: result[m]['images_per_s'] for m in modes})} img/s")
    return result


def scaling(model: nn.Module, path: FastPath, device: torch.device, sizes: Sequence[int], batches: Sequence[int],
            batch_size_px: Sequence[int], repeats: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Latency of one path over square input sizes (batch 1) and over batch sizes (at ``batch_size_px``)."""
    net = fast_model(model, path, device)
    mean, std = model.config["mean"], model.config["std"]

    def measure(size: Sequence[int], batch: int) -> dict[str, Any]:
        x = frame(size, mean, std, batch, device)
        fast_call(net, x, path)
        med = statistics.median(_timed(lambda: fast_call(net, x, path), device) for _ in range(repeats))
        return {"size": list(size), "batch": batch, "median_ms": 1e3 * med, "images_per_s": batch / med}

    out: dict[str, Any] = {"path": path.name, "by_size": [], "by_batch": []}
    for s in sizes:
        out["by_size"].append(measure((s, s), 1))
        log(f"scaling {s}px: {out['by_size'][-1]['median_ms']:.0f} ms")
    for b in batches:
        out["by_batch"].append(measure(batch_size_px, b))
        log(f"scaling batch {b}: {out['by_batch'][-1]['median_ms']:.0f} ms")
    return out


def sliding_window_rss(model_spec: dict[str, Any], path: FastPath, image_size: Sequence[int], crop: Sequence[int],
                       threads: int) -> dict[str, Any]:
    """Sliding-window inference on an (H, W) image in a fresh process; returns its time and peak RSS.

    A fresh process, so that the peak RSS is what a user's ``pspnet predict --mode slide`` would need
    (interpreter, torch and model included), not what this benchmark happened to allocate before.
    """
    cmd = [sys.executable, "-m", "pspnet.export.bench", json.dumps({
        "model": model_spec, "path": asdict(path), "image_size": list(image_size), "crop": list(crop),
        "threads": threads})]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def build_model(spec: dict[str, Any]) -> nn.Module:
    """A model from a JSON-able spec: {"name": create_model name, "num_classes": n, "seed": s} or {"load": name}."""
    if "load" in spec:
        from pspnet.model.bundled import load

        return load(spec["load"]).eval()
    from pspnet.model.factory import create_model

    torch.manual_seed(spec.get("seed", 0))
    return create_model(spec["name"], num_classes=spec.get("num_classes", 21), **spec.get("kwargs", {})).eval()


def _peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: on Linux the latter keeps the parent's peak across
    fork and exec, so a child of a big benchmark process would report the parent's memory."""
    with contextlib.suppress(OSError, StopIteration):
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _slide_main(arg: str) -> None:
    from pspnet.inference.predict import predict_probs

    job = json.loads(arg)
    torch.set_num_threads(job["threads"])
    model = build_model(job["model"])
    path = FastPath(**job["path"])
    net = fast_model(model, path, "cpu")
    h, w = job["image_size"]
    x = frame((h, w), model.config["mean"], model.config["std"])
    base = _peak_rss_mb()
    t = time.perf_counter()
    probs = predict_probs(lambda crop: fast_call(net, crop, path), x, model.config["num_classes"], "slide",
                          job["crop"], align_corners=model.config.get("align_corners", True))
    seconds = time.perf_counter() - t
    print(json.dumps({"image_size": [h, w], "crop": job["crop"], "path": path.name, "precision": path.precision,
                      "seconds": seconds, "peak_rss_mb": _peak_rss_mb(), "peak_rss_before_mb": base,
                      "output_shape": list(probs.shape)}))


# ---- the whole run ---------------------------------------------------------------------------------------------

@dataclass
class BenchConfig:
    """What ``run_benchmark`` measures; the defaults are the full run of the issue."""

    model: str = "pspnet_resnet50"
    num_classes: int = 21
    size: tuple[int, int] = (473, 473)
    repeats: int = 5
    warmup: int = 1
    device: str = "cpu"
    threads: int | None = None
    bundled: str | None = "camvid"
    bundled_size: tuple[int, int] = (360, 480)
    peers: bool = True
    onnx: bool = True
    int8: bool = True
    compile: bool = False
    camvid: str | None = str(CAMVID)  # train/ calibrates int8, val/ checks every path of the bundled model
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


def _sha256(path: Path) -> str:
    """Which weights were measured (the bundled file changes between releases)."""
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU model and the flags that decide the fast paths, threads, library versions, load average."""
    flags = cpu_flags()
    cpu_name = ""
    with contextlib.suppress(OSError):
        cpu_name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("model name")), "")
    info = {"cpu": cpu_name or platform.processor(), "cores_available": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "cpu_flags": sorted(f for f in flags if f in {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16",
                                                         "amx_tile", "amx_bf16", "amx_int8", "avx_vnni"}),
            "native_bf16": native_bf16(device), "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    with contextlib.suppress(ImportError):
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    return info


def run_benchmark(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run everything ``cfg`` asks for; returns the JSON-able result (see ``format_table``)."""
    before = torch.get_num_threads()
    try:
        return _run(cfg, log)
    finally:
        torch.set_num_threads(before)  # ``cfg.threads`` is for this run only


def _run(cfg: BenchConfig, log: Callable[[str], None]) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    threads = cfg.threads or torch.get_num_threads()
    started = time.time()
    result: dict[str, Any] = {"config": asdict(cfg), "machine": machine_info(device)}
    formats = {"fp32": torch.float32}
    if native_bf16(device):
        formats["bf16"] = torch.bfloat16
    if device.type == "cuda":
        formats["fp16"] = torch.float16
    if device.type == "cpu" and cfg.int8:
        formats["int8"] = torch.int8

    def measure_peaks() -> dict[str, float | None]:
        return {k: matmul_peak(device, dtype, seconds=cfg.peak_seconds) for k, dtype in formats.items()}

    log("measuring matmul peaks ...")
    peaks = measure_peaks()
    result["matmul_peak_gflops"] = peaks

    spec = {"name": cfg.model, "num_classes": cfg.num_classes, "seed": 0}
    model = build_model(spec)
    label = cfg.model.removeprefix("pspnet_").replace("resnet", "PSPNet-R")
    x = frame(cfg.size, model.config["mean"], model.config["std"], device=device)
    paths = torch_paths(device, cfg.compile)
    workdir = Path(tempfile.mkdtemp(prefix="pspnet-bench-"))
    camvid = Path(cfg.camvid) if cfg.camvid else None
    calib = camvid / "train" if camvid else None
    cases = model_cases(label, "ours", model, x, device, paths, cfg.onnx, cfg.int8, calib, cfg.calib_count,
                        workdir, threads, cfg.int8_float, log)
    prefixes = {"main": label}
    bundled_cases: list[Case] = []
    bundled_config: dict[str, Any] = {}
    if cfg.bundled:
        from pspnet.model.bundled import BUNDLED, WEIGHTS_DIR, load

        bundled_model = load(cfg.bundled).eval()
        bundled_config = bundled_model.config
        result["bundled_weights_sha256"] = _sha256(WEIGHTS_DIR / BUNDLED[cfg.bundled])
        bx = frame(cfg.bundled_size, bundled_model.config["mean"], bundled_model.config["std"], device=device)
        prefixes["bundled"] = f"bundled {cfg.bundled}"
        bundled_cases = model_cases(prefixes["bundled"], "bundled", bundled_model, bx, device, paths, cfg.onnx,
                                    cfg.int8, calib, cfg.calib_count, workdir, threads, cfg.int8_float, log)
        cases += bundled_cases
    if cfg.peers:
        cases += peer_cases(cfg.num_classes, cfg.size, device, log)
    log(f"timing {len(cases)} cases x {cfg.repeats} rounds, interleaved ...")
    time_interleaved(cases, cfg.repeats, cfg.warmup, device, log)
    log("measuring matmul peaks again (the best of both counts: background load only lowers them) ...")
    peaks.update({k: max(filter(None, (v, peaks[k])), default=None) for k, v in measure_peaks().items()})
    rows = summarize(cases, peaks)
    result["rows"] = rows

    # correctness of each path: agreement over CamVid val for the trained model where we have it
    val_agreement: dict[str, float] = {}
    if cfg.val and bundled_cases and bundled_cases[0].error is None and camvid and (camvid / "val").is_dir():
        result["val"] = val_accuracy(bundled_cases, bundled_config, camvid, cfg.val_limit, log)
        val_agreement = {r["name"].removeprefix(prefixes["bundled"] + " "): r["agreement"]
                         for r in result["val"]["rows"]}
    elif cfg.val:
        log(f"CamVid val not found under {camvid}: correctness judged on the benchmark frame only")
    for r in rows:
        key = next((k for k, p in prefixes.items() if r["name"].startswith(p + " ")), None)
        if key is None or "agreement" not in r:
            continue
        suffix = r["name"].removeprefix(prefixes[key] + " ")
        r["correct"] = val_agreement.get(suffix, r["agreement"]) >= MIN_AGREEMENT

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
    result["summary"] = summary

    if cfg.train:
        log("training step, fp32 vs AMP ...")
        result["training"] = training_step(model, device, cfg.train_size, cfg.train_batch, max(2, cfg.repeats // 2), log)
    # scaling and sliding window use the fastest correct PyTorch path, without compile (each size would recompile)
    torch_rows = [r for r in rows if r.get("correct") and r["name"].startswith(label + " ")
                  and any(r["name"] == f"{label} {p.name}" for p in paths if not p.compile)]
    best_name = min(torch_rows, key=lambda r: r["median_ms"])["name"] if torch_rows else f"{label} fp32 eager"
    best_path = next(p for p in paths if best_name == f"{label} {p.name}")
    if cfg.scaling:
        log(f"scaling with {best_path.name} ...")
        result["scaling"] = scaling(model, best_path, device, cfg.scaling_sizes, cfg.scaling_batches, cfg.size,
                                    max(1, min(cfg.repeats, 2)), log)
        result["scaling"]["model"] = label
    if cfg.slide and device.type == "cpu":
        log(f"sliding window on {cfg.slide_image[1]}x{cfg.slide_image[0]} in a fresh process ...")
        result["sliding_window"] = sliding_window_rss(spec, best_path, cfg.slide_image, cfg.slide_crop, threads)
        result["sliding_window"]["model"] = label
    result["seconds"] = time.time() - started
    with contextlib.suppress(OSError):
        for f in workdir.glob("*.onnx"):
            f.unlink()
        workdir.rmdir()
    return result


# ---- output ----------------------------------------------------------------------------------------------------

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":  # the sliding-window child process
    _slide_main(sys.argv[1])
