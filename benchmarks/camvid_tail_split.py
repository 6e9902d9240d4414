"""Issue 13: what do distillation and the short stage do to the later frames of a drive the model trained on?

    python benchmarks/camvid_tail_split.py [--runs runs/xtail] [--data-root ../shared/datasets/camvid]

The CamVid test split is 171 frames of a drive no split here has (Seq05VD) and 62 frames that continue drive
0001TP after the 62 in train. The cross-sequence recipes hold out drive 0006R0, which stands in for the first;
the releases stand in for the second with a rule (at most 1 point lost on 0001TP's training frames). This
script measures the second instead: it reruns the cross-sequence chain (the Lite0 stage, the fine-tuning stage,
the Lite1 teacher, the distilled stage, the short stage after each, then the self-distillation stage whose
teacher reads crops enlarged 1.5x; then the Lite2 teacher, the distilled stage with it in place of Lite1 and its
short stage, and a stage the Lite2 teacher adds to the bundled model's twin) on a split that also holds out
0001TP's later third (frames 007950-008520, ``holdout_tails``), then prints every end model's fp32 mIoU on 0006R0
and on those frames, at the frame's size and enlarged 1.33x (the bundled model's reading). Each stage is
``pspnet train --resume auto`` on the shipped recipe with the split swapped in, so an interrupted chain carries on
where it stopped (and a finished one only prints); about 7 hours on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

from pspnet.data import build_dataset
from pspnet.data.transforms import eval_transforms
from pspnet.engine.evaluate import evaluate_by_sequence
from pspnet.errors import PSPNetError
from pspnet.model import create_model
from pspnet.model.pspnet import PSPNet

ROOT = Path(__file__).resolve().parents[1]
SPLIT = {"holdout_sequences": ["0006R0"], "holdout_tails": {"0001TP": 0.33}, "holdout_from": "train+val"}
# (run name, shipped recipe, weights to start from, teachers): the cross-sequence chain, in order
STAGES = (
    ("lite0", "camvid_lite0_xseq", None, ()),
    ("finetune", "camvid_xseq_finetune", "lite0", ()),
    ("lite1", "camvid_lite1_xseq", None, ()),
    ("distill", "camvid_xseq_distill", "lite0", ("finetune", "lite1")),
    ("finetune_short", "camvid_xseq_polish", "finetune", ()),
    ("distill_short", "camvid_xseq_polish", "distill", ()),
    ("selfdistill", "camvid_xseq_selfdistill", "distill_short", ("distill_short",)),
    ("lite2", "camvid_lite2_xseq", None, ()),
    ("distill_lite2", "camvid_xseq_distill_lite2", "lite0", ("finetune", "lite2")),
    ("distill_lite2_short", "camvid_xseq_distill_lite2_polish", "distill_lite2", ()),
    ("lite2_distill", "camvid_xseq_lite2_distill", "distill_short", ("lite2", "distill_short")),
)
RESULTS = ("finetune", "distill", "finetune_short", "distill_short", "selfdistill", "distill_lite2_short",
           "lite2_distill")


def weights(runs: Path, name: str) -> str:
    return str(runs / name / "last.safetensors")


def stage_command(runs: Path, data_root: str, name: str, recipe: str, start: str | None,
                  teachers: tuple[str, ...]) -> list[str]:
    """``pspnet train`` for one stage: the shipped recipe with this split, its run folder and its inputs."""
    command = [sys.executable, "-m", "pspnet", "train", "--config", str(ROOT / "configs" / f"{recipe}.yaml"),
               "--out-dir", str(runs / name), "--data-root", data_root, "--resume", "auto",
               "--set", f"dataset_options={yaml.safe_dump(SPLIT, default_flow_style=True).strip()}"]
    if start:
        command += ["--set", f"init_weights={weights(runs, start)}"]
    if teachers:
        command += ["--teachers", *(weights(runs, t) for t in teachers)]
    return command


def check_backbones(runs: Path) -> None:
    """Fail in seconds, not hours into the chain: each stage still to start from ImageNet weights can load them
    (the Lite1 teacher needs the `lite` extra offline, or the Hub)."""
    for name, recipe, _, _ in STAGES:
        cfg = yaml.safe_load((ROOT / "configs" / f"{recipe}.yaml").read_text())
        if cfg.get("pretrained_backbone") is True and not (runs / name / "last.pt").exists():
            try:
                create_model(cfg["model"], num_classes=11, pretrained_backbone=True, **cfg.get("model_kwargs", {}))
            except PSPNetError as err:
                raise SystemExit(f"stage {name} ({recipe}.yaml) cannot start: {err}") from err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/xtail"), help="where the stages' run folders go")
    parser.add_argument("--data-root", default="../shared/datasets/camvid")
    args = parser.parse_args()
    check_backbones(args.runs)
    for name, recipe, start, teachers in STAGES:
        command = stage_command(args.runs, args.data_root, name, recipe, start, teachers)
        print("+", " ".join(command), flush=True)
        subprocess.run(command, check=True)

    print("\nfp32 mIoU on the frames no stage trained on: 0006R0 (101) and 0001TP 007950-008520 (20), each model "
          "reading frames at their own size and enlarged 1.33x (eval_scale, as the bundled model does with its int8 head)")
    print(f"{'model':<16} {'scale':>5} {'0006R0':>7} {'0001TP':>7} {'all':>7}")
    held = None
    for name in RESULTS:
        for scale in (1.0, 1.33):
            model = PSPNet.from_pretrained(weights(args.runs, name), aux=False, eval_scale=scale).eval()
            if held is None:  # every result is the Lite0 student: one normalisation, one dataset
                held = build_dataset("camvid", args.data_root, "holdout",
                                     eval_transforms(model.config["mean"], model.config["std"]), **SPLIT)
            result = evaluate_by_sequence(model, held, model.num_classes, precision="fp32", progress=False,
                                          class_names=model.class_names)
            print(f"{name:<16} {scale:5.2f} {100 * result.sequences['0006R0'].miou:7.2f} "
                  f"{100 * result.sequences['0001TP'].miou:7.2f} {100 * result.overall.miou:7.2f}", flush=True)


if __name__ == "__main__":
    main()
