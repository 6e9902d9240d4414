"""The web page in headless Chromium (Playwright driving the system browser): upload, overlay, legend.

Skips when Playwright or a Chromium binary is missing (``.ci/run`` installs Debian's ``chromium``).
The screenshot goes to ``$PSPNET_SCREENSHOT`` when set (docs/serve_screenshot.png is made that way),
else into the test's temporary folder. ``$PSPNET_BROWSER_MODEL`` picks the model (default: bundled camvid).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

import pspnet

from pspnet.model.bundled import SAMPLE_IMAGE as SAMPLE  # noqa: E402
CHROMIUM = os.environ.get("PSPNET_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not CHROMIUM:
    pytest.skip("no chromium binary on PATH (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def server():
    """The app on a free loopback port in a background thread; stopped after the module."""
    from pspnet.serve.app import create_app

    seg = pspnet.Segmenter(os.environ.get("PSPNET_BROWSER_MODEL", "camvid"), device="cpu")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(seg, model_name="camvid"), log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", seg
    srv.should_exit = True
    thread.join(30)
    sock.close()


def test_upload_shows_overlay_legend_and_download(server, tmp_path):
    url, seg = server
    shot = Path(os.environ.get("PSPNET_SCREENSHOT") or tmp_path / "serve_screenshot.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 640})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/", timeout=60_000)
            page.wait_for_function("document.getElementById('model').textContent.includes('classes')", timeout=60_000)
            page.set_input_files("#file", str(SAMPLE))  # the upload path a user takes
            page.wait_for_selector("#status[data-state='done']", timeout=180_000)
            assert not page.is_visible("#error")

            size = page.evaluate("[document.getElementById('overlay').width, document.getElementById('overlay').height]")
            assert size == [480, 360]
            items = page.eval_on_selector_all("#legend li", "els => els.map(e => [e.dataset.class, "
                                              "e.querySelector('.share').textContent])")
            assert items, "legend is empty"
            assert {name for name, _ in items} <= set(seg.class_names)
            shares = [float(s.strip("<%")) for _, s in items]
            assert shares == sorted(shares, reverse=True) and abs(sum(shares) - 100) < 1.0
            href = page.get_attribute("#download", "href")
            assert href.startswith("data:image/png;base64,") and page.get_attribute("#download", "download") == \
                f"{SAMPLE.stem}_labels.png"

            # the slider blends client-side: at 100% a pixel is exactly its class colour
            pixel = "Array.from(document.getElementById('overlay').getContext('2d').getImageData(100, 50, 1, 1).data)"
            page.fill("#opacity", "100")
            full = page.evaluate(pixel)[:3]
            assert full in [list(c) for c in seg.palette] and page.text_content("#opacity-value") == "100%"
            page.fill("#opacity", "0")
            base = page.evaluate("""() => { const c = document.createElement('canvas');
                c.width = view.base.naturalWidth; c.height = view.base.naturalHeight;
                const g = c.getContext('2d'); g.drawImage(view.base, 0, 0);
                return Array.from(g.getImageData(100, 50, 1, 1).data); }""")
            assert page.evaluate(pixel)[:3] == base[:3]  # 0%: the image as the model saw it
            page.fill("#opacity", "55")
            page.mouse.move(*_canvas_point(page))
            page.wait_for_function("document.getElementById('hover').textContent.includes(' at (')", timeout=10_000)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
    assert shot.stat().st_size > 10_000


def test_bad_upload_shows_the_server_message(server, tmp_path):
    url, _ = server
    bad = tmp_path / "notes.png"
    bad.write_text("this is not a picture")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(url + "/", timeout=60_000)
            page.set_input_files("#file", str(bad))
            page.wait_for_selector("#error:not([hidden])", timeout=60_000)
            assert "400" in page.text_content("#error") and "not an image" in page.text_content("#error")
        finally:
            browser.close()


def _canvas_point(page) -> tuple[float, float]:
    box = page.locator("#overlay").bounding_box()
    return box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.8
