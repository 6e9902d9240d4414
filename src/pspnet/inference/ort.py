"""``OrtModel``: an exported .onnx file that Segmenter, predict_probs and evaluate use like a PSPNet.

It takes and returns torch tensors (logits), carries the model config read from the ONNX metadata,
and has the few ``nn.Module`` methods the callers touch (``eval``, ``train``, ``to``) as no-ops.
It runs .onnx files only: making one is export's job (``pspnet.export.onnx.cached_onnx`` turns a
bundled name or weights file into a cached .onnx, which is what ``--backend onnxruntime`` does).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pspnet.errors import PSPNetError

BACKENDS = ("torch", "onnxruntime")
CONFIG_KEY = "pspnet_config"  # the ONNX metadata_props key that holds the model config


def uses_onnxruntime(model: Any, backend: str) -> bool:
    """Whether ``model`` runs in ONNX Runtime: asked for, or an exported .onnx file (which runs nowhere else)."""
    if backend not in BACKENDS:
        raise PSPNetError(f"backend must be 'torch' or 'onnxruntime', got {backend!r}")
    return backend == "onnxruntime" or (isinstance(model, (str, Path)) and Path(model).suffix == ".onnx")


class OrtModel:
    """An ONNX Runtime session with a PSPNet-like call: ``model(x) -> logits`` for (N, 3, H, W) float input."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise PSPNetError(f"the onnxruntime backend needs onnxruntime: pip install 'pspnet[onnx]' ({err})") from err
        if not isinstance(path, (str, Path)) or Path(path).suffix != ".onnx":
            shown = path if isinstance(path, (str, Path)) else f"a {type(path).__name__}"
            raise PSPNetError(f"{shown}: the onnxruntime backend runs .onnx files; export the model first "
                              "(`pspnet export`, or pspnet.export.onnx.cached_onnx(model) in Python)")
        path = Path(path)
        if not path.is_file():
            raise PSPNetError(f"{path}: no such ONNX file")
        self.path = path
        self.config: dict[str, Any] = read_onnx_config(path)
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise PSPNetError(f"{path}: device {device!r} asked for, but this onnxruntime has no CUDA provider "
                                  "(pip install onnxruntime-gpu)")
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # constant-folding notices are not the user's problem
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            raise PSPNetError(f"{path}: ONNX Runtime cannot load it ({err})") from err
        self.input_name = self.session.get_inputs()[0].name
        self.training = False

    @property
    def num_classes(self) -> int:
        return self.config["num_classes"]

    @property
    def class_names(self) -> list[str]:
        return self.config["class_names"]

    @property
    def align_corners(self) -> bool:
        return self.config.get("align_corners", True)

    def eval(self) -> "OrtModel":
        return self

    def train(self, mode: bool = True) -> "OrtModel":
        if mode:
            raise PSPNetError(f"{self.path}: an ONNX model cannot be trained")
        return self

    def to(self, *args: Any, **kwargs: Any) -> "OrtModel":
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise PSPNetError(f"{self.path}: expected input (N, 3, H, W), got {tuple(x.shape)}")
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        (logits,) = self.session.run(None, {self.input_name: arr})
        return torch.from_numpy(logits).to(x.device)

    def __repr__(self) -> str:
        return f"OrtModel({str(self.path)!r}, providers={self.session.get_providers()})"


def read_onnx_config(path: str | Path) -> dict[str, Any]:
    """The PSPNet config stored in an exported file's metadata (without loading the weights)."""
    try:
        import onnx
    except ImportError as err:
        raise PSPNetError(f"reading ONNX files needs onnx: pip install 'pspnet[onnx]' ({err})") from err
    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and friends
        raise PSPNetError(f"{path}: not a readable ONNX file ({err})") from err
    meta = {p.key: p.value for p in proto.metadata_props}
    if CONFIG_KEY not in meta:
        raise PSPNetError(f"{path}: no '{CONFIG_KEY}' in the ONNX metadata; export it with `pspnet export`")
    return json.loads(meta[CONFIG_KEY])
