"""Training speed with crops cut in loader processes against crops cut on the training device (``device_augment``).

    python benchmarks/device_augment_speed.py --data-root ../shared/datasets/camvid [--device cuda] [--workers 15]

Trains the CamVid recipe (scale 0.4-2.2 with aspect, rotation, blur, flip, 288x384 crops) for ``--iterations`` on
the bundled architecture (EfficientNet-Lite0) and on the Lite2 teacher of configs/camvid_lite2_release.yaml, once
per way of making the crops, in one process each after the other, and prints the median seconds per iteration
(the first two logging windows, cuDNN's kernel search and the loader's start, left out) and the ratio. Random
backbone weights: only the speed matters. The CPU's flags and the GPU's name are printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import torch

from pspnet.benchmark.measure import FLAGS_OF_INTEREST
from pspnet.device import cpu_flags
from pspnet.engine.config import TrainConfig
from pspnet.engine.train import train

MODELS = {
    "Lite0 (bundled)": ("pspnet_tf_efficientnet_lite0", {"output_stride": 16, "decoder_channels": 128}),
    "Lite2 (teacher)": ("pspnet_tf_efficientnet_lite2", {"output_stride": 16, "head_channels": 512,
                                                         "decoder_channels": 128}),
}


def seconds_per_iteration(model: str, kwargs: dict, on_device: bool, args: argparse.Namespace, out: Path) -> float:
    cfg = TrainConfig.from_dict({
        "dataset": "camvid", "data_root": args.data_root, "train_split": "train", "val_split": None,
        "model": model, "model_kwargs": kwargs, "pretrained_backbone": False, "out_dir": str(out),
        "crop_size": [288, 384], "scale": [0.4, 2.2], "rotate": 10,
        "augment": {"aspect": [0.85, 1.18], "blur": 0.5, "hflip": 0.5}, "device_augment": on_device,
        "channels_last": args.device != "cpu", "batch_size": args.batch_size, "iterations": args.iterations,
        "workers": 0 if on_device else args.workers, "device": args.device, "log_every": 10,
        "checkpoint_every": 10**6, "tensorboard": False,
    }, source="benchmark")
    train(cfg, progress=False, overwrite=True)
    times = [h["sec_per_iter"] for h in json.loads((out / "history.json").read_text())]
    return statistics.median(times[2:] or times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="../shared/datasets/camvid")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=120)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    flags = " ".join(sorted(cpu_flags() & FLAGS_OF_INTEREST))
    print(f"{where}; {os.cpu_count()} CPU cores, flags {flags}; batch {args.batch_size}, loader workers "
          f"{args.workers}, torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model, kwargs = MODELS[name]
            loader = seconds_per_iteration(model, kwargs, False, args, Path(tmp) / "loader")
            device = seconds_per_iteration(model, kwargs, True, args, Path(tmp) / "device")
            print(f"{name}: loader {loader * 1000:.0f} ms per iteration, on the device {device * 1000:.0f} ms "
                  f"({loader / device:.2f}x as fast)", flush=True)


if __name__ == "__main__":
    main()
