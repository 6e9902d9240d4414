"""Precision choice: ``auto`` never picks an emulated format (capability checks mocked)."""

import warnings

import pytest
import torch

from pspnet import device
from pspnet.errors import PSPNetError

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


@pytest.fixture
def cpu_with(monkeypatch):
    """Pretend the CPU has exactly the given /proc/cpuinfo flags, on the given architecture."""

    def apply(flags: set[str], machine: str = "x86_64") -> None:
        monkeypatch.setattr(device, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(device.platform, "machine", lambda: machine)

    return apply


@pytest.mark.parametrize("flags, machine, expected", [
    ({"avx2", "fma"}, "x86_64", "fp32"),  # AVX2 only: bf16 would be emulated
    ({"avx2", "avx512f", "avx512_vnni"}, "x86_64", "fp32"),  # AVX-512 without BF16 is still emulation
    ({"avx512f", "avx512_bf16"}, "x86_64", "bf16"),
    ({"amx_tile", "amx_bf16"}, "x86_64", "bf16"),
    ({"asimd", "bf16"}, "aarch64", "bf16"),
    ({"asimd"}, "aarch64", "fp32"),
    ({"bf16"}, "x86_64", "fp32"),  # an ARM feature name means nothing on x86
    (set(), "x86_64", "fp32"),  # no /proc/cpuinfo (macOS, Windows): stay safe
])
def test_auto_on_cpu_uses_bf16_only_where_native(cpu_with, flags, machine, expected):
    cpu_with(flags, machine)
    assert device.resolve_precision("auto", CPU) == expected


@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}, True),  # Zen4: measured, the head's convs in half the time
    ({"avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8"}, False),  # AMX: bf16 on tiles, not measured
    ({"avx2", "fma"}, False),
    ({"avx2", "avx_vnni"}, False),  # 256-bit VNNI only: not measured
])
def test_int8_is_chosen_only_where_it_was_measured_faster(cpu_with, flags, expected):
    cpu_with(flags)
    assert device.cpu_int8_beats_bf16() is expected


def test_cpu_flags_reads_arm_features(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    real_path = device.Path
    monkeypatch.setattr(device, "Path", lambda p: info if p == "/proc/cpuinfo" else real_path(p))
    device.cpu_flags.cache_clear()
    try:
        assert {"bf16", "i8mm"} <= device.cpu_flags()
    finally:
        device.cpu_flags.cache_clear()


def test_explicit_emulated_bf16_warns_but_is_honoured(cpu_with):
    cpu_with({"avx2", "fma"})
    with pytest.warns(RuntimeWarning, match="emulated"):
        assert device.resolve_precision("bf16", CPU) == "bf16"
    with pytest.warns(RuntimeWarning, match="emulated"):
        assert device.resolve_precision("fp16", CPU) == "fp16"
    cpu_with({"amx_bf16"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert device.resolve_precision("bf16", CPU) == "bf16"
        assert device.resolve_precision("fp32", CPU) == "fp32"


def _fake_gpu(monkeypatch, capability: tuple[int, int], keyword: bool = True) -> None:
    """A CUDA device of ``capability``; ``is_bf16_supported`` says True with emulation, as torch does."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return including_emulation or capability[0] >= 8

    def old_is_bf16_supported() -> bool:  # torch before the keyword existed
        return True

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported if keyword else old_is_bf16_supported)


@pytest.mark.parametrize("keyword", [True, False])
@pytest.mark.parametrize("capability, expected", [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"),
                                                  ((9, 0), "bf16")])
def test_auto_on_cuda_uses_bf16_only_where_native(monkeypatch, capability, expected, keyword):
    _fake_gpu(monkeypatch, capability, keyword)
    assert device.resolve_precision("auto", CUDA) == expected


def test_explicit_bf16_on_pre_ampere_gpu_warns(monkeypatch):
    _fake_gpu(monkeypatch, (7, 5))
    with pytest.warns(RuntimeWarning, match="emulated"):
        device.resolve_precision("bf16", CUDA)


def test_unknown_precision_is_a_clear_error():
    with pytest.raises(PSPNetError, match="precision must be one of"):
        device.resolve_precision("fp8", CPU)


def test_autocast_is_a_no_op_for_fp32():
    with device.autocast(CPU, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with device.autocast(CPU, "bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
