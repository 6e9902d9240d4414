"""Device and precision choices: never pick a slow path by default.

bf16 on the CPU is fast only with native instructions (AVX512-BF16 or AMX); on AVX2-only cores it
is emulated and about 100x slower, so ``auto`` falls back to fp32 there. The same holds on CUDA:
``torch.cuda.is_bf16_supported()`` answers True on pre-Ampere GPUs, where bf16 is emulated, so
``auto`` asks for native support only and uses fp16 (tensor cores since Volta) otherwise.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import warnings
from pathlib import Path

import torch

from pspnet.errors import PSPNetError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo ("flags" on x86, "Features" on ARM; empty without the file)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True where bf16 matmuls/convs run in hardware: AVX512-BF16 or AMX on x86, the BF16 extension on ARM."""
    flags = cpu_flags()
    if {"avx512_bf16", "amx_bf16"} & flags:
        return True
    return platform.machine() in ("arm64", "aarch64") and "bf16" in flags


def cpu_int8_beats_bf16() -> bool:
    """True where int8 convs were measured faster than bf16 ones: AVX512-VNNI without AMX (a Zen4 core runs the
    bundled model's big head convs in half the bf16 time). With AMX, bf16 already runs on the tile unit and int8
    was not measured, so no: a slower path is never the default."""
    flags = cpu_flags()
    return "avx512_vnni" in flags and not {"amx_bf16", "amx_int8"} & flags


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``auto`` (or None) -> the GPU if there is one, else the CPU; any other name must exist here.

    Checked before a model is loaded, so ``--device nonsense`` or ``cuda`` on a machine without a GPU is
    one line saying what is available, not a traceback from deep inside torch.
    """
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as err:
        raise PSPNetError(f"--device {device}: not a device name (use auto, cpu, cuda or cuda:N)") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise PSPNetError(f"--device {device}: no CUDA GPU is available here (use cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise PSPNetError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) here")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise PSPNetError(f"--device {device}: MPS is not available here (use cpu or auto)")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise PSPNetError(f"--device {device}: unsupported device type (use auto, cpu, cuda or cuda:N)")
    return dev


def cuda_has_native_bf16(device: torch.device | None = None) -> bool:
    """True on GPUs with bf16 tensor cores (compute capability 8.0+), never for emulated bf16."""
    if not torch.cuda.is_available():
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch without the keyword
        return torch.cuda.get_device_capability(device)[0] >= 8


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 runs in hardware on ``device`` (the only case where it is faster than fp32)."""
    if device.type == "cuda":
        return cuda_has_native_bf16(device)
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def native_precision(precision: str, device: torch.device) -> bool:
    """Whether ``precision`` (fp32, bf16, fp16) runs in hardware on ``device`` rather than being emulated."""
    if precision == "bf16":
        return native_bf16(device)
    if precision == "fp16" and device.type == "cpu":
        return bool({"avx512_fp16", "amx_fp16"} & cpu_flags())
    return True


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 where it is native (CPU with AVX512-BF16/AMX, GPU sm80+), fp16 on other CUDA GPUs, else fp32.

    On every one of these the fast path keeps >= 99.5% argmax agreement with fp32 (measured by
    ``pspnet benchmark`` over CamVid val); an emulated format is never chosen, and asking for one
    explicitly warns.
    """
    if precision not in PRECISIONS:
        raise PSPNetError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        if device.type in ("cpu", "cuda") and not native_precision(precision, device):
            warnings.warn(f"{precision} is emulated on this {device.type} (no native {precision} instructions) and much "
                          "slower than fp32; use --precision auto or fp32", RuntimeWarning, stacklevel=2)
        return precision
    if device.type == "cuda":
        return "bf16" if cuda_has_native_bf16(device) else "fp16"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """An autocast context for a resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def rss_bytes() -> int:
    """Resident memory of this process (0 where /proc is unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
