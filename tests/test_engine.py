"""The training engine: poly schedule, exact resume, SIGKILL resume, NaN stop, TensorBoard, ``pspnet eval``.

Everything runs on the CPU with timm's 100k-parameter ``test_efficientnet`` backbone, 32 px crops
and a folder dataset of a few 40x48 images, so a training run takes a second or two.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pspnet import create_model
from pspnet.cli import main
from pspnet.engine.checkpoint import load_checkpoint
from pspnet.engine.train import TrainConfig, epochs_to_iterations, param_groups, poly_lr, train
from pspnet.errors import PSPNetError
from pspnet.inference.predict import predict_probs
from pspnet.model.serialization import save_safetensors

TINY = {"head_channels": 16, "aux_channels": 8, "output_stride": 8}
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def make_folder_dataset(root: Path, n_train: int = 6, n_val: int = 2, num_classes: int = 3) -> Path:
    """Images whose colour predicts the class of each vertical band, so a few steps already learn something."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for k in range(n):
            mask = np.repeat(rng.integers(0, num_classes, (1, 6)), 8, axis=1).repeat(40, 0).astype(np.uint8)
            mask[:2] = 255
            image = np.stack([mask * 80, 255 - mask * 80, rng.integers(0, 255, mask.shape)], -1).astype(np.uint8)
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "masks" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "images" / split / f"{k}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{k}.png")
    (root / "dataset.yaml").write_text(f"classes: {[f'c{i}' for i in range(num_classes)]}\n")
    return root


def write_folder_split(root: Path, pairs: list[tuple[np.ndarray, np.ndarray]], classes: list[str],
                       split: str = "val") -> Path:
    """Write ``pairs`` of image and mask as a folder dataset's ``split`` (images/<split>/<i>.png, masks/...)."""
    for sub in ("images", "masks"):
        (root / sub / split).mkdir(parents=True, exist_ok=True)
    for i, (image, mask) in enumerate(pairs):
        Image.fromarray(image).save(root / "images" / split / f"{i}.png")
        Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")
    (root / "dataset.yaml").write_text("classes: [" + ", ".join(classes) + "]\n")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("folder"))


def tiny_config(data: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(dataset="folder", data_root=str(data), model="pspnet_test_efficientnet", model_kwargs=TINY,
                  pretrained_backbone=False, out_dir=str(out), crop_size=[32, 32], batch_size=2, iterations=6,
                  precision="fp32", device="cpu", workers=0, seed=3, eval_every=1000, checkpoint_every=2,
                  log_every=1, tensorboard=False, val_split=None)
    values.update(overrides)
    return TrainConfig.from_dict(values)


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def assert_option_resumes_alike_and_matters(data: Path, tmp_path: Path, **options) -> None:
    """A run with ``options`` stopped at 3 and resumed ends equal, bit for bit, to the same run in one go, and
    unlike the run without them (the option draws or changes something, and the checkpoint restores it)."""
    whole = train(tiny_config(data, tmp_path / "whole", **options), progress=False)
    cfg = tiny_config(data, tmp_path / "split", **options)
    train(cfg, progress=False, stop_after=3)
    resumed = train(cfg, resume="auto", progress=False)
    assert_same_state(whole["model"].state_dict(), resumed["model"].state_dict())
    assert load_checkpoint(tmp_path / "split" / "last.pt")["iteration"] == 6
    plain = train(tiny_config(data, tmp_path / "plain"), progress=False)
    assert any(not np.array_equal(a, b) for a, b in zip(plain["model"].state_dict().values(),
                                                       whole["model"].state_dict().values()))


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """6 iterations in one go (1 loader worker, validation and TensorBoard at iteration 3)."""
    out = tmp_path_factory.mktemp("straight")
    result = train(tiny_config(data, out, workers=1, val_split="val", eval_every=3, tensorboard=True, tb_images=2),
                   progress=False)
    return out, result


# ---- schedule -----------------------------------------------------------------------------------------------------

def test_poly_schedule_values():
    assert poly_lr(0, 100) == 1.0
    assert poly_lr(50, 100) == pytest.approx(0.5**0.9)
    assert poly_lr(99, 100) == pytest.approx(0.01**0.9)
    assert poly_lr(100, 100) == 0.0
    assert [poly_lr(i, 100, warmup=4) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert poly_lr(4, 100, warmup=4) == pytest.approx(0.96**0.9)
    assert epochs_to_iterations(50, 10582, 16) == 33050  # semseg's VOC recipe: 50 epochs of train_aug
    model = create_model("pspnet_test_efficientnet", num_classes=3, **TINY)
    groups = param_groups(model, 10.0, 0.01)
    assert [g["lr"] for g in groups] == [0.01, 0.1]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_training_follows_the_schedule_and_logs(straight):
    out, result = straight
    lrs = [r["lr"] for r in result["history"] if "lr" in r]
    assert lrs == pytest.approx([0.01 * (1 - done / 6) ** 0.9 for done in range(1, 7)])
    assert any("val_miou" in r for r in result["history"])
    for name in ("last.pt", "best.pt", "last.safetensors", "best.safetensors", "history.json", "train_config.json"):
        assert (out / name).is_file(), name
    EventAccumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                           reason="TensorBoard is not installed").EventAccumulator

    events = EventAccumulator(str(out / "tb"), size_guidance={"images": 0}).Reload()
    assert {"train/loss", "train/lr", "val/mIoU"} <= set(events.Tags()["scalars"])
    assert {"val/sample_0", "val/sample_1"} <= set(events.Tags()["images"])
    image = events.Images("val/sample_0")[0]
    assert (image.width, image.height) == (3 * 48, 40)  # image | truth | prediction


def test_epochs_option_sets_iterations(data, tmp_path):
    result = train(tiny_config(data, tmp_path, epochs=2, iterations=999), progress=False)
    assert result["iterations"] == 6  # 6 images // batch 2 = 3 iterations per epoch


# ---- resume -------------------------------------------------------------------------------------------------------

def test_resume_is_bit_identical(data, straight, tmp_path):
    out, result = straight
    cfg = tiny_config(data, tmp_path, workers=1, val_split="val", eval_every=3, tensorboard=True, tb_images=2)
    first = train(cfg, progress=False, stop_after=3)
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 3 and first["history"][-1]["iteration"] == 3
    second = train(cfg, resume="auto", progress=False)
    assert_same_state(result["model"].state_dict(), second["model"].state_dict())
    a, b = load_checkpoint(out / "last.pt"), load_checkpoint(tmp_path / "last.pt")
    assert a["iteration"] == b["iteration"] == 6
    assert_same_state(a["optimizer"]["state"][0], b["optimizer"]["state"][0])
    assert [r["lr"] for r in a["history"] if "lr" in r] == [r["lr"] for r in b["history"] if "lr" in r]


KILL_DURING_SAVE = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    from pspnet.engine.train import TrainConfig, train

    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):  # the save of last.pt at iteration 4 writes half a file, then dies
        if isinstance(obj, dict) and obj.get("iteration") == 4 and ".last." in str(getattr(f, "name", f)):
            f.write(b"PK half a checkpoint"); f.flush(); os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)

    torch.save = dying_save
    train(TrainConfig.from_dict(json.loads(sys.argv[1])), resume="auto", progress=False)
""")


def test_sigkill_during_a_checkpoint_save_resumes_exactly(data, straight, tmp_path):
    import dataclasses

    cfg = tiny_config(data, tmp_path, workers=1, val_split="val", eval_every=3, tensorboard=True, tb_images=2)
    # bit-identical needs the same reduction order, so the same thread count as this process
    env = {**SUBPROCESS_ENV, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, json.dumps(dataclasses.asdict(cfg))],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 2  # the save at 4 died half-way
    assert list(tmp_path.glob(".last.*.tmp.pt"))  # its debris
    result = train(cfg, resume="auto", progress=False)
    assert not list(tmp_path.glob(".*.tmp*"))
    assert_same_state(straight[1]["model"].state_dict(), result["model"].state_dict())


def test_sigkill_at_any_moment_then_resume_finishes(data, tmp_path):
    cfg = {"dataset": "folder", "data_root": str(data), "model": "pspnet_test_efficientnet", "model_kwargs": TINY,
           "pretrained_backbone": False, "out_dir": str(tmp_path), "crop_size": [32, 32], "batch_size": 2,
           "iterations": 12, "precision": "fp32", "device": "cpu", "workers": 0, "checkpoint_every": 1,
           "tensorboard": False, "val_split": None}
    (tmp_path / "cfg.yaml").write_text(json.dumps(cfg))
    cmd = [sys.executable, "-m", "pspnet", "train", "--config", str(tmp_path / "cfg.yaml"), "--no-progress"]
    proc = subprocess.Popen(cmd + ["--set", "iterations=100000"], env=SUBPROCESS_ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not (tmp_path / "last.pt").exists():
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    killed_at = load_checkpoint(tmp_path / "last.pt")["iteration"]
    assert killed_at >= 1
    result = train(TrainConfig.from_dict({**cfg, "iterations": killed_at + 3}), resume="auto", progress=False)
    assert result["iterations"] == load_checkpoint(tmp_path / "last.pt")["iteration"] == killed_at + 3
    assert (tmp_path / "last.safetensors").is_file()


# ---- failure modes ------------------------------------------------------------------------------------------------

def test_nan_loss_stops_with_a_clear_message(data, tmp_path, capsys):
    with pytest.raises(PSPNetError, match=r"loss became (nan|inf).*training diverged.*learning rate"):
        train(tiny_config(data, tmp_path, lr=1e10, iterations=30, checkpoint_every=100), progress=False)
    code = main(["train", "--dataset", "folder", "--data-root", str(data), "--model", "pspnet_test_efficientnet",
                 "--set", f"model_kwargs={json.dumps(TINY)}", "--set", "pretrained_backbone=false",
                 "--out-dir", str(tmp_path / "cli"), "--crop-size", "32", "--batch-size", "2", "--iterations", "30",
                 "--lr", "1e10", "--precision", "fp32", "--device", "cpu", "--workers", "0", "--no-progress",
                 "--set", "val_split=null", "--set", "tensorboard=false"])
    assert code == 2 and "loss became" in capsys.readouterr().err


def test_bad_options_are_reported(data, tmp_path):
    with pytest.raises(PSPNetError, match="unknown training options"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(PSPNetError, match="optimizer: 'lbfgs' is not allowed; expected one of sgd, adamw"):
        tiny_config(data, tmp_path, optimizer="lbfgs")


def test_adamw_and_warmup_run(data, tmp_path):
    result = train(tiny_config(data, tmp_path, optimizer="adamw", lr=1e-3, warmup_iters=2, iterations=3),
                   progress=False)
    assert [r["lr"] for r in result["history"]] == pytest.approx([1e-3 * poly_lr(i, 3, 0.9, 2) for i in (1, 2, 3)])


def test_init_weights_start_a_decoder_model_from_plain_weights(data, straight, tmp_path, caplog):
    """The bundled recipe's last stage: earlier weights, plus a freshly initialised skip decoder."""
    from safetensors.torch import load_file

    caplog.set_level(logging.INFO, logger="pspnet")
    init = straight[0] / "last.safetensors"
    result = train(tiny_config(data, tmp_path / "dec", init_weights=str(init), iterations=2,
                               model_kwargs={**TINY, "decoder_channels": 8}), progress=False)
    assert "newly initialised: decoder" in caplog.text
    assert result["history"][-1]["iteration"] == 2
    for model, kwargs in (("pspnet_resnet18", TINY), ("pspnet_test_efficientnet", {**TINY, "head_channels": 32})):
        with pytest.raises(PSPNetError, match="init weights (lack|do not fit)"):  # refused, not half-loaded
            train(tiny_config(data, tmp_path / "other", init_weights=str(init), model=model, model_kwargs=kwargs),
                  progress=False)
    # iteration 0 would equal the init; after 2 steps the trunk moved but kept every tensor of the init
    trained = load_file(str(tmp_path / "dec" / "last.safetensors"))
    assert set(load_file(str(init))) - {"cls.4.weight", "cls.4.bias"} <= set(trained)


# ---- evaluation ---------------------------------------------------------------------------------------------------

def test_eval_cli_writes_the_report(data, straight, tmp_path, capsys, monkeypatch):
    weights = straight[0] / "best.safetensors"
    out = tmp_path / "report"
    code = main(["eval", "--model", str(weights), "--dataset", "folder", "--data-root", str(data), "--split", "val",
                 "--out", str(out), "--device", "cpu", "--precision", "fp32", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "c2" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"c0", "c1", "c2"}
    assert (out / "per_class_iou.png").stat().st_size > 0 and (out / "confusion_matrix.png").stat().st_size > 0
    # the deployed ONNX graph scores the same
    monkeypatch.setenv("PSPNET_CACHE", str(tmp_path / "cache"))
    assert main(["eval", "--model", str(weights), "--dataset", "folder", "--data-root", str(data), "--split", "val",
                 "--backend", "onnxruntime", "--out", str(tmp_path / "ort"), "--no-progress"]) == 0
    ort_metrics = json.loads((tmp_path / "ort" / "metrics.json").read_text())
    assert ort_metrics["miou"] == pytest.approx(metrics["miou"], abs=1e-3)
    # slide + multi-scale + flip, from the training checkpoint
    code = main(["eval", "--model", str(straight[0] / "last.pt"), "--dataset", "folder", "--data-root", str(data),
                 "--mode", "slide", "--crop", "24", "32", "--scales", "0.75", "1", "1.25", "--flip",
                 "--out", str(tmp_path / "ms"), "--device", "cpu", "--precision", "fp32", "--no-progress"])
    assert code == 0 and (tmp_path / "ms" / "metrics.json").is_file()
    capsys.readouterr()
    assert main(["eval", "--model", str(weights), "--dataset", "folder", "--data-root", str(data), "--mode",
                 "slide", "--no-progress"]) == 2
    assert "needs a crop size" in capsys.readouterr().err
    wrong = create_model("pspnet_test_efficientnet", num_classes=5, **TINY)
    save_safetensors(wrong, tmp_path / "wrong.safetensors")
    assert main(["eval", "--model", str(tmp_path / "wrong.safetensors"), "--dataset", "folder", "--data-root",
                 str(data), "--device", "cpu", "--no-progress"]) == 2
    assert "predicts 5 classes" in capsys.readouterr().err


class ShapeRecorder(torch.nn.Module):
    """A 1x1-conv 'model' that records the largest input it was given."""

    def __init__(self, classes: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, classes, 1)
        self.largest = (0, 0)

    def forward(self, x):
        self.largest = max(self.largest, tuple(x.shape[-2:]))
        return self.conv(x)


def test_slide_mode_bounds_the_input_of_a_2048x1024_image():
    model = ShapeRecorder(2).eval()
    probs = predict_probs(model, torch.randn(1, 3, 1024, 2048), 2, "slide", crop=(512, 512), scales=(0.5, 1.0))
    assert probs.shape == (1, 2, 1024, 2048)
    assert model.largest == (512, 512)  # the network never sees more than one window
    assert torch.allclose(probs.sum(1), torch.ones(1, 1024, 2048), atol=1e-5)


@pytest.mark.parametrize("name,crop,epochs,dataset", [("voc2012_pspnet50", 473, 50, "voc"),
                                                      ("cityscapes_pspnet50", 713, 200, "cityscapes"),
                                                      ("ade20k_pspnet50", 473, 100, "ade20k")])
def test_recipes_follow_semseg(name, crop, epochs, dataset):
    import yaml

    from pspnet.data import DATASETS

    path = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    cfg = TrainConfig.from_dict(yaml.safe_load(path.read_text()))
    assert cfg.crop_size == (crop, crop) and cfg.epochs == epochs and cfg.dataset == dataset and dataset in DATASETS
    assert (cfg.lr, cfg.power, cfg.momentum, cfg.weight_decay, cfg.aux_weight) == (0.01, 0.9, 0.9, 1e-4, 0.4)
    assert cfg.batch_size * 8 == 16 and cfg.model == "pspnet_resnet50"
