"""A bounded mutation fuzz of the image decoder path through the CLI: ``pspnet predict`` on mutated PNG and
JPEG files, in a folder and one by one, and on stdin (``-``). Every run exits 0 or 2, never with a
traceback; a refusal is one line naming the input; every input that decodes gets its outputs. Stdin goes
through the files' decoder (pspnet.data.io): the format allowlist, EXIF orientation and the bomb limit.
"""

from __future__ import annotations

import io
import random
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pspnet import create_model
from pspnet.cli import main
from pspnet.model.serialization import save_safetensors
from mutation import mutate  # noqa: E402 (tests/mutation.py)

FOLDER_MUTANTS = 40  # per format, all in one folder with two good images
SINGLE_MUTANTS = 12  # per format, each its own run, from a file and from stdin
PREDICT = ["--device", "cpu", "--precision", "fp32", "--no-progress"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_safetensors(create_model("pspnet_test_efficientnet", num_classes=3, head_channels=16, aux_channels=8), path)
    return path


def seeds() -> dict[str, bytes]:
    """A 24x16 PNG and a JPEG tagged EXIF Orientation=6 (shown 16 wide, 24 tall)."""
    img = Image.fromarray((np.arange(16 * 24 * 3).reshape(16, 24, 3) % 251).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = {}
    for fmt, kw in (("png", {}), ("jpg", {"quality": 90, "exif": exif})):
        buf = io.BytesIO()
        img.save(buf, "PNG" if fmt == "png" else "JPEG", **kw)
        out[fmt] = buf.getvalue()
    return out


def mutants(n: int, seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    return [(fmt, mutate(data, rng)) for fmt, data in seeds().items() for _ in range(n)]


def predict(argv: list[str], capsys, stdin: bytes | None = None, monkeypatch=None) -> tuple[int, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = main(["predict", *argv, *PREDICT])
    captured = capsys.readouterr()
    return code, captured.err


def expected_size(data: bytes) -> tuple[int, int] | None:
    """The upright size if the data decodes, else None (the decoder under test is the oracle's too)."""
    from pspnet.data.io import decode_rgb
    from pspnet.errors import PSPNetError

    try:
        return decode_rgb(data).size
    except PSPNetError:
        return None


def test_a_folder_of_mutants_writes_every_decodable_one_and_lists_each_failure_once(tmp_path, tiny, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    good = seeds()
    (inp / "good_a.png").write_bytes(good["png"])
    (inp / "good_b.jpg").write_bytes(good["jpg"])
    cases = mutants(FOLDER_MUTANTS, seed=17)
    for i, (fmt, data) in enumerate(cases):
        (inp / f"m{i:03d}.{fmt}").write_bytes(data)
    before = {p.name: p.read_bytes() for p in inp.iterdir()}
    code, err = predict([str(inp), "--model", str(tiny), "--out", str(tmp_path / "out")], capsys)
    assert "Traceback" not in err
    failed = [f"m{i:03d}.{fmt}" for i, (fmt, data) in enumerate(cases) if expected_size(data) is None]
    assert code == (2 if failed else 0), err
    for name in failed:
        assert sum(name in line for line in err.splitlines()) == 1, f"{name} not reported once in {err!r}"
    for i, (fmt, data) in enumerate(cases):
        size = expected_size(data)
        label = tmp_path / "out" / f"m{i:03d}.png"
        if size is None:
            assert not label.exists()
        else:
            assert Image.open(label).size == size
    assert Image.open(tmp_path / "out" / "good_a.png").size == (24, 16)
    assert Image.open(tmp_path / "out" / "good_b.png").size == (16, 24)  # EXIF Orientation=6 applied
    assert {p.name: p.read_bytes() for p in inp.iterdir()} == before
    assert 0 < len(failed) < len(cases), "the fuzz should both decode and refuse some mutants"
    print(f"folder fuzz: {len(cases)} mutants, {len(failed)} refused, {len(cases) - len(failed)} written")


@pytest.mark.slow
@pytest.mark.parametrize("via", ["file", "stdin"])
def test_each_mutant_alone_exits_0_or_2_in_one_line(tmp_path, tiny, capsys, monkeypatch, via):
    tally = {0: 0, 2: 0}
    for i, (fmt, data) in enumerate(mutants(SINGLE_MUTANTS, seed=29)):
        out = tmp_path / f"out{i}"
        if via == "file":
            src = tmp_path / f"m{i}.{fmt}"
            src.write_bytes(data)
            code, err = predict([str(src), "--model", str(tiny), "--out", str(out)], capsys)
            name, label = src.name, out / f"m{i}.png"
        else:
            code, err = predict(["-", "--model", str(tiny), "--out", str(out)], capsys, data, monkeypatch)
            name, label = "stdin", out / "stdin.png"
        size = expected_size(data)
        assert code == (0 if size else 2), err
        assert "Traceback" not in err
        if size:
            assert Image.open(label).size == size
        else:
            assert err.count("\n") == 1 and err.startswith("pspnet predict: error: ")
            assert name in err and not label.exists()
        tally[code] += 1
    assert tally[0] and tally[2], tally
    print(f"{via} fuzz: {sum(tally.values())} runs, {tally[0]} exit 0, {tally[2]} exit 2")


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) \
        + chunk(b"IEND", b"")


@pytest.mark.parametrize("data, says", [
    (png_header_only(20000, 20000), "stdin: refused, too many pixels to decode safely"),
    (b"DDS |" + bytes(200), "stdin: not an image file PIL can decode as one of the accepted formats"),
    (b"", "stdin: no image data"),
], ids=["bomb", "dds", "empty"])
def test_stdin_bombs_and_other_formats_are_one_line(tmp_path, tiny, capsys, monkeypatch, data, says):
    code, err = predict(["-", "--model", str(tiny), "--out", str(tmp_path / "out")], capsys, data, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and says in err and "Traceback" not in err, err
    assert not (tmp_path / "out" / "stdin.png").exists()


def test_stdin_applies_exif_orientation(tmp_path, tiny, capsys, monkeypatch):
    code, err = predict(["-", "--model", str(tiny), "--out", str(tmp_path / "out")], capsys, seeds()["jpg"],
                        monkeypatch)
    assert code == 0, err
    assert Image.open(tmp_path / "out" / "stdin.png").size == (16, 24)
