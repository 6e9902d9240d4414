"""Every documented command and Python block runs as written (on small data), so none can rot unnoticed.

The commands are the lines of the fenced ```bash/```sh/```shell/```console blocks of README.md and
docs/*.md that run ``pspnet``, ``python``/``python3`` or ``torchrun`` (after any ``VAR=value``
prefix); installs (``pip``), HTTP clients (``curl``) and cluster tools (``ray up``) are not run.
Untagged blocks are output or diagrams, not commands. Each command must have an entry in COMMANDS
saying how it is run small (extra flags appended, text replaced) or why it cannot run here (SKIP):
a new documented command without an entry fails ``test_every_documented_command_has_an_entry``.
The commands of one block run in order in one fresh folder, as a reader pasting the block would, so
``pspnet predict --model pspnet_cityscapes`` finds what the ``pspnet convert`` above it wrote. The
folder holds ``street.jpg``/``street.png`` (the bundled sample frame), and what ``needs`` names;
``../shared/...``, ``benchmarks/``, ``configs/``, ``src`` and ``tests/`` mean the checkout's.

Python blocks run as they are, each in its own fresh folder, unless PYTHON_BLOCKS (keyed by file and
first line) says otherwise.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SAMPLE = REPO / "src" / "pspnet" / "samples" / "camvid_0016E5_08059.jpg"
CAMVID = REPO.parent / "shared" / "datasets" / "camvid"
SHELL = {"bash", "sh", "shell", "console"}
PROGRAMS = {"pspnet", "python", "python3", "torchrun"}
REPO_PATHS = ("../shared/", "benchmarks/", "configs/", "src", "tests/")
TIMEOUT = 900

# int8 is run by the deploy block's own `pspnet export --int8`; the bundled model's CamVid check by `pspnet eval`
BENCH_SMALL = ("--model pspnet_resnet18 --size 97 97 --repeats 1 --warmup 0 --peak-seconds 0.2 --no-int8 --no-val "
               "--no-train --no-scaling --no-slide --quiet")
TRAIN_SMALL = "--iterations 2 --batch-size 2 --crop-size 65 65 --workers 0 --set val_split=null --no-progress"


@dataclass(frozen=True)
class Run:
    """How a documented command runs small: ``replace`` pairs applied to its text, ``extra`` appended."""

    extra: str = ""
    replace: tuple[tuple[str, str], ...] = ()
    needs: tuple[str, ...] = ()  # workspace files made by MAKERS
    server: bool = False  # a server: started, asked for its page, stopped
    expect: tuple[str, ...] = ()  # files it must have written (relative to the workspace)


@dataclass(frozen=True)
class Skip:
    reason: str


AS_IS = Run()
MEDICAL = ("CT/MR scans with masks (the medical dataset, predict on .nii/.dcm and the NIfTI writer run on volumes "
           "built in tmp in tests/test_medical.py and tests/test_custom_wiring.py)")

# documented command (continuation lines joined, comment dropped) -> how it runs here
COMMANDS: dict[str, Run | Skip] = {
    # README.md
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && pspnet predict --out predictions": Run(
        replace=(("python3 -m venv .venv && . .venv/bin/activate && pip install -e . && ", ""),),
        expect=("predictions/camvid_0016E5_08059.png", "predictions/camvid_0016E5_08059_overlay.png")),
    "python3 -m venv .venv && . .venv/bin/activate": Skip(
        "makes a virtual environment to install into (tests/test_wheel.py installs the built wheel)"),
    "python -m pytest -m \"not slow\"": Skip("the test suite itself: it would run this test again"),
    # docs/convert.md
    "pspnet convert train_epoch_50.pth --out pspnet_voc": Run(needs=("train_epoch_50.pth",),
                                                              expect=("pspnet_voc/model.safetensors",)),
    "pspnet convert iter_40000.pth --out pspnet_cityscapes": Run(needs=("iter_40000.pth",),
                                                                 expect=("pspnet_cityscapes/model.safetensors",)),
    "pspnet predict street.jpg --model pspnet_cityscapes": Run(expect=("predictions/street.png",)),
    "pspnet predict street.jpg --model org/pspnet-cityscapes": Skip("downloads from the Hugging Face Hub"),
    # docs/custom-data.md
    "python benchmarks/make_membranes.py em --train 20 --val 10": Run(
        replace=(("--train 20 --val 10", "--train 2 --val 2 --size 96"),)),
    "pspnet check-data --dataset folder --data-root em": AS_IS,  # the same block made em/
    "pspnet train --dataset folder --data-root em --out-dir runs/em": Run(
        needs=("em",), extra="--iterations 2 --eval-every 2 --crop-size 65 65 --batch-size 2 --workers 0 --no-progress",
        expect=("runs/em/best.safetensors",)),
    "pspnet eval --model runs/em --dataset folder --data-root em --out runs/em/eval": Run(
        needs=("em", "runs/em"), extra="--no-progress", expect=("runs/em/eval/metrics.json",)),
    "pspnet eval --model runs/em --dataset folder --data-root em --threshold 0.6 --positive 0": Run(
        needs=("em", "runs/em"), extra="--no-progress"),
    "pspnet predict --model runs/em em/val/images --out predictions": Run(
        needs=("em", "runs/em"), extra="--no-progress", expect=("predictions/frame_000.png",)),
    "pspnet predict --model runs/em em/val/images --out predictions_t --threshold 0.6 --positive 0": Run(
        needs=("em", "runs/em"), extra="--no-progress", expect=("predictions_t/frame_000.png",)),
    "pspnet check-data --dataset medical --data-root DIR --data-opt window=40,400": Skip(MEDICAL),
    "pspnet train --dataset medical --data-root DIR --data-opt window=40,400 --data-opt axis=2 --out-dir runs/ct": Skip(
        MEDICAL),
    "pspnet eval --model runs/ct --dataset medical --data-root DIR --data-opt window=40,400 --out runs/ct/eval": Skip(
        MEDICAL),
    "pspnet predict --model runs/ct new_scans/ --window 40,400 --axis 2 --out masks": Skip(MEDICAL),
    # docs/deploy.md
    "pspnet export --model camvid --out camvid.onnx": Run(expect=("camvid.onnx",)),
    "pspnet export --model camvid --out camvid.onnx --int8 --calib ../shared/datasets/camvid/train "
    "--int8-check ../shared/datasets/camvid/val": Run(
        extra="--calib-count 4", replace=(("--int8-check ../shared/datasets/camvid/val", "--int8-check val4"),),
        needs=("val4",), expect=("camvid_int8.onnx",)),
    "pspnet predict street.jpg --model camvid.onnx": Run(expect=("predictions/street.png",)),
    "pspnet calibrate --model camvid --images ../shared/datasets/camvid/train --out camvid_int8": Run(
        replace=(("--images ../shared/datasets/camvid/train", "--images val4"),), needs=("val4",),
        expect=("camvid_int8/model.safetensors",)),
    "pspnet predict street.jpg --model camvid_int8": Run(expect=("predictions/street.png",)),
    "pspnet predict street.jpg --model camvid --backend onnxruntime": Run(extra="--overwrite"),
    "pspnet benchmark --camvid ../shared/datasets/camvid --cases benchmarks/peers.py --json bench.json "
    "--chart bench.png": Run(
        extra=BENCH_SMALL, expect=("bench.json", "bench.png")),
    "python benchmarks/bench_inference.py --compile": Run(
        extra="--out-dir . " + BENCH_SMALL,
        expect=("cpu.txt", "cpu.json", "cpu.png")),
    # docs/scale.md
    "pspnet predict drive_logs/ --out labels/ --engine ray --workers 2 --batch-size 4": Run(
        needs=("drive_logs",), expect=("labels/frame_0.png",)),
    "pspnet predict drive_logs/ --out labels/ --engine ray --address auto --workers 64": Skip(
        "joins a running Ray cluster"),
    "PYTHONPATH=src python benchmarks/predict_throughput.py --frames 24 --large-frames 4 --batch-size 2 "
    "--json tp.json": Run(replace=(("--frames 24 --large-frames 4", "--frames 2 --large-frames 0"),),
                          expect=("tp.json",)),
    "pspnet predict /mnt/archive/frames --out /mnt/archive/labels --engine ray --address auto --workers 128 "
    "--batch-size 8": Skip("joins a running Ray cluster"),
    "pspnet predict /mnt/archive/frames --out /mnt/archive/labels --engine ray --address auto --device cuda "
    "--workers 16 --batch-size 16 --precision bf16": Skip("joins a running Ray cluster of GPU machines"),
    "pspnet predict s3://fleet/drive_logs --out s3://fleet/labels --engine ray --address auto --workers 64": Skip(
        "a Ray cluster and a real bucket (the S3 path runs against a local S3 API in tests/test_predict_uri.py)"),
    "pspnet predict 's3://fleet/drive_logs/**/*.png' --out s3://fleet/labels --engine ray": Skip(
        "a real bucket (the S3 path, globs included, runs against a local S3 API in tests/test_predict_uri.py)"),
    "pspnet predict gs://archive/cam7/list.txt --out gs://archive/labels-cam7 --engine ray": Skip(
        "a Google Cloud Storage bucket; no GCS emulator here (the same pyarrow.fs path is tested on S3)"),
    "torchrun --nnodes 4 --nproc-per-node 8 --node-rank $RANK --rdzv-backend c10d --rdzv-endpoint "
    "head-node:29500 -m pspnet train --config configs/cityscapes_pspnet50.yaml --out-dir runs/city": Skip(
        "four machines of 8 processes and Cityscapes (DDP itself: tests/test_ddp.py)"),
    # docs/serve.md
    "pspnet serve --model camvid --port 8000": Run(server=True),
    "PSPNET_SCREENSHOT=docs/serve_screenshot.png python -m pytest tests/test_browser.py": Skip(
        "a test of the suite (tests/test_browser.py), run by python -m pytest itself"),
    "python benchmarks/serve_load.py": Run(extra="--requests 8 --concurrency 2 --rounds 1"),
    "python benchmarks/serve_load.py --size 240 180 --rounds 5 --json load.json": Run(
        replace=(("--rounds 5", "--rounds 1"),), extra="--requests 8 --concurrency 2", expect=("load.json",)),
    # docs/training.md
    "pspnet check-data --dataset folder --data-root my_data --split train val": Run(needs=("my_data",)),
    "pspnet train --dataset camvid --data-root ../shared/datasets/camvid": Run(
        extra=TRAIN_SMALL, expect=("runs/train/last.pt",)),
    "pspnet train --config camvid_lite0 --data-root ../shared/datasets/camvid": Run(
        extra=TRAIN_SMALL, expect=("runs/camvid_lite0/last.pt",)),
    "pspnet train --config my_recipe.yaml --lr 0.005": Run(extra=TRAIN_SMALL, needs=("my_recipe.yaml", "my_data"),
                                                          expect=("runs/my_recipe/last.pt",)),
    "pspnet train --resume runs/camvid_lite0": Run(extra="--iterations 3"),
    "torchrun --nproc_per_node 8 -m pspnet train --config voc2012_pspnet50 --backbone-weights resnet50_v2.pth": Skip(
        "8 processes on PASCAL VOC with semseg's ResNet-50 file (DDP: tests/test_ddp.py, the weights file: "
        "tests/test_pretrained.py)"),
    "pspnet train --list-recipes": AS_IS,
    "pspnet models": AS_IS,
    "pspnet eval --model camvid --dataset camvid --data-root ../shared/datasets/camvid --split val --out eval/": Run(
        extra="--limit 2 --no-progress", expect=("eval/metrics.json",)),
    "pspnet eval --model camvid --dataset camvid --data-root ../shared/datasets/camvid --split train --by-sequence": Run(
        extra="--limit 3 --no-progress"),
    "pspnet eval --model runs/xtail/finetune/last.safetensors --dataset camvid --data-root ../shared/datasets/camvid "
    "--split holdout --data-opt 'holdout_sequences=[0006R0]' --data-opt holdout_from=train+val "
    "--data-opt 'holdout_tails={0001TP: 0.33}' --by-sequence --eval-scale 1.5 --flip": Run(
        # the tail split's twin takes hours to train: the bundled model stands in for it, on 2 frames
        replace=(("runs/xtail/finetune/last.safetensors", "camvid"),), extra="--limit 2 --no-progress"),
    "pspnet eval --model runs/x/best.safetensors --dataset cityscapes --data-root DATA/cityscapes --mode slide "
    "--crop 713 713 --scales 0.5 0.75 1 1.25 1.5 1.75 --flip": Run(
        replace=(("--crop 713 713", "--crop 65 65"), ("--scales 0.5 0.75 1 1.25 1.5 1.75", "--scales 0.5 1")),
        extra="--no-progress", needs=("runs/x/best.safetensors", "DATA/cityscapes")),
}

# "file: first line" of a Python block -> how it runs (absent: as it is)
PYTHON_BLOCKS: dict[str, Run | Skip] = {
    "docs/convert.md: import pspnet": Run(needs=("iter_40000.pth",), expect=("pspnet_cityscapes/model.safetensors",)),
    'docs/convert.md: model.push_to_hub("org/pspnet-cityscapes")': Skip("uploads to the Hugging Face Hub"),
    "docs/serve.md: import pspnet": Run(server=True),
    "docs/custom-data.md: from pspnet.data import build_dataset": Run(needs=("em", "runs/em")),
    "docs/custom-data.md: import pspnet": Skip(MEDICAL),
}


@dataclass(frozen=True)
class Block:
    file: str  # relative to the repo
    line: int  # of the opening fence
    lang: str
    text: str

    @property
    def key(self) -> str:
        first = next((ln for ln in self.text.splitlines() if ln.strip()), "")
        return f"{self.file}: {strip_comment(first)}"


def fenced_blocks(path: Path) -> list[Block]:
    blocks, lang, start, body = [], None, 0, []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, start, body = line[3:].strip().lower(), i, []
            else:
                blocks.append(Block(str(path.relative_to(REPO)), start, lang, "\n".join(body)))
                lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def strip_comment(line: str) -> str:
    return re.sub(r"(^|\s+)#(\s.*)?$", "", line).strip()


def commands_of(block: Block) -> list[str]:
    """The runnable commands of a shell block: continuations joined, comments and prompts dropped."""
    out, pending = [], ""
    for raw in block.text.splitlines():
        line = raw.strip()
        if block.lang == "console":
            if not line.startswith("$ ") and not pending:
                continue  # output
            line = line.removeprefix("$ ")
        if pending:
            line = pending + " " + line
            pending = ""
        if line.endswith("\\"):
            pending = line[:-1].strip()
            continue
        line = strip_comment(line)
        if line and any(program_of(part) in PROGRAMS for part in line.split("&&")):
            out.append(" ".join(line.split()))
    return out


def program_of(command: str) -> str:
    words = [w for w in command.split() if not re.match(r"^[A-Z_][A-Z0-9_]*=", w)]
    return words[0] if words else ""


ALL_BLOCKS = [b for path in DOCS for b in fenced_blocks(path)]
SHELL_BLOCKS = [b for b in ALL_BLOCKS if b.lang in SHELL and commands_of(b)]
PY_BLOCKS = [b for b in ALL_BLOCKS if b.lang == "python"]


def test_every_documented_command_has_an_entry():
    documented = [c for b in SHELL_BLOCKS for c in commands_of(b)]
    missing = [c for c in documented if c not in COMMANDS]
    assert not missing, (
        "documented commands with no entry in COMMANDS of tests/test_docs.py (add each, as AS_IS, a Run(...) that "
        "makes it small, or a Skip(reason) when it cannot run here):\n" + "\n".join(missing))
    stale = [c for c in COMMANDS if c not in documented]
    assert not stale, "COMMANDS entries no document has any more (remove them):\n" + "\n".join(stale)
    stale = [k for k in PYTHON_BLOCKS if k not in {b.key for b in PY_BLOCKS}]
    assert not stale, "PYTHON_BLOCKS entries no document has any more (remove them):\n" + "\n".join(stale)


def test_the_extractor_finds_the_commands_it_is_meant_to():
    block = Block("x.md", 1, "bash", "# comment\npip install x\nFOO=1 python -m pspnet models  # list\n"
                                     "pspnet train --a 1 \\\n    --b 2\ncurl http://h/#x\n")
    assert commands_of(block) == ["FOO=1 python -m pspnet models", "pspnet train --a 1 --b 2"]
    console = Block("x.md", 1, "console", "$ pspnet models\npspnet_resnet50 ...\n")
    assert commands_of(console) == ["pspnet models"]


# ---- the workspace a block runs in ---------------------------------------------------------------------------


def make_frames(folder: Path, count: int, size: tuple[int, int] = (480, 360)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    frame = Image.open(SAMPLE).convert("RGB").resize(size)
    for i in range(count):
        frame.save(folder / f"frame_{i}.png")


def make_my_data(ws: Path) -> None:
    """docs/training.md's own-data example: images/ + masks/ per split, 0/255 masks, a dataset.yaml."""
    root = ws / "my_data"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for i in range(3):
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "masks" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (72, 96, 3), dtype=np.uint8)).save(root / "images" / split / f"{i}.png")
            mask = np.zeros((72, 96), np.uint8)
            mask[20:50, 30:70] = 255
            Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")
    (root / "dataset.yaml").write_text("classes: [background, road]\nmask_values: [0, 255]\n")


def make_recipe(ws: Path) -> None:
    (ws / "my_recipe.yaml").write_text(
        "dataset: folder\ndata_root: my_data\nmodel: pspnet_tf_efficientnet_lite0\nmodel_kwargs: {output_stride: 16}\n"
        "pretrained_backbone: true\nout_dir: runs/my_recipe\n")


def make_checkpoint(ws: Path, kind: str) -> None:
    """A synthetic semseg (PSPNet-50, VOC) or mmseg 1.x (ResNetV1c-50, Cityscapes) checkpoint file."""
    code = (REPO / "tests" / "test_convert.py").read_text()
    helpers = code[code.index("def to_semseg"):code.index("def randomised")]
    script = "import re, torch\nfrom pspnet import PSPNet, create_model\n" + helpers + (
        "torch.save({'epoch': 50, 'state_dict': to_semseg(PSPNet(num_classes=21).state_dict())}, 'train_epoch_50.pth')"
        if kind == "semseg" else
        "torch.save({'meta': {}, 'state_dict': to_mmseg(create_model('pspnet_resnet50_v1c', num_classes=19)"
        ".state_dict())}, 'iter_40000.pth')")
    subprocess.run([sys.executable, "-c", script], cwd=ws, env=child_env(ws), check=True, timeout=TIMEOUT)


def make_cityscapes(ws: Path) -> None:
    """Two frames in Cityscapes' layout (leftImg8bit + gtFine labelIds), 97x129."""
    rng = np.random.default_rng(0)
    for i in range(2):
        img = ws / "DATA/cityscapes/leftImg8bit/val/city" / f"city_000000_00000{i}_leftImg8bit.png"
        lbl = ws / "DATA/cityscapes/gtFine/val/city" / f"city_000000_00000{i}_gtFine_labelIds.png"
        img.parent.mkdir(parents=True, exist_ok=True)
        lbl.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (97, 129, 3), dtype=np.uint8)).save(img)
        Image.fromarray(rng.choice(np.array([7, 8, 11, 26], np.uint8), (97, 129))).save(lbl)


def make_membranes(ws: Path) -> None:
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "make_membranes.py"), "em", "--train", "2", "--val", "2",
                    "--size", "96"], cwd=ws, env=child_env(ws), check=True, timeout=TIMEOUT)


def make_binary_run(ws: Path) -> None:
    """runs/em as a finished run leaves it: a two-class model whose masks store 0 and 255."""
    script = ("import pspnet\nfrom pspnet.model.serialization import save_safetensors\n"
              "m = pspnet.create_model('pspnet_tf_efficientnet_lite0', num_classes=2, output_stride=16, "
              "decoder_channels=128, pretrained_backbone=False, class_names=['membrane', 'cell'], mask_values=[0, 255])\n"
              "save_safetensors(m, 'runs/em/best.safetensors')")
    (ws / "runs/em").mkdir(parents=True)
    subprocess.run([sys.executable, "-c", script], cwd=ws, env=child_env(ws), check=True, timeout=TIMEOUT)


def make_run_weights(ws: Path) -> None:
    script = ("import pspnet\nm = pspnet.create_model('pspnet_resnet18', num_classes=19, output_stride=32)\n"
              "from pspnet.model.serialization import save_safetensors\nsave_safetensors(m, 'runs/x/best.safetensors')")
    (ws / "runs/x").mkdir(parents=True)
    subprocess.run([sys.executable, "-c", script], cwd=ws, env=child_env(ws), check=True, timeout=TIMEOUT)


MAKERS = {
    "my_data": make_my_data,
    "my_recipe.yaml": make_recipe,
    "drive_logs": lambda ws: make_frames(ws / "drive_logs", 2),
    "val4": lambda ws: shutil.copytree(CAMVID / "val", ws / "val4", ignore=lambda d, names: sorted(names)[4:]),
    "train_epoch_50.pth": lambda ws: make_checkpoint(ws, "semseg"),
    "iter_40000.pth": lambda ws: make_checkpoint(ws, "mmseg"),
    "DATA/cityscapes": make_cityscapes,
    "runs/x/best.safetensors": make_run_weights,
    "em": make_membranes,
    "runs/em": make_binary_run,
}


def child_env(ws: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *filter(None, [env.get("PYTHONPATH")])])
    env["PSPNET_CACHE"] = str(ws / ".cache")  # --backend onnxruntime exports into it
    env["MPLBACKEND"] = "Agg"
    return env


def workspace(tmp_path: Path, needs: set[str], text: str) -> Path:
    if "shared/datasets/camvid" in text or "val4" in needs:
        if not (CAMVID / "val").is_dir():
            pytest.skip(f"real CamVid data not found at {CAMVID} (only on machines with ../shared)")
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(SAMPLE, ws / "street.jpg")
    Image.open(SAMPLE).save(ws / "street.png")
    for need in sorted(needs):
        MAKERS[need](ws)
    return ws


def repo_path(word: str) -> str:
    for prefix in REPO_PATHS:
        if word == prefix or word.startswith(prefix if prefix.endswith("/") else prefix + "/"):
            return str((REPO / word).resolve())
    return word


def argv_of(command: str, ws: Path) -> tuple[list[str], dict[str, str]]:
    env = child_env(ws)
    words = shlex.split(command)
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        name, value = words.pop(0).split("=", 1)
        value = repo_path(value)
        env[name] = os.pathsep.join([value, env[name]]) if name == "PYTHONPATH" else value
    words = [repo_path(w) for w in words]
    if words[0] == "pspnet":
        words = [sys.executable, "-m", "pspnet", *words[1:]]
    elif words[0] in ("python", "python3"):
        words[0] = sys.executable
    else:
        raise AssertionError(f"{command!r}: no way to run {words[0]!r} here; give it a Skip entry")
    return words, env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_and_ask(argv: list[str], env: dict[str, str], ws: Path, port: int, what: str) -> None:
    """Start the server, wait until its page answers (at most 3 minutes), stop it."""
    log = (ws / "server.log").open("wb")
    proc = subprocess.Popen(argv, cwd=ws, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"{what} exited ({proc.returncode}):\n{(ws / 'server.log').read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    assert response.status == 200
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                assert time.monotonic() < deadline, f"{what}: no answer on port {port} in 180 s"
                time.sleep(1)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def run_command(command: str, how: Run, ws: Path) -> None:
    text = command
    for old, new in how.replace:
        assert old in text, f"COMMANDS[{command!r}] replaces {old!r}, which is not in it"
        text = text.replace(old, new)
    text = f"{text} {how.extra}".strip()
    port = free_port()
    if how.server:
        text = text.replace("--port 8000", f"--port {port}")
    argv, env = argv_of(text, ws)
    if how.server:
        serve_and_ask(argv, env, ws, port, command)
    else:
        done = subprocess.run(argv, cwd=ws, env=env, capture_output=True, text=True, timeout=TIMEOUT)
        assert done.returncode == 0, (f"documented command failed ({done.returncode}): {command}\nrun as: {text}\n"
                                      f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    for name in how.expect:
        assert (ws / name).exists(), f"{command}: {name} was not written"


@pytest.mark.slow
@pytest.mark.timeout(2400)  # deploy.md's block: two exports, int8 calibration, two benchmarks
@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=lambda b: f"{b.file}:{b.line}")
def test_documented_commands_run(block: Block, tmp_path: Path):
    commands = commands_of(block)
    missing = [c for c in commands if c not in COMMANDS]
    assert not missing, f"no COMMANDS entry for {missing} (see test_every_documented_command_has_an_entry)"
    runs = [(c, COMMANDS[c]) for c in commands if isinstance(COMMANDS[c], Run)]
    if not runs:
        pytest.skip("; ".join(f"{c}: {COMMANDS[c].reason}" for c in commands))
    ws = workspace(tmp_path, {n for _, how in runs for n in how.needs}, " ".join(c for c, _ in runs))
    for command, how in runs:
        run_command(command, how, ws)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("block", PY_BLOCKS, ids=lambda b: f"{b.file}:{b.line}")
def test_documented_python_runs(block: Block, tmp_path: Path):
    how = PYTHON_BLOCKS.get(block.key, AS_IS)
    if isinstance(how, Skip):
        pytest.skip(how.reason)
    ws = workspace(tmp_path, set(how.needs), block.text)
    code = block.text
    for old, new in how.replace:
        assert old in code, f"PYTHON_BLOCKS[{block.key!r}] replaces {old!r}, which is not in the block"
        code = code.replace(old, new)
    (ws / "block.py").write_text(code)
    argv, env = [sys.executable, "block.py"], child_env(ws)
    if how.server:
        port = free_port()
        (ws / "block.py").write_text(code.replace("port=8000", f"port={port}"))
        serve_and_ask(argv, env, ws, port, block.key)
    else:
        done = subprocess.run(argv, cwd=ws, env=env, capture_output=True, text=True, timeout=TIMEOUT)
        assert done.returncode == 0, f"{block.file}:{block.line}: the Python block failed\n{done.stderr[-5000:]}"
    for name in how.expect:
        assert (ws / name).exists(), f"{block.key}: {name} was not written"
