"""pspnet predict and the Segmenter API on the bundled model: images, folders, globs, stdin, video."""

import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import pspnet
from pspnet.cli import main
from pspnet.model.bundled import SAMPLE_IMAGE as SAMPLE
from test_engine import write_folder_split


@pytest.fixture(scope="module")
def seg():
    return pspnet.Segmenter("camvid", precision="fp32")


def test_cli_predict_sample(tmp_path, seg):
    assert main(["predict", str(SAMPLE), "--out", str(tmp_path), "--precision", "fp32", "--save-probs",
                 "--save-confidence", "--no-progress"]) == 0
    stem = SAMPLE.stem
    label = Image.open(tmp_path / f"{stem}.png")
    assert label.mode == "P" and label.size == Image.open(SAMPLE).size
    assert label.getpalette()[:6] == [c for rgb in seg.palette[:2] for c in rgb]
    labels = np.asarray(label)
    assert labels.max() < 11
    overlay = Image.open(tmp_path / f"{stem}_overlay.png")
    assert overlay.height == label.height and overlay.width > label.width  # legend panel on the right
    probs = np.load(tmp_path / f"{stem}_probs.npz")["probs"]
    assert probs.shape == (11, label.height, label.width)
    np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1, atol=1e-2)
    assert Image.open(tmp_path / f"{stem}_confidence.png").size == label.size
    # the Python API gives the same labels as the CLI
    np.testing.assert_array_equal(seg(SAMPLE), labels)


def test_segmenter_accepts_pil_numpy_tensor_path(seg):
    pil = Image.open(SAMPLE).convert("RGB").resize((120, 90))
    arr = np.array(pil)
    ref = seg(pil)
    assert ref.shape == (90, 120) and ref.dtype == np.uint8
    np.testing.assert_array_equal(seg(arr), ref)
    np.testing.assert_array_equal(seg(torch.from_numpy(arr).permute(2, 0, 1)), ref)
    np.testing.assert_array_equal(seg(torch.from_numpy(arr).permute(2, 0, 1).float() / 255), ref)
    assert seg.overlay(pil, legend=False).size == pil.size
    batch = seg.predict_batch([pil, pil.resize((64, 48)), pil])
    np.testing.assert_array_equal(batch[0], ref)
    np.testing.assert_array_equal(batch[2], ref)
    assert batch[1].shape == (48, 64)


def test_predict_folder_recursive_glob_and_stdin(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    base = Image.open(SAMPLE).convert("RGB")
    base.resize((96, 72)).save(src / "a.png")
    base.resize((80, 60)).convert("L").save(src / "sub" / "b.jpg")  # grayscale works, converted
    out = tmp_path / "out"
    assert main(["predict", str(src), "--out", str(out), "--no-progress"]) == 0
    assert Image.open(out / "a.png").size == (96, 72)
    assert Image.open(out / "sub" / "b.png").size == (80, 60)  # the input folder structure is mirrored
    out2 = tmp_path / "out2"
    assert main(["predict", str(src / "**" / "*.jpg"), "--out", str(out2), "--no-progress"]) == 0
    assert [p.name for p in sorted(out2.rglob("*.png"))] == ["b.png", "b_overlay.png"]
    buf = io.BytesIO()
    base.resize((64, 48)).save(buf, format="PNG")
    out3 = tmp_path / "out3"
    proc = subprocess.run([sys.executable, "-m", "pspnet", "predict", "-", "--out", str(out3), "--no-progress"],
                          input=buf.getvalue(), capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert Image.open(out3 / "stdin.png").size == (64, 48)


def test_predict_video_keeps_frames_and_size(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    base = Image.open(SAMPLE).convert("RGB").resize((96, 72))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 72, "yuv420p"
        for i in range(7):
            frame = av.VideoFrame.from_image(base.rotate(i * 3))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    out = tmp_path / "out"
    assert main(["predict", str(path), "--out", str(out), "--no-progress", "--batch-size", "3"]) == 0
    with av.open(str(out / "clip_overlay.mp4")) as result:
        frames = [f.to_image() for f in result.decode(video=0)]
    assert len(frames) == 7 and frames[0].size == (96, 72)


def test_slide_mode_and_size_limit(seg):
    big = Image.open(SAMPLE).convert("RGB")
    slide = pspnet.Segmenter(seg.model, precision="fp32", mode="slide", crop=(256, 256))
    assert slide(big).shape == (360, 480)
    huge = np.zeros((5000, 4000, 3), dtype=np.uint8)
    with pytest.raises(pspnet.PSPNetError, match="whole-image limit"):
        seg(huge)


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_labels_from_logits_equal_the_argmax_of_the_probabilities(precision):
    """predict_batch takes the plain path's argmax from the logits; it must match labels(probs) pixel for pixel,
    in bf16 too, where equal logits are common and the tie must go to the first class, as in NumPy's argmax."""
    seg = pspnet.Segmenter("camvid", precision=precision)
    pil = Image.open(SAMPLE).convert("RGB")
    images = [pil, pil.resize((200, 150)), Image.fromarray(255 - np.asarray(pil))]
    for image, labels in zip(images, seg.predict_batch(images)):
        expected = seg.labels(seg.probs(image))
        assert labels.dtype == expected.dtype == np.uint8
        np.testing.assert_array_equal(labels, expected)
    seg.flip = True  # the averaged path (flip, scales, slide) still goes through the probabilities
    np.testing.assert_array_equal(seg(pil), seg.labels(seg.probs(pil)))


def test_eval_scale_flag_reads_the_bundled_model_at_another_size(tmp_path, seg, capsys):
    """The bundled model reads frames at 1.33x; --eval-scale 1 is its earlier reading, by CLI as by API."""
    assert seg.model.eval_scale == 1.33
    at_one = pspnet.Segmenter("camvid", precision="fp32", eval_scale=1.0)
    assert at_one.model.eval_scale == 1.0 and seg.model.eval_scale == 1.33  # each loads its own copy
    expected = at_one(SAMPLE)
    assert (expected != seg(SAMPLE)).any()
    out = tmp_path / "out"
    args = ["predict", str(SAMPLE), "--out", str(out), "--precision", "fp32", "--no-progress", "--no-overlay"]
    assert main(args) == 0
    assert main(args + ["--eval-scale", "1"]) == 0  # another reading: redone, not skipped as unchanged
    assert "done 1, skipped 0" in capsys.readouterr().out
    np.testing.assert_array_equal(np.asarray(Image.open(out / f"{SAMPLE.stem}.png")), expected)
    for bad in ("0", "nan", "x"):
        with pytest.raises(SystemExit):
            main(args + ["--eval-scale", bad])
        assert "--eval-scale" in capsys.readouterr().err
    with pytest.raises(pspnet.PSPNetError, match="eval_scale applies when the Segmenter loads the model"):
        pspnet.Segmenter(seg.model, eval_scale=1.0)



def test_without_the_int8_head_auto_reads_the_bundled_model_at_its_fallback(monkeypatch, tmp_path):
    """The 1.33x reading fits the speed budget only with the int8 head (AVX512-VNNI, no AMX). Elsewhere (AMX,
    AVX2-only, GPUs) ``auto`` reads frames at their own size; an explicit reading or precision is kept."""
    import pspnet.inference.segmenter as segmenter
    from pspnet.engine.evaluate import evaluate_model
    from pspnet.inference.int8 import int8_available

    assert pspnet.load("camvid").config["fallback_eval_scale"] == 1.0
    assert pspnet.load("camvid", eval_scale=1.2).config["fallback_eval_scale"] is None  # asked for: kept everywhere
    assert pspnet.load("camvid", eval_scale=1.2, fallback_eval_scale=1.1).config["fallback_eval_scale"] == 1.1
    if int8_available() and pspnet.Segmenter("camvid").precision == "bf16":
        assert pspnet.Segmenter("camvid").eval_scale == 1.33
    monkeypatch.setattr(segmenter, "int8_available", lambda: False)
    auto = pspnet.Segmenter("camvid")
    assert auto.int8_layers == [] and auto.eval_scale == 1.0 and auto.model.eval_scale == 1.33
    at_one = pspnet.Segmenter("camvid", eval_scale=1.0)
    np.testing.assert_array_equal(auto(SAMPLE), at_one(SAMPLE))
    assert pspnet.Segmenter("camvid", eval_scale=1.33).eval_scale == 1.33
    assert pspnet.Segmenter("camvid", precision="fp32").eval_scale == 1.33
    assert pspnet.Segmenter("camvid", precision=auto.precision).eval_scale == 1.33  # only "auto" falls back
    for bad in (0.1, 9.0):
        with pytest.raises(ValueError, match="fallback_eval_scale"):
            pspnet.PSPNet(num_classes=3, backbone="resnet18", fallback_eval_scale=bad)
    # eval scores the labels predict gives, and says how it read the frames
    frame = np.asarray(Image.open(SAMPLE).convert("RGB"))
    folder = write_folder_split(tmp_path / "data", [(frame, auto(SAMPLE).astype(np.uint8))], auto.class_names)
    metrics = evaluate_model("camvid", "folder", folder, "val", device="cpu", progress=False)
    assert metrics.miou > 0.99 and metrics.path.startswith(auto.precision + ", read at 1x")
    at_model_scale = evaluate_model("camvid", "folder", folder, "val", device="cpu", progress=False, eval_scale=1.33)
    assert at_model_scale.miou < 0.95 and "read at" not in at_model_scale.path


def test_eval_flag_eval_scale_measures_that_reading(camvid_root, capsys):
    from pspnet.engine.evaluate import evaluate_model

    args = ["eval", "--dataset", "camvid", "--data-root", str(camvid_root), "--limit", "2", "--precision", "fp32",
            "--no-progress"]
    miou = {}
    for scale in (None, 1.0):
        assert main(args + ([] if scale is None else ["--eval-scale", str(scale)])) == 0
        miou[scale] = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("mIoU"))
        by_api = evaluate_model(pspnet.load("camvid", **({} if scale is None else {"eval_scale": scale})), "camvid",
                                camvid_root, limit=2, precision="fp32", progress=False)
        assert f"mIoU {100 * by_api.miou:.2f}" in miou[scale]
    assert miou[None] != miou[1.0]


def test_a_bundled_models_outputs_are_redone_when_its_file_changes():
    """The skip-if-unchanged fingerprint names the bundled weights file (size, mtime), not just 'camvid':
    outputs of an earlier release are not kept as current after an upgrade."""
    from pspnet.cli.predict import _model_identity
    from pspnet.model.bundled import WEIGHTS_DIR

    path = WEIGHTS_DIR / "camvid.safetensors"
    assert _model_identity("camvid") == f"{path.resolve()}:{path.stat().st_size}:{path.stat().st_mtime_ns}"
