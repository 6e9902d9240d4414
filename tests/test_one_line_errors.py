"""Issue 17's "tracebacks where the README promises one line and exit 2", table-driven: each row asserts
the exit code, the message, and that no input, output or checkpoint changed (nothing new appeared either).

Rows that only a run folder can show (``out_dir`` a file, resume into another model) are in
tests/test_train_runs.py; bad recipe values too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from pspnet import create_model
from pspnet.cli import main
from pspnet.model.serialization import save_safetensors
from test_engine import SUBPROCESS_ENV, TINY, make_folder_dataset

NO_GPU = not torch.cuda.is_available()
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_safetensors(create_model("pspnet_test_efficientnet", num_classes=3, head_channels=16, aux_channels=8), path)
    return path


def with_config(tiny: Path, dst: Path, config: str | None = None, state: Callable | None = None) -> Path:
    """A copy of the tiny weights with another metadata config (raw text) or transformed tensors."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(tiny), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(tiny))
    if state:
        tensors = state(tensors)
    save_file(tensors, str(dst), metadata={**meta, **({"pspnet_config": config} if config is not None else {})})
    return dst


def nan_weights(tensors: dict) -> dict:
    return {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in tensors.items()}


@dataclass
class Row:
    name: str
    argv: Callable[[Path, Path], list[str]]  # (tmp, model) -> arguments
    says: str
    skip: str | None = None


def predict(*extra: str, model: Callable[[Path, Path], Path] | None = None):
    def argv(tmp: Path, tiny: Path) -> list[str]:
        m = model(tmp, tiny) if model else tiny
        return ["predict", str(tmp / "in" / "img.png"), "--model", str(m), "--out", str(tmp / "out"),
                "--no-progress", *extra]
    return argv


def evaluate(*extra: str):
    return lambda tmp, tiny: ["eval", "--model", str(tiny), "--dataset", "folder", "--data-root", str(tmp / "data"),
                              "--out", str(tmp / "out" / "eval"), "--no-progress", *extra]


def train(*extra: str):
    return lambda tmp, tiny: ["train", "--dataset", "folder", "--data-root", str(tmp / "data"), "--model",
                              "pspnet_test_efficientnet", "--set", f"model_kwargs={json.dumps(TINY)}",
                              "--no-pretrained", "--out-dir", str(tmp / "out" / "run"), "--crop-size", "32",
                              "--batch-size", "2", "--iterations", "1", "--workers", "0", "--no-progress", *extra]


def serve(*extra: str):
    return lambda tmp, tiny: ["serve", "--model", str(tiny), *extra]


def export(*extra: str):
    return lambda tmp, tiny: ["export", "--model", str(tiny), "--out", str(tmp / "out" / "m.onnx"), *extra]


ROWS = [
    *[Row(f"{cmd} --device nonsense", fn("--device", "nonsense"), "--device nonsense: not a device name")
      for cmd, fn in (("predict", predict), ("eval", evaluate), ("train", train), ("serve", serve))],
    *[Row(f"{cmd} --device cuda without a GPU", fn("--device", "cuda"), "--device cuda: no CUDA GPU is available",
          skip=None if NO_GPU else "this machine has a GPU")
      for cmd, fn in (("predict", predict), ("eval", evaluate), ("train", train), ("serve", serve))],
    Row("export has no --device (it exports on the CPU)", export("--device", "nonsense"),
        "unrecognized arguments: --device nonsense"),
    Row("predict --mode slide --crop 0 0", predict("--mode", "slide", "--crop", "0", "0"),
        "--crop 0 0: height and width must be positive"),
    Row("predict --mode slide without --crop", predict("--mode", "slide"), "--mode slide needs --crop H W"),
    Row("predict --mode slide with a 10-GP window", predict("--mode", "slide", "--crop", "100000", "100000"),
        "--crop 100000 100000: a window above 16 MP"),
    Row("eval --mode slide --crop 0", evaluate("--mode", "slide", "--crop", "0"), "--crop 0: height and width"),
    Row("serve --mode slide --crop 0 0", serve("--mode", "slide", "--crop", "0", "0"), "--crop 0 0: height and"),
    Row("serve --mode slide without --crop", serve("--mode", "slide"), "--mode slide needs --crop H W"),
    Row("serve --batch-size 0", serve("--batch-size", "0"), "--batch-size 0: must be at least 1"),
    Row("serve --max-queue 0", serve("--max-queue", "0"), "--max-queue must be positive, got 0"),
    Row("export --size 0 0", export("--size", "0", "0"), "--size 0 0: must be at least 1"),
    Row("export --opset 0", export("--opset", "0"), "--opset 0: this torch exports opsets 11 to"),
    Row("safetensors config that is not JSON",
        predict(model=lambda tmp, tiny: with_config(tiny, tmp / "in" / "bad.safetensors", "{not json")),
        "bad.safetensors: the model config in its metadata is not valid JSON"),
    Row("safetensors config that is a list",
        predict(model=lambda tmp, tiny: with_config(tiny, tmp / "in" / "bad.safetensors", "[1, 2]")),
        "bad.safetensors: the model config in its metadata is a list, not a JSON object"),
    Row("all-NaN weights",
        predict(model=lambda tmp, tiny: with_config(tiny, tmp / "in" / "nan.safetensors", state=nan_weights)),
        "nan.safetensors: "),  # "... N weight tensors hold NaN or Inf", checked below
]


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every folder (None), so that a new empty folder counts as a change too."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_one_line_exit_2_and_nothing_changed(row: Row, tmp_path, tiny, capsys, monkeypatch):
    if row.skip:
        pytest.skip(row.skip)
    from pspnet.serve import server

    monkeypatch.setattr(server, "run_server", lambda *a, **k: pytest.fail("the server started"))
    (tmp_path / "in").mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "in" / "img.png")
    make_folder_dataset(tmp_path / "data", n_train=2, n_val=2)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "earlier.png").write_bytes(b"an earlier result")
    (tmp_path / "out" / "last.pt").write_bytes(os.urandom(64))
    argv = row.argv(tmp_path, tiny)
    before = snapshot(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err and row.says in err, err
    if row.name == "all-NaN weights":
        assert "weight tensors hold NaN or Inf" in err
    assert snapshot(tmp_path) == before, "a refused command changed or added files"


@pytest.mark.slow
def test_a_60000_channel_head_is_refused_before_any_allocation(tmp_path, tiny):
    """812 bytes of weights whose config asks for a ResNet-50 PSPNet with a 60,000-channel head (GBs of
    parameters): refused from the shapes on the meta device; the process's peak RSS stays near an import's."""
    tiny_config = create_model("pspnet_test_efficientnet", num_classes=3, head_channels=16, aux_channels=8).config
    config = {**tiny_config, "backbone": "resnet50", "head_channels": 60_000, "pretrained_backbone": False}
    from pspnet.model.pspnet import PSPNet

    with torch.device("meta"):
        asked = sum(p.numel() for p in PSPNet(**config).parameters()) * 4
    assert asked > 8 * 2**30  # what building it first would allocate
    path = tmp_path / "hostile.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"pspnet_config": json.dumps(config), "format": "pt"})
    assert path.stat().st_size < 2000
    probe = ("import resource, sys; from pspnet.cli import main; code = main(sys.argv[1:]); "
             "print(code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)")
    argv = [sys.executable, "-c", probe, "predict", str(tmp_path / "img.png"), "--model", str(path), "--out",
            str(tmp_path / "out"), "--device", "cpu", "--no-progress"]
    Image.new("RGB", (24, 16)).save(tmp_path / "img.png")
    env = {**SUBPROCESS_ENV, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    code, peak = map(int, done.stdout.split()[-2:])
    assert code == 2 and "hostile.safetensors: weights do not fit the model" in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1
    argv[argv.index(str(path))] = str(tmp_path / "missing.safetensors")  # the same process refusing at once
    again = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    baseline = int(again.stdout.split()[-1])
    assert peak < baseline + 256 * 2**20, f"peak RSS {peak / 2**20:.0f} MiB vs {baseline / 2**20:.0f} MiB: built first"
    print(f"60,000-channel head: would allocate {asked / 2**30:.1f} GiB, peak RSS {peak / 2**20:.0f} MiB "
          f"(a missing file: {baseline / 2**20:.0f} MiB)")


def test_a_run_folder_that_becomes_unwritable_mid_run_is_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys,
                                                                                               monkeypatch):
    """The second checkpoint save fails as it would in a folder made read-only (root ignores chmod, so the
    failure is injected): one line naming the folder, exit 2, and last.pt still holds iteration 1."""
    from pspnet.engine import checkpoint

    real_save, saves = torch.save, []

    def save_once(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) > 1:
            raise PermissionError(13, "Permission denied")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save_once)
    make_folder_dataset(tmp_path / "data", n_train=2, n_val=2)
    code = main(train("--iterations", "3", "--checkpoint-every", "1", "--device", "cpu", "--precision", "fp32",
                      "--set", "val_split=null", "--set", "tensorboard=false")(tmp_path, Path()))
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]  # the run's summary is logged above it
    assert code == 2 and len(errors) == 1 and err.splitlines()[-1] == errors[0] and "Traceback" not in err, err
    out_dir = tmp_path / "out" / "run"
    assert f"{out_dir / 'last.pt'}: cannot write the checkpoint (Permission denied)" in err and "--resume" in err
    assert checkpoint.load_checkpoint(out_dir / "last.pt")["iteration"] == 1
