"""The benchmark package: measuring primitives, case loading, judging, a whole run, the CLI and the scripts' peers.

Fast tests use a timm test EfficientNet at 48x64 with one or two rounds and count FLOPs on the meta
device; what starts a child process, exports to ONNX or builds ResNet-50s is marked ``slow``.
"""

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from pspnet.benchmark import BenchConfig, format_table, load_cases, plot, run_benchmark, write_json
from pspnet.benchmark.cases import Case, build_model, torch_paths
from pspnet.model.bundled import SAMPLE_IMAGE as SAMPLE
from pspnet.benchmark.measure import PeakMemory, gflop, timed
from pspnet.benchmark.run import (
    MIN_AGREEMENT,
    _fastest_torch_path,
    best_paths,
    judge,
    sliding_window_rss,
    time_interleaved,
)
from pspnet.cli import main
from pspnet.errors import PSPNetError
from pspnet.model.pspnet import PSPNet

PEERS = Path(__file__).resolve().parents[1] / "benchmarks" / "peers.py"
TINY = dict(model="pspnet_test_efficientnet", num_classes=3, size=(48, 64), repeats=1, threads=1,
            peak_seconds=0.05, bundled=None, onnx=False, int8=False, val=False, train=False, scaling=False,
            slide=False)


# ---- measuring -------------------------------------------------------------------------------------------------

def test_gflop_of_the_official_pspnet_r50_is_counted_on_the_meta_device():
    model = PSPNet(num_classes=21).eval()
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].device.type))
    assert 320 < gflop(model, (1, 3, 473, 473)) < 326
    assert seen == ["meta"]  # no real 323-GFLOP forward
    assert next(model.parameters()).device.type == "cpu"  # the caller's model is untouched


def test_gflop_counts_on_the_real_device_what_meta_cannot_run():
    class Numpy(torch.nn.Module):  # .numpy() has no meta implementation
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.conv(torch.from_numpy(x.numpy()))

    assert gflop(Numpy(), (1, 3, 8, 8)) == pytest.approx(2 * 3 * 4 * 64 / 1e9)


def test_timed_and_peak_memory():
    assert 0.02 <= timed(lambda: time.sleep(0.02), torch.device("cpu")) < 1.0
    with PeakMemory(torch.device("cpu")) as mem:
        big = torch.ones(32 * 2**20 // 4)  # 32 MiB, alive until the block ends
    del big
    assert mem.peak >= 30 * 2**20


def test_torch_paths_compile_the_last_path_and_keep_its_precision():
    fastpaths = torch_paths(torch.device("cpu"), compile=True)
    assert fastpaths[0].name == "fp32 eager" and fastpaths[-1].compile
    assert fastpaths[-1].name == f"compile {fastpaths[-2].name}" and fastpaths[-1].precision == fastpaths[-2].precision


# ---- cases from outside the library ----------------------------------------------------------------------------

def test_load_cases_from_a_file_and_its_errors(tmp_path):
    file = tmp_path / "mine.py"
    file.write_text("def cases(num_classes, size, device):\n    return ['a']\n\n"
                    "def other(n, s, d):\n    return ['b']\n")
    assert load_cases(str(file))(3, (8, 8), "cpu") == ["a"]
    assert load_cases(f"{file}:other")(3, (8, 8), "cpu") == ["b"]
    with pytest.raises(PSPNetError, match="missing.py is not a file"):
        load_cases(str(tmp_path / "missing.py"))
    with pytest.raises(PSPNetError, match="no function nope"):
        load_cases(f"{file}:nope")
    with pytest.raises(PSPNetError, match="cannot import no_such_module_xyz"):
        load_cases("no_such_module_xyz:cases")


def test_a_camvid_path_that_does_not_exist_is_refused_before_measuring(tmp_path):
    with pytest.raises(PSPNetError, match=f"{tmp_path / 'nope'} is not a directory"):
        run_benchmark(BenchConfig(**TINY, camvid=str(tmp_path / "nope")))


# ---- judging ---------------------------------------------------------------------------------------------------

def _row(name, ms, agreement=None):
    row = {"name": name, "median_ms": ms, "images_per_s": 1e3 / ms, "speedup_vs_fp32_eager": 100 / ms}
    if agreement is not None:
        row["agreement"] = agreement
    return row


def test_judge_prefers_the_paths_val_agreement_and_best_paths_takes_the_fastest_correct():
    rows = [_row("R fp32 eager", 100), _row("R bf16 weights fold+NHWC", 20, 0.98), _row("R ORT fp32", 80, 1.0),
            _row("bundled camvid bf16 weights fold+NHWC", 5, 0.999), _row("peer X", 1)]
    val = {"bf16 weights fold+NHWC": 0.996, "ORT fp32": 0.9}  # measured on the bundled model over CamVid val
    judge(rows, {"main": "R", "bundled": "bundled camvid"}, val)
    assert [r.get("correct") for r in rows] == [None, True, False, True, None]
    summary = best_paths(rows, {"main": "R", "bundled": "bundled camvid"}, val)
    assert summary["main"]["best_path"] == "R bf16 weights fold+NHWC" and summary["main"]["ort_speedup"] == 1.25
    assert summary["correct_by"] == "CamVid val agreement of the bundled model"
    judge(rows, {"main": "R"}, {})  # without val, each row's own agreement on the frame decides
    assert rows[1]["correct"] is (0.98 >= MIN_AGREEMENT) and rows[2]["correct"]


def test_scaling_uses_the_fastest_correct_path_without_compile():
    fastpaths = torch_paths(torch.device("cpu"), compile=True)
    rows = [{"name": f"R {p.name}", "median_ms": 100 - i, "correct": True} for i, p in enumerate(fastpaths)]
    assert _fastest_torch_path(rows, "R", fastpaths) == fastpaths[-2]
    assert _fastest_torch_path([], "R", fastpaths).name == "fp32 eager"


def test_a_failing_case_is_reported_and_the_others_still_timed():
    x = torch.zeros(1, 3, 4, 4)

    def broken(x):
        raise RuntimeError("boom")

    cases = [Case("ok", "ours", lambda x: torch.zeros(1, 2, 4, 4), x), Case("bad", "ours", broken, x)]
    time_interleaved(cases, repeats=2, warmup=1, device=torch.device("cpu"))
    assert len(cases[0].times) == 2 and cases[1].error == "RuntimeError: boom" and not cases[1].times


# ---- a whole run ------------------------------------------------------------------------------------------------

def test_a_run_with_an_extra_case_file_gives_rows_summary_table_json_and_chart(tmp_path):
    extra = tmp_path / "extra.py"
    extra.write_text("import torch\nfrom pspnet.benchmark import Case\n\n"
                     "def cases(num_classes, size, device):\n"
                     "    x = torch.zeros(1, 3, *size)\n"
                     "    return [Case('zeros', 'peer', lambda x: torch.zeros(1, num_classes, *x.shape[-2:]), x)]\n")
    threads = torch.get_num_threads()
    result = run_benchmark(BenchConfig(**{**TINY, "repeats": 2}, cases=(str(extra),)))
    assert torch.get_num_threads() == threads  # cfg.threads is for the run only
    rows = {r["name"]: r for r in result["rows"]}
    eager, fold = rows["test_efficientnet fp32 eager"], rows["test_efficientnet fp32 fold+NHWC"]
    assert eager["median_ms"] > 0 and 0 < eager["gflop"] < 1 and eager["pct_of_peak"] > 0
    assert fold["agreement"] >= 0.999 and fold["correct"] and fold["speedup_vs_fp32_eager"] > 0
    assert rows["zeros"]["group"] == "peer" and "agreement" not in rows["zeros"]
    assert result["summary"]["correct_by"] == "agreement on the benchmark frame"
    assert list(result["config"]["cases"]) == [str(extra)]
    table = format_table(result)
    assert "zeros" in table and "test_efficientnet fp32 fold+NHWC" in table and "best correct path (main)" in table
    saved = json.loads(write_json(result, tmp_path / "out" / "r.json").read_text())
    assert format_table(saved) == table  # a saved result prints the same table
    assert plot(saved, tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_benchmark_cli_emits_json_and_a_chart(tmp_path, capsys):
    out, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = ["benchmark", "--model", "pspnet_test_efficientnet", "--num-classes", "3", "--size", "48", "64",
            "--repeats", "2", "--threads", "1", "--peak-seconds", "0.1", "--bundled", "", "--no-onnx",
            "--no-slide", "--no-val", "--train-size", "32", "32", "--scaling-sizes", "32", "48",
            "--scaling-batches", "1", "2", "--json", str(out), "--chart", str(chart), "--quiet"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "test_efficientnet fp32 eager" in table and "matmul peak" in table
    result = json.loads(out.read_text())
    assert result["machine"]["torch_threads"] == 1 and result["training"]["fp32"]["images_per_s"] > 0
    assert [r["size"] for r in result["scaling"]["by_size"]] == [[32, 32], [48, 48]]
    assert [r["batch"] for r in result["scaling"]["by_batch"]] == [1, 2]
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_benchmark_cli_refuses_a_missing_cases_file(tmp_path, capsys):
    assert main(["benchmark", "--cases", str(tmp_path / "peers.py")]) == 2
    assert "peers.py is not a file" in capsys.readouterr().err


@pytest.mark.slow
def test_sliding_window_in_a_child_process():
    spec = {"name": "pspnet_test_efficientnet", "num_classes": 3, "seed": 0}
    fastpath = torch_paths(torch.device("cpu"))[1]
    out = sliding_window_rss(spec, fastpath, (96, 128), (48, 48), threads=1)
    assert out["output_shape"] == [1, 3, 96, 128] and out["path"] == "fp32 fold+NHWC"
    assert out["peak_rss_mb"] >= out["peak_rss_before_mb"] > 50 and out["seconds"] > 0
    bad = sliding_window_rss({"name": "no_such_model"}, fastpath, (96, 128), (48, 48), threads=1)
    assert "no_such_model" in bad["error"]


@pytest.mark.slow
def test_ort_and_int8_cases_calibrated_on_frames_in_tmp(tmp_path):
    pytest.importorskip("onnxruntime")
    train = tmp_path / "camvid" / "train"
    train.mkdir(parents=True)
    for i in range(3):
        shutil.copy(SAMPLE, train / f"frame{i}.jpg")
    result = run_benchmark(BenchConfig(**{**TINY, "onnx": True, "int8": True, "int8_float": ("backbone",),
                                          "calib_count": 3}, camvid=str(tmp_path / "camvid")))
    rows = {r["name"]: r for r in result["rows"]}
    assert rows["test_efficientnet ORT fp32"]["agreement"] > 0.99 and rows["test_efficientnet ORT fp32"]["correct"]
    int8 = rows["test_efficientnet ORT int8 head"]
    assert int8["format"] == "int8" and int8["median_ms"] > 0 and "3 calibration frames" in int8["note"]
    assert "int8" in result["matmul_peak_gflops"]


@pytest.mark.slow
def test_peer_models_of_the_benchmark_scripts():
    pytest.importorskip("segmentation_models_pytorch")
    cases = load_cases(str(PEERS))(3, (48, 64), torch.device("cpu"))
    assert [c.name for c in cases] == ["smp PSPNet-R50", "smp PSPNet-R18", "torchvision DeepLabV3-R50",
                                       "torchvision FCN-R50"]
    assert all(c.group == "peer" and c.gflop > 0 for c in cases)
    assert cases[0].run().shape == (1, 3, 48, 64)  # padded to a multiple of 8 and cropped back


def test_build_model_from_a_spec_is_seeded():
    spec = {"name": "pspnet_test_efficientnet", "num_classes": 3, "seed": 1}
    a, b = build_model(spec), build_model(spec)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


# ---- the release scripts in benchmarks/ --------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "datasets" / "camvid"


@pytest.mark.slow
def test_release_speed_times_each_model_in_its_own_process_and_another_checkout_by_its_own_code():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "benchmarks/release_speed.py", "--against-checkout", str(REPO),
                          "--processes", "1", "--calls", "1"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if "x the bundled time" in line]
    assert len(rows) == 3 and "LRASPP" in rows[2]
    assert all(str(REPO / "src" / "pspnet") in row for row in rows[:2])  # the checkout's own code ran
    missing = subprocess.run([sys.executable, "benchmarks/release_speed.py", "--against-checkout", str(REPO / "tests")],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "no src/pspnet" in missing.stderr


@pytest.mark.slow
@pytest.mark.skipif(not CAMVID.is_dir(), reason="needs CamVid at ../shared/datasets/camvid")
def test_default_path_accuracy_prints_each_drive_and_path_against_fp32():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "benchmarks/default_path_accuracy.py", "--limit", "2"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith(("val ", "train "))]
    assert {r[1] for r in rows} == {"0016E5", "0001TP"} and {r[3] for r in rows} >= {"fp32", "auto"}
    fp32 = [r for r in rows if r[3] == "fp32"]
    assert all(r[-2] == "100.000%," for r in fp32)  # fp32 against itself
