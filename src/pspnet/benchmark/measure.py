"""Measuring primitives: one timed call, peak memory, FLOP counts, the matmul peak, the machine.

Everything the benchmark reports as a number comes from here, so every case is measured the same
way: ``timed`` synchronises the device around the call, ``PeakMemory`` reads the CUDA allocator or
samples the process RSS every millisecond on the CPU, and ``gflop`` counts on the meta device.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from pspnet.device import cpu_flags, native_bf16, rss_bytes

# CPU flags that decide which fast paths exist (bf16/int8 units), reported with every result
FLAGS_OF_INTEREST = frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
                               "amx_int8", "avx_vnni"})


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(call: Callable[[], Any], device: torch.device) -> float:
    """Seconds that one ``call()`` takes, with the device synchronised before and after."""
    sync(device)
    t = time.perf_counter()
    call()
    sync(device)
    return time.perf_counter() - t


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: on Linux the latter keeps the parent's peak across
    fork and exec, so a child of a big benchmark process would report the parent's memory."""
    with contextlib.suppress(OSError, StopIteration):
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
            self._base = rss_bytes()
            self._max = self._base
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, rss_bytes()) - self._base


def gflop(model: nn.Module, shape: Sequence[int]) -> float | None:
    """Forward GFLOP (multiply-add = 2) counted on the meta device, so it costs no compute.

    A model the meta device cannot run (an ONNX Runtime session, a custom kernel) is counted with
    one real forward on its own device instead; ``None`` if neither works.
    """
    from torch.utils.flop_counter import FlopCounterMode

    try:
        meta = copy.deepcopy(model).to("meta").eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            meta(torch.empty(*shape, device="meta"))
        return counter.get_total_flops() / 1e9
    except Exception:
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
            best = min(best, timed(op, device))
        return 2 * n**3 / best / 1e9
    except Exception:
        return None


def number_formats(device: torch.device, int8: bool) -> dict[str, torch.dtype]:
    """The number formats whose matmul peak a case on ``device`` can be compared with."""
    formats = {"fp32": torch.float32}
    if native_bf16(device):
        formats["bf16"] = torch.bfloat16
    if device.type == "cuda":
        formats["fp16"] = torch.float16
    if device.type == "cpu" and int8:
        formats["int8"] = torch.int8
    return formats


def matmul_peaks(device: torch.device, formats: dict[str, torch.dtype], seconds: float) -> dict[str, float | None]:
    return {k: matmul_peak(device, dtype, seconds=seconds) for k, dtype in formats.items()}


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU model and the flags that decide the fast paths, threads, library versions, load average."""
    cpu_name = ""
    with contextlib.suppress(OSError):
        cpu_name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("model name")), "")
    info = {"cpu": cpu_name or platform.processor(), "cores_available": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "cpu_flags": sorted(cpu_flags() & FLAGS_OF_INTEREST),
            "native_bf16": native_bf16(device), "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    with contextlib.suppress(ImportError):
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    return info
