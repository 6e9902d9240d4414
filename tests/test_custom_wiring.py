"""Issue 15 wired end to end: --loss and loss_options, val Dice in the history, the small-data recipe as the
default of folder datasets, mask values kept in the model, --model RUN, eval/predict thresholds, masks in the
user's values, visible overlays and NIfTI scans through predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pspnet.cli import main
from pspnet.engine.config import LOSSES, TrainConfig, load_recipe
from pspnet.engine.losses import LOSSES as LOSS_CLASSES
from pspnet.engine.step import build_criterion
from pspnet.errors import PSPNetError
from pspnet.model import create_model
from pspnet.model.bundled import load
from pspnet.model.pspnet import PSPNet
from pspnet.model.serialization import read_safetensors_config, save_safetensors
from test_engine import TINY

TINY_MODEL = ["--model", "pspnet_test_efficientnet", "--set", f"model_kwargs={json.dumps(TINY)}", "--no-pretrained"]


def make_binary_dataset(root: Path, n_train: int = 4, n_val: int = 2) -> Path:
    """DIR/{train,val}/{images,masks}: grey frames whose dark vertical lines are class 0 (mask 0), the rest 255."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            mask = np.full((40, 48), 255, np.uint8)
            for x in rng.choice(np.arange(2, 46), 4, replace=False):
                mask[:, x:x + 2] = 0
            image = np.where(mask == 0, 40, 200).astype(np.uint8) + rng.integers(0, 20, mask.shape).astype(np.uint8)
            Image.fromarray(image).save(root / split / "images" / f"f{k}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"f{k}.png")
    return root


def tiny_binary_model(mask_values=(0, 255)) -> PSPNet:
    torch.manual_seed(0)
    return create_model("pspnet_test_efficientnet", num_classes=2, mask_values=list(mask_values), **TINY).eval()


@pytest.fixture(scope="module")
def binary_data(tmp_path_factory) -> Path:
    return make_binary_dataset(tmp_path_factory.mktemp("binary"))


@pytest.fixture(scope="module")
def binary_run(binary_data, tmp_path_factory) -> Path:
    """`pspnet train --dataset folder` with no --config (the binary recipe), shrunk to a tiny model and 2 steps."""
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--dataset", "folder", "--data-root", str(binary_data), "--out-dir", str(out),
                 *TINY_MODEL, "--crop-size", "32", "--batch-size", "2", "--iterations", "2", "--eval-every", "2",
                 "--precision", "fp32", "--device", "cpu", "--workers", "0", "--no-progress",
                 "--set", "tensorboard=false"]) == 0
    return out


# ---- losses in training ---------------------------------------------------------------------------------------------

def test_config_losses_are_the_losses_module_names():
    assert set(LOSSES) == set(LOSS_CLASSES)


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_trains_the_main_and_aux_heads(name):
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    target[0, 0] = 255
    loss = build_criterion(name, torch.tensor([1.0, 2.0, 1.0]))(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad.abs().sum() > 0


def test_loss_options_reach_the_loss_and_bad_ones_name_it():
    focal = build_criterion("focal", None, options={"gamma": 0.0})
    ce = build_criterion("cross_entropy", None)
    logits, target = torch.randn(1, 2, 4, 4), torch.randint(0, 2, (1, 4, 4))
    assert torch.allclose(focal(logits, target), ce(logits, target))
    with pytest.raises(PSPNetError, match="focal"):
        build_criterion("focal", None, options={"smooth": 1.0})
    with pytest.raises(PSPNetError, match="loss: 'lovasz' is not allowed"):
        TrainConfig.from_dict({"loss": "lovasz"})
    assert TrainConfig.from_dict({"loss": "ce_dice", "loss_options": {"dice_weight": 2}}).loss_options == {
        "dice_weight": 2}


def test_loss_flag_help_says_when_to_use_which(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--loss" in text and "thin or small" in text and "balanced scenes" in text


# ---- the small-data recipe ------------------------------------------------------------------------------------------

def test_binary_recipe_is_shipped_and_valid():
    values, path = load_recipe("binary")
    cfg = TrainConfig.from_dict(values, source=str(path))
    assert cfg.model == "pspnet_tf_efficientnet_lite0" and cfg.pretrained_backbone is True
    assert cfg.model_kwargs["decoder_channels"] > 0 and cfg.loss in ("ce_dice", "dice", "focal")
    assert cfg.augment["vflip"] > 0 and cfg.augment["rot90"]
    assert "dataset" not in values and "data_root" not in values and "out_dir" not in values


def test_folder_training_without_config_uses_the_binary_recipe(binary_run):
    saved = json.loads((binary_run / "train_config.json").read_text())
    recipe, _ = load_recipe("binary")
    assert saved["loss"] == recipe["loss"] and saved["augment"] == recipe["augment"]
    assert saved["crop_size"] == [32, 32]  # options still win over the recipe


def test_history_has_val_dice_and_curves_are_drawn(binary_run):
    history = json.loads((binary_run / "history.json").read_text())
    val = [h for h in history if "val_miou" in h]
    assert val and all(0 <= h["val_mdice"] <= 1 for h in val)
    assert (binary_run / "curves.png").stat().st_size > 1000


def test_the_run_keeps_the_datasets_mask_values(binary_run):
    for name in ("best.safetensors", "last.safetensors"):
        assert read_safetensors_config(binary_run / name)["mask_values"] == [0, 255]


# ---- mask values in the model config --------------------------------------------------------------------------------

def test_mask_values_round_trip_and_old_weights_still_load(tmp_path):
    model = tiny_binary_model()
    model.save_pretrained(tmp_path / "saved")
    assert PSPNet.from_pretrained(tmp_path / "saved").config["mask_values"] == [0, 255]
    from safetensors.torch import load_file, save_file

    old_config = {k: v for k, v in model.config.items() if k != "mask_values"}
    save_file(load_file(tmp_path / "saved" / "model.safetensors"), tmp_path / "old.safetensors",
              metadata={"pspnet_config": json.dumps(old_config), "format": "pt"})
    assert PSPNet.from_pretrained(tmp_path / "old.safetensors").config["mask_values"] is None
    with pytest.raises(ValueError, match="3 mask values for 2 classes"):
        create_model("pspnet_test_efficientnet", num_classes=2, mask_values=[0, 1, 2], **TINY)


def test_mask_values_in_onnx_metadata(tmp_path):
    pytest.importorskip("onnx")
    from pspnet.export.onnx import export_onnx
    from pspnet.inference.ort import read_onnx_config

    export_onnx(tiny_binary_model(), tmp_path / "m.onnx", size=(32, 32), check=False)
    assert read_onnx_config(tmp_path / "m.onnx")["mask_values"] == [0, 255]


# ---- --model RUN ----------------------------------------------------------------------------------------------------

def test_a_run_folder_loads_its_best_weights_else_its_last(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(PSPNetError, match="best.safetensors or last.safetensors"):
        load(run)
    last = tiny_binary_model()
    save_safetensors(last, run / "last.safetensors")
    assert torch.equal(load(run).state_dict()["cls.0.weight"], last.state_dict()["cls.0.weight"])
    best = tiny_binary_model()
    with torch.no_grad():
        best.cls[0].weight.add_(1)
    save_safetensors(best, run / "best.safetensors")
    assert torch.equal(PSPNet.from_pretrained(str(run)).state_dict()["cls.0.weight"], best.state_dict()["cls.0.weight"])


def test_model_run_in_eval_with_threshold_and_report_files(binary_run, binary_data, tmp_path, capsys):
    assert main(["eval", "--model", str(binary_run), "--dataset", "folder", "--data-root", str(binary_data),
                 "--out", str(tmp_path / "ev"), "--threshold", "0.3", "--positive", "0", "--device", "cpu",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "pr_curve.png" in out and "Dice" in out
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert (tmp_path / "ev" / "pr_curve.png").is_file() and "mdice" in report
    assert main(["eval", "--model", str(binary_run), "--dataset", "folder", "--data-root", str(binary_data),
                 "--threshold", "1.5", "--device", "cpu", "--no-progress"]) == 2


def test_model_run_in_export(binary_run, tmp_path):
    pytest.importorskip("onnx")
    assert main(["export", "--model", str(binary_run), "--out", str(tmp_path / "run.onnx")]) == 0
    assert (tmp_path / "run.onnx").stat().st_size > 0


# ---- predict: masks in the user's values, threshold, visible overlays ---------------------------------------------

def test_predict_writes_the_models_mask_values_by_default(binary_run, binary_data, tmp_path):
    image = binary_data / "val" / "images" / "f0.png"
    assert main(["predict", str(image), "--model", str(binary_run), "--out", str(tmp_path / "p"), "--device", "cpu",
                 "--no-progress"]) == 0
    written = Image.open(tmp_path / "p" / "f0.png")
    assert written.mode == "L" and set(np.unique(np.asarray(written))) <= {0, 255}
    assert main(["predict", str(image), "--model", str(binary_run), "--out", str(tmp_path / "ids"), "--device",
                 "cpu", "--no-progress", "--mask-values", "ids"]) == 0
    assert Image.open(tmp_path / "ids" / "f0.png").mode == "P"
    assert main(["predict", str(image), "--model", str(binary_run), "--out", str(tmp_path / "v"), "--device", "cpu",
                 "--no-progress", "--mask-values", "10", "20"]) == 0
    assert set(np.unique(np.asarray(Image.open(tmp_path / "v" / "f0.png")))) <= {10, 20}
    assert main(["predict", str(image), "--model", str(binary_run), "--out", str(tmp_path / "bad"), "--device",
                 "cpu", "--no-progress", "--mask-values", "1", "2", "3"]) == 2


def test_threshold_moves_the_labels(tmp_path):
    from pspnet.inference.segmenter import Segmenter

    image = np.full((24, 24, 3), 128, np.uint8)
    everything = Segmenter(tiny_binary_model(), device="cpu", precision="fp32", threshold=0.0)(image)
    nothing = Segmenter(tiny_binary_model(), device="cpu", precision="fp32", threshold=0.0, positive=0)(image)
    assert (everything == 1).all() and (nothing == 0).all()
    with pytest.raises(PSPNetError, match="threshold"):
        Segmenter(tiny_binary_model(), device="cpu", threshold=2.0)


def test_threshold_prediction_lives_in_inference():
    from pspnet.engine.evaluate import threshold_prediction as from_engine
    from pspnet.inference.predict import threshold_prediction

    assert from_engine is threshold_prediction


def test_overlay_shows_every_class_including_a_black_class_0():
    from pspnet.inference.visualize import overlay, visible_palette
    from pspnet.meta import default_palette

    assert default_palette(2)[0] == [0, 0, 0]
    shown = visible_palette(default_palette(2))
    assert all(sum(c) >= 90 for c in shown) and shown[0] != shown[1]
    dark = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    labels = np.zeros((8, 8), np.uint8)
    drawn = np.asarray(overlay(dark, labels, default_palette(2), legend=False))
    assert drawn.max() > 60  # class 0 over a black image is not black


# ---- medical scans in predict ---------------------------------------------------------------------------------------

def test_predict_nifti_writes_a_mask_with_the_scans_affine(tmp_path):
    nib = pytest.importorskip("nibabel")
    affine = np.array([[0.8, 0, 0, -50], [0, 0.8, 0, -60], [0, 0, 2.5, 10], [0, 0, 0, 1]])
    data = np.random.default_rng(0).integers(-1000, 1000, (24, 20, 3)).astype(np.int16)
    scans = tmp_path / "scans"
    scans.mkdir()
    nib.save(nib.Nifti1Image(data, affine), scans / "ct.nii.gz")
    weights = tmp_path / "m.safetensors"
    save_safetensors(tiny_binary_model(), weights)
    assert main(["predict", str(scans), "--model", str(weights), "--out", str(tmp_path / "out"), "--window",
                 "40,400", "--device", "cpu", "--no-progress"]) == 0
    mask = nib.load(tmp_path / "out" / "ct.nii.gz")
    assert mask.shape == data.shape and np.allclose(mask.affine, affine)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 255}
    # never over an existing mask without --overwrite
    assert main(["predict", str(scans / "ct.nii.gz"), "--model", str(weights), "--out", str(tmp_path / "out"),
                 "--device", "cpu", "--no-progress"]) == 2


def test_max_minutes_shortens_a_run_that_would_overrun(binary_data, tmp_path, caplog):
    import logging

    out = tmp_path / "boxed"
    with caplog.at_level(logging.INFO):
        assert main(["train", "--dataset", "folder", "--data-root", str(binary_data), "--out-dir", str(out),
                     *TINY_MODEL, "--crop-size", "32", "--batch-size", "2", "--iterations", "500", "--eval-every",
                     "1000", "--set", "log_every=1", "--precision", "fp32", "--device", "cpu", "--workers", "0",
                     "--no-progress", "--set", "tensorboard=false", "--set", "max_minutes=0.0001"]) == 0
    steps = [h["iteration"] for h in json.loads((out / "history.json").read_text()) if "loss" in h]
    assert steps[-1] < 20 and "iterations instead of 500" in caplog.text
    last = [h for h in json.loads((out / "history.json").read_text()) if "val_miou" in h]
    assert last and last[-1]["iteration"] == steps[-1]  # the shortened run still ends with an evaluation


def test_onnxruntime_backend_and_predict_fingerprint_take_a_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    from pspnet.cli.predict import _model_identity
    from pspnet.export.onnx import cached_onnx

    run = tmp_path / "run"
    run.mkdir()
    save_safetensors(tiny_binary_model(), run / "last.safetensors")
    assert str((run / "last.safetensors").resolve()) in _model_identity(str(run))
    monkeypatch.setenv("PSPNET_CACHE", str(tmp_path / "cache"))
    assert cached_onnx(str(run)).name.startswith("last-")


def test_predict_dicom_writes_png_slices_in_mask_values(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    ct = pydicom.data.get_testdata_file("CT_small.dcm")
    if ct is None:
        pytest.skip("pydicom's bundled CT_small.dcm is missing")
    weights = tmp_path / "m.safetensors"
    save_safetensors(tiny_binary_model(), weights)
    assert main(["predict", ct, "--model", str(weights), "--out", str(tmp_path / "out"), "--device", "cpu",
                 "--no-progress"]) == 0
    written = np.asarray(Image.open(tmp_path / "out" / "CT_small_0000.png"))
    assert written.shape == (128, 128) and set(np.unique(written)) <= {0, 255}
