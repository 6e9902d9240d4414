"""Every bad input the CLI can meet: a clear message naming the file and the problem, exit code 2, no
traceback, and nothing already in the output folder touched. Images in odd modes are converted.

Each row builds its input under ``in/`` (and a dataset under ``data/`` where it needs one) next to
an ``out/`` folder that already holds earlier results and a checkpoint; after a failure every file
of the whole tree must be byte-identical and nothing new may appear.
"""

from __future__ import annotations

import builtins
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from pspnet import PSPNetError, create_model
from pspnet.cli import main
from pspnet.model.serialization import save_safetensors

TINY = {"head_channels": 16, "aux_channels": 8}
PREDICT = ["--device", "cpu", "--precision", "fp32", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A 3-class model small enough that predicting a few images takes well under a second."""
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_safetensors(create_model("pspnet_test_efficientnet", num_classes=3, **TINY), path)
    return path


def noise(w: int, h: int, mode: str = "RGB") -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (h, w, channels) if channels else (h, w)
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8), mode)


def write_pair(data: Path, stem: str, image_size=(24, 16), mask_size=None, labels=(0, 1, 2)) -> None:
    """images/<stem>.png + masks/<stem>.png of a folder dataset (split 'all')."""
    (data / "images").mkdir(parents=True, exist_ok=True)
    (data / "masks").mkdir(parents=True, exist_ok=True)
    noise(*image_size).save(data / "images" / f"{stem}.png")
    w, h = mask_size or image_size
    mask = np.resize(np.array(labels, dtype=np.uint8), h * w).reshape(h, w)
    Image.fromarray(mask, "L").save(data / "masks" / f"{stem}.png")


def png_header_only(path: Path, width: int, height: int) -> None:
    """A valid PNG signature and header for a huge image, with no pixel data: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def check_data(data: Path) -> list[str]:
    return ["check-data", "--dataset", "folder", "--data-root", str(data), "--split", "all",
            "--data-opt", "num_classes=3", "--workers", "1", "--no-progress"]


@dataclass
class Case:
    """One bad input: ``build(tmp, model)`` makes it and returns the CLI arguments."""

    name: str
    build: Callable[[Path, Path], list[str]]
    says: list[str]  # fragments the message must contain: the file's name and the problem
    code: int = 2
    writes: str | None = None  # the stem of the outputs of a row that works
    unreadable: str | None = None  # a file under in/ that the command must not be able to read
    creates: str | None = None  # a new folder the command may fill before failing (a training run's logs)


def predict(*names: str, extra: tuple[str, ...] = ()) -> Callable[[Path, Path], list[str]]:
    """``pspnet predict`` on files under in/ (``""`` is the folder itself) with the tiny model."""
    return lambda tmp, model: ["predict", *[str(tmp / "in" / n) for n in names], "--model", str(model),
                               "--out", str(tmp / "out"), *PREDICT, *extra]


def made(make: Callable[[Path], None], args: Callable[[Path, Path], list[str]]) -> Callable[[Path, Path], list[str]]:
    """Run ``make(tmp/in)`` first, then build the arguments."""
    def build(tmp: Path, model: Path) -> list[str]:
        make(tmp / "in")
        return args(tmp, model)
    return build


def mismatched_dataset(tmp: Path, model: Path) -> list[str]:
    write_pair(tmp / "data", "a", image_size=(24, 16), mask_size=(20, 16))
    return check_data(tmp / "data")


def bad_labels_dataset(tmp: Path, model: Path) -> list[str]:
    write_pair(tmp / "data", "a", labels=(0, 1, 7, 9))
    return check_data(tmp / "data")


def image_without_mask(tmp: Path, model: Path) -> list[str]:
    write_pair(tmp / "data", "a")
    noise(24, 16).save(tmp / "data" / "images" / "b.png")
    return check_data(tmp / "data")


def mask_without_image(tmp: Path, model: Path) -> list[str]:
    write_pair(tmp / "data", "a")
    Image.new("L", (24, 16)).save(tmp / "data" / "masks" / "c.png")
    return check_data(tmp / "data")


def empty_dataset(tmp: Path, model: Path) -> list[str]:
    (tmp / "data" / "images").mkdir(parents=True)
    (tmp / "data" / "masks").mkdir(parents=True)
    return check_data(tmp / "data")


def every_problem_at_once(tmp: Path, model: Path) -> list[str]:
    data = tmp / "data"
    write_pair(data, "good")
    write_pair(data, "small_mask", mask_size=(20, 16))
    write_pair(data, "bad_labels", labels=(0, 5))
    write_pair(data, "broken")
    (data / "images" / "broken.png").write_bytes(b"")
    noise(24, 16).save(data / "images" / "no_mask.png")
    Image.new("L", (24, 16)).save(data / "masks" / "no_image.png")
    return check_data(data)


def other_class_count(tmp: Path, model: Path) -> list[str]:
    """Fine-tuning 3-class weights on a 2-class dataset without giving them a new head."""
    data = tmp / "data"
    for stem in ("a", "b"):
        for kind, img in (("images", noise(32, 32)), ("masks", Image.new("L", (32, 32)))):
            (data / kind / "train").mkdir(parents=True, exist_ok=True)
            img.save(data / kind / "train" / f"{stem}.png")
    return ["train", "--dataset", "folder", "--data-root", str(data), "--data-opt", "num_classes=2",
            "--model", "pspnet_test_efficientnet", "--set", "model_kwargs={head_channels: 16, aux_channels: 8}",
            "--set", "pretrained_backbone=false", "--set", f"init_weights={model}", "--set", "val_split=null",
            "--out-dir", str(tmp / "out"), "--iterations", "1", "--batch-size", "2", "--crop-size", "32",
            "--device", "cpu", "--workers", "0", "--no-progress"]


def bad_mask_found_in_training(tmp: Path, model: Path) -> list[str]:
    """A mask that only a data-loader worker reads, after training has started."""
    argv = other_class_count(tmp, model)
    Image.new("L", (32, 32), 7).save(tmp / "data" / "masks" / "train" / "b.png")
    argv[argv.index(f"init_weights={model}")] = "init_weights=null"
    argv[argv.index("--data-opt") + 1] = "num_classes=3"
    argv[argv.index("--workers") + 1] = "1"
    argv[argv.index("--out-dir") + 1] = str(tmp / "run")  # a new run: its config and logs are written first
    return argv


def truncated(make: Callable[[Path], None], name: str, keep: float = 0.5) -> Callable[[Path], None]:
    def cut(folder: Path) -> None:
        make(folder)
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: int(len(data) * keep)])
    return cut


def save(name: str, image: Callable[[], Image.Image], **kwargs) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        image().save(folder / name, **kwargs)
    return make


def write(name: str, data: bytes) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return make


def sixteen_bit() -> Image.Image:
    return Image.fromarray(np.arange(24 * 16, dtype=np.uint16).reshape(16, 24) * 100)


CASES = [
    Case("missing path", predict("nope.jpg"), ["nope.jpg", "no such file or folder"]),
    Case("unreadable file", made(save("locked.png", lambda: noise(24, 16)), predict("locked.png")),
         ["locked.png", "cannot read the file (permission denied)"], unreadable="locked.png"),
    Case("truncated image", made(truncated(save("cut.png", lambda: noise(64, 64)), "cut.png"), predict("cut.png")),
         ["cut.png", "corrupt or truncated image"]),
    Case("truncated jpeg", made(truncated(save("cut.jpg", lambda: noise(64, 64)), "cut.jpg"), predict("cut.jpg")),
         ["cut.jpg", "corrupt or truncated image"]),
    Case("corrupt image", made(write("junk.jpg", bytes(range(256)) * 8), predict("junk.jpg")),
         ["junk.jpg", "not an image file PIL can decode"]),
    Case("zero-byte file", made(write("empty.png", b""), predict("empty.png")), ["empty.png", "file is empty (0 bytes)"]),
    Case("one bad image among good ones",
         made(lambda d: (save("good.png", lambda: noise(24, 16))(d), write("zz_empty.png", b"")(d)), predict("")),
         ["zz_empty.png", "file is empty"], writes="good"),
    Case("grayscale", made(save("gray.png", lambda: noise(24, 16, "L")), predict("gray.png")), [], 0, "gray"),
    Case("RGBA", made(save("rgba.png", lambda: noise(24, 16, "RGBA")), predict("rgba.png")), [], 0, "rgba"),
    Case("16-bit", made(save("deep.png", sixteen_bit), predict("deep.png")), [], 0, "deep"),
    Case("palette", made(save("pal.png", lambda: noise(24, 16).convert("P", palette=Image.ADAPTIVE)),
                         predict("pal.png")), [], 0, "pal"),
    Case("palette with transparency",
         made(save("tpal.gif", lambda: noise(24, 16).convert("P", palette=Image.ADAPTIVE), transparency=0),
              predict("tpal.gif")), [], 0, "tpal"),
    Case("mask size differs from its image", mismatched_dataset,
         ["masks/a.png", "mask is 20x16 but its image a.png is 24x16"]),
    Case("label values outside the class set", bad_labels_dataset,
         ["masks/a.png", "label values [7, 9] are outside the class set"]),
    Case("image without a mask", image_without_mask, ["images/b.png", "image has no mask"]),
    Case("mask without an image", mask_without_image, ["masks/c.png", "mask has no image"]),
    Case("empty dataset folder", empty_dataset, ["images", "folder has no images"]),
    Case("empty input folder", made(lambda d: d.mkdir(parents=True), predict("")),
         ["in", "folder has no images or videos"]),
    Case("checkpoint with another class count", other_class_count,
         ["tiny.safetensors: the weights have 3 classes, not 2", "--num-classes 2", "--set init_weights=DIR"]),
    Case("bad mask found by a training loader worker", bad_mask_found_in_training,
         ["masks/train/b.png: label values [7] are outside the class set"], creates="run"),
    Case("undecodable video", made(write("clip.mp4", bytes(range(256)) * 8), predict("clip.mp4")),
         ["clip.mp4", "cannot decode this video"]),
    Case("zero-byte video", made(write("clip.mp4", b""), predict("clip.mp4")), ["clip.mp4", "file is empty"]),
    Case("image above the whole-image memory limit",
         made(save("huge.png", lambda: Image.new("RGB", (4100, 4000))), predict("huge.png")),
         ["huge.png: image of 4100x4000 is above the whole-image limit of 16 MP", "--mode slide"]),
    Case("scales that ask for too much memory",
         made(save("big.png", lambda: Image.new("RGB", (1000, 1000))), predict("big.png", extra=("--scales", "1", "5"))),
         ["big.png: image of 1000x1000 at scale 5 is above the whole-image limit of 16 MP"]),
    Case("decompression bomb", made(lambda d: (d.mkdir(parents=True), png_header_only(d / "bomb.png", 20000, 20000)),
                                    predict("bomb.png")),
         ["bomb.png", "too many pixels to decode safely"]),
    Case("every problem of a dataset at once", every_problem_at_once,
         ["5 problems", "no_mask.png: image has no mask", "no_image.png: mask has no image",
          "broken.png: file is empty", "small_mask.png: mask is 20x16", "bad_labels.png: label values [5]"]),
]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path, tiny_model, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.png").write_bytes(b"an earlier result")
    (out / "last.pt").write_bytes(os.urandom(64))
    argv = case.build(tmp_path, tiny_model)
    if case.unreadable:
        locked = tmp_path / "in" / case.unreadable
        locked.chmod(0)
        if os.geteuid() == 0:  # root reads anything: make open() fail as it would for anyone else
            real_open = builtins.open

            def denied(file, *args, **kwargs):
                if Path(str(file)) == locked:
                    raise PermissionError(13, "Permission denied", str(file))
                return real_open(file, *args, **kwargs)

            monkeypatch.setattr(builtins, "open", denied)
    before = snapshot(tmp_path)
    code = main(argv)
    captured = capsys.readouterr()
    message = captured.err + captured.out
    assert code == case.code, message
    assert "Traceback" not in message
    for fragment in case.says:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    after = snapshot(tmp_path)
    if case.code == 2:
        if case.creates:
            after = {k: v for k, v in after.items() if not k.startswith(f"{case.creates}/")}
        # predict records every input in its manifest, failures too, and writes the good inputs of a folder
        after = {k: v for k, v in after.items() if not k.startswith(("out/.pspnet/", "out/manifest.csv"))
                 and not (case.writes and k.startswith(f"out/{case.writes}"))}
        assert after == before, "a failed command changed or added files"
        if case.writes:
            assert Image.open(out / f"{case.writes}.png").size == (24, 16)
        if case.says and argv[0] != "check-data":  # one line: "pspnet COMMAND: error: FILE: PROBLEM"
            assert captured.err.count("\n") == 1 and captured.err.startswith(f"pspnet {argv[0]}: error: ")
    else:
        assert {k: v for k, v in after.items() if k in before} == before
        assert np.asarray(Image.open(out / f"{case.writes}.png")).shape == (16, 24)  # labels at the input's size
        assert Image.open(out / f"{case.writes}_overlay.png").mode == "RGB"


def test_the_fine_tune_advice_works(tmp_path, tiny_model):
    """What the class-count message says to do: a new head with pspnet convert, then train from it."""
    argv = other_class_count(tmp_path, tiny_model)
    assert main(["convert", str(tiny_model), "--num-classes", "2", "--out", str(tmp_path / "head2")]) == 0
    argv[argv.index(f"init_weights={tiny_model}")] = f"init_weights={tmp_path / 'head2'}"
    assert main(argv) == 0
    assert (tmp_path / "out" / "last.pt").is_file()


def test_a_video_that_fails_midway_leaves_the_earlier_result(tmp_path):
    """The overlay video is written to a temporary file that only replaces the old one when complete."""
    av = pytest.importorskip("av")
    from pspnet.inference.video import segment_video

    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        for _ in range(6):
            for packet in stream.encode(av.VideoFrame.from_image(noise(32, 24))):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)

    class FailsOnSecondBatch:
        batch_size, calls = 2, 0

        def predict_batch(self, images):
            self.calls += 1
            if self.calls == 2:
                raise PSPNetError("frame 3: out of memory")
            return [np.zeros((24, 32), np.uint8) for _ in images]

        def overlay(self, image, labels, alpha, legend):
            return image

    out = tmp_path / "out"
    out.mkdir()
    (out / "clip_overlay.mp4").write_bytes(b"the earlier result")
    with pytest.raises(PSPNetError, match="out of memory"):
        segment_video(clip, out / "clip_overlay.mp4", FailsOnSecondBatch(), progress=False)
    assert snapshot(out) == {"clip_overlay.mp4": b"the earlier result"}


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(PSPNetError, match="nope.jpg: no such file or folder"):
        main(["--debug", "predict", str(tmp_path / "nope.jpg")])
