"""What the benchmark times: one ``Case`` per inference path of a pspnet model, all on the same frame.

A model's cases are its PyTorch fast paths (``pspnet.inference.fast``), then ONNX Runtime fp32 and
static int8. Other libraries' models are not part of pspnet: a file that defines
``cases(num_classes, size, device) -> list[Case]`` adds them (``pspnet benchmark --cases FILE``;
the repository's ``benchmarks/peers.py`` holds the torchvision and segmentation_models_pytorch peers).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import nn

from pspnet.benchmark.measure import gflop
from pspnet.device import native_bf16
from pspnet.errors import PSPNetError
from pspnet.inference.fast import FastPath, fast_call, fast_model
from pspnet.inference.int8 import int8_available, int8_ready, use_int8

logger = logging.getLogger(__name__)

# case names of the int8 variants, by which convs stay in float (see pspnet.export.quantize)
INT8_NAMES = {"classifier": "ORT int8 all", "sensitive": "ORT int8", "backbone": "ORT int8 head"}


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


class CaseFactory(Protocol):
    """Extra cases (other libraries' models) on the benchmark frame, for ``pspnet benchmark --cases``."""

    def __call__(self, num_classes: int, size: Sequence[int], device: torch.device) -> list[Case]: ...


def frame(size: Sequence[int], mean: Sequence[float], std: Sequence[float], batch: int = 1,
          device: torch.device | str = "cpu") -> torch.Tensor:
    """The sample frame resized to ``size`` (H, W) and normalised, repeated ``batch`` times."""
    from PIL import Image

    from pspnet.data.io import read_image, to_input
    from pspnet.model.bundled import SAMPLE_IMAGE

    im = read_image(SAMPLE_IMAGE).resize((int(size[1]), int(size[0])), Image.BILINEAR)
    return to_input([im], mean, std).repeat(batch, 1, 1, 1).to(device)


def build_model(spec: dict[str, Any]) -> nn.Module:
    """A model from a JSON-able spec: {"name": create_model name, "num_classes": n, "seed": s} or {"load": name}.

    JSON-able so that the sliding-window child process can build the same model.
    """
    if "load" in spec:
        from pspnet.model.bundled import load

        return load(spec["load"]).eval()
    from pspnet.model.factory import create_model

    torch.manual_seed(spec.get("seed", 0))
    return create_model(spec["name"], num_classes=spec.get("num_classes", 21), **spec.get("kwargs", {})).eval()


def torch_paths(device: torch.device, compile: bool = False) -> list[FastPath]:
    """The PyTorch paths worth timing on ``device``; bf16 only where it is native, fp16 only on CUDA."""
    fast = {"fold_bn": True, "channels_last": True, "zero_tap_same": True, "fuse_act": True}
    fastpaths = [FastPath("fp32 eager"), FastPath("fp32 fold+NHWC", **fast)]
    if native_bf16(device):
        fastpaths += [FastPath("bf16 autocast fold+NHWC", "bf16", **fast),
                      FastPath("bf16 weights fold+NHWC", "bf16", cast_weights=True, **fast),
                      FastPath("bf16 fp32-stem fold+NHWC", "bf16", fp32_stem=True, **fast)]
    if device.type == "cuda":
        fastpaths += [FastPath("fp16 weights fold+NHWC", "fp16", cast_weights=True, **fast),
                      FastPath("fp16 fp32-stem fold+NHWC", "fp16", fp32_stem=True, **fast)]
    if compile:
        best = fastpaths[-1]
        fastpaths.append(replace(best, name=f"compile {best.name}", compile=True))
    return fastpaths


def model_cases(label: str, group: str, model: nn.Module, x: torch.Tensor, device: torch.device,
                fastpaths: Sequence[FastPath], onnx: bool = False, int8: bool = False,
                calib_dir: Path | None = None, calib_count: int = 16, workdir: Path | None = None,
                threads: int | None = None, int8_float: Sequence[str] = ("sensitive", "backbone")) -> list[Case]:
    """Cases for one of our models: each fast path, then ONNX Runtime fp32 and int8 (one per ``int8_float``).

    ONNX files are written to ``workdir``; int8 needs real frames in ``calib_dir`` (calibrating on
    noise would give wrong scales), so without them it is skipped with a log line.
    """
    flops = gflop(model, x.shape)
    cases = [_torch_case(label, group, model, x, device, fastpath, flops) for fastpath in fastpaths]
    stem = next((p for p in fastpaths if p.fp32_stem and p.precision == "bf16" and not p.compile), None)
    if stem is not None and device.type == "cpu" and int8_ready(model) and int8_available():
        cases.append(_int8_head_case(label, group, model, x, device, stem, flops))
    if not (onnx or int8) or device.type != "cpu":
        return cases
    if workdir is None:
        raise ValueError("ONNX and int8 cases need a workdir for their .onnx files")
    return cases + _ort_cases(label, "fast" if group == "ours" else group, model, x, flops, onnx, int8, calib_dir,
                              calib_count, workdir, threads, int8_float)


def _torch_case(label: str, group: str, model: nn.Module, x: torch.Tensor, device: torch.device,
                fastpath: FastPath, flops: float | None) -> Case:
    eager = fastpath.name == "fp32 eager"
    t = time.perf_counter()
    net = fast_model(model, fastpath, device)
    case = Case(f"{label} {fastpath.name}", group if eager or group != "ours" else "fast",
                lambda x, net=net: fast_call(net, x, fastpath), x, fastpath.precision, flops,
                None if eager else f"{label} fp32 eager")
    if fastpath.compile:
        logger.info("compiling %s (once) ...", case.name)
        case.run()
    case.setup_s = time.perf_counter() - t
    return case


def _int8_head_case(label: str, group: str, model: nn.Module, x: torch.Tensor, device: torch.device,
                    fastpath: FastPath, flops: float | None) -> Case:
    """``fastpath`` with the calibrated head convs in int8: what ``Segmenter`` runs with precision auto here."""
    t = time.perf_counter()
    net = fast_model(model, fastpath, device)
    use_int8(net, model.config["int8_ranges"])
    name = fastpath.name.replace("fp32-stem", "fp32-stem int8-head")
    case = Case(f"{label} {name}", "fast" if group == "ours" else group, lambda x, net=net: fast_call(net, x, fastpath),
                x, fastpath.precision, flops, f"{label} fp32 eager", note="head convs in int8, calibrated ranges")
    case.setup_s = time.perf_counter() - t
    return case


def _ort_cases(label: str, group: str, model: nn.Module, x: torch.Tensor, flops: float | None, onnx: bool,
               int8: bool, calib_dir: Path | None, calib_count: int, workdir: Path, threads: int | None,
               int8_float: Sequence[str]) -> list[Case]:
    from pspnet.export.onnx import export_onnx
    from pspnet.inference.ort import OrtModel

    ref = f"{label} fp32 eager"
    fp32_file = workdir / f"{label.replace(' ', '_')}.onnx"
    t = time.perf_counter()
    logger.info("exporting %s to ONNX ...", label)
    export_onnx(model, fp32_file, size=(min(x.shape[-2], 256), min(x.shape[-1], 256)), check=False)
    export_s = time.perf_counter() - t
    cases = []
    if onnx:
        cases.append(Case(f"{label} ORT fp32", group, OrtModel(fp32_file, threads=threads), x, "fp32", flops, ref,
                          export_s))
    if int8 and (calib_dir is None or not Path(calib_dir).is_dir()):
        logger.info("int8 skipped for %s: no calibration frames at %s (calibrating on noise would be wrong)",
                    label, calib_dir)
        return cases
    if int8:
        from pspnet.export.quantize import quantize_onnx

        for keep_float in int8_float:
            t = time.perf_counter()
            logger.info("quantizing %s to int8 (%s convs in float) on %d frames of %s ...", label, keep_float,
                        calib_count, calib_dir)
            q = quantize_onnx(fp32_file, workdir / f"{fp32_file.stem}_int8_{keep_float}.onnx", calib_dir,
                              calib_count, x.shape[-2:], keep_float=keep_float)
            cases.append(Case(f"{label} {INT8_NAMES[keep_float]}", group, OrtModel(q["path"], threads=threads), x,
                              "int8", flops, ref, export_s + time.perf_counter() - t,
                              note=f"static QDQ, {q['frames']} calibration frames, {keep_float} convs in float"))
    return cases


def load_cases(spec: str) -> CaseFactory:
    """The case factory named by ``spec``: ``file.py[:function]`` (default ``cases``) or ``module[:function]``.

    This is how models that are not pspnet's (peers from other libraries) join a run without the
    library depending on those libraries.
    """
    target, _, name = spec.partition(":")
    name = name or "cases"
    if target.endswith(".py"):
        file = Path(target)
        if not file.is_file():
            raise PSPNetError(f"--cases {spec}: {file} is not a file")
        module_spec = importlib.util.spec_from_file_location(f"_pspnet_cases_{file.stem}", file)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise PSPNetError(f"--cases {spec}: cannot import {target} ({err})") from err
    factory = getattr(module, name, None)
    if not callable(factory):
        raise PSPNetError(f"--cases {spec}: {target} defines no function {name}(num_classes, size, device)")
    return factory
