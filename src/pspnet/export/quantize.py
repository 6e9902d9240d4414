"""int8 post-training quantization with ONNX Runtime (static, QDQ, per-channel weights).

Why ONNX Runtime rather than PyTorch PT2E: it needs no compile step, runs the same file on
AVX2, AVX512-VNNI and AMX cores (MLAS picks the kernel), and ships as one .onnx with the config in
its metadata. Only convolutions are quantized (u8 activations, s8 per-channel weights); pooling
matrices, resizes and the softmax stay in float, so the pyramid pooling stays exact at every size.
Ranges come from real frames (``calibration_frames``), never from noise, and the result is held
to the same argmax-agreement rule as every other fast path.

Which convolutions stay in float (``keep_float``), measured on the bundled CamVid model (argmax
agreement with fp32 on CamVid val frames, MinMax ranges from 16 train frames; percentile and entropy
ranges were no better):

- ``classifier``: every conv but the final 1x1 classifier is int8: 92.5% agreement (8 frames).
- ``sensitive``: also the stem (it sees raw pixels) and depthwise convs (nine taps per channel, so
  per-channel int8 weights are coarse; they are a few percent of the FLOPs): 99.0% (101 frames).
- ``backbone`` (the default, the only one within the 99.5% rule): only the pyramid pooling, head
  and decoder convs are int8 (most of the FLOPs at output stride 16): 99.8% (101 frames).

On CPUs with AMX/AVX512-BF16, bf16 in PyTorch is faster than any of these (see docs/deploy.md);
int8 is for CPUs without native bf16.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from pspnet.errors import PSPNetError
from pspnet.files import atomic_path


def calibration_frames(folder: str | Path, count: int, mean: Sequence[float], std: Sequence[float],
                       size: Sequence[int] | None = None) -> list[np.ndarray]:
    """``count`` frames spread evenly over ``folder``, as normalised (1, 3, H, W) float32 arrays."""
    from PIL import Image

    from pspnet.data.io import list_images, read_image, spread_evenly, to_input

    folder = Path(folder)
    if not folder.is_dir():
        raise PSPNetError(f"{folder}: calibration folder does not exist")
    files = list_images(folder)
    if not files:
        raise PSPNetError(f"{folder}: no images to calibrate on")
    out = []
    for path in spread_evenly(files, count):
        im = read_image(path)
        if size is not None:
            im = im.resize((int(size[-1]), int(size[0])), Image.BILINEAR)
        out.append(to_input([im], mean, std).numpy())
    return out


class _Reader:
    """onnxruntime CalibrationDataReader over a list of arrays."""

    def __init__(self, name: str, frames: list[np.ndarray]):
        self.name, self.frames = name, frames
        self._it: Iterator[np.ndarray] = iter(frames)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {self.name: x}

    def rewind(self) -> None:
        self._it = iter(self.frames)


KEEP_FLOAT = ("classifier", "sensitive", "backbone")


def float_convs(nodes: Sequence[Any], keep_float: str) -> list[str]:
    """Names of the Conv nodes that ``keep_float`` (see the module docstring) leaves in float."""
    if keep_float not in KEEP_FLOAT:
        raise PSPNetError(f"keep_float must be one of {', '.join(KEEP_FLOAT)}, got {keep_float!r}")
    convs = [n for n in nodes if n.op_type == "Conv"]
    keep = convs[-1:]  # the classifier: tiny, and its output ranks the classes directly
    if keep_float == "sensitive":
        keep += convs[:1] + [n for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    elif keep_float == "backbone":
        backbone = [n for n in convs if n.name.startswith("/backbone/")]  # the exporter names nodes by module
        if not backbone:
            raise PSPNetError("keep_float='backbone' needs node names from module scopes (/backbone/...), as "
                              "pspnet export writes them with the default torchscript exporter")
        keep += backbone
    return list(dict.fromkeys(n.name for n in keep))


def quantize_onnx(fp32_path: str | Path, out: str | Path, calib_dir: str | Path, count: int = 32,
                  size: Sequence[int] | None = None, method: str = "minmax",
                  keep_float: str = "backbone") -> dict[str, Any]:
    """Write an int8 copy of an exported fp32 model, calibrated on ``count`` frames of ``calib_dir``.

    ``size`` resizes the calibration frames (default: their own size); ``keep_float`` says which
    convs stay in float (see the module docstring).
    """
    try:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    except ImportError as err:
        raise PSPNetError(f"int8 quantization needs onnx and onnxruntime: pip install 'pspnet[onnx]' ({err})") from err
    from pspnet.inference.ort import read_onnx_config

    fp32_path, out = Path(fp32_path), Path(out)
    config = read_onnx_config(fp32_path)
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise PSPNetError(f"calibration method must be one of {sorted(methods)}, got {method!r}")
    frames = calibration_frames(calib_dir, count, config["mean"], config["std"], size)
    proto = onnx.load(str(fp32_path))
    convs = [n.name for n in proto.graph.node if n.op_type == "Conv"]
    exclude = float_convs(proto.graph.node, keep_float)
    reader = _Reader(proto.graph.input[0].name, frames)
    with atomic_path(out) as tmp:
        quantize_static(str(fp32_path), str(tmp), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method], nodes_to_exclude=exclude,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        q = onnx.load(str(tmp))
        del q.metadata_props[:]
        for p in proto.metadata_props:
            q.metadata_props.add(key=p.key, value=p.value)
        q.metadata_props.add(key="quantization", value=f"int8 static QDQ, per-channel, {method}, {len(frames)} frames "
                                                        f"from {Path(calib_dir).name}, float: {keep_float}")
        onnx.save(q, str(tmp))
    for leftover in out.parent.glob("*augmented_model*.onnx"):  # onnxruntime's calibration scratch file
        leftover.unlink(missing_ok=True)
    return {"path": str(out), "frames": len(frames), "method": method, "keep_float": keep_float,
            "quantized_convs": len(convs) - len(exclude), "float_convs": len(exclude), "bytes": out.stat().st_size}


def compare_on_frames(reference: str | Path, candidate: str | Path, folder: str | Path, count: int = 8,
                      size: Sequence[int] | None = None) -> dict[str, float]:
    """Argmax agreement and max logit difference of two exported models on real frames (e.g. int8 vs fp32)."""
    import torch

    from pspnet.inference.ort import OrtModel

    ref, cand = OrtModel(reference), OrtModel(candidate)
    frames = calibration_frames(folder, count, ref.config["mean"], ref.config["std"], size)
    agree, total, diff = 0, 0, 0.0
    for f in frames:
        x = torch.from_numpy(f)
        a, b = ref(x), cand(x)
        agree += int((a.argmax(1) == b.argmax(1)).sum())
        total += a.shape[0] * a.shape[2] * a.shape[3]
        diff = max(diff, float((a - b).abs().max()))
    return {"frames": len(frames), "argmax_agreement": agree / total, "max_abs_diff": diff}
