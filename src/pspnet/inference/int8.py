"""int8 for the head's two large 3x3 convs, on CPUs where it beats bf16 (AVX512-VNNI without AMX), via oneDNN.

Why these two: in the bundled CamVid model the pyramid bottleneck (``cls.0``, 640 -> 512 channels at 1/16) and the
decoder's fuse conv (``decoder.fuse.0``, 176 -> 128 at 1/4) are 55% of the FLOPs, dense and compute-bound, and oneDNN
runs them in int8 in half the bf16 time on a Zen4 core. The backbone stays float: its depthwise and stem convs
lost 0.8% argmax agreement in int8 (ONNX Runtime, docs/deploy.md).

Static quantization: weights symmetric s8 per output channel, inputs asymmetric u8 per tensor over a range
calibrated on real frames (``calibrate_int8``). A scale computed per frame instead cost an extra pass over the
input, and every new scale a new oneDNN primitive. The ranges are saved in the model config with a digest of all the
model's weights, so a model trained further does not run on stale ranges (``int8_ready`` says no).
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable

import torch
from torch import nn

from pspnet.data.io import ImageLike, to_input, to_pil
from pspnet.device import cpu_int8_beats_bf16
from pspnet.errors import PSPNetError
from pspnet.inference.fast import ConvAct

HEAD_CONVS = ("cls.0", "decoder.fuse.0")


def head_convs(model: nn.Module) -> list[str]:
    """The names of the head convs this model has (the decoder's only with a decoder)."""
    names = dict(model.named_modules())
    return [name for name in HEAD_CONVS if isinstance(names.get(name), nn.Conv2d)]


def weights_digest(model: nn.Module) -> str:
    """sha256 of every weight and buffer: the ranges hold for exactly these. A conv's input range depends on all
    the layers before it, so a backbone trained further (head frozen) must invalidate them too."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def calibrate_int8(model: nn.Module, images: Iterable[ImageLike]) -> dict[str, Any]:
    """Record the input range of each head conv over ``images`` (real frames like those it will segment: anything
    ``Segmenter`` reads) in fp32 eval mode; store it in ``model.config["int8_ranges"]`` (saved with the
    weights by ``save_pretrained``) and return it."""
    names = head_convs(model)
    lows = {name: 0.0 for name in names}
    highs = {name: 0.0 for name in names}

    def record(name: str, x: torch.Tensor) -> None:
        lo, hi = torch.aminmax(x.float())
        lows[name], highs[name] = min(lows[name], float(lo)), max(highs[name], float(hi))

    hooks = [model.get_submodule(n).register_forward_pre_hook(lambda m, args, n=n: record(n, args[0])) for n in names]
    was_training = model.training
    model.eval()
    frames = 0
    device = next(model.parameters()).device
    try:
        for image in images:
            model(to_input([to_pil(image)], model.config["mean"], model.config["std"]).to(device))
            frames += 1
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not frames:
        raise PSPNetError("int8 calibration needs at least one frame")
    ranges = {"ranges": {n: [lows[n], highs[n]] for n in names}, "digest": weights_digest(model),
              "frames": frames}
    model.config["int8_ranges"] = ranges
    return ranges


def int8_ready(model: nn.Module) -> bool:
    """Whether ``model`` carries int8 ranges calibrated for its current head weights."""
    ranges = getattr(model, "config", {}).get("int8_ranges")
    if not ranges:
        return False
    return list(ranges["ranges"]) == head_convs(model) and ranges["digest"] == weights_digest(model)


def int8_available() -> bool:
    """oneDNN's int8 conv is in this PyTorch build and the CPU runs it faster than bf16."""
    return (cpu_int8_beats_bf16() and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.onednn, "qconv2d_pointwise"))


class Int8Conv(nn.Module):
    """A float conv (with its fused ReLU, if any) as oneDNN's u8 x s8 conv; the output comes back in the float
    dtype the rest of the model runs in (bf16 under bf16 autocast)."""

    def __init__(self, module: nn.Module, low: float, high: float):
        super().__init__()
        conv = module.conv if isinstance(module, ConvAct) else module
        self.post_op, self.scalars = (module.post_op, module.scalars) if isinstance(module, ConvAct) else ("none", [])
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        low, high = min(low, 0.0), max(high, 0.0)
        self.x_scale = max(high - low, 1e-8) / 255
        self.x_zero_point = int(round(-low / self.x_scale))
        weight = conv.weight.detach().float()
        # plain attributes, not buffers: oneDNN's packed weight is for this process only, never saved
        self.w_scale = weight.abs().amax((1, 2, 3)).clamp_min(1e-12) / 127
        self.w_zero_point = torch.zeros(len(weight), dtype=torch.int64)
        qweight = (weight / self.w_scale.view(-1, 1, 1, 1)).round().clamp(-127, 127).to(torch.int8)
        self.packed = torch.ops.onednn.qconv_prepack(qweight, self.w_scale, self.x_scale, self.x_zero_point,
                                                     self.stride, self.padding, self.dilation, self.groups, None)
        self.bias = conv.bias.detach().float() if conv.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        qx = x.to(torch.float32, copy=True).mul_(1 / self.x_scale).add_(self.x_zero_point).round_().clamp_(0, 255)
        return torch.ops.onednn.qconv2d_pointwise(
            qx.to(torch.uint8), self.x_scale, self.x_zero_point, self.packed, self.w_scale, self.w_zero_point,
            self.bias, self.stride, self.padding, self.dilation, self.groups, 1.0, 0, out_dtype, self.post_op,
            self.scalars, "")


def use_int8(net: nn.Module, ranges: dict[str, Any]) -> list[str]:
    """Swap the calibrated head convs of a fast-path copy (``fast_model``) for ``Int8Conv``, in place."""
    swapped = []
    for name, (low, high) in ranges["ranges"].items():
        parent, _, child = name.rpartition(".")
        owner = net.get_submodule(parent)
        setattr(owner, child, Int8Conv(getattr(owner, child), low, high))
        swapped.append(name)
    return swapped
