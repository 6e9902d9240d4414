"""Publish the bundled CamVid model by the issue-13 protocol: weights, model card, pictures.

    python scripts/release_camvid.py --train runs/camvid_lite0_xseq runs/camvid_release

or, for a further stage on earlier weights (a pair of recipes that differ only in what is held out and where
they start; the bundled weights are the last of these):

    python scripts/release_camvid.py --train runs/camvid_xseq_polish runs/camvid_release_polish \
        --xseq-config configs/camvid_xseq_polish.yaml --release-config configs/camvid_release_polish.yaml

1. The cross-sequence run (configs/camvid_lite0_xseq.yaml) trains with whole drives held out (and, with
   ``holdout_tails``, the later frames of others); its weights at the end of the schedule are evaluated per
   sequence on the held-out frames, in fp32 and on the default path: the honest number.
2. The release run (configs/camvid_release.yaml) repeats that schedule on train+val (468 frames) with nothing
   held out; its last weights are released, no checkpoint is picked by a held-out score.

``--train`` runs both trainings first (``pspnet train --resume auto``: an interrupted run carries on). The script
then measures latency on this machine and writes src/pspnet/weights/camvid.safetensors (without the
training-only aux head), src/pspnet/weights/camvid.md and the pictures under --docs-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from pspnet.benchmark.measure import timed
from pspnet.data import build_dataset
from pspnet.data.datasets import SegmentationDataset
from pspnet.data.io import list_images, spread_evenly
from pspnet.device import cpu_has_native_bf16
from pspnet.engine.checkpoint import load_checkpoint
from pspnet.engine.curves import plot_history
from pspnet.engine.evaluate import evaluate_model, write_report
from pspnet.engine.metrics import Metrics, SequenceMetrics
from pspnet.inference.int8 import calibrate_int8
from pspnet.inference.segmenter import Segmenter
from pspnet.meta import CALIBRATION_FRAMES
from pspnet.model.pspnet import PSPNet
from pspnet.model.serialization import save_safetensors

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "src" / "pspnet" / "weights"
DOCS = ROOT / "docs" / "camvid_release"
SAMPLE = ROOT / "src" / "pspnet" / "samples" / "camvid_0016E5_08059.jpg"
CONFIGS = {"xseq": ROOT / "configs" / "camvid_lite0_xseq.yaml", "release": ROOT / "configs" / "camvid_release.yaml"}


# what an init_weights file of the release run holds, when it is an earlier bundled fit (the chain of stages that
# made it, down to the three-stage recipe every bundled model since d0feabc grew from)
EARLIER_FITS = {
    "runs/camvid_lite0_decoder/best.safetensors": "the result of the three-stage recipe, bundled from commit d0feabc "
                                                  "until the first release by this protocol (37f5af6)",
    "runs/camvid_release_finetune/last.safetensors": "the weights bundled from commit 37f5af6: "
                                                     "configs/camvid_release_finetune.yaml, 1200 iterations on "
                                                     "train+val from the three-stage recipe's result",
    "runs/camvid_release_distill/last.safetensors": "configs/camvid_release_distill.yaml: 1200 iterations on "
                                                    "train+val from the three-stage recipe's result, distilled from "
                                                    "the weights bundled from 37f5af6 and a Lite1 model "
                                                    "(configs/camvid_lite1_release.yaml)",
    "runs/camvid_release_distill_polish/last.safetensors": "the weights bundled from commit de933b7: "
                                                           "configs/camvid_release_distill_polish.yaml, 300 "
                                                           "iterations at lr 0.001 on train+val after "
                                                           "configs/camvid_release_distill.yaml (1200 iterations "
                                                           "distilled from the weights bundled from 37f5af6 and a "
                                                           "Lite1 model)",
    "runs/camvid_release_distill_lite2/last.safetensors": "configs/camvid_release_distill_lite2.yaml: 1200 "
                                                          "iterations on train+val from the three-stage recipe's "
                                                          "result, distilled from the weights bundled from 37f5af6 "
                                                          "and a Lite2 model (configs/camvid_lite2_release.yaml)",
    "runs/camvid_release_distill_lite2_polish/last.safetensors": "the weights bundled from commit 15ee91c: "
                                                                 "configs/camvid_release_distill_lite2_polish.yaml,"
                                                                 " 300 iterations at lr 0.001 on train+val after "
                                                                 "configs/camvid_release_distill_lite2.yaml (1200 "
                                                                 "iterations distilled from the weights bundled "
                                                                 "from 37f5af6 and a Lite2 model)",
    "runs/camvid_release_gpu_distill/last.safetensors": "the weights bundled from commit a669a9d: "
                                                        "configs/camvid_release_gpu_distill.yaml, 600 iterations at lr "
                                                        "0.003 on train+val after "
                                                        "configs/camvid_release_distill_lite2_polish.yaml, distilled "
                                                        "from a GPU-trained student and the weights bundled from "
                                                        "15ee91c",
}
# the same for a cross-sequence run's start: a twin of a bundled fit that never saw the held-out frames
TWIN_FITS = {
    "runs/xtail/distill_short/last.safetensors": "the tail split's twin of the weights bundled from de933b7: "
                                                 "benchmarks/camvid_tail_split.py reruns their cross-sequence chain "
                                                 "from the ImageNet backbone with 0006R0 and 0001TP's later third "
                                                 "held out",
    "runs/xtail/distill_lite2/last.safetensors": "configs/camvid_xseq_distill_lite2.yaml: the tail split's chain "
                                                 "(benchmarks/camvid_tail_split.py, from the ImageNet backbone with "
                                                 "0006R0 and 0001TP's later third held out), its distilled stage "
                                                 "taught by that split's Lite2 model and fine-tuned Lite0",
    "runs/xtail/distill_lite2_short/last.safetensors": "the tail split's twin of the weights bundled from 15ee91c: "
                                                       "configs/camvid_xseq_distill_lite2_polish.yaml, 300 "
                                                       "iterations at lr 0.001 after "
                                                       "configs/camvid_xseq_distill_lite2.yaml",
    "runs/xtail/gpu_distill/last.safetensors": "the tail split's twin of the weights bundled from a669a9d: "
                                               "configs/camvid_xseq_gpu_distill.yaml, 600 iterations at lr 0.003 "
                                               "after configs/camvid_xseq_distill_lite2_polish.yaml, distilled from "
                                               "that split's GPU student and its start",
}
BACKBONE_NAMES = {f"tf_efficientnet_lite{i}": f"EfficientNet-Lite{i}" for i in range(5)}
THREE_STAGES = ("three stages on CamVid train only, 4500 iterations, stages and checkpoints chosen on val: "
                "configs/camvid_lite0.yaml, camvid_lite0_stage2.yaml, camvid_lite0_decoder.yaml")


def start_of(cfg: dict) -> str:
    """Where a run's weights started: earlier weights (a fine-tuning stage) or the ImageNet backbone."""
    init = cfg.get("init_weights")
    if not init:
        return "ImageNet backbone"
    if init in EARLIER_FITS:
        return f"from `{init}` ({EARLIER_FITS[init]}; {THREE_STAGES})"
    return f"from `{init}`" + (f" ({TWIN_FITS[init]})" if init in TWIN_FITS else "")


def latency_ms(call: Callable[[], object], runs: int = 20) -> tuple[float, float]:
    """Median and p90 latency of ``call`` after 3 warm-up calls."""
    times = [1000 * timed(call, torch.device("cpu")) for _ in range(runs + 3)][3:]
    times.sort()
    return statistics.median(times), times[int(0.9 * (len(times) - 1))]


def forward_ms(model: torch.nn.Module, precision: str) -> tuple[float, float]:
    """Latency of one plain 360x480 forward pass (batch 1) in ``precision``."""
    x = torch.randn(1, 3, 360, 480)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        return latency_ms(lambda: model(x))


def train_run(config: Path, run_dir: Path, data_root: str) -> None:
    """``pspnet train --config ... --resume auto``: starts fresh, or carries on from run_dir/last.pt."""
    command = [sys.executable, "-m", "pspnet", "train", "--config", str(config), "--out-dir", str(run_dir),
               "--data-root", data_root, "--resume", "auto"]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def scores(model: PSPNet, cfg: dict, data_root: str, split: str, precision: str = "fp32") -> Metrics:
    """Metrics, overall and per sequence, of ``model`` on ``split`` of the run's dataset (its sequence options
    included), on the path ``pspnet eval --precision`` runs (``"auto"``: the default path, whose int8 head runs
    where the model is calibrated)."""
    return evaluate_model(model, cfg["dataset"], data_root, split, precision=precision, progress=False,
                          by_sequence=True, **(cfg.get("dataset_options") or {}))


def per_sequence(model: PSPNet, cfg: dict, data_root: str, split: str) -> SequenceMetrics:
    """fp32 metrics of ``model`` on ``split``, one set per sequence beside the overall one."""
    return scores(model, cfg, data_root, split).per_sequence


def held_out_frames(options: dict) -> str:
    """What a run's sequence options hold out, in words: whole drives and the later part of others."""
    parts = [f"drive {s}" for s in options.get("holdout_sequences") or []]
    parts += [f"the later {round(100 * f)}% of drive {s}'s frames" for s, f in (options.get("holdout_tails") or {}).items()]
    return " and ".join(parts)


def calibration_frames(trained: SegmentationDataset) -> list[Path]:
    """The int8 calibration frames for a run: 32 spread over the frames it trained on (a cross-sequence twin never
    sees a held-out frame, not even unlabelled)."""
    return spread_evenly(sorted(Path(image) for image, _ in trained.pairs), CALIBRATION_FRAMES)


def sequence_label(sequence: str, options: dict) -> str:
    """A held-out sequence's name, with the part of it held out where a run keeps its earlier frames."""
    tail = (options.get("holdout_tails") or {}).get(sequence)
    return f"{sequence} (later {round(100 * tail)}%)" if tail else sequence


def sequence_rows(result: SequenceMetrics, label: str, options: dict | None = None) -> str:
    """Markdown rows: one per sequence and the overall, mIoU and every class's IoU."""
    fmt = lambda v: "absent" if v is None else f"{100 * v:.1f}"
    rows = [f"| {label} {sequence_label(s, options or {})} | {result.frames[s]} | {100 * m.miou:.2f} | "
            + " | ".join(fmt(v) for v in m.iou) + " |" for s, m in result.sequences.items()]
    if len(result.sequences) > 1:
        m = result.overall
        rows.append(f"| {label} all | {sum(result.frames.values())} | {100 * m.miou:.2f} | "
                    + " | ".join(fmt(v) for v in m.iou) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("xseq_run", type=Path, help="run folder of configs/camvid_lite0_xseq.yaml")
    parser.add_argument("release_run", type=Path, help="run folder of configs/camvid_release.yaml")
    parser.add_argument("--train", action="store_true", help="run (or resume) both trainings first")
    parser.add_argument("--xseq-config", type=Path, default=CONFIGS["xseq"], help="the cross-sequence run's recipe")
    parser.add_argument("--release-config", type=Path, default=CONFIGS["release"], help="the release run's recipe")
    parser.add_argument("--data-root", default="../shared/datasets/camvid")
    parser.add_argument("--weights-dir", type=Path, default=WEIGHTS, help="where camvid.safetensors/.md go")
    parser.add_argument("--docs-dir", type=Path, default=DOCS, help="where the pictures and summary.json go")
    parser.add_argument("--eval-scale", type=float, default=1.0,
                        help="the released model reads frames enlarged by this factor (PSPNet eval_scale); every "
                             "number here is measured at it")
    parser.add_argument("--fallback-eval-scale", type=float,
                        help="the reading of the default path where the head's int8 convs do not run (AMX, AVX2-only "
                             "CPUs, GPUs), so that it stays as fast as the release before it there (PSPNet "
                             "fallback_eval_scale; the bundled model: 1)")
    args = parser.parse_args()
    weights_dir, docs = args.weights_dir, args.docs_dir

    if args.train:
        train_run(args.xseq_config, args.xseq_run, args.data_root)
        train_run(args.release_config, args.release_run, args.data_root)
    xseq_ckpt = load_checkpoint(args.xseq_run / "last.pt")
    release_ckpt = load_checkpoint(args.release_run / "last.pt")
    xseq_cfg, cfg = xseq_ckpt["train_config"], release_ckpt["train_config"]
    for key in ("model", "model_kwargs", "iterations", "batch_size", "lr", "scale", "crop_size", "augment",
                "rare_class_sampling", "distill_weight", "distill_temperature", "distill_scales"):
        if xseq_cfg.get(key) != cfg.get(key):
            print(f"warning: the release run's {key} ({cfg.get(key)!r}) differs from the cross-sequence run's "
                  f"({xseq_cfg.get(key)!r}): its held-out number does not describe the released model", file=sys.stderr)
    for run, ckpt in ((args.xseq_run, xseq_ckpt), (args.release_run, release_ckpt)):
        if ckpt["iteration"] < ckpt["train_config"]["iterations"]:
            raise SystemExit(f"{run} stopped before the end of its schedule: finish it (--train resumes it)")

    # 1. the cross-sequence number: the xseq weights at the end of the schedule, on the drives it never saw
    scale = args.eval_scale
    xseq_model = PSPNet.from_pretrained(args.xseq_run / "last.safetensors", aux=False, eval_scale=scale).eval()
    held_out_scores = scores(xseq_model, xseq_cfg, args.data_root, "holdout")
    held_out = held_out_scores.per_sequence
    print("cross-sequence (held-out frames), fp32:\n" + held_out.table())
    # the same frames on the default path, the twin's int8 head calibrated on frames it trained on
    xseq_trained = build_dataset(xseq_cfg["dataset"], args.data_root, xseq_cfg["train_split"],
                                 **(xseq_cfg.get("dataset_options") or {}))
    twin_calibration = calibration_frames(xseq_trained)
    calibrate_int8(xseq_model, twin_calibration)
    held_out_default = scores(xseq_model, xseq_cfg, args.data_root, "holdout", "auto")
    print("cross-sequence (held-out frames), default path:\n" + held_out_default.table())
    own_size = None  # the same weights reading frames at their own size, for what eval_scale adds
    if scale != 1.0:
        own_size = per_sequence(PSPNet.from_pretrained(args.xseq_run / "last.safetensors", aux=False).eval(),
                                xseq_cfg, args.data_root, "holdout")
        print("cross-sequence, frames at their own size:\n" + own_size.table())
    before = None  # a further stage: the held-out score of the weights it started from, for the stage's effect
    if xseq_cfg.get("init_weights"):
        before = per_sequence(PSPNet.from_pretrained(xseq_cfg["init_weights"], aux=False, eval_scale=scale).eval(),
                              xseq_cfg, args.data_root, "holdout")
        print("before the stage:\n" + before.table())
    # 2. the released model; val and train are its own training frames, reported as such
    model = PSPNet.from_pretrained(args.release_run / "last.safetensors", aux=False, eval_scale=scale,
                                   fallback_eval_scale=args.fallback_eval_scale).eval()
    # int8 ranges for the head convs, taken as `pspnet calibrate --images <data-root>/train` takes them; stored in
    # the config, so the default path runs those convs in int8 on AVX512-VNNI CPUs
    calibrate_int8(model, spread_evenly(list_images(Path(args.data_root) / "train"), CALIBRATION_FRAMES))
    seen = {split: per_sequence(model, {"dataset": cfg["dataset"]}, args.data_root, split) for split in ("val", "train")}
    val_default = scores(model, {"dataset": cfg["dataset"]}, args.data_root, "val", "auto")
    for split, result in seen.items():
        print(f"release model on {split} (trained on):\n" + result.table())

    docs.mkdir(parents=True, exist_ok=True)
    weights_dir.mkdir(parents=True, exist_ok=True)
    write_report(held_out_scores, docs)  # per-sequence and per-class IoU, confusion matrix of the held-out frames
    (docs / "per_sequence.json").write_text(json.dumps(
        {"cross_sequence": held_out.to_dict(), **{f"release_on_{k}": v.to_dict() for k, v in seen.items()}}, indent=1))
    xseq_options = xseq_cfg.get("dataset_options") or {}
    held = held_out_frames(xseq_options)
    os_, backbone = model.config["output_stride"], model.config["backbone"]
    family = BACKBONE_NAMES.get(backbone, backbone)
    plot_history(xseq_ckpt["history"], docs / "training_curve.png",
                 f"PSPNet-{family} (OS{os_}) on CamVid\n"
                 + "\n".join(textwrap.wrap(f"{held} held out (val mIoU = held-out frames)", 64)))

    seg = Segmenter(model, precision="fp32")
    seg.overlay(SAMPLE).save(docs / "sample_overlay.png")

    torch.set_num_threads(2)
    fp32 = forward_ms(model, "fp32")
    bf16 = forward_ms(model, "bf16") if cpu_has_native_bf16() else None
    fast = Segmenter(model, precision="auto")  # what predict/serve run: BN folded, channels_last, native bf16
    frame = np.asarray(Image.open(SAMPLE).convert("RGB"))
    fast_ms = latency_ms(lambda: fast(frame))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 360, 480))
    gflop = counter.get_total_flops() / 1e9
    save_safetensors(model, weights_dir / "camvid.safetensors")
    size_mb = (weights_dir / "camvid.safetensors").stat().st_size / 1e6
    params = sum(p.numel() for p in model.parameters())
    train_seconds = sum(h["sec_per_iter"] * c["log_every"] for ck, c in ((xseq_ckpt, xseq_cfg), (release_ckpt, cfg))
                        for h in ck["history"] if "sec_per_iter" in h)

    names = model.class_names
    head = "| frames | n | mIoU | " + " | ".join(names) + " |\n|" + " --- |" * (len(names) + 3)
    aug = ", ".join(f"{k} {v}" for k, v in (cfg.get("augment") or {}).items())
    bf16_line = f"; bf16 (native AMX/AVX512-BF16) {bf16[0]:.0f} ms" if bf16 else ""
    dec = model.config["decoder_channels"]
    grid = 4 if dec else os_
    frames: dict[str, int] = {}
    for result in seen.values():  # one drive may be in both splits (CamVid 0016E5)
        for s, n in result.frames.items():
            frames[s] = frames.get(s, 0) + n
    trained = " + ".join(f"{s} {n}" for s, n in sorted(frames.items()))
    weak = ", ".join(f"{n} {100 * i:.1f}%" for n, i in zip(names, held_out.overall.iou) if i is not None and i < 0.4)
    xseq_recipe, release_recipe = (os.path.relpath(c.absolute(), ROOT) for c in (args.xseq_config, args.release_config))
    recipe_args = "".join(f" --{k}-config {r}" for k, r in (("xseq", xseq_recipe), ("release", release_recipe))
                          if (ROOT / r).resolve() != CONFIGS[k].resolve())
    recipe_args += f" --eval-scale {scale:g}" if scale != 1.0 else ""
    recipe_args += f" --fallback-eval-scale {args.fallback_eval_scale:g}" if args.fallback_eval_scale is not None else ""
    pictures, root_link = (os.path.relpath(p.absolute(), weights_dir.absolute()) for p in (docs, ROOT))
    crop_notes = "; crops cut in the training process (`device_augment`)" if cfg.get("device_augment") else ""
    if cfg.get("class_mix"):
        crop_notes += (f"; classes {cfg['class_mix']} pasted from the batch's previous crop onto a share "
                      f"{cfg['class_mix_p']:g} of the crops (`class_mix`)")
    teachers = ""
    if cfg.get("teachers") and cfg.get("distill_weight"):
        scales = cfg.get("distill_scales", [1.0])
        teachers = (f"\n- Knowledge distillation: the loss adds {cfg['distill_weight']:g} x KL from the averaged "
                    f"probabilities of frozen teachers (temperature {cfg['distill_temperature']:g}"
                    + (f", the teachers reading each crop scaled {', '.join(f'{x:g}x' for x in scales)}"
                       if scales != [1.0] else "")
                    + "): release run "
                    f"{', '.join(f'`{t}`' for t in cfg['teachers'])}; cross-sequence run "
                    f"{', '.join(f'`{t}`' for t in xseq_cfg.get('teachers') or [])} (trained without {held}). "
                    "The teachers only run in training; their own training time is not counted below.")
    starts = ""
    if before is not None:
        starts = (f"Both runs are a further stage on earlier weights: the cross-sequence run {start_of(xseq_cfg)} "
                  f"(which never saw {held}), the release run {start_of(cfg)}. The held-out number measures that "
                  f"stage added to a model that never saw those frames, which scored "
                  f"{100 * before.overall.miou:.2f}% on them before the stage.")
    read_at = ""
    if own_size is not None:
        read_at = (f"\n\nThe model reads each frame enlarged {scale:g}x (`eval_scale` in its config: in eval mode the "
                   "input is resized before the backbone and the labels come back at the frame's size). Trained on "
                   "scale-jittered crops, it sees objects larger in training than a frame shows them; the same "
                   f"cross-sequence weights score {100 * own_size.overall.miou:.2f}% on the held-out frames at the frame's "
                   "own size. The factor is the largest whose default path is no slower than the previous release's, "
                   "timed side by side (benchmarks/release_speed.py --against-checkout), checked on held-out frames "
                   "(docs/sequences-and-augmentation.md). `--eval-scale 1` (predict, eval, serve, export) or "
                   "`pspnet.load(\"camvid\", eval_scale=1.0)` reads frames at their own size.")
        if args.fallback_eval_scale is not None:
            read_at += (f" Where the head's int8 convs do not run, precision `auto` reads at "
                        f"{args.fallback_eval_scale:g}x (`fallback_eval_scale`); an explicit `--eval-scale` or "
                        "precision keeps its reading.")
    card = f"""# Model card: `camvid` (bundled)

PSPNet with an ImageNet-pretrained {family} backbone, output stride {os_}{", and a skip decoder at 1/4" if dec else ""}, trained on CamVid
(11 classes, 360x480) on a 2-core CPU. Load it with `pspnet.load("camvid")`, `pspnet.Segmenter("camvid")`
or `pspnet predict --model camvid`.

## Protocol

CamVid val (101 frames) is drive 0016E5, which also gives 204 of the 367 train frames, so val scores memory of
that street. The schedule and options were therefore chosen on a **cross-sequence split**: a run that never
sees {held} ({len(xseq_trained)} training frames), scored on those {sum(held_out.frames.values())} frames.
The released weights come from a second run of exactly that schedule on all {sum(frames.values())} labelled frames
(train + val: {trained}), taken at its last iteration: no checkpoint was chosen by any held-out score.
{starts}{read_at}

## Results (360x480{f", read at {scale:g}x" if scale != 1.0 else ""}, single scale, void ignored)

Cross-sequence (the run with {held} held out, at the end of its schedule; the release run repeats that schedule
with those frames added): **mIoU {100 * held_out.overall.miou:.2f}%** on {sum(held_out.frames.values())} frames never trained on (fp32;
{", ".join(f"{sequence_label(s, xseq_options)} {100 * m.miou:.2f}%" for s, m in held_out.sequences.items())}), **{100 * held_out_default.miou:.2f}%** on
the default path (`{held_out_default.path}`, its int8 head calibrated on {len(twin_calibration)} frames the run trained on).
The CamVid test drives (Seq05VD, and the 0001TP frames not in train) are not in the project; they are scored
outside it. The released model on its own training frames (val is trained on now; these numbers are not a test):
val {100 * seen['val'].overall.miou:.2f}%, train {100 * seen['train'].overall.miou:.2f}%.

{head}
{sequence_rows(held_out, "held out", xseq_options)}
{sequence_rows(seen['val'], "val (trained on)")}
{sequence_rows(seen['train'], "train (trained on)")}

![IoU per held-out sequence]({pictures}/per_sequence_iou.png)
![per-class IoU, held-out frames]({pictures}/per_class_iou.png)
![confusion matrix, held-out frames]({pictures}/confusion_matrix.png)
![training curve of the cross-sequence run]({pictures}/training_curve.png)

## Model

- Architecture: PSPNet, backbone timm `{backbone}` (features_only, output stride {os_}), pyramid
  pooling bins {tuple(model.config["bins"])} over {model.ppm.features[0][1].in_channels} channels, {model.config["head_channels"]}-channel classifier, Dropout2d {model.config["dropout"]}. Auxiliary head
  used in training (weight 0.4) and removed from the published file.{f" Skip decoder ({dec} channels) fusing the stride-4 features." if dec else ""}
- Parameters: {params:,}; {gflop:.1f} GFLOP at 360x480 (torch.utils.flop_counter); file size {size_mb:.1f} MB (safetensors, fp32, config in the metadata).
- Input: RGB scaled to 0..1, normalised with the backbone's mean/std{f"; resized {scale:g}x inside the model in eval mode (`eval_scale`)" if scale != 1.0 else ""}.
- Latency at 360x480, batch 1, 2 threads on {platform.processor() or platform.machine()}: fp32 {fp32[0]:.0f} ms
  median (p90 {fp32[1]:.0f} ms){bf16_line} for the plain model. `pspnet.Segmenter` / `pspnet predict`
  (`{val_default.path}`): {fast_ms[0]:.0f} ms per frame including pre- and post-processing ({1000 / fast_ms[0]:.1f} frames/s).
- int8: on CPUs with AVX512-VNNI and no AMX the default path runs the head's two big convs in int8, with input
  ranges calibrated on {CALIBRATION_FRAMES} CamVid train frames spread over the folder (`pspnet calibrate --images <camvid>/train`),
  stored in the config with a digest of the weights (`pspnet.inference.int8`). Val (trained on): default path
  {100 * val_default.miou:.2f}%, fp32 {100 * seen['val'].overall.miou:.2f}%.

## Training recipe

- [{xseq_recipe}]({root_link}/{xseq_recipe}), then [{release_recipe}]({root_link}/{release_recipe}):
  {start_of(cfg)}, SGD momentum {cfg['momentum']}, weight decay {cfg['weight_decay']}, lr {cfg['lr']} poly {cfg['power']},
  heads x{cfg['head_lr_mult']}, batch {cfg['batch_size']}, {cfg['iterations']} iterations,
  class weights {cfg.get('class_weights')}.{teachers}
- Augmentation: random scale {cfg['scale'][0]}-{cfg['scale'][1]}, rotation +-{cfg['rotate']} deg, crops
  {cfg['crop_size'][0]}x{cfg['crop_size'][1]}; {aug or "the official defaults"}{crop_notes}.
- Compute: {train_seconds / 3600:.1f} hours of training summed over both runs (wall time is less when they run side by side), 2 CPU cores.
- Reproduce: `python scripts/release_camvid.py --train {args.xseq_run} {args.release_run}{recipe_args}`.

## Limitations

Classes below 40% IoU on the held-out frames (fp32): {weak or "none"}. The classifier sees a
{-(-round(360 * scale) // grid)}x{-(-round(480 * scale) // grid)} grid for a 360x480 frame (stride {grid}{f" of the {scale:g}x frame" if scale != 1.0 else ""}), so a pole 2-5 pixels wide is one or two cells.
CamVid has four drives; {held} are a small sample of "unseen footage".

## License

The weights are derived from CamVid, distributed for research and personal use (CC BY-NC 4.0 as with the
SegNet tutorial): non-commercial use only. The bundled sample frame `0016E5_08059` is a CamVid val frame
(Brostow, Fauqueur, Cipolla, "Semantic object classes in video", PRL 2009), same license. Backbone
weights: EfficientNet-Lite (Apache-2.0).
"""
    (weights_dir / "camvid.md").write_text(card)
    summary = {"cross_sequence_miou": held_out.overall.miou, "eval_scale": scale,
               "cross_sequence_miou_at_own_size": own_size.overall.miou if own_size else None,
               "cross_sequence_miou_before_stage": before.overall.miou if before else None,
               "cross_sequence_per_sequence": {s: m.miou for s, m in held_out.sequences.items()},
               "cross_sequence_per_class_iou": dict(zip(names, held_out.overall.iou)),
               "release_val_miou_trained_on": seen["val"].overall.miou,
               "release_train_miou_trained_on": seen["train"].overall.miou,
               "latency_ms_fp32": fp32[0], "latency_ms_bf16": bf16[0] if bf16 else None,
               "segmenter_ms": fast_ms[0], "segmenter_path": val_default.path,
               "cross_sequence_miou_default_path": held_out_default.miou, "val_miou_default_path": val_default.miou,
               "size_mb": size_mb,
               "params": params, "gflop": gflop, "train_hours": train_seconds / 3600, "threads": torch.get_num_threads(),
               "cpu_count": os.cpu_count()}
    (docs / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
