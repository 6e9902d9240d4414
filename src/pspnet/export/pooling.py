"""Adaptive average pooling that exports with its bins computed from the runtime input size.

``nn.AdaptiveAvgPool2d(b)`` exports (TorchScript and dynamo exporters alike) as an ``AveragePool``
whose kernel and stride were worked out for the traced size; at any other size the bins are wrong,
or the export refuses when the size is not a multiple of ``b``. Here every bin is an explicit
average over rows ``floor(i*H/b) .. ceil((i+1)*H/b)`` (PyTorch's definition), written as two small
pooling matrices built from ``x.shape`` at run time and two matmuls, so one exported graph is
exact at every input size, odd ones included. The cost is negligible: the matrices are (b, H).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def pooling_matrix(size: int | torch.SymInt, bins: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(bins, size) matrix whose row i averages input positions floor(i*size/bins) .. ceil((i+1)*size/bins)-1."""
    i = torch.arange(bins, device=device)
    start = torch.div(i * size, bins, rounding_mode="floor")
    end = torch.div((i + 1) * size + bins - 1, bins, rounding_mode="floor")
    j = torch.arange(size, device=device)
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    return inside.to(dtype) / (end - start).to(dtype)[:, None]


class ExportableAdaptiveAvgPool2d(nn.Module):
    """Drop-in for ``nn.AdaptiveAvgPool2d(b)`` (square or (bh, bw) output) that is exact in ONNX at any size."""

    def __init__(self, output_size: int | tuple[int | None, int | None]):
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.output_size = tuple(output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        bh, bw = self.output_size
        bh, bw = bh or h, bw or w  # None keeps that dimension, as in PyTorch
        if bh == 1 and bw == 1:  # global pooling has a native op (GlobalAveragePool / ReduceMean)
            return x.mean((-2, -1), keepdim=True)
        ph = pooling_matrix(h, bh, x.device, x.dtype)
        pw = pooling_matrix(w, bw, x.device, x.dtype)
        return torch.matmul(torch.matmul(ph, x), pw.transpose(0, 1))

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


def make_pooling_exportable(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Replace every ``nn.AdaptiveAvgPool2d`` by ``ExportableAdaptiveAvgPool2d`` (a copy unless ``inplace``)."""
    model = model if inplace else copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d):
                setattr(parent, name, ExportableAdaptiveAvgPool2d(child.output_size))
    return model
