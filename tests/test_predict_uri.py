"""pspnet predict with URIs: file:// and local:// are local paths; s3:// against a real S3 API served by moto on
127.0.0.1 (no other network): labels equal local predict byte for byte under the same names, the manifest lives
in the bucket, a rerun skips every frame, a foreign object at an output key is refused; both engines; videos."""

import csv
import io
import os
import shutil
import socket
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pspnet.cli import main
from pspnet.inference.remote import _glob_regex, destination, local_path

COMMON = ["--precision", "fp32", "--no-overlay", "--no-progress", "--batch-size", "2"]
CAMVID = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "camvid"


def test_file_and_local_uris_are_plain_paths(tmp_path):
    assert destination(f"file://{tmp_path}/out") == tmp_path / "out"
    assert destination(f"local://{tmp_path}/out") == tmp_path / "out"
    assert destination("labels") == Path("labels") and local_path("s3://b/k") is None
    with pytest.raises(Exception, match="names a file of this machine"):
        local_path("file://otherhost/x")


def test_glob_regex_keeps_wildcards_inside_folders():
    rx = _glob_regex("**/*.png")
    assert rx.match("a.png") and rx.match("x/y/a.png") and not rx.match("a.jpg")
    assert _glob_regex("*.png").match("a.png") and not _glob_regex("*.png").match("x/a.png")
    assert _glob_regex("f?[0-9].jp*g").match("fa1.jpeg") and not _glob_regex("f?[!0-9].jpg").match("fa1.jpg")


def test_core_imports_neither_ray_nor_pyarrow_fs():
    import subprocess
    import sys

    code = ("import sys, pspnet, pspnet.cli, pspnet.inference.batch, pspnet.inference.distributed, "
            "pspnet.inference.remote; assert not {'ray', 'pyarrow.fs'} & set(sys.modules), sys.modules.keys()")
    src = str(Path(__file__).resolve().parents[1] / "src")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": src}, timeout=120)


def _frames(dst: Path, n: int = 4) -> list[Path]:
    """Real CamVid val frames when ../shared has them (two in a sub-folder), else generated images."""
    dst.mkdir(parents=True)
    (dst / "sub").mkdir()
    real = sorted((CAMVID / "val").glob("*.png"))[:n] if (CAMVID / "val").is_dir() else []
    out = []
    for i in range(n):
        target = dst / ("sub" if i % 2 else "") / (real[i].name if real else f"frame{i}.png")
        if real:
            shutil.copy(real[i], target)
        else:
            rng = np.random.default_rng(i)
            Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(target)
        out.append(target)
    return out


def _labels(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.png")) if ".pspnet" not in p.parts}


@pytest.fixture
def frames(tmp_path) -> Path:
    _frames(tmp_path / "frames")
    return tmp_path / "frames"


@pytest.fixture
def reference(frames, tmp_path) -> dict[str, bytes]:
    assert main(["predict", str(frames), "--out", str(tmp_path / "ref"), *COMMON]) == 0
    return _labels(tmp_path / "ref")


@pytest.mark.slow
def test_file_uris_equal_plain_paths(frames, reference, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", f"file://{frames}", "--out", f"file://{out}", *COMMON]) == 0
    assert _labels(out) == reference and len(reference) == 4
    capsys.readouterr()
    assert main(["predict", f"file://{frames}/**/*.png", "--out", f"file://{out}", *COMMON]) == 0
    assert "done 0, skipped 4" in capsys.readouterr().out


# --- S3 served by moto on 127.0.0.1 ---------------------------------------------------------------------------

@pytest.fixture
def s3(monkeypatch):
    """A moto S3 server on a free port of 127.0.0.1; the standard AWS variables point every client at it."""
    pytest.importorskip("pyarrow.fs")
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true", "NO_PROXY": "127.0.0.1"}.items():
        monkeypatch.setenv(key, value)
    from pspnet.inference import remote

    remote._resolve.cache_clear()  # file systems made for an earlier server
    # moto keeps its buckets per Python process, not per server: start every test from an empty store
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=30)
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="bucket")
    yield client
    remote._resolve.cache_clear()
    server.stop()


def _upload(client, frames: Path, prefix: str = "in") -> None:
    for p in sorted(frames.rglob("*.png")):
        client.put_object(Bucket="bucket", Key=f"{prefix}/{p.relative_to(frames).as_posix()}", Body=p.read_bytes())


def _bucket_labels(client, prefix: str = "out") -> dict[str, bytes]:
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="bucket", Prefix=prefix + "/").get("Contents", [])]
    return {k[len(prefix) + 1:]: client.get_object(Bucket="bucket", Key=k)["Body"].read() for k in sorted(keys)
            if k.endswith(".png") and "/.pspnet/" not in k}


def _bucket_manifest(client, prefix: str = "out") -> list[dict]:
    body = client.get_object(Bucket="bucket", Key=f"{prefix}/manifest.csv")["Body"].read().decode()
    return list(csv.DictReader(io.StringIO(body)))


@pytest.mark.slow
def test_s3_to_s3_equals_local_predict_and_resumes(s3, frames, reference, tmp_path, capsys):
    _upload(s3, frames)
    assert main(["predict", "s3://bucket/in", "--out", "s3://bucket/out", *COMMON]) == 0
    assert _bucket_labels(s3) == reference  # same names (sub-folder kept), same bytes
    rows = _bucket_manifest(s3)
    assert len(rows) == 4 and all(r["input"].startswith("s3://bucket/in/") and not r["error"] for r in rows)
    capsys.readouterr()
    assert main(["predict", "s3://bucket/in/**/*.png", "--out", "s3://bucket/out", *COMMON]) == 0
    assert "done 0, skipped 4" in capsys.readouterr().out
    # a changed frame is redone, the others skipped
    first = sorted(frames.rglob("*.png"))[0]
    time.sleep(1.1)  # S3's LastModified has 1 s resolution: a re-upload in the same second looks unchanged
    s3.put_object(Bucket="bucket", Key=f"in/{first.relative_to(frames).as_posix()}", Body=first.read_bytes())
    assert main(["predict", "s3://bucket/in", "--out", "s3://bucket/out", *COMMON]) == 0
    assert "done 1, skipped 3" in capsys.readouterr().out
    # an object pspnet did not write at an output key is refused, named
    s3.put_object(Bucket="bucket", Key="mine/x.png", Body=first.read_bytes())
    s3.put_object(Bucket="bucket", Key="out2/x.png", Body=b"user data")
    assert main(["predict", "s3://bucket/mine/x.png", "--out", "s3://bucket/out2", *COMMON]) == 2
    assert "s3://bucket/out2/x.png: exist(s) in --out but pspnet did not write it" in capsys.readouterr().err
    assert s3.get_object(Bucket="bucket", Key="out2/x.png")["Body"].read() == b"user data"
    # the output inside the input prefix is refused
    assert main(["predict", "s3://bucket/in", "--out", "s3://bucket/in/labels", *COMMON]) == 2
    assert "overlaps the input folder s3://bucket/in" in capsys.readouterr().err


@pytest.mark.slow
def test_mixed_local_and_s3_sides(s3, frames, reference, tmp_path):
    assert main(["predict", str(frames), "--out", "s3://bucket/fromlocal", *COMMON]) == 0
    assert _bucket_labels(s3, "fromlocal") == reference
    _upload(s3, frames)
    assert main(["predict", "s3://bucket/in", "--out", str(tmp_path / "tolocal"), *COMMON]) == 0
    assert _labels(tmp_path / "tolocal") == reference


@pytest.mark.slow
def test_ray_engine_s3_to_s3_equals_local_predict_and_rerun_skips(s3, frames, reference, capsys):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    _upload(s3, frames)
    bad = b"\x89PNG\r\n\x1a\n" + b"0" * 100
    s3.put_object(Bucket="bucket", Key="in/sub/corrupt.png", Body=bad)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")  # after the AWS variables are set
    try:
        args = ["predict", "s3://bucket/in", "--out", "s3://bucket/out", "--engine", "ray", "--workers", "2", *COMMON]
        assert main(args) == 2
        text = capsys.readouterr()
        assert "done 4, skipped 0 (unchanged), failed 1" in text.out and "s3://bucket/in/sub/corrupt.png" in text.err
        assert _bucket_labels(s3) == reference
        errors = [r for r in _bucket_manifest(s3) if r["error"]]
        assert [r["input"] for r in errors] == ["s3://bucket/in/sub/corrupt.png"]
        assert main(args) == 2  # the corrupt frame is tried again; the done ones are not
        assert "done 0, skipped 4 (unchanged), failed 1" in capsys.readouterr().out
    finally:
        ray.shutdown()


KILLED_MIDWAY = """
import os
from pspnet.inference.batch import OutputOptions, open_manifest, prepare
from pspnet.inference.remote import destination

out = destination("s3://bucket/out")
plan, fingerprint = prepare(["s3://bucket/in"], out, OutputOptions(overlay=False), {"any": "options"})
manifest = open_manifest(out, fingerprint)
with manifest.batch(plan[:2]):
    manifest.write(plan[0].label, lambda f: f.write(b"half a batch"))
    os._exit(9)  # killed after an output is in place, before its row is finished
"""


@pytest.mark.slow
def test_s3_outputs_of_a_batch_killed_midway_are_replaced_not_refused(s3, frames, reference):
    import subprocess
    import sys

    _upload(s3, frames)
    src = str(Path(__file__).resolve().parents[1] / "src")
    done = subprocess.run([sys.executable, "-c", KILLED_MIDWAY], env={**os.environ, "PYTHONPATH": src},
                          capture_output=True, timeout=300)
    assert done.returncode == 9, done.stderr.decode()[-2000:]
    assert b"half a batch" in _bucket_labels(s3).values()
    assert main(["predict", "s3://bucket/in", "--out", "s3://bucket/out", *COMMON]) == 0  # not "did not write it"
    assert _bucket_labels(s3) == reference


@pytest.mark.slow
def test_s3_video_in_and_overlay_video_out(s3, tmp_path):
    av = pytest.importorskip("av")
    import pspnet

    path = tmp_path / "clip.mp4"
    base = Image.open(Path(pspnet.__file__).parent / "samples" / "camvid_0016E5_08059.jpg").convert("RGB")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 72, "yuv420p"
        for i in range(5):
            for packet in stream.encode(av.VideoFrame.from_image(base.resize((96, 72)).rotate(i * 3))):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    s3.put_object(Bucket="bucket", Key="videos/day1/clip.mp4", Body=path.read_bytes())
    assert main(["predict", "s3://bucket/videos", "--out", "s3://bucket/vout", "--no-progress"]) == 0
    result = tmp_path / "clip_overlay.mp4"
    result.write_bytes(s3.get_object(Bucket="bucket", Key="vout/day1/clip_overlay.mp4")["Body"].read())
    with av.open(str(result)) as video:
        frames = [f.to_image() for f in video.decode(video=0)]
    assert len(frames) == 5 and frames[0].size == (96, 72)
    assert [r["output"] for r in _bucket_manifest(s3, "vout")] == ["day1/clip_overlay.mp4"]
