"""Property-based tests (Hypothesis) over CLI options: any value of --scales, --alpha, --crop, --batch-size,
--device and --mode (predict, eval, serve) and of export's and serve's numbers either works or is refused
with exit code 2 and one line on stderr naming the flag, never a traceback, and a refusal comes before a
model is loaded. A test oracle says which values are valid, so a refusal of a good value fails too.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pspnet import create_model
from pspnet.cli import main
from pspnet.model.serialization import save_safetensors

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
MAX_WINDOW = 16_000_000



def mostly(good: list[str], bad: list[str], weight: int = 8) -> st.SearchStrategy[str]:
    """Good values ``weight`` times as likely as each bad one, so that whole command lines often work."""
    return st.sampled_from(good * weight + bad)


GOOD_FLOATS = ["1e-9", "0.25", "0.5", "1", "0.75", "1"]
BAD_FLOATS = ["0", "-1", "nan", "inf", "-inf", "1e400", "-2.5", "-1e-3"]
FLOATS = st.one_of(mostly(GOOD_FLOATS, BAD_FLOATS), st.floats(-1, 1, allow_nan=False).map(lambda v: f"{v:.3g}"))
SCALES = st.one_of(mostly(GOOD_FLOATS + ["2.5", "1.25"], BAD_FLOATS), st.floats(-1, 2).map(lambda v: f"{v:.3g}"))
CROP_SIDES = mostly(["1", "7", "32", "600", "5000"], ["-3", "0", "100000"], weight=3)
DEVICES = mostly(["cpu", "cpu:0"], ["nonsense", "cuda", "cuda:7", "mps", "meta", "", "CPU"], weight=12)
INTS = mostly(["1", "3", "64"], ["-5", "0"], weight=6)
MODES = mostly(["whole", "slide"], ["tiles"], weight=6)


def valid_device(name: str) -> bool:
    return name in ("cpu", "cpu:0") or (name.startswith("cuda") and torch.cuda.device_count() > int(
        name.partition(":")[2] or 0))


def valid_scales(scales: list[str]) -> bool:
    return all(math.isfinite(float(s)) and float(s) > 0 for s in scales)


def valid_crop(crop: list[str] | None) -> bool:
    return crop is None or (min(map(int, crop)) >= 1 and int(crop[0]) * int(crop[-1]) <= MAX_WINDOW)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A 3-class model and a 12x8 image: a successful run takes well under a second."""
    root = tmp_path_factory.mktemp("tiny")
    save_safetensors(create_model("pspnet_test_efficientnet", num_classes=3, head_channels=16, aux_channels=8),
                     root / "tiny.safetensors")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)).save(root / "img.png")
    for split in ("all",):
        for i in range(2):
            (root / "data" / "images").mkdir(parents=True, exist_ok=True)
            (root / "data" / "masks").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)).save(root / "data/images" / f"{i}.png")
            Image.fromarray(rng.integers(0, 3, (8, 12), dtype=np.uint8)).save(root / "data/masks" / f"{i}.png")
    return root


class Spy:
    """Counts calls of ``owner.name`` (and runs the original unless ``replace`` is given)."""

    def __init__(self, monkeypatch, owner, name: str, replace=None):
        self.calls = 0
        original = getattr(owner, name)

        def spy(*args, **kwargs):
            self.calls += 1
            return replace(*args, **kwargs) if replace else original(*args, **kwargs)

        monkeypatch.setattr(owner, name, spy)


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """``pspnet ARGV`` in this process; argparse's own refusals (SystemExit) count as exit codes."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_refusal(command: str, err: str, flags: list[str]) -> None:
    assert "Traceback" not in err and err.count("\n") == 1, err
    if err.startswith("pspnet: error: unrecognized arguments: -"):
        return  # argparse reads "-1e-3" or "-inf" as an option, not a negative number: refused, naming the value
    assert err.startswith(f"pspnet {command}: error: "), err
    assert any(f in err for f in flags), f"no flag of {flags} named in {err!r}"


@SETTINGS
@given(scales=st.lists(SCALES, min_size=1, max_size=3), alpha=FLOATS, crop=st.none() | st.lists(CROP_SIDES, min_size=2,
       max_size=2), batch=INTS, device=DEVICES, mode=MODES)
def test_predict_options_work_or_are_one_line_before_the_model(tiny, tmp_path_factory, capsys, monkeypatch,
                                                              scales, alpha, crop, batch, device, mode):
    from pspnet.inference import segmenter

    built = Spy(monkeypatch, segmenter.Segmenter, "__init__")
    out = tmp_path_factory.mktemp("out") / "pred"
    argv = ["predict", str(tiny / "img.png"), "--model", str(tiny / "tiny.safetensors"), "--out", str(out),
            "--no-progress", "--precision", "fp32", "--scales", *scales, "--alpha", alpha, "--batch-size", batch,
            "--device", device, "--mode", mode, *(["--crop", *crop] if crop else [])]
    if crop and mode == "slide" and valid_crop(crop) and int(crop[0]) * int(crop[1]) < 64:
        argv[argv.index("--scales") + 1:argv.index("--alpha")] = ["1"]  # 1x1 windows at 2.5x: slow, not wrong
        scales = ["1"]
    code, _, err = run(argv, capsys)
    valid = (valid_scales(scales) and 0 <= float(alpha) <= 1 and int(batch) >= 1 and valid_crop(crop)
             and valid_device(device) and mode in ("whole", "slide") and (mode == "whole" or crop is not None))
    event("works" if valid else "refused")
    if valid:
        assert code == 0, err
        assert Image.open(out / "img.png").size == (12, 8)
    else:
        assert code == 2, err
        assert_one_line_refusal("predict", err, ["--scales", "--alpha", "--crop", "--batch-size", "--device",
                                                 "--mode"])
        assert built.calls == 0, "the model was loaded before the options were refused"
        assert not out.exists()


@SETTINGS
@given(scales=st.lists(SCALES, min_size=1, max_size=2), crop=st.none() | st.lists(CROP_SIDES, min_size=1, max_size=3),
       device=DEVICES, mode=MODES, limit=st.none() | INTS)
def test_eval_options_work_or_are_one_line_before_the_model(tiny, tmp_path_factory, capsys, monkeypatch,
                                                           scales, crop, device, mode, limit):
    from pspnet.engine import evaluate

    loaded = Spy(monkeypatch, evaluate, "load")
    out = tmp_path_factory.mktemp("eval") / "metrics"
    argv = ["eval", "--model", str(tiny / "tiny.safetensors"), "--dataset", "folder", "--data-root",
            str(tiny / "data"), "--split", "all", "--data-opt", "num_classes=3", "--no-progress", "--precision",
            "fp32", "--out", str(out), "--scales", *scales, "--device", device, "--mode", mode,
            *(["--crop", *crop] if crop else []), *(["--limit", limit] if limit else [])]
    if crop and mode == "slide" and len(crop) < 3 and valid_crop(crop) and int(crop[0]) * int(crop[-1]) < 64:
        argv[argv.index("--scales") + 1:argv.index("--device")] = ["1"]
        scales = ["1"]
    code, _, err = run(argv, capsys)
    valid = (valid_scales(scales) and (crop is None or (len(crop) < 3 and valid_crop(crop)))
             and valid_device(device) and mode in ("whole", "slide") and (mode == "whole" or crop is not None)
             and (limit is None or int(limit) >= 1))
    event("works" if valid else "refused")
    if valid:
        assert code == 0, err
        assert (out / "metrics.json").is_file()
    else:
        assert code == 2, err
        assert_one_line_refusal("eval", err, ["--scales", "--crop", "--device", "--mode", "--limit"])
        assert loaded.calls == 0, "the model was loaded before the options were refused"
        assert not out.exists()


@SETTINGS
@given(size=st.lists(mostly(["1", "256", "4000"], ["-1", "0", "5000"], 3), min_size=2, max_size=2),
       opset=mostly(["11", "17", "23"], ["-1", "0", "7", "10", "24", "99"], 4),
       calib_count=INTS, calib_size=st.none() | st.lists(mostly(["1", "64"], ["0"], 6), min_size=2, max_size=2))
def test_export_numbers_work_or_are_one_line_before_the_export(tmp_path_factory, capsys, monkeypatch, size, opset,
                                                               calib_count, calib_size):
    from torch.onnx import _constants

    from pspnet.export import onnx

    exported = Spy(monkeypatch, onnx, "export_onnx", replace=lambda *a, **k: {"stub": True})
    out = tmp_path_factory.mktemp("export") / "m.onnx"
    argv = ["export", "--out", str(out), "--size", *size, "--opset", opset, "--calib-count", calib_count,
            *(["--calib-size", *calib_size] if calib_size else [])]
    code, _, err = run(argv, capsys)
    valid = (min(map(int, size)) >= 1 and int(size[0]) * int(size[1]) <= MAX_WINDOW
             and 11 <= int(opset) <= _constants.ONNX_MAX_OPSET and int(calib_count) >= 1
             and (calib_size is None or min(map(int, calib_size)) >= 1))
    event("works" if valid else "refused")
    if valid:
        assert code == 0 and exported.calls == 1, err
    else:
        assert code == 2, err
        assert_one_line_refusal("export", err, ["--size", "--opset", "--calib-count", "--calib-size"])
        assert exported.calls == 0


SERVE_LIMITS = ["--max-connections", "--header-timeout", "--body-timeout", "--keep-alive", "--max-queue",
                "--max-bytes", "--max-pixels", "--max-inflight-pixels", "--max-inflight-bytes", "--work-pixels",
                "--max-wait-ms", "--port"]
FLOAT_LIMITS = {"--header-timeout", "--body-timeout", "--max-wait-ms"}


@SETTINGS
@given(limits=st.dictionaries(st.sampled_from(SERVE_LIMITS),
                             mostly(["3", "70000", "2.5"], ["-1", "0", "nan", "inf"], 3), max_size=4),
       scales=st.lists(SCALES, min_size=1, max_size=2), batch=INTS, device=DEVICES)
def test_serve_numbers_start_the_server_or_are_one_line_before_the_model(tiny, capsys, monkeypatch, limits, scales,
                                                                         batch, device):
    from pspnet.inference import segmenter
    from pspnet.serve import server

    built = Spy(monkeypatch, segmenter.Segmenter, "__init__")
    started = Spy(monkeypatch, server, "run_server", replace=lambda *a, **k: None)
    argv = ["serve", "--model", str(tiny / "tiny.safetensors"), "--scales", *scales, "--batch-size", batch,
            "--device", device, "--precision", "fp32", "--log-level", "warning"]
    for flag, value in limits.items():
        argv += [flag, value]
    code, _, err = run(argv, capsys)

    def ok(flag: str, value: str) -> bool:
        if flag not in FLOAT_LIMITS and not value.lstrip("-").isdigit():
            return False  # argparse refuses a float for an integer option
        v = float(value)
        if flag == "--port":
            return 0 <= v <= 65535
        if flag == "--max-wait-ms":
            return 0 <= v < math.inf
        return 0 < v < math.inf

    options_valid = (all(ok(f, v) for f, v in limits.items()) and valid_scales(scales) and int(batch) >= 1
                     and valid_device(device))
    event(f"exit {code}")
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code == 2:  # also limits that only disagree with each other (in-flight below one request), named as keys
        assert_one_line_refusal("serve", err, [*SERVE_LIMITS, "--scales", "--batch-size", "--device", "max_",
                                               "work_pixels"])
    if options_valid:
        assert code == 0 or "must be at least max_" in err, err
        assert started.calls == (code == 0)
    else:
        assert code == 2 and built.calls == 0 and started.calls == 0, err


@pytest.mark.parametrize("argv, says", [
    (["predict", "--alpha", "x"], "argument --alpha: invalid float value: 'x'"),
    (["predict", "--mode", "tiles"], "argument --mode: invalid choice: 'tiles'"),
    (["export", "--device", "cuda", "--out", "m.onnx"], "unrecognized arguments: --device cuda"),
    (["serve", "--port", "http"], "argument --port: invalid int value: 'http'"),
    (["nonsense"], "argument COMMAND: invalid choice: 'nonsense'"),
])
def test_argparse_refusals_are_one_line_too(capsys, argv, says):
    code, _, err = run(argv, capsys)
    assert code == 2 and err.count("\n") == 1 and says in err and "--help" in err, err
