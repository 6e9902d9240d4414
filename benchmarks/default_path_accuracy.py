"""What the default path costs in accuracy: the bundled model's labels per CamVid drive, by path, against fp32.

    python benchmarks/default_path_accuracy.py [--data-root ../shared/datasets/camvid] [--eval-scale S]

Runs ``pspnet.Segmenter("camvid")`` as ``pspnet predict`` does with precision fp32, bf16 and auto (on CPUs with
AVX512-VNNI and no AMX, auto also runs the head's calibrated convs in int8) over every labelled frame of CamVid val and
train, and prints per drive the mIoU of each path and its argmax agreement with the fp32 path (mean over frames
and the worst frame). The bundled model trains on all of these frames: the mIoU is a fit, and only the change
against fp32 is the point. Paths the CPU cannot run natively (bf16 without AVX512-BF16/AMX) are left out.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pspnet.data.datasets import sequence_of
from pspnet.data.io import list_images, read_mask
from pspnet.device import cpu_flags, cpu_has_native_bf16
from pspnet.engine.metrics import ConfusionMatrix
from pspnet.inference.segmenter import Segmenter

VOID = 11  # CamVid's unlabelled class in the *annot folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=Path("../shared/datasets/camvid"))
    parser.add_argument("--eval-scale", type=float, help="read frames at this factor instead of the model's own")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, help="only the first N frames of each split (a quick look)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    precisions = ["fp32", "bf16", "auto"] if cpu_has_native_bf16() else ["fp32", "auto"]
    paths = {p: Segmenter("camvid", precision=p, eval_scale=args.eval_scale) for p in precisions}
    frames = [(split, f) for split in ("val", "train") for f in list_images(args.data_root / split)[:args.limit]]
    if not frames:
        raise SystemExit(f"{args.data_root}: no CamVid frames under val/ and train/")

    confusion: dict[tuple[str, str], ConfusionMatrix] = {}
    agreement: dict[tuple[str, str], list[float]] = defaultdict(list)
    for split, image in tqdm(frames, desc="frames", unit="frame"):
        drive = f"{split} {sequence_of(image)}"
        mask = torch.from_numpy(read_mask(args.data_root / f"{split}annot" / image.name).astype(np.int64))
        mask[mask == VOID] = 255
        labels = {p: seg(image) for p, seg in paths.items()}
        for p, lab in labels.items():
            confusion.setdefault((drive, p), ConfusionMatrix(11)).update(torch.from_numpy(lab), mask)
            agreement[(drive, p)].append(100 * float((lab == labels["fp32"]).mean()))

    seg = paths["auto"]
    flags = " ".join(sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8"}))
    print(f"read at {seg.model.eval_scale:g}x; CPU flags: {flags}; auto = {seg.precision}"
          + (f" + int8 {', '.join(seg.int8_layers)}" if seg.int8_layers else ""))
    print(f"{'frames':18s} {'path':5s} {'mIoU':>6s}  agreement with fp32: mean, worst frame")
    for drive in dict.fromkeys(d for d, _ in confusion):
        for p in precisions:
            a = agreement[(drive, p)]
            print(f"{drive + f' ({len(a)})':18s} {p:5s} {100 * confusion[(drive, p)].compute().miou:6.2f}  "
                  f"{np.mean(a):.3f}%, {min(a):.3f}%")


if __name__ == "__main__":
    main()
