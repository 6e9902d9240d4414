"""Fast inference paths for a PSPNet in PyTorch: BN folding, channels_last, bf16/fp16, torch.compile.

``fast_model`` returns the module to call and ``fast_call`` runs it with the right input layout,
dtype and autocast, so a path is one (model, settings) pair that the benchmark and users share.
What each step buys on a CPU:

- BN folding removes one pass over every conv output (eager PyTorch does not fuse them).
- channels_last (NHWC) is oneDNN's native layout: no reorder before and after every conv.
- bf16 halves memory traffic and, with AMX/AVX512-BF16, runs convs on the bf16 units. Never used
  where bf16 is emulated (see ``pspnet.device.native_bf16``). Under autocast the conv weights are
  stored in bf16 once: autocast would round them the same way on every call (weights that need no
  grad are not cached), so the labels are bit-identical and the bundled model is about 2.5% faster.
  ``cast_weights`` runs the whole model in bf16 instead, without autocast.
- ``fp32_stem`` keeps the convs at half resolution or more with at most 64 output channels (the stem, and
  in EfficientNets the first block) in fp32 under bf16 autocast: rounding them to bf16 moved 0.43% of the
  bundled CamVid model's labels on CamVid val (0.19% with this), for about 5% more time; they are about 1%
  of PSPNet-R50's FLOPs. (With bf16 weights the model moves 0.43% again: not what Segmenter runs.) Wider
  convs at that resolution (EfficientNet's first expansion to 96 channels, the deep ResNet stem's 128) write
  the network's largest activation: in fp32 it was 32 MB per 504x672 input, 12% of the bundled model's time,
  and in bf16 it moved no more labels (55 CamVid frames at 1.5x: 99.834% against 99.835% agreement with fp32).
- ``fuse_act``: on CPUs, a conv followed by ReLU/ReLU6 (after BN folding: most convs of EfficientNet-Lite and
  of the heads) runs as one oneDNN call with the activation as a post-op, instead of writing the conv's output
  and reading it back for a separate clamp: 8% of the bundled model's time. The same values: bit for bit in
  bf16; in fp32 within rounding (2e-7), as oneDNN may sum a conv with a post-op in another order.
- ``zero_tap_same``: timm's TF-ported models (``tf_efficientnet_lite*``) pad the input of each stride-2 conv
  with F.pad, one pixel more at the end than at the start, which Conv2d's symmetric padding cannot say. The
  copy goes to a fresh buffer, page-faulted and filled on every call: 30% of the bundled model's time in a
  process that runs only it. One zero tap at the start of the kernel and symmetric padding give the same
  windows, so the same sums, without the copy. (Not for training: there the wider kernel's backward costs
  more than the copy, 1.26 against 1.13 s per step of batch 8 at 288x384.)
- torch.compile (Inductor, with freezing) fuses the elementwise tails and prepacks weights; it
  pays when the model is called many times at one input size: compiling takes about 25 s for
  PSPNet-R50 on two cores, and every new size compiles again.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pspnet.errors import PSPNetError
from pspnet.inference.fold import fold_batchnorm
from pspnet.device import autocast


@dataclass(frozen=True)
class FastPath:
    """One inference configuration; ``precision`` is fp32, bf16 or fp16."""

    name: str
    precision: str = "fp32"
    fold_bn: bool = False
    channels_last: bool = False
    cast_weights: bool = False  # run the whole model in ``precision`` instead of autocast
    fp32_stem: bool = False  # with autocast: convs at >= 1/2 resolution stay fp32 (see the module docstring)
    precast: bool = True  # with autocast: store the conv weights in ``precision`` once (identical results)
    zero_tap_same: bool = False  # TF "same" padding as zero kernel taps (identical results)
    fuse_act: bool = False  # CPU: conv + ReLU/ReLU6 as one oneDNN call (identical results)
    compile: bool = False

    @property
    def dtype(self) -> torch.dtype:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)


class Float32(nn.Module):
    """Runs ``module`` in fp32 inside a bf16/fp16 model or autocast region."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.module(x.float())


class ZeroTapSameConv(nn.Conv2d):
    """A stride-s conv with TensorFlow's "same" padding, without padding the input (see the module docstring).

    TF pads ``total // 2`` before and the rest after. Where those differ by one, a zero row (column) of taps
    at the start of the kernel and ``after`` on both sides give exactly TF's windows. Undilated only: with
    dilation d a tap is d pixels wide.
    """

    def weight_and_padding(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """The kernel (with its zero taps, if any) and the symmetric padding that give TF's windows on ``x``."""
        padding, taps = [], []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            padding.append(total - total // 2)
            taps.append(total % 2)
        weight = F.pad(self.weight, (taps[1], 0, taps[0], 0)) if any(taps) else self.weight
        return weight, tuple(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, padding = self.weight_and_padding(x)
        return F.conv2d(x, weight, self.bias, self.stride, padding, 1, self.groups)


def use_zero_tap_same(net: nn.Module) -> int:
    """Swap timm's ``Conv2dSame`` (undilated) for ``ZeroTapSameConv`` in place, weights shared; returns how many."""
    from timm.layers import Conv2dSame

    swapped = 0
    for parent in list(net.modules()):
        for name, conv in list(parent.named_children()):
            if isinstance(conv, Conv2dSame) and conv.dilation == (1, 1):
                new = ZeroTapSameConv(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                      groups=conv.groups, bias=conv.bias is not None)
                new.weight, new.bias = conv.weight, conv.bias
                setattr(parent, name, new)
                swapped += 1
    return swapped


# oneDNN post-op (name, scalars) of each activation a conv can take in one call
FUSED_ACTIVATIONS: dict[type, tuple[str, list[float]]] = {nn.ReLU: ("relu", []), nn.ReLU6: ("hardtanh", [0.0, 6.0])}


def _fused_conv_op() -> object | None:
    """oneDNN's conv with a post-op (what Inductor emits on CPU), where this PyTorch build has it."""
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_convolution_pointwise", None)


class ConvAct(nn.Module):
    """``act(conv(x))`` as one oneDNN call on CPU (see ``fuse_act`` in the module docstring); elsewhere, or
    where the call does not apply (float64, training), the two modules one after the other."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module):
        super().__init__()
        self.conv, self.act = conv, act
        self.post_op, self.scalars = FUSED_ACTIVATIONS[type(act)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, op = self.conv, _fused_conv_op()
        same = isinstance(conv, ZeroTapSameConv)
        weight, padding = conv.weight_and_padding(x) if same else (conv.weight, conv.padding)
        autocasting = torch.is_autocast_enabled("cpu") and x.dtype == torch.float32
        dtype = torch.get_autocast_dtype("cpu") if autocasting else weight.dtype
        if (x.device.type != "cpu" or op is None or torch.is_grad_enabled()
                or dtype not in (torch.float32, torch.bfloat16)):
            return self.act(F.conv2d(x, weight, conv.bias, conv.stride, padding, conv.dilation, conv.groups))
        bias = conv.bias.to(dtype) if conv.bias is not None else None
        return op(x.to(dtype), weight.to(dtype), bias, list(padding), list(conv.stride), list(conv.dilation),
                  conv.groups, self.post_op, self.scalars, "")


def _fused(conv: nn.Module, act: nn.Module) -> nn.Module | None:
    """``ConvAct(conv, act)`` (inside ``Float32`` if ``conv`` is an fp32 stem conv), or None if they cannot fuse."""
    if isinstance(conv, Float32):
        inner = _fused(conv.module, act)
        return Float32(inner) if inner is not None else None
    if (type(conv) in (nn.Conv2d, ZeroTapSameConv) and type(act) in FUSED_ACTIVATIONS
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)):
        return ConvAct(conv, act)
    return None


def fuse_activations(net: nn.Module) -> int:
    """Turn each conv that a ReLU/ReLU6 follows into a ``ConvAct``, in place; returns how many.

    Run after ``fold_batchnorm``: a folded timm BN+activation leaves ``AfterBatchNorm(Identity, act)`` right after
    its conv, and our heads (conv, BN, ReLU) leave (conv, Identity, ReLU) in their ``nn.Sequential``."""
    from pspnet.inference.fold import NAMED_PAIRS, AfterBatchNorm

    fused = 0
    for module in list(net.modules()):
        for conv_name, after_name in NAMED_PAIRS.get(type(module).__name__, ()):
            conv, after = getattr(module, conv_name, None), getattr(module, after_name, None)
            if isinstance(after, AfterBatchNorm) and isinstance(after.drop, nn.Identity):
                new = _fused(conv, after.act)
                if new is not None:
                    setattr(module, conv_name, new)
                    setattr(module, after_name, nn.Identity())
                    fused += 1
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b, c in zip(names, names[1:], names[2:]):
                conv, between, act = module._modules[a], module._modules[b], module._modules[c]
                new = _fused(conv, act) if isinstance(between, nn.Identity) else None
                if new is not None:
                    module._modules[a], module._modules[c] = new, nn.Identity()
                    fused += 1
    return fused


def high_resolution_convs(model: nn.Module, size: int = 64, max_channels: int = 64) -> list[str]:
    """Names of the Conv2d modules whose output is at half the input resolution or more and has at most
    ``max_channels`` channels (found by one forward)."""
    found: list[str] = []
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: found.append(name)
                                     if 2 * o.shape[-2] >= size and o.shape[1] <= max_channels else None)
             for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return list(dict.fromkeys(found))


def precast_for_autocast(net: nn.Module, dtype: torch.dtype) -> None:
    """Store the weights of the convs and linears that autocast runs in ``dtype`` already in it (not those
    wrapped in ``Float32``): autocast's own cast of them is then a no-op instead of a copy on every call."""
    kept = {id(sub) for m in net.modules() if isinstance(m, Float32) for sub in m.modules()}
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in kept:
            for p in m.parameters(recurse=False):
                p.data = p.data.to(dtype)


def fast_model(model: nn.Module, path: FastPath, device: torch.device | str = "cpu") -> nn.Module:
    """A copy of ``model`` prepared for ``path`` (folded, NHWC, cast, compiled as asked); eval mode."""
    if path.fp32_stem and path.cast_weights:
        raise PSPNetError(f"{path.name}: fp32_stem works with autocast only (cast_weights=False)")
    device = torch.device(device)
    net = copy.deepcopy(model).eval().to(device)
    if path.fold_bn:
        net = fold_batchnorm(net, inplace=True)
    if path.zero_tap_same:
        use_zero_tap_same(net)
    if path.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if path.fp32_stem and path.precision != "fp32":
        for name in high_resolution_convs(net):
            parent, _, child = name.rpartition(".")
            owner = net.get_submodule(parent)
            setattr(owner, child, Float32(getattr(owner, child)))
    if path.fuse_act and device.type == "cpu" and not path.compile:  # Inductor fuses them itself
        fuse_activations(net)
    if path.cast_weights and path.precision != "fp32":
        net = net.to(path.dtype)
    elif path.precast and path.precision != "fp32":
        precast_for_autocast(net, path.dtype)
    for p in net.parameters():
        p.requires_grad_(False)
    if path.compile:  # freezing: constant-fold the weights and prepack them for oneDNN
        net = torch.compile(net, dynamic=False, options={"freezing": True})
    return net


def fast_call(net: nn.Module, x: torch.Tensor, path: FastPath) -> torch.Tensor:
    """Logits of ``net`` (prepared by ``fast_model``) for ``x`` under ``path``'s layout and precision."""
    if path.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ctx: contextlib.AbstractContextManager = contextlib.nullcontext()
    if path.cast_weights and path.precision != "fp32":
        x = x.to(path.dtype)
    elif path.precision != "fp32":
        ctx = autocast(x.device, path.precision)
    with torch.inference_mode(), ctx:
        return net(x)
