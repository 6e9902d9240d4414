"""pspnet predict never loses anything: no clobbered input or user file, no name shared by two inputs,
no write through a symlink, bad options refused before inference, bad images reported after all good ones."""

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pspnet
from pspnet.cli import main
from pspnet.files import atomic_write
from pspnet.inference.outputs import Source, plan_outputs

SAMPLE = Path(pspnet.__file__).parent / "samples" / "camvid_0016E5_08059.jpg"


def _img(path: Path, size=(64, 48), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(SAMPLE).convert("RGB").resize(size).save(path, format=fmt)
    return path


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _predict(capsys, *args) -> tuple[int, str]:
    code = main(["predict", *map(str, args), "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture
def no_model(monkeypatch):
    """Any attempt to load a model fails the test: the refusal must come before inference."""
    from pspnet.inference import segmenter

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(segmenter.Segmenter, "__init__", boom)


@pytest.mark.parametrize("args, message", [
    (["--scales", "0"], "--scales 0: every scale must be a finite number > 0"),
    (["--scales", "1", "-1"], "--scales -1"),
    (["--scales", "nan"], "--scales nan"),
    (["--alpha", "5"], "--alpha 5: must be between 0"),
    (["--alpha", "-0.1"], "--alpha -0.1"),
    (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["--mode", "slide", "--crop", "0", "0"], "--crop 0 0: height and width must be positive"),
    (["--device", "nonsense"], "--device nonsense: not a device name"),
    (["--workers", "0"], "--workers 0: must be at least 1"),
])
def test_bad_options_one_line_exit_2_before_inference(tmp_path, capsys, no_model, args, message):
    code, err = _predict(capsys, SAMPLE, "--out", tmp_path / "out", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cuda_without_gpu_is_one_line(tmp_path, capsys, no_model):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, err = _predict(capsys, SAMPLE, "--out", tmp_path / "out", "--device", "cuda")
    assert code == 2 and "--device cuda: no CUDA GPU" in err


def test_out_is_a_file_or_unwritable_refused_before_inference(tmp_path, capsys, no_model):
    a_file = tmp_path / "file.txt"
    a_file.write_text("mine")
    code, err = _predict(capsys, SAMPLE, "--out", a_file)
    assert code == 2 and "is a file, expected a folder" in err
    code, err = _predict(capsys, SAMPLE, "--out", a_file / "sub")
    assert code == 2 and "cannot write there" in err
    assert a_file.read_text() == "mine"


def test_out_equal_inside_or_containing_the_inputs_is_refused(tmp_path, capsys, no_model):
    src = tmp_path / "in"
    _img(src / "a.jpg")
    _img(src / "sub" / "b.png")
    before = _snapshot(tmp_path)
    for out, word in [(src, "is the input folder"), (src / "preds", "is inside the input folder"),
                      (tmp_path, "contains the input folder")]:
        code, err = _predict(capsys, src, "--out", out)
        assert code == 2 and word in err, err
    code, err = _predict(capsys, src / "sub" / "b.png", "--out", src / "sub")
    assert code == 2 and "contains the input" in err
    after = {k: v for k, v in _snapshot(tmp_path).items() if ".pspnet" not in k}
    assert after == before


def test_names_never_collide_and_each_output_is_its_own_input(tmp_path, capsys):
    a, b = tmp_path / "dirA", tmp_path / "dirB"
    sizes = {}
    for path, size in [(a / "good.jpg", (64, 48)), (a / "good.png", (60, 44)), (a / "road.jpg", (56, 40)),
                       (a / "road_overlay.jpg", (52, 36)), (a / "x" / "y" / "frame.jpg", (48, 32)),
                       (b / "x" / "y" / "frame.jpg", (44, 28))]:
        _img(path, size)
        sizes[path] = size
    out = tmp_path / "out"
    code, err = _predict(capsys, a, b, "--out", out)
    assert code == 0, err
    expect = {"dirA/good.jpg.png": (64, 48), "dirA/good.png.png": (60, 44), "dirA/road.jpg.png": (56, 40),
              "dirA/road_overlay.jpg.png": (52, 36), "dirA/x/y/frame.png": (48, 32), "dirB/x/y/frame.png": (44, 28)}
    for rel, size in expect.items():
        label = Image.open(out / rel)
        assert label.mode == "P" and label.size == size, rel
    overlay = Image.open(out / "dirA" / "road.jpg_overlay.png")  # both road names keep their extension
    assert overlay.mode == "RGB" and overlay.width > 56  # image plus legend panel
    files = [p for p in out.rglob("*.png")]
    assert len(files) == 2 * len(sizes)  # a label map and an overlay for every input, none shared


def test_plan_is_injective_on_adversarial_names(tmp_path):
    names = ["a.jpg", "a.png", "a.jpg.png", "a_overlay.jpg", "a_overlay.png", "a_probs.jpg", "a.png.png",
             "a_confidence.tif", "a_overlay.jpg.png"]
    sources = [Source(tmp_path / n, tmp_path, Path(n), "image") for n in names]
    sources.append(Source(tmp_path / "a.mp4", tmp_path, Path("a.mp4"), "video"))
    plan = plan_outputs(sources, tmp_path / "out", ["overlay", "probs", "confidence"])
    every = [p for item in plan for p in item.outputs.values()]
    assert len(every) == len(set(every))


def test_symlink_in_out_is_never_written_through(tmp_path, capsys):
    src = _img(tmp_path / "in" / "x.jpg")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.png").symlink_to(victim)
    code, err = _predict(capsys, src, "--out", out)
    assert code == 2 and "pspnet did not write it" in err and victim.read_text() == "precious"
    code, err = _predict(capsys, src, "--out", out, "--overwrite")
    assert code == 0, err
    assert victim.read_text() == "precious"
    assert not (out / "x.png").is_symlink() and Image.open(out / "x.png").mode == "P"


def test_symlinked_subfolder_leading_out_is_refused(tmp_path, capsys):
    _img(tmp_path / "in" / "sub" / "x.jpg")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(elsewhere, target_is_directory=True)
    code, err = _predict(capsys, tmp_path / "in", "--out", out, "--overwrite")
    assert code == 2 and "outside --out" in err and not any(elsewhere.iterdir())


def test_atomic_write_replaces_a_link_not_its_target(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    link = tmp_path / "out.png"
    link.symlink_to(victim)
    atomic_write(link, lambda f: f.write(b"new"))
    assert victim.read_bytes() == b"keep" and link.read_bytes() == b"new" and not link.is_symlink()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_bad_images_are_reported_after_every_good_one_is_written(tmp_path, capsys):
    src = tmp_path / "in"
    for i in range(6):
        _img(src / f"f{i}.jpg", (64 + 4 * i, 48))
    good = (src / "f0.jpg").read_bytes()
    (src / "f2.jpg").write_bytes(good[: len(good) // 2])  # valid header, truncated body
    (src / "f4.jpg").write_bytes(b"not an image at all")
    before = _snapshot(src)
    out = tmp_path / "out"
    code, err = _predict(capsys, src, "--out", out, "--batch-size", "2")
    assert code == 2
    assert "f2.jpg" in err and "f4.jpg" in err and "2 of 6 input(s) failed" in err and "Traceback" not in err
    for i in (0, 1, 3, 5):
        assert Image.open(out / f"f{i}.png").size == (64 + 4 * i, 48)
    assert not (out / "f2.png").exists() and not (out / "f4.png").exists()
    rows = (out / "manifest.csv").read_text().splitlines()
    assert len(rows) == 7 and sum("corrupt" in r or "not an image" in r or "decode" in r for r in rows) == 2
    assert _snapshot(src) == before


def test_rerun_skips_unchanged_redoes_changed_and_keeps_user_files(tmp_path, capsys):
    src = tmp_path / "in"
    _img(src / "a.jpg")
    _img(src / "b.jpg", (60, 44))
    out = tmp_path / "out"
    assert _predict(capsys, src, "--out", out)[0] == 0
    stat_a, stat_b = (out / "a.png").stat(), (out / "b.png").stat()
    _img(src / "b.jpg", (56, 40))  # changed input
    os.utime(src / "b.jpg", ns=(stat_b.st_mtime_ns + 10**9, stat_b.st_mtime_ns + 10**9))
    code, text = _predict(capsys, src, "--out", out)
    assert code == 0 and "done 1, skipped 1" in text
    assert (out / "a.png").stat().st_ino == stat_a.st_ino and (out / "a.png").stat().st_mtime_ns == stat_a.st_mtime_ns
    assert Image.open(out / "b.png").size == (56, 40)
    # a file of the user's where a new input's output would go is refused, untouched
    _img(src / "c.jpg")
    (out / "c_overlay.png").write_bytes(b"user data")
    code, err = _predict(capsys, src, "--out", out)
    assert code == 2 and "c_overlay.png" in err and (out / "c_overlay.png").read_bytes() == b"user data"


def test_outputs_get_ordinary_permissions(tmp_path, capsys):
    out = tmp_path / "out"
    assert _predict(capsys, _img(tmp_path / "in" / "x.jpg"), "--out", out)[0] == 0
    mask = os.umask(0)
    os.umask(mask)
    assert (out / "x.png").stat().st_mode & 0o777 == 0o666 & ~mask
    assert np.asarray(Image.open(out / "x.png")).max() < 11


def test_a_kill_between_an_output_and_its_row_does_not_block_the_rerun(tmp_path, capsys, monkeypatch):
    """A run killed after renaming an output into place but before its result row: the next run knows the file
    as its own (the batch named its outputs before writing them), redoes that input and completes."""
    from pspnet.inference.outputs import Manifest

    class Killed(BaseException):  # nothing in the run catches it, as nothing survives SIGKILL
        pass

    def killed(*args, **kwargs):
        raise Killed

    src, out = tmp_path / "in", tmp_path / "out"
    _img(src / "a.jpg")
    monkeypatch.setattr(Manifest, "record", killed)
    with pytest.raises(Killed):
        main(["predict", str(src), "--out", str(out), "--precision", "fp32", "--no-progress"])
    assert (out / "a.png").is_file() and (out / "a_overlay.png").is_file()  # written, never recorded
    monkeypatch.undo()
    code, text = _predict(capsys, src, "--out", out)
    assert code == 0 and "done 1, skipped 0" in text
    assert _predict(capsys, src, "--out", out)[1].count("skipped 1")  # and now it is recorded


def test_labels_come_from_the_logits_unless_probabilities_are_written(tmp_path, capsys, monkeypatch):
    """Without --save-probs/--save-confidence no probabilities are computed, and the labels are the same."""
    from pspnet.inference import segmenter

    images = [_img(tmp_path / "in" / f"{k}.png", size) for k, size in enumerate([(96, 72), (96, 72), (80, 64)])]
    assert _predict(capsys, *images, "--out", tmp_path / "with_probs", "--save-probs", "--model", "camvid")[0] == 0
    calls = []
    real = segmenter.Segmenter.probs_batch
    monkeypatch.setattr(segmenter.Segmenter, "probs_batch", lambda self, ims: calls.append(len(ims)) or real(self, ims))
    assert _predict(capsys, *images, "--out", tmp_path / "labels_only", "--model", "camvid")[0] == 0
    assert calls == []
    for k in range(3):
        a = np.asarray(Image.open(tmp_path / "with_probs" / f"{k}.png"))
        b = np.asarray(Image.open(tmp_path / "labels_only" / f"{k}.png"))
        assert np.array_equal(a, b)
    assert _predict(capsys, images[0], "--out", tmp_path / "confidence", "--save-confidence", "--model", "camvid")[0] == 0
    assert calls == [1]
