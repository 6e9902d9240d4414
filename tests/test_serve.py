"""The HTTP service through FastAPI's TestClient: every status code, micro-batching, limits, CLI wiring.

Most tests use ``FakeSegmenter`` (instant, records its batches, can be held on a gate) so the
service logic is tested without model time; one test runs a real tiny PSPNet end to end.
"""

from __future__ import annotations

import base64
import io
import re
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

import pspnet  # noqa: E402
from pspnet.errors import PSPNetError  # noqa: E402
from pspnet.serve.app import create_app  # noqa: E402



class FakeSegmenter:
    """Class = brightness third (dark/mid/bright). ``gate`` holds every batch until set; a red top-left pixel fails."""

    class_names = ["dark", "mid", "bright"]
    palette = [[0, 0, 0], [200, 0, 0], [0, 200, 0]]
    num_classes = 3
    batch_size = 4
    mode = "whole"
    eval_scale = 1.25

    def __init__(self, gate: threading.Event | None = None):
        self.gate = gate
        self.batches: list[int] = []

    def predict_batch(self, images):
        self.batches.append(len(images))
        if self.gate is not None:
            assert self.gate.wait(30), "test gate never opened"
        if any(im.getpixel((0, 0)) == (255, 0, 0) for im in images):
            raise PSPNetError("images with a red corner are not allowed (test poison)")
        return [(np.asarray(im.convert("L")) // 86).astype(np.uint8) for im in images]


def encode(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def gradient(h: int = 24, w: int = 30) -> np.ndarray:
    """Left third dark, middle third mid, right third bright -> exactly known labels."""
    row = np.repeat(np.array([20, 128, 240], np.uint8), w // 3)
    return np.repeat(np.tile(row, (h, 1))[..., None], 3, axis=2)


def expected_labels(h: int = 24, w: int = 30) -> np.ndarray:
    return np.tile(np.repeat(np.arange(3, dtype=np.uint8), w // 3), (h, 1))


def wait_until(cond, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@pytest.fixture
def fake():
    return FakeSegmenter()


@pytest.fixture
def client(fake):
    with TestClient(create_app(fake, max_bytes=200_000, max_pixels=100_000, model_name="fake")) as c:
        yield c


def test_segment_png_raw_body(client):
    r = client.post("/v1/segment", content=encode(gradient()), headers={"content-type": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-image-size"] == "30x24"
    png = Image.open(io.BytesIO(r.content))
    assert png.mode == "P" and png.size == (30, 24)
    np.testing.assert_array_equal(np.asarray(png), expected_labels())
    assert png.getpalette()[:9] == [0, 0, 0, 200, 0, 0, 0, 200, 0]


def test_segment_json_multipart(client):
    r = client.post("/v1/segment?format=json&alpha=1", files={"image": ("street.jpg", encode(gradient()), "image/png")})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    out = r.json()
    assert out["filename"] == "street.jpg" and (out["width"], out["height"]) == (30, 24)
    assert [c["name"] for c in out["classes"]] == FakeSegmenter.class_names
    np.testing.assert_allclose([c["fraction"] for c in out["classes"]], [1 / 3] * 3)
    assert sum(c["pixels"] for c in out["classes"]) == 30 * 24
    labels = np.asarray(Image.open(io.BytesIO(base64.b64decode(out["labels_png_base64"]))))
    np.testing.assert_array_equal(labels, expected_labels())
    overlay = np.asarray(Image.open(io.BytesIO(base64.b64decode(out["overlay_png_base64"]))))
    assert overlay.shape == (24, 30, 3)
    np.testing.assert_array_equal(overlay[0, 15], [200, 0, 0])  # alpha=1: pure class colour
    # any file field name works; legend=true adds the legend panel on the right
    r = client.post("/v1/segment?format=json&legend=true", files={"upload": ("x.png", encode(gradient()), "image/png")})
    assert r.status_code == 200
    assert Image.open(io.BytesIO(base64.b64decode(r.json()["overlay_png_base64"]))).width > 30


def test_image_modes_become_rgb(client):
    grey = np.full((10, 12), 250, np.uint8)
    cases = {
        "grey png": encode(grey),
        "rgba png": encode(np.dstack([gradient(10, 12), np.full((10, 12), 255, np.uint8)])),
        "16-bit png": encode(np.full((10, 12), 60000, np.uint16)),
        "jpeg": encode(gradient(10, 12), "JPEG"),
        "bmp": encode(gradient(10, 12), "BMP"),
    }
    for name, data in cases.items():
        r = client.post("/v1/segment", content=data)
        assert r.status_code == 200, (name, r.text)
        assert Image.open(io.BytesIO(r.content)).size == (12, 10), name
    assert np.asarray(Image.open(io.BytesIO(client.post("/v1/segment", content=cases["grey png"]).content))).min() == 2


def test_bad_images_are_400_with_a_reason(client, fake):
    png = encode(gradient())
    cases = {
        b"": "empty body",
        b"GIF89a but not really": "not an image",
        b"hello world": "not an image",
        png[: len(png) // 2]: "truncated",
    }
    for body, reason in cases.items():
        r = client.post("/v1/segment", content=body)
        assert r.status_code == 400 and reason in r.json()["detail"], (body[:10], r.text)
    r = client.post("/v1/segment", data={"note": "hi"}, files={"text": ("", b"", "text/plain")})
    assert r.status_code == 400  # the only "file" is empty
    r = client.post("/v1/segment", data={"note": "hi"}, headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400
    assert fake.batches == []  # nothing reached the model


def test_limits_are_413(client, fake):
    # declared too large: refused from Content-Length before the body is read
    r = client.post("/v1/segment", content=b"\0" * 300_000)
    assert r.status_code == 413 and "200000 bytes" in r.json()["detail"]
    # no Content-Length (chunked): refused while reading
    r = client.post("/v1/segment", content=iter([b"\0" * 64_000] * 5))
    assert r.status_code == 413
    r = client.post("/v1/segment", files={"image": ("big.png", b"\0" * 250_000, "image/png")})
    assert r.status_code == 413
    # small file, too many pixels (limit 100k): refused from the header, before decoding
    r = client.post("/v1/segment", content=encode(np.zeros((400, 300), np.uint8)))
    assert r.status_code == 413 and "400" in r.json()["detail"] and "0.1 MP" in r.json()["detail"]
    assert fake.batches == []


def test_queue_full_is_503_with_retry_after_and_loop_stays_free():
    gate = threading.Event()
    fake = FakeSegmenter(gate)
    app = create_app(fake, max_queue=1, max_batch=1)
    with TestClient(app) as client:
        body = encode(gradient())
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(client.post("/v1/segment", content=body).status_code))
                   for _ in range(2)]
        try:
            threads[0].start()
            wait_until(lambda: fake.batches == [1])  # first request is in the model, held by the gate
            threads[1].start()
            wait_until(lambda: app.state.batcher.depth == 1)  # second waits in the queue: now full
            t = time.perf_counter()
            health = client.get("/healthz")  # the event loop answers while the model thread is busy
            assert health.status_code == 200 and health.json()["queue_depth"] == 1 and health.json()["busy"]
            assert time.perf_counter() - t < 5
            r = client.post("/v1/segment", content=body)
            assert r.status_code == 503 and "queue is full" in r.json()["detail"]
            assert int(r.headers["retry-after"]) >= 1
        finally:
            gate.set()
            for th in threads:
                th.join(30)
        assert results == [200, 200]
        assert 'route="/v1/segment",method="POST",status="503"} 1' in client.get("/metrics").text


def test_concurrent_requests_share_a_batch_and_failures_stay_isolated():
    gate = threading.Event()
    fake = FakeSegmenter(gate)
    app = create_app(fake, max_queue=16, max_batch=4, max_wait_ms=50)
    with TestClient(app) as client:
        statuses: dict[int, int] = {}
        images = [gradient() for _ in range(5)]
        images[3][0, 0] = (255, 0, 0)  # request 3 is poison for the fake model (same size: same batch)

        def post(i: int) -> None:
            statuses[i] = client.post("/v1/segment", content=encode(images[i])).status_code

        threads = [threading.Thread(target=post, args=(i,)) for i in range(5)]
        threads[0].start()
        wait_until(lambda: fake.batches == [1])
        for th in threads[1:]:
            th.start()
        wait_until(lambda: app.state.batcher.depth == 4)
        gate.set()
        for th in threads:
            th.join(30)
        # 1 alone, then the 4 waiting ones in one batch; it failed, so each was retried alone
        assert fake.batches[:2] == [1, 4] and sorted(fake.batches[2:]) == [1, 1, 1, 1]
        assert statuses == {0: 200, 1: 200, 2: 200, 3: 400, 4: 200}
        metrics = client.get("/metrics").text
        assert 'pspnet_batch_size_total{size="4"} 1' in metrics
        assert "pspnet_batched_images_total 5" in metrics


def test_unexpected_model_error_is_500():
    class Broken(FakeSegmenter):
        def predict_batch(self, images):
            raise RuntimeError("CUDA out of memory (simulated)")

    with TestClient(create_app(Broken())) as client:
        r = client.post("/v1/segment", content=encode(gradient()))
        assert r.status_code == 500 and "out of memory" in r.json()["detail"]
        assert client.get("/healthz").status_code == 200  # the service survives


def test_healthz_503_when_the_batcher_died(fake):
    app = create_app(fake)

    async def broken() -> list:
        raise RuntimeError("collector crashed")

    app.state.batcher._collect = broken
    with TestClient(app) as client:
        wait_until(lambda: app.state.batcher.failed is not None)
        r = client.get("/healthz")
        assert r.status_code == 503 and "collector crashed" in r.json()["detail"]


def test_model_metrics_docs_page_and_http_errors(client):
    info = client.get("/v1/model").json()
    assert info["name"] == "fake" and info["num_classes"] == 3
    assert info["class_names"] == FakeSegmenter.class_names and info["palette"][1] == [200, 0, 0]
    assert info["classes"][2] == {"id": 2, "name": "bright", "color": [0, 200, 0]}
    assert info["input"]["max_bytes"] == 200_000 and info["input"]["max_pixels"] == 100_000
    assert info["input"]["mode"] == "whole" and info["batching"]["max_batch"] == 4
    assert info["int8_layers"] == []  # a segmenter without int8 convs says so
    assert info["eval_scale"] == 1.25  # the reading the segmenter uses on this machine
    assert client.get("/healthz").json()["status"] == "ok"

    assert client.post("/v1/segment", content=encode(gradient())).status_code == 200
    assert client.post("/v1/segment?format=xml", content=encode(gradient())).status_code == 422
    assert client.post("/v1/segment?alpha=2", content=encode(gradient())).status_code == 422
    assert client.get("/v1/segment").status_code == 405
    assert client.get("/no/such/page").status_code == 404

    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    for line in ['pspnet_http_requests_total{route="/v1/segment",method="POST",status="200"} 1',
                 'pspnet_http_requests_total{route="/v1/segment",method="POST",status="422"} 2',
                 'pspnet_http_requests_total{route="other",method="GET",status="404"} 1',
                 'pspnet_http_request_duration_seconds_count{route="/v1/segment"} 4',
                 'pspnet_http_request_duration_seconds_bucket{route="/v1/segment",le="+Inf"} 4',
                 "# TYPE pspnet_http_request_duration_seconds histogram", "pspnet_queue_capacity 64"]:
        assert line in text, line
    assert int(re.search(r"^process_resident_memory_bytes (\d+)$", text, re.M).group(1)) > 10_000_000

    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script src="/static/app.js">' in page.text and 'id="opacity"' in page.text
    assert "/v1/segment" in client.get("/static/app.js").text
    assert client.get("/static/style.css").status_code == 200
    sample = client.get("/v1/sample")
    assert sample.status_code == 200 and sample.headers["content-type"] == "image/jpeg"
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()["paths"]
    assert set(spec["/v1/segment"]["post"]["requestBody"]["content"]) >= {"multipart/form-data", "image/*"}
    assert {"/v1/model", "/healthz", "/metrics"} <= set(spec)


def test_real_tiny_pspnet_end_to_end():
    model = pspnet.create_model("pspnet_resnet18", num_classes=3, aux=False, head_channels=32)
    seg = pspnet.Segmenter(model, device="cpu", precision="fp32", batch_size=4)
    with TestClient(create_app(seg, max_wait_ms=200)) as client:
        sizes = [(32, 40), (32, 40), (24, 24)]
        out: dict[int, tuple[int, bytes]] = {}

        def post(i: int) -> None:
            r = client.post("/v1/segment", content=encode(np.random.default_rng(i).integers(
                0, 255, (*sizes[i], 3), dtype=np.uint8)))
            out[i] = (r.status_code, r.content)

        threads = [threading.Thread(target=post, args=(i,)) for i in range(3)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        for i, (h, w) in enumerate(sizes):
            assert out[i][0] == 200
            labels = np.asarray(Image.open(io.BytesIO(out[i][1])))
            assert labels.shape == (h, w) and labels.max() < 3
        assert client.get("/v1/model").json()["input"]["mean"] == pytest.approx([0.485, 0.456, 0.406])


def test_cli_serve_builds_the_app(monkeypatch):
    import uvicorn

    from pspnet.cli import main

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    assert main(["serve", "--port", "8123", "--max-queue", "7", "--max-bytes", "1000", "--batch-size", "2",
                 "--precision", "fp32", "--device", "cpu"]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    app = seen["app"]
    assert app.state.batcher.max_queue == 7 and app.state.batcher.max_batch == 2
    with TestClient(app) as client:
        info = client.get("/v1/model").json()
        assert info["name"] == "camvid" and info["class_names"][:2] == ["Sky", "Building"]
        assert client.post("/v1/segment", content=b"\0" * 2000).status_code == 413
