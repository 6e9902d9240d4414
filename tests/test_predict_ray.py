"""pspnet predict --engine ray on a local Ray: same label bytes and names as local predict, resumable after a
SIGKILL of the driver, a corrupt frame is one manifest error row; without Ray, one line saying how to install."""

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from pspnet.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_without_ray_the_engine_says_how_to_install(tmp_path, capsys, monkeypatch):
    import pspnet

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    sample = Path(pspnet.__file__).parent / "samples" / "camvid_0016E5_08059.jpg"
    code = main(["predict", str(sample), "--out", str(tmp_path / "out"), "--engine", "ray", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'pspnet[ray]'" in err and "Traceback" not in err


def test_core_does_not_import_ray():
    code = "import sys, pspnet, pspnet.cli, pspnet.inference.batch, pspnet.inference.distributed; " \
           "assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": SRC}, timeout=120)


def _frames(camvid: Path, dst: Path, n: int, nested: bool) -> list[Path]:
    """n real CamVid val frames, spread over nested sub-folders when asked."""
    frames = sorted((camvid / "val").glob("*.png"))[:n]
    out = []
    for i, f in enumerate(frames):
        sub = dst / ("a/b" if i % 3 == 0 else "c" if i % 3 == 1 else "") if nested else dst
        sub.mkdir(parents=True, exist_ok=True)
        out.append(Path(shutil.copy(f, sub / f.name)))
    return out


def _labels(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.png"))
            if ".pspnet" not in p.parts and not p.name.endswith("_overlay.png")}


def _manifest_rows(out: Path) -> list[dict]:
    rows = []
    for part in sorted((out / ".pspnet").glob("manifest-*.csv")):
        with open(part, newline="") as f:
            rows += [r for r in csv.DictReader(f) if r.get("finished")]
    return rows


@pytest.fixture
def local_ray():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_equals_local_predict_keeps_structure_and_reports_a_corrupt_frame(camvid_root, tmp_path, local_ray, capsys):
    src = tmp_path / "frames"
    frames = _frames(camvid_root, src, 7, nested=True)
    bad = src / "c" / "corrupt.png"
    bad.write_bytes(frames[0].read_bytes()[:5000])  # valid header, truncated body
    common = ["--precision", "fp32", "--no-overlay", "--no-progress", "--batch-size", "2"]
    # each of the 2 Ray workers runs 1 thread; fp32 convolutions sum in a thread-count-dependent order, so a
    # near-tie pixel may flip between 1 and 2 threads (2 of 172,800 pixels on one of these frames): compare alike
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["predict", str(src), "--out", str(tmp_path / "local"), *common]) == 2
    finally:
        torch.set_num_threads(threads)
    assert main(["predict", str(src), "--out", str(tmp_path / "ray"), "--engine", "ray", "--workers", "2",
                 *common]) == 2
    text = capsys.readouterr()
    assert "done 7, skipped 0 (unchanged), failed 1" in text.out and "corrupt.png" in text.err
    local, distributed = _labels(tmp_path / "local"), _labels(tmp_path / "ray")
    assert len(local) == 7 and "a/b/0016E5_07959.png" in local and local == distributed  # byte for byte
    rows = _manifest_rows(tmp_path / "ray")
    errors = [r for r in rows if r["error"]]
    assert len(rows) == 8 and len(errors) == 1 and errors[0]["input"] == str(bad.resolve())
    assert all(r["shares"] and float(r["seconds"]) > 0 for r in rows if not r["error"])


@pytest.mark.slow
def test_sigkill_of_the_driver_then_rerun_completes_without_rewriting(camvid_root, tmp_path):
    pytest.importorskip("ray.data")
    src, out, ref = tmp_path / "frames", tmp_path / "out", tmp_path / "ref"
    _frames(camvid_root, src, 12, nested=False)
    common = ["--precision", "fp32", "--no-overlay", "--no-progress", "--batch-size", "1"]
    env = {**os.environ, "PYTHONPATH": SRC, "RAY_AUTH_MODE": "disabled"}
    cmd = [sys.executable, "-m", "pspnet", "predict", str(src), "--out", str(out), "--engine", "ray",
           "--workers", "1", *common]
    driver = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while len(_manifest_rows(out)) < 3 and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.2)
        assert driver.poll() is None, "the run finished before it could be killed midway"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        time.sleep(2)
        try:
            os.killpg(driver.pid, signal.SIGKILL)  # the local Ray this driver started, if it outlived it
        except ProcessLookupError:
            pass
    before = {r["input"] for r in _manifest_rows(out) if not r["error"]}
    assert 3 <= len(before) < 12
    stats = {p: p.stat() for p in out.glob("*.png")}
    rerun = subprocess.run(cmd, env=env, timeout=600, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert main(["predict", str(src), "--out", str(ref), *common]) == 0
    assert _labels(out) == _labels(ref) and len(_labels(ref)) == 12  # every output present and equal
    rows = _manifest_rows(out)
    assert all(n == 1 for n in Counter(r["input"] for r in rows if not r["error"]).values())  # none done twice
    for path, st in stats.items():
        now = path.stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), f"{path} was written again"
