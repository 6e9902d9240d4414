"""Server limits (issue 17): admission by pixels and bytes, bounded work size, cost-ordered batching,
body deadline, cancelled work of clients that left, HEAD, fixed metric labels, no server paths.

All in-process with a stub model (instant unless held on a gate); the uvicorn-level limits (header
deadline, connection cap) run a real server in a subprocess.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from pspnet.serve.app import create_app  # noqa: E402
from pspnet.serve.batcher import MicroBatcher  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


class Stub:
    """Class = brightness third; records the size of every image it sees; ``gate`` holds batches."""

    class_names = ["dark", "mid", "bright"]
    palette = [[0, 0, 0], [200, 0, 0], [0, 200, 0]]
    num_classes = 3
    batch_size = 4

    def __init__(self, gate: threading.Event | None = None):
        self.gate = gate
        self.seen: list[tuple[int, int]] = []
        self.started = threading.Event()

    def predict_batch(self, images):
        self.seen += [im.size for im in images]
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(30), "test gate never opened"
        return [(np.asarray(im.convert("L")) // 86).astype(np.uint8) for im in images]


def encode(arr: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


def thirds(h: int, w: int) -> np.ndarray:
    """Left third dark, middle mid, right bright: labels 0, 1, 2 by column."""
    row = np.repeat(np.array([20, 128, 240], np.uint8), w // 3)
    return np.repeat(np.tile(row, (h, 1))[..., None], 3, axis=2)


def labels_of(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


def test_large_images_reach_the_model_downscaled_and_come_back_full_size():
    stub = Stub()
    with TestClient(create_app(stub, max_pixels=200_000, work_pixels=3_000)) as client:
        labels = labels_of(client.post("/v1/segment", content=encode(thirds(300, 600))))
        assert labels.shape == (300, 600)
        w, h = stub.seen[-1]
        assert w * h <= 3_000 and abs(w - 2 * h) <= 1  # aspect kept
        # each third keeps its class (nearest upsampling), allowing one model pixel of boundary error
        for k, cols in enumerate([(0, 190), (210, 390), (410, 600)]):
            assert (labels[:, cols[0]:cols[1]] == k).all()
        small = labels_of(client.post("/v1/segment", content=encode(thirds(30, 60))))
        assert small.shape == (30, 60) and stub.seen[-1] == (60, 30)  # within work_pixels: untouched
        body = client.post("/v1/segment?format=json", content=encode(thirds(300, 600))).json()
        assert (body["width"], body["height"]) == (600, 300)
        assert body["classes"][0]["pixels"] + body["classes"][1]["pixels"] + body["classes"][2]["pixels"] == 180_000
        overlay = Image.open(io.BytesIO(__import__("base64").b64decode(body["overlay_png_base64"])))
        assert overlay.width * overlay.height <= 3_000  # the overlay is drawn at the size the model saw


def test_exif_orientation_is_applied_and_other_formats_refused():
    stub = Stub()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    with TestClient(create_app(stub)) as client:
        labels = labels_of(client.post("/v1/segment", content=encode(thirds(30, 60), "JPEG", exif=exif)))
        assert labels.shape == (60, 30)  # what a viewer shows: 30 wide, 60 tall
        assert (labels[:15] == 0).all() and (labels[-15:] == 2).all()  # the left third is now on top
        for fmt in ("DDS", "TGA", "PCX", "ICO"):
            r = client.post("/v1/segment", content=encode(thirds(24, 30), fmt))
            assert r.status_code == 400 and "accepted formats" in r.json()["detail"], (fmt, r.text)
            assert "JPEG, PNG" in r.json()["detail"]
    assert stub.seen == [(30, 60)]


def test_pixels_in_flight_are_admitted_by_cost_not_count():
    gate = threading.Event()
    stub = Stub(gate)
    app = create_app(stub, max_pixels=10_000, max_inflight_pixels=25_000, max_batch=1)
    big, small = encode(thirds(100, 99)), encode(thirds(30, 30))
    with TestClient(app) as client:
        out: dict[int, int] = {}

        def post(i: int, body: bytes) -> None:
            out[i] = client.post("/v1/segment", content=body).status_code

        threads = [threading.Thread(target=post, args=(i, big)) for i in range(2)]
        for th in threads:
            th.start()
        deadline = time.monotonic() + 20
        while app.state.admission.used < 2 * 9_900 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert app.state.admission.used == 2 * 9_900
        r = client.post("/v1/segment", content=big)  # a third large one does not fit: 503 at once
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1 and "MP" in r.json()["detail"]
        small_thread = threading.Thread(target=post, args=(2, small))  # a small one still fits
        small_thread.start()
        while app.state.admission.used < 2 * 9_900 + 900 and time.monotonic() < deadline:
            time.sleep(0.01)
        metrics = client.get("/metrics").text
        assert "pspnet_pixels_in_flight 20700" in metrics and "pspnet_pixels_budget 25000" in metrics
        gate.set()
        for th in [*threads, small_thread]:
            th.join(30)
        assert out == {0: 200, 1: 200, 2: 200}
        assert app.state.admission.used == 0 and app.state.bodies.used == 0


def test_request_bodies_in_flight_are_bounded():
    gate = threading.Event()
    stub = Stub(gate)
    noise = np.random.default_rng(0).integers(0, 255, (120, 120, 3), dtype=np.uint8)
    body = encode(noise)  # ~43 KB, incompressible
    app = create_app(stub, max_bytes=50_000, max_inflight_bytes=60_000)
    with TestClient(app) as client:
        held = threading.Thread(target=lambda: client.post("/v1/segment", content=body))
        held.start()
        assert stub.started.wait(20)
        r = client.post("/v1/segment", content=body)
        assert r.status_code == 503 and "request bodies" in r.json()["detail"] and r.headers["retry-after"] == "1"
        gate.set()
        held.join(30)
        assert client.post("/v1/segment", content=body).status_code == 200
        assert app.state.bodies.used == 0


async def _asgi(app, method: str, path: str, chunks: list[bytes], then: str, headers=()) -> tuple[dict, bytes]:
    """Call ``app`` directly: the body in ``chunks``, then the client either ``stall``s (sends nothing
    more) or ``leave``s (http.disconnect after 0.2 s) or ``wait``s (forever, the normal case)."""
    queue = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    if then == "stall":
        queue[-1]["more_body"] = True

    async def receive() -> dict:
        if queue:
            return queue.pop(0)
        if then == "leave":
            await asyncio.sleep(0.2)
            return {"type": "http.disconnect"}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    start: dict = {}
    body = bytearray()

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
             "raw_path": path.encode(), "query_string": b"", "root_path": "", "scheme": "http",
             "headers": [(b"host", b"test"), *headers], "client": ("10.0.0.7", 5555), "server": ("test", 80)}
    await app(scope, receive, send)
    return start, bytes(body)


def test_a_stalled_body_gets_408_after_the_deadline():
    app = create_app(Stub(), body_timeout=0.3)
    png = encode(thirds(24, 30))
    t0 = time.perf_counter()
    start, body = asyncio.run(_asgi(app, "POST", "/v1/segment", [png[:20]], "stall"))
    assert start["status"] == 408 and b"0.3 s" in body
    assert 0.25 < time.perf_counter() - t0 < 5


def test_work_of_a_client_that_left_is_cancelled_and_logged_in_one_line(caplog):
    gate = threading.Event()
    stub = Stub(gate)
    app = create_app(stub, max_batch=1)
    png = encode(thirds(24, 30))

    async def scenario() -> tuple[int, int]:
        first = asyncio.create_task(_asgi(app, "POST", "/v1/segment", [png], "wait"))
        while not stub.started.is_set():
            await asyncio.sleep(0.01)
        (start, _) = await _asgi(app, "POST", "/v1/segment", [encode(thirds(12, 15))], "leave")
        gate.set()
        done, _ = await first
        await app.state.batcher.stop()
        return start["status"], done["status"]

    with caplog.at_level(logging.INFO, logger="pspnet.serve.app"):
        left, first = asyncio.run(scenario())
    assert (left, first) == (499, 200)
    assert stub.seen == [(30, 24)]  # the second image never reached the model
    assert app.state.batcher.cancelled == 1 and app.state.admission.used == 0
    lines = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0].getMessage() and lines[0].exc_info is None
    assert "10.0.0.7" in lines[0].getMessage() and "/v1/segment" in lines[0].getMessage()
    text = app.state.metrics.render(app.state.batcher)
    assert 'pspnet_http_requests_total{route="/v1/segment",method="POST",status="499"} 1' in text
    assert "pspnet_cancelled_total 1" in text


def test_a_client_leaving_while_uploading_is_one_log_line(caplog):
    app2 = create_app(Stub())

    async def leave_mid_body() -> dict:
        queue = [{"type": "http.request", "body": b"\x89PNG\r\n", "more_body": True}, {"type": "http.disconnect"}]

        async def receive() -> dict:
            return queue.pop(0)

        sent: dict = {}

        async def send(message: dict) -> None:
            sent.setdefault("messages", []).append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "path": "/v1/segment", "raw_path": b"/v1/segment", "query_string": b"", "root_path": "",
                 "scheme": "http", "headers": [(b"host", b"t")], "client": ("10.0.0.8", 1), "server": ("t", 80)}
        await app2(scope, receive, send)
        return sent

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pspnet.serve.app"):
        sent = asyncio.run(leave_mid_body())
    assert "messages" not in sent  # nobody to answer
    records = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(records) == 1 and "while sending the request" in records[0].getMessage()
    assert records[0].exc_info is None
    assert 'method="POST",status="499"' in app2.state.metrics.render()


def test_head_is_served_wherever_get_is():
    with TestClient(create_app(Stub())) as client:
        for path in ("/", "/v1/model", "/v1/sample", "/healthz", "/metrics", "/docs", "/openapi.json",
                     "/static/app.js"):
            get, head = client.get(path), client.head(path)
            assert head.status_code == 200 == get.status_code, path
            assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"], path
        assert client.head("/v1/segment").status_code == 405
        assert 'method="HEAD",status="200"' in client.get("/metrics").text


def test_metric_labels_come_from_fixed_sets():
    with TestClient(create_app(Stub())) as client:
        for method in ("FOO", "BREW", "PROPFIND", "X" * 200):
            client.request(method, f"/made/up/{method}")
        text = client.get("/metrics").text
    assert 'method="other"' in text
    for made_up in ("FOO", "BREW", "PROPFIND", "XXXX", "/made/up"):
        assert made_up not in text, made_up


def test_model_info_names_no_server_path(tmp_path):
    weights = tmp_path / "secret_dir" / "my_model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"x")
    with TestClient(create_app(Stub(), model_name=str(weights))) as client:
        r = client.get("/v1/model")
    assert r.json()["name"] == "my_model.safetensors"
    assert str(tmp_path) not in r.text and "secret_dir" not in r.text
    with TestClient(create_app(Stub(), model_name="org/hub-model")) as client:
        assert client.get("/v1/model").json()["name"] == "org/hub-model"  # a Hub id is not a local path


def test_bad_limits_are_refused_in_one_line():
    from pspnet.errors import PSPNetError

    for kw, msg in (({"max_pixels": 0}, "max_pixels"), ({"max_pixels": 100, "max_inflight_pixels": 50}, "admitted"),
                    ({"body_timeout": 0}, "body_timeout"), ({"max_bytes": 100, "max_inflight_bytes": 10}, "max_bytes")):
        with pytest.raises(PSPNetError, match=msg):
            create_app(Stub(), **kw)


def test_batcher_runs_cheap_work_first_and_bounds_a_batch_by_cost():
    gate = threading.Event()
    ran: list[list[str]] = []

    def fn(items):
        ran.append(list(items))
        gate.wait(10)
        return items

    async def scenario() -> None:
        b = MicroBatcher(fn, max_batch=4, max_wait=0.001, max_batch_cost=1_000_000, group=lambda item: item[:5])
        first = asyncio.create_task(b.submit("first", cost=10))
        while not ran:
            await asyncio.sleep(0.005)
        large = [asyncio.create_task(b.submit(f"large{i}", cost=600_000)) for i in range(2)]
        await asyncio.sleep(0.01)
        small = [asyncio.create_task(b.submit(f"small{i}", cost=10_000)) for i in range(2)]
        await asyncio.sleep(0.01)
        gone = asyncio.create_task(b.submit("gone", cost=10))
        await asyncio.sleep(0.01)
        gone.cancel()
        assert b.depth == 4
        gate.set()
        await asyncio.gather(first, *small, *large)
        await b.stop()
        assert b.cancelled == 1

    asyncio.run(scenario())
    # the small ones overtake the large ones queued before them and share a batch (same group); a small and
    # a large one never do (other group), nor do two large ones (cost); the cancelled one never runs
    assert ran == [["first"], ["small0", "small1"], ["large0"], ["large1"]]


SERVER = textwrap.dedent("""
    import logging, sys, numpy as np
    from pspnet.serve.app import create_app
    from pspnet.serve.server import run_server

    class Stub:
        class_names, palette, num_classes, batch_size = ["a", "b"], [[0, 0, 0], [9, 9, 9]], 2, 4
        def predict_batch(self, images):
            return [np.zeros((im.height, im.width), np.uint8) for im in images]

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_server(create_app(Stub()), port=int(sys.argv[1]), max_connections=8, header_timeout=0.5,
               log_level="warning")
""")


@pytest.fixture
def stub_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.1)
    try:
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(20)


def _closed_by_peer(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.slow
def test_header_deadline_connection_cap_and_one_line_disconnects(stub_server):
    port, proc = stub_server
    # a client that sends half its body and leaves: one log line, no traceback
    with socket.create_connection(("127.0.0.1", port)) as leaver:
        leaver.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"\x89PNG" * 10)
        time.sleep(0.3)
    # a client that never finishes its headers is dropped after the header deadline
    slow = socket.create_connection(("127.0.0.1", port))
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    t0 = time.monotonic()
    assert _closed_by_peer(slow, within=10) and 0.3 < time.monotonic() - t0 < 8
    slow.close()
    # beyond max_connections (8), connections are closed on accept; the file descriptors stay bounded
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    time.sleep(0.2)
    dropped = sum(_closed_by_peer(s, within=0.2) for s in held)
    assert dropped >= 12
    for s in held:
        s.close()
    time.sleep(0.7)  # the survivors' header deadline passes too
    with socket.create_connection(("127.0.0.1", port)) as ok:  # and the server still answers
        ok.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        ok.settimeout(10)
        reply = b""
        while chunk := ok.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200") and json.loads(reply.split(b"\r\n\r\n", 1)[1])["status"] == "ok"
    assert proc.poll() is None
    proc.terminate()
    log = proc.communicate(timeout=20)[1]
    assert "Traceback" not in log and "Too many open files" not in log, log
    left = [line for line in log.splitlines() if "disconnected" in line]
    assert len(left) == 1 and "while sending the request: POST /v1/segment" in left[0], log
    assert "no complete request headers within 0.5 s" in log and "connections open (limit 8)" in log


def test_slide_mode_has_the_same_pixel_limit_and_multi_scale_a_smaller_work_size():
    slide = Stub()
    slide.mode, slide.scales = "slide", (0.5, 1.0, 2.0)
    with TestClient(create_app(slide)) as client:
        info = client.get("/v1/model").json()
        assert info["input"]["max_pixels"] == 16_000_000  # was 100 MP in slide mode: 4.7 GB for one upload
        assert info["input"]["work_pixels"] == 125_000  # 0.5 MP / 2**2: the 2x scale's pass stays 0.5 MP
        r = client.post("/v1/segment", content=encode(np.zeros((4001, 4000), np.uint8)))
        assert r.status_code == 413 and "4000x4001" in r.json()["detail"]
