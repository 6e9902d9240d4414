"""The issue-13 protocol recipes: cross-sequence run, then the same schedule on train+val for the release."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pspnet.data import build_dataset
from pspnet.data.datasets import group_by_sequence
from pspnet.data.transforms import Augment, train_transforms
from pspnet.engine.train import TrainConfig
from pspnet.errors import PSPNetError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def load_script(path: str):
    """A script of the checkout (benchmarks/, scripts/) as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(path).stem, CONFIGS.parent / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recipe(name: str) -> tuple[dict, TrainConfig, Augment]:
    raw = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    rest = {k: v for k, v in raw.items() if k != "augment"}
    return raw, TrainConfig.from_dict(rest), Augment.from_dict(raw.get("augment"))


def test_xseq_recipe_holds_out_a_whole_drive():
    _raw, cfg, augment = recipe("camvid_lite0_xseq")
    assert cfg.val_split == "holdout" and cfg.dataset_options["holdout_sequences"] == ["0006R0"]
    assert augment.gamma and augment.jitter("brightness") > 0 and augment.noise > 0  # dusk/overcast light
    assert train_transforms(cfg.crop_size, (0.5,) * 3, (0.5,) * 3, cfg.scale, cfg.rotate, augment)


def test_release_recipe_repeats_the_xseq_schedule_on_all_frames():
    xseq, _, xseq_augment = recipe("camvid_lite0_xseq")
    release, cfg, augment = recipe("camvid_release")
    assert cfg.train_split == "train+val" and cfg.val_split is None and not cfg.dataset_options
    assert augment == xseq_augment
    differ = {k for k in xseq.keys() | release.keys() if xseq.get(k) != release.get(k)}
    assert differ == {"val_split", "dataset_options", "out_dir", "eval_every"}


def test_recipes_on_the_real_data(camvid_root):
    _, cfg, _ = recipe("camvid_lite0_xseq")
    train = build_dataset(cfg.dataset, camvid_root, cfg.train_split, **cfg.dataset_options)
    held = build_dataset(cfg.dataset, camvid_root, cfg.val_split, **cfg.dataset_options)
    assert {s: len(i) for s, i in group_by_sequence(train).items()} == {"0001TP": 62, "0016E5": 305}
    assert {s: len(i) for s, i in group_by_sequence(held).items()} == {"0006R0": 101}
    _, release, _ = recipe("camvid_release")
    assert len(build_dataset(release.dataset, camvid_root, release.train_split)) == 468


def test_release_script_starts_a_fresh_run_and_resumes_an_interrupted_one(tmp_path, monkeypatch):
    """scripts/release_camvid.py --train must pass ``--resume auto``: a bare ``--resume`` refuses a fresh folder."""
    import subprocess

    script = load_script("scripts/release_camvid.py")
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda command, check: calls.append(command))
    script.train_run(CONFIGS / "camvid_release.yaml", tmp_path / "fresh", "DATA")
    (command,) = calls
    assert command[command.index("--resume") + 1] == "auto"
    assert command[command.index("--out-dir") + 1] == str(tmp_path / "fresh")


@pytest.mark.parametrize("xseq_name, release_name, base", [
    ("camvid_xseq_finetune", "camvid_release_finetune", "camvid_lite0_xseq"),
    ("camvid_lite1_xseq_finetune", "camvid_lite1_release_finetune", "camvid_lite1_xseq"),
    ("camvid_xseq_polish", "camvid_release_polish", "camvid_xseq_finetune"),
    ("camvid_xseq_distill_polish", "camvid_release_distill_polish", "camvid_xseq_distill"),
])
def test_finetune_stage_is_the_same_on_the_held_out_split_and_for_the_release(xseq_name, release_name, base):
    """The stage measured with 0006R0 held out is exactly the stage that makes the release."""
    xseq, xseq_cfg, xseq_augment = recipe(xseq_name)
    release, cfg, augment = recipe(release_name)
    assert xseq_cfg.val_split == "holdout" and xseq_cfg.dataset_options["holdout_sequences"] == ["0006R0"]
    # it starts from the end of the held-out recipe's run: a model that never saw 0006R0
    assert xseq_cfg.init_weights == f"{recipe(base)[1].out_dir}/last.safetensors"
    assert cfg.train_split == "train+val" and cfg.val_split is None and augment == xseq_augment
    assert not (augment.gamma or augment.noise or augment.jitter("brightness"))  # geometric jitter only
    differ = {k for k in xseq.keys() | release.keys() if xseq.get(k) != release.get(k)}
    assert differ == {"val_split", "dataset_options", "init_weights", "out_dir", "eval_every"}


def test_lite1_pair_differs_only_in_what_is_held_out():
    """The wider backbone is scored on 0006R0 with exactly the schedule its train+val twin runs."""
    xseq, xseq_cfg, xseq_augment = recipe("camvid_lite1_xseq")
    release, cfg, augment = recipe("camvid_lite1_release")
    assert xseq_cfg.model == cfg.model == "pspnet_tf_efficientnet_lite1" and cfg.pretrained_backbone is True
    assert xseq_cfg.val_split == "holdout" and xseq_cfg.dataset_options["holdout_sequences"] == ["0006R0"]
    assert cfg.train_split == "train+val" and cfg.val_split is None and augment == xseq_augment
    assert not (augment.gamma or augment.noise or augment.jitter("brightness"))  # geometric jitter only
    differ = {k for k in xseq.keys() | release.keys() if xseq.get(k) != release.get(k)}
    assert differ == {"val_split", "dataset_options", "out_dir", "eval_every"}


def test_distillation_pair_is_the_finetune_stage_with_teachers_of_its_own_split():
    """The distilled stage adds only teachers to the fine-tuning stage, and the cross-sequence run's teachers
    never saw 0006R0 while the release run's are their train+val twins."""
    for name, plain_name in (("camvid_xseq_distill", "camvid_xseq_finetune"),
                             ("camvid_release_distill", "camvid_release_finetune")):
        raw, _cfg, _ = recipe(name)
        plain = recipe(plain_name)[0]
        differ = {k for k in raw.keys() | plain.keys() if raw.get(k) != plain.get(k)}
        assert differ == {"teachers", "distill_weight", "distill_temperature", "out_dir"}
    # the release twin repeats the setting measured held out (docs/sequences-and-augmentation.md: 46.86%)
    settings = {(c.distill_weight, c.distill_temperature)
                for c in (recipe(n)[1] for n in ("camvid_xseq_distill", "camvid_release_distill"))}
    assert settings == {(3.0, 2.0)}
    xseq_teachers = recipe("camvid_xseq_distill")[1].teachers
    release_teachers = recipe("camvid_release_distill")[1].teachers
    never_saw = {recipe(n)[1].out_dir for n in ("camvid_xseq_finetune", "camvid_lite1_xseq")}
    assert {str(Path(t).parent) for t in xseq_teachers} == never_saw
    assert all(recipe(n)[1].dataset_options["holdout_sequences"] == ["0006R0"]
               for n in ("camvid_xseq_finetune", "camvid_lite1_xseq"))
    twins = {recipe(n)[1].out_dir for n in ("camvid_release_finetune", "camvid_lite1_release")}
    assert {str(Path(t).parent) for t in release_teachers} == twins


def test_short_stage_release_twin_starts_from_the_twin_of_its_held_out_start():
    """Each short stage's release twin starts from the release twin of the run its held-out twin starts from."""
    previous = recipe("camvid_release_finetune")[1].out_dir
    assert recipe("camvid_release_polish")[1].init_weights == f"{previous}/last.safetensors"
    distilled = recipe("camvid_release_distill")[1].out_dir
    assert recipe("camvid_release_distill_polish")[1].init_weights == f"{distilled}/last.safetensors"


def test_self_distillation_pair_is_taught_by_its_own_start_reading_enlarged_crops():
    """Each twin starts from and is taught by the end of its own chain (the held-out one never saw 0006R0); the
    teacher sees crops enlarged 1.5x, the crops are scaled around the size the model runs at."""
    xseq, xseq_cfg, xseq_augment = recipe("camvid_xseq_selfdistill")
    release, cfg, augment = recipe("camvid_release_selfdistill")
    for config, start in ((xseq_cfg, "camvid_xseq_distill_polish"), (cfg, "camvid_release_distill_polish")):
        assert config.teachers == [config.init_weights] == [f"{recipe(start)[1].out_dir}/last.safetensors"]
        assert config.distill_scales == [1.5] and tuple(config.scale) == (0.5, 1.5)
    assert xseq_cfg.val_split == "holdout" and xseq_cfg.dataset_options["holdout_sequences"] == ["0006R0"]
    assert cfg.train_split == "train+val" and cfg.val_split is None and augment == xseq_augment
    differ = {k for k in xseq.keys() | release.keys() if xseq.get(k) != release.get(k)}
    assert differ == {"val_split", "dataset_options", "init_weights", "teachers", "out_dir", "eval_every"}


def test_tail_split_benchmark_reruns_the_xseq_chain_with_0001tps_later_frames_held_out(camvid_root):
    """benchmarks/camvid_tail_split.py: every stage is a shipped cross-sequence recipe with only the split, its
    run folder and its inputs swapped, and the split holds out 0006R0 plus 0001TP after frame 007920."""
    bench = load_script("benchmarks/camvid_tail_split.py")
    runs = Path("R")
    for name, recipe_name, start, teachers in bench.STAGES:
        command = bench.stage_command(runs, "DATA", name, recipe_name, start, teachers)
        raw, cfg, _ = recipe(recipe_name)
        assert cfg.val_split == "holdout" and raw["dataset_options"]["holdout_sequences"] == ["0006R0"]
        options = yaml.safe_load(command[command.index("--set") + 1].split("=", 1)[1])
        assert options == {**raw["dataset_options"], "holdout_tails": {"0001TP": 0.33}}
        assert command[command.index("--resume") + 1] == "auto"
        assert (f"init_weights=R/{start}/last.safetensors" in command) == bool(start) == bool(cfg.init_weights)
        assert bool(teachers) == bool(cfg.teachers)
    train = build_dataset("camvid", camvid_root, "train+val", **bench.SPLIT)
    held = build_dataset("camvid", camvid_root, "holdout", **bench.SPLIT)
    assert {s: len(i) for s, i in group_by_sequence(train).items()} == {"0001TP": 42, "0016E5": 305}
    assert {s: len(i) for s, i in group_by_sequence(held).items()} == {"0001TP": 20, "0006R0": 101}
    assert max(p.stem for p, _ in train.pairs if p.stem.startswith("0001TP")) == "0001TP_007920"
    assert min(p.stem for p, _ in held.pairs) == "0001TP_007950"


def test_tail_split_benchmark_checks_imagenet_weights_before_the_chain(tmp_path, monkeypatch):
    """A stage that needs ImageNet weights it cannot get stops the chain at once, naming the stage."""
    bench = load_script("benchmarks/camvid_tail_split.py")

    def no_lite1(name, **kwargs):
        if name.endswith("lite1") and kwargs.get("pretrained_backbone"):
            raise PSPNetError("could not fetch ImageNet weights for 'tf_efficientnet_lite1'")

    monkeypatch.setattr(bench, "create_model", no_lite1)
    with pytest.raises(SystemExit, match="stage lite1 .*camvid_lite1_xseq.yaml.*tf_efficientnet_lite1"):
        bench.check_backbones(tmp_path)
    (tmp_path / "lite1").mkdir()
    (tmp_path / "lite1" / "last.pt").write_bytes(b"")  # a stage begun resumes from its own weights
    bench.check_backbones(tmp_path)


def test_fullframe_pair_is_one_stage_on_the_tail_split_twin_and_on_the_bundled_weights():
    """The whole-frame stage is measured on the tail split, from that split's twin of the bundled weights, and the
    release twin is the same stage from the bundled weights; the bundled file has no aux head, so neither trains one."""
    xseq, xseq_cfg, xseq_augment = recipe("camvid_xseq_fullframe")
    release, cfg, augment = recipe("camvid_release_fullframe")
    bench = load_script("benchmarks/camvid_tail_split.py")
    assert xseq_cfg.val_split == "holdout" and xseq_cfg.dataset_options == bench.SPLIT
    assert xseq_cfg.init_weights == bench.weights(Path("runs/xtail"), "distill_short")
    assert bench.STAGES[[s[0] for s in bench.STAGES].index("distill_short")][1] == "camvid_xseq_polish"
    assert cfg.init_weights == f"{recipe('camvid_release_distill_polish')[1].out_dir}/last.safetensors"
    assert xseq_cfg.aux_weight == cfg.aux_weight == 0
    assert xseq_cfg.model_kwargs["eval_scale"] == cfg.model_kwargs["eval_scale"] == 1.5
    assert tuple(cfg.crop_size) == (360, 480) and tuple(cfg.scale) == (1.0, 2.0)
    assert cfg.train_split == "train+val" and cfg.val_split is None and augment == xseq_augment
    differ = {k for k in xseq.keys() | release.keys() if xseq.get(k) != release.get(k)}
    assert differ == {"val_split", "dataset_options", "init_weights", "out_dir", "eval_every"}


def test_release_script_names_and_keeps_out_the_held_out_frames(camvid_root):
    """The card says what a tail split holds out, and a twin's int8 head is calibrated only on frames it trained on."""
    script = load_script("scripts/release_camvid.py")
    raw, cfg, _ = recipe("camvid_xseq_fullframe")
    assert script.held_out_frames(raw["dataset_options"]) == "drive 0006R0 and the later 33% of drive 0001TP's frames"
    assert script.held_out_frames({"holdout_sequences": ["0006R0"]}) == "drive 0006R0"
    assert [script.sequence_label(s, raw["dataset_options"]) for s in ("0001TP", "0006R0")] == ["0001TP (later 33%)", "0006R0"]
    frames = script.calibration_frames(build_dataset(cfg.dataset, camvid_root, cfg.train_split, **cfg.dataset_options))
    held = build_dataset(cfg.dataset, camvid_root, "holdout", **cfg.dataset_options)
    assert len(set(frames)) == 32 and not set(frames) & {Path(p) for p, _ in held.pairs}
    assert {f.name.split("_")[0] for f in frames} == {"0001TP", "0016E5"}


@pytest.mark.slow
def test_release_script_publishes_a_tail_split_stage_end_to_end(tmp_path, monkeypatch):
    """scripts/release_camvid.py on two tiny runs of the whole-frame pair (a tail split and its release twin, both a
    further stage on earlier weights): it writes weights that read at the given scale with int8 ranges, a card
    that names the held-out frames and the default path's scores, the pictures and summary.json."""
    import json
    import sys

    import numpy as np
    from PIL import Image

    from pspnet.engine.train import train
    from pspnet.model import create_model
    from pspnet.model.pspnet import PSPNet
    from pspnet.model.serialization import save_safetensors

    data = tmp_path / "camvid"
    rng = np.random.default_rng(0)
    for split, frames in (("train", {"0001TP": 3, "0006R0": 2, "0016E5": 2}), ("val", {"0016E5": 2})):
        for seq, n in frames.items():
            for k in range(n):
                for folder, arr in ((split, rng.integers(0, 256, (32, 48, 3))), (f"{split}annot", rng.integers(0, 12, (32, 48)))):
                    (data / folder).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(arr.astype(np.uint8)).save(data / folder / f"{seq}_{split}{k:05d}.png")
    start = tmp_path / "start.safetensors"
    save_safetensors(create_model("pspnet_tf_efficientnet_lite0", num_classes=11, output_stride=16,
                                  decoder_channels=128), start)
    runs = {}
    for name in ("xseq", "release"):
        raw = yaml.safe_load((CONFIGS / f"camvid_{name}_fullframe.yaml").read_text())
        raw.update(data_root=str(data), init_weights=str(start), out_dir=str(tmp_path / name), crop_size=[32, 48],
                   batch_size=2, iterations=2, warmup_iters=0, eval_every=2, checkpoint_every=2, log_every=1)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(raw))
        train(TrainConfig.from_dict(raw), progress=False)
        runs[name] = tmp_path / name
    weights, docs = tmp_path / "weights", tmp_path / "docs"
    monkeypatch.setattr(sys, "argv", ["release_camvid.py", str(runs["xseq"]), str(runs["release"]),
                                      "--xseq-config", str(tmp_path / "xseq.yaml"),
                                      "--release-config", str(tmp_path / "release.yaml"), "--data-root", str(data),
                                      "--weights-dir", str(weights), "--docs-dir", str(docs), "--eval-scale", "1.5",
                                      "--fallback-eval-scale", "1"])
    load_script("scripts/release_camvid.py").main()

    model = PSPNet.from_pretrained(weights / "camvid.safetensors")
    assert model.eval_scale == 1.5 and set(model.config["int8_ranges"]["ranges"]) == {"cls.0", "decoder.fuse.0"}
    assert model.config["fallback_eval_scale"] == 1.0
    card = (weights / "camvid.md").read_text()
    assert "sees drive 0006R0 and the later 33% of drive 0001TP's frames (6 training frames)" in card
    summary = json.loads((docs / "summary.json").read_text())
    assert 0 <= summary["cross_sequence_miou_default_path"] <= 1 and summary["eval_scale"] == 1.5
    assert f"**{100 * summary['cross_sequence_miou_default_path']:.2f}%** on\nthe default path (`" in card
    assert f"`{summary['segmenter_path']}`" in card and f"from `{start}`" in card
    assert "its int8 head calibrated on 6 frames the run trained on" in card
    assert "precision `auto` reads at 1x (`fallback_eval_scale`)" in card
    assert "release.yaml --eval-scale 1.5 --fallback-eval-scale 1`." in card  # the reproduce line reads as released
    assert "| held out 0001TP (later 33%) |" in card and "| held out 0006R0 |" in card
    assert {p.name for p in docs.iterdir()} >= {"per_sequence_iou.png", "per_class_iou.png", "confusion_matrix.png",
                                                 "training_curve.png", "sample_overlay.png", "per_sequence.json"}


def test_lite2_teacher_pair_and_its_stage_on_the_tail_split_twin():
    """The Lite2 teacher is trained on the tail split and, with the same schedule, on train+val; the stage it
    teaches starts from the split's twin of the bundled weights and learns from nothing that saw the held-out frames."""
    xseq, xseq_cfg, xseq_augment = recipe("camvid_lite2_xseq")
    release, cfg, augment = recipe("camvid_lite2_release")
    bench = load_script("benchmarks/camvid_tail_split.py")
    assert xseq_cfg.model == cfg.model == "pspnet_tf_efficientnet_lite2" and cfg.pretrained_backbone is True
    assert xseq_cfg.val_split == "holdout" and xseq_cfg.dataset_options == bench.SPLIT
    assert cfg.train_split == "train+val" and cfg.val_split is None and augment == xseq_augment
    differ = {k for k in xseq.keys() | release.keys() if xseq.get(k) != release.get(k)}
    assert differ == {"val_split", "dataset_options", "out_dir", "eval_every"}

    _, stage, _ = recipe("camvid_xseq_lite2_distill")
    twin = bench.weights(Path("runs/xtail"), "distill_short")
    assert stage.dataset_options == bench.SPLIT and stage.init_weights == twin
    assert stage.teachers == [f"{xseq_cfg.out_dir}/last.safetensors", twin]
    assert stage.model == "pspnet_tf_efficientnet_lite0" and stage.distill_weight > 0


def test_lite2_taught_chain_is_the_bundled_chain_with_lite2_in_place_of_lite1():
    """Only the teacher differs from the chain the bundled weights came from, on the tail split and for the
    release; each short stage starts where its own split's distilled stage ended."""
    bench = load_script("benchmarks/camvid_tail_split.py")
    for old, new in (("camvid_xseq_distill", "camvid_xseq_distill_lite2"),
                     ("camvid_release_distill", "camvid_release_distill_lite2")):
        (old_raw, old_cfg, _), (new_raw, new_cfg, _) = recipe(old), recipe(new)
        assert len(new_cfg.teachers) == len(old_cfg.teachers) == 2 and "lite2" in new_cfg.teachers[1]
        same = {k for k in old_raw.keys() | new_raw.keys() if old_raw.get(k) == new_raw.get(k)}
        assert {"lr", "iterations", "seed", "distill_weight", "distill_temperature", "augment", "scale"} <= same
    _, xseq, _ = recipe("camvid_xseq_distill_lite2")
    _, release, _ = recipe("camvid_release_distill_lite2")
    assert xseq.dataset_options == bench.SPLIT and release.val_split is None
    assert xseq.teachers[1] == f"{recipe('camvid_lite2_xseq')[1].out_dir}/last.safetensors"
    assert release.teachers == [t.replace("lite1", "lite2") for t in recipe("camvid_release_distill")[1].teachers]
    assert release.teachers[1] == f"{recipe('camvid_lite2_release')[1].out_dir}/last.safetensors"
    assert release.init_weights == recipe("camvid_release_distill")[1].init_weights
    xs_raw, xs, _ = recipe("camvid_xseq_distill_lite2_polish")
    rs_raw, rs, _ = recipe("camvid_release_distill_lite2_polish")
    assert xs.init_weights == f"{xseq.out_dir}/last.safetensors" and rs.init_weights == f"{release.out_dir}/last.safetensors"
    assert xs.dataset_options == bench.SPLIT and rs.val_split is None
    differ = {k for k in xs_raw.keys() | rs_raw.keys() if xs_raw.get(k) != rs_raw.get(k)}
    assert differ == {"val_split", "dataset_options", "init_weights", "out_dir", "eval_every"}
    script = load_script("scripts/release_camvid.py")  # the card says what each short stage started from
    assert "a Lite2 model (configs/camvid_lite2_release.yaml)" in script.start_of(rs_raw)
    assert "taught by that split's Lite2 model" in script.start_of(xs_raw)


def test_gpu_taught_stage_is_one_schedule_on_both_splits():
    """The released stage and its tail-split twin differ only in the frames, their starts and their teachers, and
    each split is taught by its own GPU student and its own start: no teacher saw the twin's held-out frames."""
    bench = load_script("benchmarks/camvid_tail_split.py")
    xs_raw, xs, _ = recipe("camvid_xseq_gpu_distill")
    rs_raw, rs, _ = recipe("camvid_release_gpu_distill")
    differ = {k for k in xs_raw.keys() | rs_raw.keys() if xs_raw.get(k) != rs_raw.get(k)}
    assert differ == {"val_split", "dataset_options", "init_weights", "teachers", "out_dir", "eval_every"}
    assert xs.dataset_options == bench.SPLIT and rs.val_split is None and xs.device_augment and rs.device_augment
    assert xs.teachers == [f"{recipe('camvid_gpu_distill_xseq')[1].out_dir}/last.safetensors", xs.init_weights]
    assert rs.teachers == [f"{recipe('camvid_gpu_distill_release')[1].out_dir}/last.safetensors", rs.init_weights]
    assert xs.init_weights == f"{recipe('camvid_xseq_distill_lite2_polish')[1].out_dir}/last.safetensors"
    assert rs.init_weights == f"{recipe('camvid_release_distill_lite2_polish')[1].out_dir}/last.safetensors"
    gpu_xseq = recipe("camvid_gpu_distill_xseq")[1]
    assert gpu_xseq.dataset_options == bench.SPLIT
    assert gpu_xseq.teachers == [f"{recipe('camvid_gpu_lite2_xseq')[1].out_dir}/last.safetensors"]
    assert recipe("camvid_gpu_lite2_xseq")[1].dataset_options == bench.SPLIT


def test_three_teacher_stages_learn_only_from_models_that_never_saw_the_held_out_frames():
    """The three-teacher stages start from the GPU-taught twin and are taught by it, the split's GPU student and the
    split's Lite2, all trained with 0006R0 and 0001TP's later third held out; the short one halves the long one's
    schedule with its seed, so its crops are the long run's first half; the photometric and class-mix stages are the
    short one with one augmentation more."""
    split = recipe("camvid_xseq_gpu_distill")[1].dataset_options
    twin, student, lite2 = (f"{recipe(name)[1].out_dir}/last.safetensors"
                            for name in ("camvid_xseq_gpu_distill", "camvid_gpu_distill_xseq", "camvid_lite2_xseq"))
    for name in ("camvid_gpu_distill_xseq", "camvid_lite2_xseq"):
        assert recipe(name)[1].dataset_options == split
    long_raw, long, _ = recipe("camvid_xseq_distill_ensemble")
    short_raw, short, _ = recipe("camvid_xseq_distill_ensemble_short")
    jitter_raw, jitter, jitter_augment = recipe("camvid_xseq_distill_ensemble_photometric")
    mix_raw, mix, _ = recipe("camvid_xseq_classmix_short")
    for stage in (long, short, jitter, mix):
        assert stage.dataset_options == split and stage.init_weights == twin
        assert stage.teachers == [twin, student, lite2]
    assert {k for k in long_raw.keys() | short_raw.keys() if long_raw.get(k) != short_raw.get(k)} == {
        "iterations", "out_dir", "eval_every"}
    assert (long.iterations, short.iterations) == (600, 300)
    # the photometric one is the short one with colour jitter, cut in the loader (device_augment has no colour steps)
    assert {k for k in short_raw.keys() | jitter_raw.keys() if short_raw.get(k) != jitter_raw.get(k)} == {
        "augment", "device_augment", "out_dir", "workers"}
    assert jitter_augment.color_jitter > 0 and not jitter.device_augment
    # the class-mix one is the short one with the thin classes pasted between crops
    assert {k for k in short_raw.keys() | mix_raw.keys() if short_raw.get(k) != mix_raw.get(k)} == {
        "class_mix", "class_mix_p", "out_dir"}
    assert mix.class_mix == [2, 6, 7, 9, 10]


def test_class_mix_stage_is_one_schedule_on_both_splits():
    """The class-mix stage and its release twin differ only in the frames, their starts and their teachers: the twin
    starts from and is taught by the tail split's models, the release by the release side's three. Its unreleased
    siblings change one thing each: the share, the start (its own result), the teachers (none)."""
    xs_raw, xs, _ = recipe("camvid_xseq_classmix_short")
    rs_raw, rs, _ = recipe("camvid_release_classmix_short")
    differ = {k for k in xs_raw.keys() | rs_raw.keys() if xs_raw.get(k) != rs_raw.get(k)}
    assert differ == {"val_split", "dataset_options", "init_weights", "teachers", "out_dir", "eval_every"}
    assert rs.val_split is None and rs.class_mix == xs.class_mix and rs.class_mix_p == xs.class_mix_p
    release_start = f"{recipe('camvid_release_gpu_distill')[1].out_dir}/last.safetensors"
    assert rs.init_weights == release_start
    assert rs.teachers == [release_start, f"{recipe('camvid_gpu_distill_release')[1].out_dir}/last.safetensors",
                           f"{recipe('camvid_lite2_release')[1].out_dir}/last.safetensors"]
    for share in ("p1", "p025"):  # the same stage pasting onto every crop, onto a quarter of them
        share_raw = recipe(f"camvid_xseq_classmix_{share}")[0]
        assert {k for k in xs_raw.keys() | share_raw.keys() if xs_raw.get(k) != share_raw.get(k)} == {
            "class_mix_p", "out_dir"}
    again = recipe("camvid_xseq_classmix_stage2")[1]  # the stage again on its own result, new crops
    assert again.init_weights == again.teachers[0] == f"{xs.out_dir}/last.safetensors"
    assert again.teachers[1:] == xs.teachers[1:] and again.seed != xs.seed and again.class_mix == xs.class_mix
    labels_raw, labels, _ = recipe("camvid_xseq_classmix_labels")  # the paste without the teachers
    assert {k for k in xs_raw.keys() | labels_raw.keys() if xs_raw.get(k) != labels_raw.get(k)} == {
        "teachers", "distill_weight", "distill_temperature", "out_dir"} and not labels.teachers


def test_class_mix_from_imagenet_pair_differs_only_in_the_paste():
    """The paste for a whole training from the ImageNet backbone, against a control that is the same run without it:
    the tail split, the GPU chain's augmentation (so crops can be cut on the training device), the same seed."""
    control_raw, control, augment = recipe("camvid_xseq_lite0_short")
    mix_raw, mix, _ = recipe("camvid_xseq_lite0_classmix_short")
    assert {k for k in control_raw.keys() | mix_raw.keys() if control_raw.get(k) != mix_raw.get(k)} == {
        "class_mix", "class_mix_p", "out_dir"}
    assert mix.class_mix == recipe("camvid_xseq_classmix_short")[1].class_mix and not control.class_mix
    assert control.dataset_options == recipe("camvid_xseq_gpu_distill")[1].dataset_options
    assert control.pretrained_backbone and not control.init_weights and not control.teachers
    assert augment == Augment.from_dict(recipe("camvid_gpu_distill_xseq")[0]["augment"]) and control.device_augment


def test_classmix_own_rule_differs_from_the_thin_paste_only_in_what_is_pasted():
    """ClassMix's rule (half the source crop's classes, any class) against the thin-class paste and its control: the
    same seed and pasted-onto share, so the three runs share their crops and which crops are pasted onto."""
    thin_raw, thin, _ = recipe("camvid_xseq_lite0_classmix_short")
    half_raw, half, _ = recipe("camvid_xseq_lite0_classmix_half_short")
    assert {k for k in thin_raw.keys() | half_raw.keys() if thin_raw.get(k) != half_raw.get(k)} == {
        "class_mix", "class_mix_share", "out_dir"}
    assert half.class_mix == list(range(11)) and half.class_mix_share == 0.5 and thin.class_mix_share == 1.0


def test_mix_style_recipe_is_the_control_with_feature_styles_mixed():
    """MixStyle against the control of the ImageNet-start runs: the same seed and crops, training-only mixing."""
    control_raw, control, _ = recipe("camvid_xseq_lite0_short")
    mixed_raw, mixed, _ = recipe("camvid_xseq_lite0_mixstyle_short")
    assert {k for k in control_raw.keys() | mixed_raw.keys() if control_raw.get(k) != mixed_raw.get(k)} == {
        "mix_style", "out_dir"}
    assert mixed.mix_style == 0.5 and control.mix_style == 0
