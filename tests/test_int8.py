"""int8 for the head's big convs (pspnet.inference.int8): calibration, stale ranges, and what Segmenter runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import pspnet
from pspnet import create_model
from pspnet.inference.fast import ConvAct
from pspnet.inference.int8 import Int8Conv, calibrate_int8, head_convs, int8_available, int8_ready
from pspnet.inference.segmenter import Segmenter
from pspnet.model.bundled import SAMPLE_IMAGE
from test_engine import write_folder_split

needs_int8 = pytest.mark.skipif(not int8_available(),
                                reason="int8 is used on CPUs with AVX512-VNNI and no AMX, with oneDNN's int8 conv")


def small(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("pspnet_tf_efficientnet_lite0", num_classes=3, output_stride=16, head_channels=32,
                        aux_channels=8, decoder_channels=16).eval()


def frames(n: int = 3, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.RandomState(seed)
    return [(rng.rand(64, 80, 3) * 255).astype(np.uint8) for _ in range(n)]


def test_calibration_records_each_head_conv_input_range_and_goes_stale_when_the_weights_change(tmp_path):
    model = small()
    assert head_convs(model) == ["cls.0", "decoder.fuse.0"]
    assert not int8_ready(model)
    ranges = calibrate_int8(model, frames())
    low, high = ranges["ranges"]["decoder.fuse.0"]
    assert low == 0.0 and high > 0  # its inputs are ReLU outputs
    assert ranges["frames"] == 3 and int8_ready(model)
    model.save_pretrained(tmp_path / "m")
    loaded = pspnet.PSPNet.from_pretrained(tmp_path / "m")
    assert loaded.config["int8_ranges"] == ranges and int8_ready(loaded)
    with torch.no_grad():
        loaded.cls[0].weight.mul_(1.01)  # trained further: the ranges no longer describe it
    assert not int8_ready(loaded)
    again = pspnet.PSPNet.from_pretrained(tmp_path / "m")
    with torch.no_grad():  # only the backbone trained further: the head convs' inputs change, so the ranges go stale
        next(again.backbone.parameters()).add_(0.01)
    assert not int8_ready(again)
    assert head_convs(create_model("pspnet_resnet18", num_classes=3, head_channels=16, aux_channels=8)) == ["cls.0"]


def test_the_bundled_model_carries_ranges_for_its_weights():
    model = pspnet.load("camvid")
    assert int8_ready(model) and list(model.config["int8_ranges"]["ranges"]) == ["cls.0", "decoder.fuse.0"]


@needs_int8
@pytest.mark.parametrize("act", [None, nn.ReLU()])
def test_int8_conv_is_close_to_the_float_conv_and_the_range_matters(act):
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 24, 3, padding=1).to(memory_format=torch.channels_last)
    module = conv if act is None else ConvAct(conv, act)
    x = (torch.randn(1, 32, 20, 30) * 2).contiguous(memory_format=torch.channels_last)
    before = x.clone()
    with torch.inference_mode():
        expected = conv(x) if act is None else act(conv(x))
        got = Int8Conv(module, float(x.min()), float(x.max()))(x)
        assert torch.equal(x, before)  # the input is quantized into a copy
        assert got.dtype == torch.float32 and got.shape == expected.shape
        assert (got - expected).abs().mean() / expected.abs().mean() < 0.02
        clipped = Int8Conv(module, 0.0, 0.1)(x)  # a range that misses most inputs
        assert (clipped - expected).abs().mean() / expected.abs().mean() > 0.2
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the rest of the model's dtype comes back
            assert Int8Conv(module, float(x.min()), float(x.max()))(x.bfloat16()).dtype == torch.bfloat16


@needs_int8
def test_segmenter_auto_runs_a_calibrated_head_in_int8_and_explicit_precisions_do_not():
    model = small()
    assert Segmenter(model, precision="auto").int8_layers == []  # not calibrated
    calibrate_int8(model, frames())
    auto = Segmenter(model, precision="auto")
    if auto.precision != "bf16":
        pytest.skip("int8 is used with native bf16 only, the combination measured")
    assert auto.int8_layers == ["cls.0", "decoder.fuse.0"]
    assert sum(isinstance(m, Int8Conv) for m in auto._net.modules()) == 2
    assert not any(isinstance(m, Int8Conv) for m in model.modules())  # the model given is left alone
    assert Segmenter(model, precision="bf16").int8_layers == Segmenter(model, precision="fp32").int8_layers == []
    assert auto(frames(1, seed=1)[0]).shape == (64, 80)


@needs_int8
def test_bundled_default_path_in_int8_keeps_the_fp32_labels_on_the_sample_frame():
    auto, fp32 = Segmenter("camvid"), Segmenter("camvid", precision="fp32")
    if auto.precision != "bf16":
        pytest.skip("int8 is used with native bf16 only, the combination measured")
    assert auto.int8_layers == ["cls.0", "decoder.fuse.0"]
    assert (auto(SAMPLE_IMAGE) == fp32(SAMPLE_IMAGE)).mean() >= 0.995


def test_calibrate_cli_writes_a_calibrated_copy_and_never_replaces_a_folder(tmp_path, capsys):
    from PIL import Image

    from pspnet.cli import main

    small().save_pretrained(tmp_path / "model")
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames()):
        Image.fromarray(frame).save(folder / f"f{i}.png")
    out = tmp_path / "calibrated"
    args = ["calibrate", "--model", str(tmp_path / "model"), "--images", str(folder), "--count", "2", "--out", str(out)]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] == 2 and list(report["ranges"]) == ["cls.0", "decoder.fuse.0"]
    assert int8_ready(pspnet.PSPNet.from_pretrained(out))
    before = sorted(p.name for p in out.iterdir())
    assert main(args) == 2 and "already exists" in capsys.readouterr().err  # the folder is left as it was
    assert sorted(p.name for p in out.iterdir()) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(args[:3] + ["--images", str(empty), "--out", str(tmp_path / "x")]) == 2
    assert "no images" in capsys.readouterr().err


@pytest.mark.slow
def test_bundled_ranges_are_what_pspnet_calibrate_takes_on_camvid_train(camvid_root, tmp_path, capsys):
    """The published ranges are reproducible: `pspnet calibrate --images <camvid>/train` with its defaults gives them
    (to fp32 rounding, which differs between CPU kernels), for the same weights."""
    from pspnet.cli import main

    bundled = pspnet.load("camvid").config["int8_ranges"]
    assert main(["calibrate", "--model", "camvid", "--images", str(camvid_root / "train"),
                 "--out", str(tmp_path / "again")]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["digest"] == bundled["digest"] and again["frames"] == bundled["frames"]
    for name, (low, high) in bundled["ranges"].items():
        assert again["ranges"][name] == pytest.approx([low, high], rel=1e-3, abs=1e-3)


@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_eval_scores_the_labels_predict_gives(tmp_path, precision):
    """`pspnet eval` runs what predict runs (BN folded, fused, the head in int8 under auto where it is used):
    its confusion matrix is the one of Segmenter's labels, pixel for pixel."""
    from pspnet.engine.evaluate import evaluate_model
    from pspnet.engine.metrics import ConfusionMatrix

    model = small()
    calibrate_int8(model, frames())
    rng = np.random.RandomState(3)
    images = frames(2, seed=2)
    masks = [rng.randint(0, 3, image.shape[:2]).astype(np.uint8) for image in images]
    write_folder_split(tmp_path, list(zip(images, masks)), ["a", "b", "c"])

    metrics = evaluate_model(model, "folder", tmp_path, "val", device="cpu", precision=precision, progress=False)
    seg = Segmenter(model, device="cpu", precision=precision)
    expected = ConfusionMatrix(3)
    for i, mask in enumerate(masks):
        expected.update(torch.from_numpy(seg(tmp_path / "images" / "val" / f"{i}.png").astype(np.int64)),
                        torch.from_numpy(mask.astype(np.int64)))
    assert metrics.confusion_matrix == expected.compute().confusion_matrix
    assert metrics.path == seg.precision + (" + int8 cls.0, decoder.fuse.0" if seg.int8_layers else "")
    assert metrics.to_dict()["path"] == metrics.path and f"({metrics.path})" in metrics.table()
