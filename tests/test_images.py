"""Image decoding (pspnet.data.io), used by the CLI, the Python API, the server and the datasets:
EXIF orientation, the format allowlist, and every decoder failure as a PSPNetError naming the file.

Includes a property-based test (Hypothesis) and a bounded mutation fuzz of valid files.
"""

from __future__ import annotations

import io
import random
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from pspnet.data.io import FORMATS, decode_rgb, open_image, read_image, read_mask
from pspnet.errors import PSPNetError

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from mutation import mutate  # noqa: E402 (tests/mutation.py)

MUTATIONS = 200  # per seed file; see test_mutation_fuzz_of_valid_files


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def asymmetric(h: int = 12, w: int = 20) -> Image.Image:
    """No symmetry, so every one of the 8 orientations gives a different array."""
    arr = np.arange(h * w * 3, dtype=np.uint32).reshape(h, w, 3) % 251
    return Image.fromarray(arr.astype(np.uint8))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_on_every_read(tmp_path, orientation):
    img = asymmetric()
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(img, "PNG", exif=exif)  # PNG: lossless, so the pixels can be compared exactly
    tagged = Image.open(io.BytesIO(data))
    expected = np.asarray(ImageOps.exif_transpose(tagged).convert("RGB"))
    if orientation in (5, 6, 7, 8):
        assert expected.shape[:2] == (20, 12)
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    np.testing.assert_array_equal(np.asarray(read_image(path)), expected)  # CLI, API, datasets
    np.testing.assert_array_equal(np.asarray(decode_rgb(data)), expected)  # server
    mask = Image.fromarray((np.arange(240).reshape(12, 20) % 5).astype(np.uint8), mode="L")
    mask_path = tmp_path / "mask.png"
    mask.save(mask_path, exif=exif)
    assert read_mask(mask_path).shape == expected.shape[:2]  # masks stay aligned with their images


def test_every_documented_format_decodes(tmp_path):
    img = asymmetric(16, 24)
    for fmt in FORMATS:
        path = tmp_path / f"x.{fmt.lower()}"
        img.save(path, fmt)
        out = read_image(path)
        assert out.mode == "RGB" and out.size == (24, 16), fmt


@pytest.mark.parametrize("fmt", ["DDS", "TGA", "PCX", "ICO", "SGI", "QOI"])
def test_formats_outside_the_allowlist_are_refused_before_decoding(tmp_path, fmt):
    path = tmp_path / f"x.{fmt.lower()}"
    asymmetric(16, 24).save(path, fmt)
    with pytest.raises(PSPNetError, match=r"x\.\w+: not an image file PIL can decode as one of the accepted "
                                          r"formats \(JPEG, PNG"):
        read_image(path)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def test_decoder_failures_name_the_file(tmp_path, monkeypatch):
    png = encode(asymmetric(), "PNG")
    huge_header = png[:16] + (60000).to_bytes(4, "big") + (60000).to_bytes(4, "big") + png[24:]
    ihdr = (60000).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    bomb = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000)) \
        + _png_chunk(b"IEND", b"")
    cases = {
        "truncated.png": (png[: len(png) // 2], "corrupt or truncated image \\(PNG"),
        "bomb.png": (bomb, "too many pixels"),
        "bad_crc.png": (huge_header, "bad_crc.png"),
        "fake.dds": (b"DDS |" + bytes(200), "one of the accepted formats"),
        "text.jpg": (b"hello", "one of the accepted formats"),
        "empty.png": (b"", "empty"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(PSPNetError, match=message) as err:
            read_image(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value), name
        with pytest.raises(PSPNetError, match=message.replace(name, "upload")):
            decode_rgb(data, name="upload") if data else open_image(data, name="upload")
    with pytest.raises(PSPNetError, match="no such file"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(PSPNetError, match="is a directory"):
        read_image(tmp_path)
    with pytest.raises(PSPNetError, match=r"above the limit of 0\.0 MP"):
        open_image(png, max_pixels=100)


def test_masks_keep_their_indices(tmp_path):
    labels = (np.arange(12 * 20).reshape(12, 20) % 7).astype(np.uint8)
    pal = Image.fromarray(labels, mode="P")
    pal.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), labels)
    Image.fromarray(labels.astype(np.uint16) * 1000).save(tmp_path / "16.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "16.png"), labels.astype(np.int32) * 1000)


def _decode_or_refuse(data: bytes) -> str:
    """Decoding may succeed (RGB, non-empty) or fail with a PSPNetError; anything else fails the test."""
    try:
        img = decode_rgb(data, name="fuzz.bin", max_pixels=4_000_000)
    except PSPNetError as err:
        assert str(err).startswith("fuzz.bin: ") and "\n" not in str(err)
        return "refused"
    assert img.mode == "RGB" and img.width >= 1 and img.height >= 1
    return "decoded"


def seed_files() -> dict[str, bytes]:
    img = asymmetric(24, 32)
    exif = Image.Exif()
    exif[0x0112] = 6
    return {"png": encode(img, "PNG"), "jpeg": encode(img, "JPEG", quality=90, exif=exif),
            "webp": encode(img, "WEBP"), "tiff": encode(img, "TIFF"), "gif": encode(img, "GIF"),
            "bmp": encode(img, "BMP")}


def mutants(n: int = MUTATIONS) -> list[tuple[str, bytes]]:
    """``n`` mutants of each seed file, the same on every run (seeded)."""
    rng = random.Random(17)
    return [(fmt, mutate(data, rng)) for fmt, data in seed_files().items() for _ in range(n)]


def test_mutation_fuzz_of_valid_files():
    outcomes: dict[str, int] = {}
    for fmt, data in mutants():
        result = _decode_or_refuse(data)
        outcomes[f"{fmt} {result}"] = outcomes.get(f"{fmt} {result}", 0) + 1
    assert sum(outcomes.values()) == MUTATIONS * 6
    assert any("refused" in k for k in outcomes) and any("decoded" in k for k in outcomes), outcomes


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_decode_or_are_refused(data):
    _decode_or_refuse(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(seed_files())), st.integers(0, 10_000), st.integers(0, 255))
def test_any_single_byte_change_decodes_or_is_refused(fmt, position, value):
    data = bytearray(seed_files()[fmt])
    data[position % len(data)] = value
    _decode_or_refuse(bytes(data))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.sampled_from(["L", "RGB", "RGBA", "P", "I;16", "1", "LA"]),
       st.sampled_from(["PNG", "TIFF", "BMP", "GIF", "WEBP", "JPEG", "PPM"]))
def test_any_valid_image_becomes_upright_rgb_of_its_size(w, h, mode, fmt):
    arr = np.random.default_rng(w * 41 + h).integers(0, 255, (h, w, 4), dtype=np.uint8)
    img = Image.fromarray(arr, "RGBA").convert(mode) if mode != "I;16" else \
        Image.fromarray(arr[..., 0].astype(np.uint16) * 200)
    try:
        data = encode(img, fmt)
    except (OSError, ValueError, KeyError):
        return  # this writer cannot store this mode: nothing to read
    out = decode_rgb(data)
    assert out.mode == "RGB" and out.size == (w, h)


def test_cli_style_error_for_a_bad_file_in_a_dataset_folder(tmp_path):
    """Datasets read through read_image too: a bad file in a folder is an error naming it."""
    from pspnet.data.io import list_images

    (tmp_path / "a.png").write_bytes(encode(asymmetric(), "PNG"))
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(30))
    found = list_images(tmp_path)
    assert [p.name for p in found] == ["a.png", "b.png"]
    read_image(found[0])
    with pytest.raises(PSPNetError, match=str(Path(found[1]))):
        read_image(found[1])


def test_server_mutation_fuzz_answers_4xx_never_500():
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from pspnet.serve.app import create_app

    class Stub:
        class_names, palette, num_classes, batch_size = ["a", "b"], [[0, 0, 0], [9, 9, 9]], 2, 4

        def predict_batch(self, images):
            return [np.zeros((im.height, im.width), np.uint8) for im in images]

    statuses: dict[int, int] = {}
    cases = mutants(n=40)  # 40 of each of the 6 formats: 240 requests
    with TestClient(create_app(Stub(), max_pixels=4_000_000)) as client:
        for _, data in cases:
            r = client.post("/v1/segment", content=data)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            assert r.status_code in (200, 400, 413), (r.status_code, r.text)
            if r.status_code != 200:
                assert "Traceback" not in r.text and r.json()["detail"].startswith("request body: ")
    assert sum(statuses.values()) == 240 and statuses.get(400, 0) > 0
