"""The built wheel works outside the checkout: it carries the recipes, the bundled model, the sample frame
and the web page, and from an empty folder `pspnet predict` and a shipped recipe by name run from it."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "pspnet"
CAMVID = REPO.parent / "shared" / "datasets" / "camvid"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out / "dist"), str(REPO)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (built,) = (out / "dist").glob("pspnet-*.whl")
    return built


@pytest.fixture(scope="module")
def site(wheel: Path) -> Path:
    target = wheel.parent.parent / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                           str(wheel)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return target


def outside(site: Path, folder: Path, *args: str, program: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m pspnet ARGS` in FOLDER with only the installed wheel importable as pspnet."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)  # ahead of the venv's editable install of the checkout
    env["MPLBACKEND"] = "Agg"
    argv = [*(program or [sys.executable, "-m", "pspnet"]), *args]
    done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{argv} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def test_wheel_carries_the_data_files(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = [p.relative_to(PACKAGE.parent).as_posix() for sub in ("configs", "weights", "samples", "serve/static")
              for p in (PACKAGE / sub).iterdir() if p.is_file() and p.suffix != ".py"]
    assert "pspnet/configs/camvid_lite0.yaml" in wanted and "pspnet/weights/camvid.safetensors" in wanted
    assert "pspnet/samples/camvid_0016E5_08059.jpg" in wanted
    assert any(n.startswith("pspnet/serve/static/") for n in wanted)
    assert not [n for n in wanted if n not in names], f"missing from {wheel.name}: {[n for n in wanted if n not in names]}"


def test_installed_wheel_is_the_one_imported(site: Path, tmp_path: Path):
    done = outside(site, tmp_path, "-c", "import pspnet; print(pspnet.__file__)", program=[sys.executable])
    assert Path(done.stdout.strip()).is_relative_to(site)


def test_predict_from_an_empty_folder(site: Path, tmp_path: Path):
    outside(site, tmp_path, "predict", "--out", "preds", "--no-progress")
    assert (tmp_path / "preds" / "camvid_0016E5_08059.png").is_file()
    assert (tmp_path / "preds" / "camvid_0016E5_08059_overlay.png").is_file()
    # the console script the wheel declares
    outside(site, tmp_path, "predict", "--out", "preds2", "--no-progress", program=[str(site / "bin" / "pspnet")])
    assert (tmp_path / "preds2" / "camvid_0016E5_08059.png").is_file()


def test_shipped_recipes_are_listed(site: Path, tmp_path: Path):
    listed = outside(site, tmp_path, "train", "--list-recipes").stdout
    for recipe in (PACKAGE / "configs").glob("*.yaml"):
        assert recipe.stem in listed


def test_shipped_recipe_by_name_trains(site: Path, tmp_path: Path):
    if not (CAMVID / "train").is_dir():
        pytest.skip(f"real CamVid data not found at {CAMVID} (only on machines with ../shared)")
    outside(site, tmp_path, "train", "--config", "camvid_lite0", "--data-root", str(CAMVID), "--iterations", "2",
            "--batch-size", "2", "--crop-size", "65", "65", "--workers", "0", "--eval-every", "2", "--no-progress")
    assert (tmp_path / "runs" / "camvid_lite0" / "last.pt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing else written where it ran
