"""ONNX export with dynamic batch, height and width, and the model config in the file's metadata.

Two things make the exported graph correct at every input size, not just the traced one:
``nn.AdaptiveAvgPool2d`` is swapped for ``ExportableAdaptiveAvgPool2d`` (bins from the runtime shape,
see ``pooling.py``), and every resize takes its target size from the input's shape. ``export_onnx``
checks this by default: ONNX Runtime against PyTorch at two sizes other than the traced one.

The TorchScript-based exporter is the default: on this code it gives the same graph semantics as
the dynamo exporter (both pass the parity check) in a fifth of the time (about 20 s vs 100+ s for a
ResNet-18 PSPNet on two cores) and without its CastLike nodes. ``exporter="dynamo"`` is there for
when torch drops the TorchScript exporter.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from pspnet.errors import PSPNetError
from pspnet.files import atomic_path
from pspnet.export.pooling import make_pooling_exportable
from pspnet.inference.fold import fold_batchnorm
from pspnet.inference.ort import CONFIG_KEY, OrtModel
from pspnet.model.bundled import BUNDLED, WEIGHTS_DIR, load
from pspnet.model.hub import run_weights
from pspnet.model.serialization import WEIGHTS_NAME

DEFAULT_OPSET = 17
CHECK_SIZES: tuple[tuple[int, int], ...] = ((97, 131), (160, 120))  # odd and even, neither equal to the traced size


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise PSPNetError(f"ONNX export needs onnx and onnxruntime: pip install 'pspnet[onnx]' ({err})") from err


def as_model(model: "str | Path | nn.Module") -> nn.Module:
    """A PSPNet from a bundled name, weights path or Hub id; modules pass through."""
    if isinstance(model, nn.Module):
        return model
    return load(model)


def export_onnx(model: "str | Path | nn.Module", out: str | Path, *, size: Sequence[int] = (256, 256),
                opset: int = DEFAULT_OPSET, exporter: str = "torchscript", fold_bn: bool = True,
                check: bool = True, check_sizes: Sequence[Sequence[int]] = CHECK_SIZES,
                atol: float = 1e-3) -> dict[str, Any]:
    """Export ``model`` to ``out`` (.onnx) with dynamic N, H, W; returns a report (path, parity per size).

    ``size`` is only the example used for tracing. ``fold_bn`` folds BatchNorm into the convs first
    (ONNX Runtime would do it too; folding here makes the file smaller and the graph the same for
    every runtime). With ``check``, the parity against PyTorch at ``check_sizes`` must be within
    ``atol`` (max abs logit difference) or a ``PSPNetError`` is raised.
    """
    _require_onnx()
    import onnx

    out = Path(out)
    if out.suffix != ".onnx":
        raise PSPNetError(f"{out}: ONNX output files end in .onnx")
    src = as_model(model).eval()
    config = dict(getattr(src, "config", {}))
    net = make_pooling_exportable(copy.deepcopy(src).cpu().float(), inplace=True)
    if fold_bn:
        net = fold_batchnorm(net, inplace=True)
    net.eval()
    with atomic_path(out) as tmp:
        x = torch.randn(2, 3, int(size[0]), int(size[-1]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shape-to-int conversions, checked by parity below
            if exporter == "torchscript":
                torch.onnx.export(net, (x,), str(tmp), dynamo=False, opset_version=opset, input_names=["input"],
                                  output_names=["logits"], do_constant_folding=True,
                                  dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"},
                                                "logits": {0: "batch", 2: "height", 3: "width"}})
            elif exporter == "dynamo":
                dims = {0: torch.export.Dim("batch", min=1, max=1024), 2: torch.export.Dim("height", min=16, max=8192),
                        3: torch.export.Dim("width", min=16, max=8192)}
                program = torch.onnx.export(net, (x,), dynamo=True, opset_version=max(opset, 18), input_names=["input"],
                                            output_names=["logits"], dynamic_shapes={"x": dims}, optimize=True)
                program.save(str(tmp))
            else:
                raise PSPNetError(f"exporter must be 'torchscript' or 'dynamo', got {exporter!r}")
        proto = onnx.load(str(tmp))
        _inline_shared_initializers(proto)
        meta = {CONFIG_KEY: json.dumps(config), "producer": "pspnet",
                "input": "float32 (N, 3, H, W), RGB scaled to 0..1 then (x - mean) / std; any N, H, W",
                "output": "float32 logits (N, num_classes, H, W)"}
        for key in ("class_names", "palette", "mean", "std", "num_classes"):
            if key in config:
                meta[key] = json.dumps(config[key])
        del proto.metadata_props[:]
        for k, v in meta.items():
            proto.metadata_props.add(key=k, value=v)
        onnx.save(proto, str(tmp))
    report: dict[str, Any] = {"path": str(out), "opset": opset, "exporter": exporter, "bytes": out.stat().st_size,
                              "traced_size": [int(size[0]), int(size[-1])]}
    if check:
        report["parity"] = parity(src, out, check_sizes)
        bad = [p for p in report["parity"] if p["max_abs_diff"] > atol]
        if bad:
            raise PSPNetError(f"{out}: ONNX Runtime differs from PyTorch by {bad[0]['max_abs_diff']:.2e} at "
                              f"{bad[0]['size']} (limit {atol})")
    return report


def _inline_shared_initializers(proto: Any) -> None:
    """Point every ``Identity(initializer)`` consumer at its own copy of the initializer.

    The TorchScript exporter stores equal parameters once and feeds the others through Identity
    nodes (common after BN folding: untrained BNs fold to identical zero biases). Runtimes do not
    mind, but ONNX Runtime's quantizer needs each Conv bias to be an initializer, or it leaves that
    bias in float and the conv cannot become one int8 kernel.
    """
    inits = {i.name: i for i in proto.graph.initializer}
    outputs = {o.name for o in proto.graph.output}
    keep = []
    for node in proto.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            copy_ = proto.graph.initializer.add()
            copy_.CopyFrom(inits[node.input[0]])
            copy_.name = node.output[0]
        else:
            keep.append(node)
    if len(keep) < len(proto.graph.node):
        del proto.graph.node[:]
        proto.graph.node.extend(keep)


@torch.no_grad()
def parity(model: nn.Module, onnx_path: str | Path, sizes: Sequence[Sequence[int]] = CHECK_SIZES,
           batch: int = 1, seed: int = 0) -> list[dict[str, Any]]:
    """Max abs logit difference and argmax agreement of ONNX Runtime vs PyTorch at each (H, W)."""
    ort_model = OrtModel(onnx_path)
    gen = torch.Generator().manual_seed(seed)
    results = []
    for h, w in sizes:
        x = torch.randn(batch, 3, int(h), int(w), generator=gen)
        ref = model.eval()(x).float()
        got = ort_model(x)
        results.append({"size": [int(h), int(w)], "max_abs_diff": float((ref - got).abs().max()),
                        "argmax_agreement": float((ref.argmax(1) == got.argmax(1)).float().mean())})
    return results


def cached_onnx(model: str | Path, eval_scale: float | None = None) -> Path:
    """An exported copy of a bundled model or weights file, made once and kept in the user cache.

    Lets ``--backend onnxruntime`` take the same ``--model`` values as the torch backend; .onnx
    files are returned as they are. ``eval_scale`` overrides the model's own (the resize is in the graph).
    """
    if Path(model).suffix == ".onnx":
        if eval_scale is not None:
            raise PSPNetError(f"{model}: an .onnx file reads frames at the size fixed in its graph; export the "
                              "weights again with --eval-scale instead")
        return Path(model)
    name = str(model)
    source = WEIGHTS_DIR / BUNDLED[name] if name in BUNDLED else Path(name)
    if source.is_dir():
        source = source / WEIGHTS_NAME if (source / WEIGHTS_NAME).is_file() else run_weights(source)
    if not source.is_file():
        raise PSPNetError(f"{name}: the onnxruntime backend takes an .onnx file, a bundled model name, a weights file "
                          "or a model folder")
    stat = source.stat()
    key = hashlib.sha1(f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{eval_scale}".encode()).hexdigest()[:12]
    base = Path(os.environ.get("PSPNET_CACHE") or Path.home() / ".cache" / "pspnet") / "onnx"
    target = base / f"{source.stem}-{key}.onnx"
    if not target.is_file():
        base.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as part:
            export_onnx(load(name, eval_scale), part, check=False)
    return target
