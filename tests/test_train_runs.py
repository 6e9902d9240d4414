"""Training runs are protected and configs are checked up front (issue 17), `pspnet train` works on its defaults,
resumes restore the run's config (issue 12), and the run reports what it does (summary, collapse warning)."""

from __future__ import annotations

import json
import logging
import math
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pspnet.cli import main
from pspnet.engine.checkpoint import load_checkpoint
from pspnet.engine.config import RANGES, TrainConfig, list_recipes, load_recipe
from pspnet.engine.sampling import SeededSamples
from pspnet.engine.summary import collapse_warning
from pspnet.errors import PSPNetError
from test_engine import SUBPROCESS_ENV, TINY, make_folder_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("folder"))


def cli_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--dataset", "folder", "--data-root", str(data), "--model", "pspnet_test_efficientnet",
            "--set", f"model_kwargs={json.dumps(TINY)}", "--no-pretrained", "--out-dir", str(out),
            "--crop-size", "32", "--batch-size", "2", "--iterations", "4", "--checkpoint-every", "2",
            "--precision", "fp32", "--device", "cpu", "--workers", "0", "--no-progress", "--set", "val_split=null",
            "--set", "tensorboard=false", *extra]


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def run4(data, tmp_path_factory) -> Path:
    """A finished 4-iteration run (checkpoints at 2 and 4)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(cli_args(data, out)) == 0
    return out


# ---- run folders ----------------------------------------------------------------------------------------------------

def test_a_run_keeps_last_and_the_one_before(run4):
    assert load_checkpoint(run4 / "last.pt")["iteration"] == 4
    assert load_checkpoint(run4 / "last.prev.pt")["iteration"] == 2


def test_existing_run_needs_resume_or_overwrite(data, run4, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(run4, out)
    before = files_of(out)
    assert main(cli_args(data, out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a training run" in err and "--resume" in err and "--overwrite" in err
    assert files_of(out) == before  # nothing replaced
    assert main(cli_args(data, out, "--overwrite", "--iterations", "2")) == 0
    assert load_checkpoint(out / "last.pt")["iteration"] == 2 and not (out / "last.prev.pt").exists()


@pytest.mark.parametrize("resume", ["", "missing_run", "missing_run/last.pt"])
def test_resume_without_a_checkpoint_is_an_error_naming_the_path(data, tmp_path, capsys, resume):
    out = tmp_path / "fresh"
    args = cli_args(data, out, "--resume", *([str(tmp_path / resume)] if resume else []))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / (resume or "fresh")) in err and "--resume auto" in err
    assert not (out / "last.pt").exists()


def test_resume_auto_starts_then_continues(data, tmp_path):
    out = tmp_path / "auto"
    assert main(cli_args(data, out, "--resume", "auto", "--iterations", "2")) == 0
    assert main(cli_args(data, out, "--resume", "auto")) == 0  # --iterations 4 overrides the saved 2
    assert load_checkpoint(out / "last.pt")["iteration"] == 4


def test_resume_auto_on_a_finished_run_rewrites_none_of_its_outputs(data, tmp_path, caplog):
    out = tmp_path / "done"
    assert main(cli_args(data, out, "--iterations", "2")) == 0
    outputs = ("last.safetensors", "history.json", "curves.png", "last.pt")
    before = {name: ((out / name).read_bytes(), (out / name).stat().st_mtime_ns) for name in outputs}
    with caplog.at_level(logging.INFO):
        assert main(cli_args(data, out, "--iterations", "2", "--resume", "auto")) == 0
    assert {name: ((out / name).read_bytes(), (out / name).stat().st_mtime_ns) for name in outputs} == before
    assert "had already ended at iteration 2" in caplog.text


def test_resume_a_run_folder_alone_restores_its_config(data, run4, tmp_path, caplog, capsys):
    out = tmp_path / "moved"
    shutil.copytree(run4, out)  # a moved run: its folder, not the saved out_dir, is where it continues
    caplog.set_level(logging.WARNING, logger="pspnet")
    assert main(["train", "--resume", str(out), "--iterations", "6", "--no-progress"]) == 0
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["iteration"] == 6 and ckpt["train_config"]["dataset"] == "folder"
    assert ckpt["train_config"]["out_dir"] == str(out)
    assert "iterations=6 overrides the run's 4" in caplog.text


def test_resume_into_another_model_names_each_difference(data, run4, tmp_path, capsys):
    out = tmp_path / "other"
    shutil.copytree(run4, out)
    before = files_of(out)
    code = main(["train", "--resume", str(out / "last.pt"), "--no-progress",
                 "--set", f"model_kwargs={json.dumps({**TINY, 'output_stride': 16, 'head_channels': 8})}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert "output_stride: 8 in the checkpoint, 16 now" in err and "head_channels: 16 in the checkpoint, 8 now" in err
    assert files_of(out) == before


def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(data, run4, tmp_path, caplog):
    out = tmp_path / "damaged"
    shutil.copytree(run4, out)
    data_ = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(data_[: len(data_) // 2])
    caplog.set_level(logging.WARNING, logger="pspnet")
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert "last.prev.pt (iteration 2) instead" in caplog.text
    assert load_checkpoint(out / "last.pt")["iteration"] == 4


def test_out_dir_that_is_a_file_or_under_one_is_refused_before_training(data, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    for out in (blocker, blocker / "run"):
        assert main(cli_args(data, out)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(blocker) in err and "--out-dir" in err
    assert blocker.read_text() == "keep me"


# ---- config checks --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value, allowed", [
    ("iterations", "ten", "an integer >= 1"),
    ("lr", "fast", "a number > 0"),
    ("lr", -0.01, "a number > 0"),
    ("iterations", 0, "an integer >= 1"),
    ("batch_size", 0, "an integer >= 1"),
    ("crop_size", [96, 128, 5], "H W (or one size)"),
    ("checkpoint_every", 0, "an integer >= 1"),
    ("scale", [2.0, 0.5], "MIN MAX with 0 < MIN <= MAX"),
    ("precision", "fp8", "one of auto, fp32, bf16, fp16"),
    ("class_weights", "balanced", "median_frequency or sqrt_median_frequency"),
    ("tensorboard", "yes", "true or false"),
])
def test_bad_recipe_values_are_one_line_naming_key_value_and_allowed(data, tmp_path, capsys, key, value, allowed):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"dataset": "folder", "data_root": str(data), key: value}))
    out = tmp_path / "out"
    assert main(["train", "--config", str(recipe), "--out-dir", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"{recipe}: {key}: {value!r} is not allowed; expected {allowed}" in err
    assert not out.exists()  # refused before anything was created


def test_recipe_that_is_not_a_mapping_or_not_yaml(tmp_path, capsys):
    for text in ("- a\n- list\n", "lr: [unclosed\n"):
        (tmp_path / "r.yaml").write_text(text)
        assert main(["train", "--config", str(tmp_path / "r.yaml")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "r.yaml" in err


def _value_strategy():
    return st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                     st.text(max_size=8), st.lists(st.integers(-5, 2000), max_size=4),
                     st.lists(st.floats(-3, 20), max_size=3))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(sorted(f for f in TrainConfig.__dataclass_fields__)), value=_value_strategy())
def test_any_recipe_value_is_accepted_within_its_range_or_refused_naming_the_key(key, value):
    try:
        cfg = TrainConfig.from_dict({key: value}, source="recipe.yaml")
    except PSPNetError as err:
        assert str(err).startswith(f"recipe.yaml: {key}: ") and "not allowed; expected" in str(err)
        return
    accepted = getattr(cfg, key)
    if key in RANGES and accepted is not None:
        assert RANGES[key][0](accepted)
    if isinstance(accepted, float):
        assert math.isfinite(accepted)
    # what was accepted survives the round trip through a checkpoint's saved config
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@settings(max_examples=100, deadline=None)
@given(iterations=st.integers(1, 10**7), lr=st.floats(1e-8, 10), crop=st.lists(st.integers(8, 4096), min_size=1,
                                                                                   max_size=2))
def test_valid_numbers_are_kept_exactly(iterations, lr, crop):
    cfg = TrainConfig.from_dict({"iterations": iterations, "lr": lr, "crop_size": crop})
    assert cfg.iterations == iterations and cfg.lr == lr and cfg.crop_size == tuple(crop * (3 - len(crop)))


def test_every_shipped_recipe_parses_and_is_found_by_name():
    names = [name for name, _ in list_recipes()]
    assert {"camvid_lite0", "camvid_lite0_decoder", "voc2012_pspnet50"} <= set(names)
    for name in names:
        values, path = load_recipe(name)
        assert path.parent.name == "configs" and path.parent.parent.name == "pspnet"
        TrainConfig.from_dict(values, source=str(path))
    with pytest.raises(PSPNetError, match="no shipped recipe of that name; shipped: .*camvid_lite0"):
        load_recipe("camvid_lite9")


def test_list_recipes_cli(capsys):
    assert main(["train", "--list-recipes"]) == 0
    assert "camvid_lite0_decoder" in capsys.readouterr().out


# ---- sampling -------------------------------------------------------------------------------------------------------

class _Draws:
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.rand(2), random.random(), np.random.rand()


def test_seeded_samples_leave_the_main_process_rngs_alone():
    samples = SeededSamples(_Draws(), seed=3)
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    expected = (torch.rand(1), random.random(), np.random.rand())
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    first = samples[(1, 2)]
    assert (torch.rand(1), random.random(), np.random.rand()) == expected
    second = samples[(1, 2)]
    assert torch.equal(first[0], second[0]) and first[1:] == second[1:]
    assert not torch.equal(samples[(2, 2)][0], first[0])


# ---- what the run says ----------------------------------------------------------------------------------------------

def test_start_of_run_summary_in_the_log(data, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pspnet")
    assert main(cli_args(data, tmp_path / "s", "--iterations", "1", "--class-weights", "median_frequency")) == 0
    text = caplog.text
    assert re.search(r"precision +fp32", text)
    for expected in ("device", "cpu", "parameters", "random: training from scratch (--no-pretrained)",
                     "dataset", "train 6", "classes", "c0", "%", "loss", "class weights median_frequency"):
        assert expected in text, expected


def test_summary_in_tensorboard_text(data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = [a if a != "tensorboard=false" else "tensorboard=true" for a in cli_args(data, tmp_path / "tb")]
    assert main([*args, "--iterations", "1"]) == 0
    events = EventAccumulator(str(tmp_path / "tb" / "tb"), size_guidance={"tensors": 0})
    events.Reload()
    text = events.Tensors("run/summary/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "parameters" in text and "training from scratch (--no-pretrained)" in text and "c2" in text


def test_collapse_warning_names_the_fixes():
    collapsed = [[90, 0, 0], [8, 0, 0], [2, 0, 0]]
    warning = collapse_warning(collapsed, ["road", "sign", "pole"], 300)
    assert "predicts 'road' for 100.0%" in warning and "class_weights" in warning and "Dice" in warning
    assert "decoder" in warning
    assert collapse_warning([[50, 10], [10, 30]], ["a", "b"], 1) is None


# ---- CLI surface ----------------------------------------------------------------------------------------------------

def test_every_option_has_help_and_shows_its_default():
    import argparse

    from pspnet.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("train", "eval", "export", "convert", "check-data", "benchmark", "models"):
        sub = subparsers.choices[name]
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"pspnet {name} {action.option_strings[0]} has no help"
        text = sub.format_help()
        if name == "eval":
            assert "(default: val)" in " ".join(text.split())
        if name == "train":
            assert "(default: the recipe's, else 16)" in " ".join(text.split())


def test_dataset_names_match_the_registry():
    from pspnet.cli.options import DATASET_NAMES
    from pspnet.data import DATASETS

    assert sorted(DATASET_NAMES) == sorted(DATASETS)


def test_help_does_not_import_torch():
    code = ("import sys; from pspnet.cli import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_models_lists_names(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "pspnet_resnet50_v1c" in out and "pspnet_tf_efficientnet_lite0" in out and "camvid" in out


def test_default_model_is_the_bundled_architecture():
    cfg = TrainConfig()
    assert cfg.model_name == "pspnet_tf_efficientnet_lite0"
    assert cfg.resolved_model_kwargs == {"output_stride": 16, "decoder_channels": 128}
    assert TrainConfig(model="pspnet_resnet50").resolved_model_kwargs == {}


def test_resnet_recipe_without_weights_names_the_flags(data, tmp_path, capsys):
    assert main(["train", "--config", "voc2012_pspnet50", "--dataset", "folder", "--data-root", str(data),
                 "--set", "train_split=train", "--out-dir", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--backbone-weights FILE" in err and "--no-pretrained" in err


# ---- real data ------------------------------------------------------------------------------------------------------

def test_pspnet_train_on_its_defaults_on_camvid(camvid_root, tmp_path):
    out = tmp_path / "camvid"
    proc = subprocess.run([sys.executable, "-m", "pspnet", "train", "--dataset", "camvid", "--data-root",
                           str(camvid_root), "--iterations", "2", "--batch-size", "2", "--crop-size", "97", "129",
                           "--workers", "0", "--out-dir", str(out)],
                          capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["iteration"] == 2 and ckpt["config"]["backbone"] == "tf_efficientnet_lite0"
    assert ckpt["config"]["decoder_channels"] == 128 and ckpt["config"]["num_classes"] == 11
    assert "ImageNet backbone" in proc.stderr and "train 367" in proc.stderr
