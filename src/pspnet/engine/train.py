"""The training loop: the official recipe (SGD 0.9, wd 1e-4, lr 0.01 poly 0.9, head lr x10, aux 0.4).

Plain and iteration-based, so a run resumes exactly: the sampling order and every augmentation are
functions of (seed, epoch, position), and the checkpoint holds model, optimizer, scheduler, scaler,
iteration and RNG states. ``torchrun --nproc_per_node N -m pspnet train ...`` runs it under DDP.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from pspnet.data import build_dataset
from pspnet.data.transforms import eval_transforms, train_transforms
from pspnet.engine.checkpoint import atomic_save, load_checkpoint
from pspnet.engine.evaluate import evaluate
from pspnet.errors import PSPNetError
from pspnet.model import create_model
from pspnet.model.pspnet import PSPNet
from pspnet.model.serialization import save_safetensors
from pspnet.device import autocast, resolve_device, resolve_precision


@dataclass
class TrainConfig:
    """Everything a run depends on; saved in every checkpoint."""

    dataset: str = "camvid"
    data_root: str = "data/camvid"
    dataset_options: dict[str, Any] = field(default_factory=dict)  # folder/list datasets: classes, binary, ...
    model: str = "pspnet_resnet50"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained_backbone: bool | str = True
    init_weights: str | None = None  # start from these weights (e.g. an earlier run's best.safetensors)
    class_weights: str | list[float] | None = None  # "median_frequency", "sqrt_median_frequency" or one per class
    out_dir: str = "runs/train"
    train_split: str = "train"
    val_split: str | None = "val"
    crop_size: tuple[int, int] = (473, 473)
    scale: tuple[float, float] = (0.5, 2.0)
    rotate: float = 10.0
    batch_size: int = 16
    iterations: int = 30000
    epochs: float | None = None  # if set, overrides iterations: epochs x (train images // (batch x ranks))
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    power: float = 0.9
    warmup_iters: int = 0
    head_lr_mult: float = 10.0
    aux_weight: float = 0.4
    precision: str = "auto"
    channels_last: bool = False
    device: str = "auto"
    workers: int = 2
    seed: int = 0
    eval_every: int = 1000
    checkpoint_every: int = 200
    log_every: int = 10
    tensorboard: bool = True
    tb_images: int = 3  # val images drawn to TensorBoard (image | truth | prediction) at each evaluation
    wandb: bool = False

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise PSPNetError(f"unknown training options {unknown}; known: {sorted(known)}")
        values = dict(values)
        for key in ("crop_size", "scale"):
            if key in values and values[key] is not None:
                v = values[key]
                values[key] = tuple(v) if isinstance(v, (list, tuple)) else (v, v)
        return cls(**values)


class EpochSampler(Sampler):
    """Yields (epoch, index) pairs: a seeded permutation per epoch, split across ranks, resumable."""

    def __init__(self, size: int, batch_size: int, seed: int, start_iteration: int = 0, rank: int = 0, world: int = 1):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start, self.rank, self.world = start_iteration, rank, world
        self.iters_per_epoch = size // (batch_size * world)
        if self.iters_per_epoch == 0:
            raise PSPNetError(f"dataset has {size} samples, fewer than one batch of {batch_size} x {world} ranks")

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip = divmod(self.start, self.iters_per_epoch)
        while True:
            perm = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
            mine = perm[self.rank::self.world][: self.iters_per_epoch * self.batch_size]
            for i in mine[skip * self.batch_size:]:
                yield epoch, i
            epoch, skip = epoch + 1, 0

    def __len__(self) -> int:  # endless; DataLoader never needs the length of an iterable-like sampler here
        return 2**62


class SeededSamples(Dataset):
    """Seeds Python and torch RNGs from (seed, epoch, index) before each sample's augmentation."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        sample_seed = (self.seed * 1_000_003 + epoch) * 10_000_019 + index
        random.seed(sample_seed)
        torch.manual_seed(sample_seed % 2**63)
        return self.dataset[index]


def loss_weights(spec: str | list[float] | None, dataset) -> torch.Tensor | None:
    """Per-class loss weights; median frequency balancing (SegNet) lifts rare classes such as poles.

    The frequency of a class is its pixel count over the pixels of the images it appears in.
    """
    if spec is None:
        return None
    n = dataset.num_classes
    if isinstance(spec, (list, tuple)):
        if len(spec) != n:
            raise PSPNetError(f"class_weights has {len(spec)} values for {n} classes")
        return torch.tensor(spec, dtype=torch.float32)
    if spec not in ("median_frequency", "sqrt_median_frequency"):
        raise PSPNetError(f"class_weights must be a list, 'median_frequency' or 'sqrt_median_frequency', got {spec!r}")
    pixels, image_pixels = np.zeros(n), np.zeros(n)
    for i in range(len(dataset)):
        mask = dataset.load_mask(i)
        counts = np.bincount(mask[mask != 255].ravel(), minlength=n)[:n]
        pixels += counts
        image_pixels += (counts > 0) * mask.size
    freq = pixels / np.maximum(image_pixels, 1)
    weights = np.where(freq > 0, np.median(freq[freq > 0]) / np.maximum(freq, 1e-12), 0.0)
    if spec == "sqrt_median_frequency":
        weights = np.sqrt(weights)
    return torch.tensor(weights, dtype=torch.float32)


def poly_lr(iteration: int, total: int, power: float = 0.9, warmup: int = 0) -> float:
    """Multiplier of the base lr: linear warm-up, then (1 - it/total)^power (semseg's poly schedule)."""
    if warmup and iteration < warmup:
        return (iteration + 1) / warmup
    return (1 - iteration / total) ** power


def param_groups(model: PSPNet, head_lr_mult: float, lr: float) -> list[dict[str, Any]]:
    """Backbone at lr, the newly initialised heads (ppm, cls, aux) at lr x head_lr_mult."""
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    head = [p for n, p in model.named_parameters() if not n.startswith("backbone.") and p.requires_grad]
    return [{"params": backbone, "lr": lr, "base_lr": lr}, {"params": head, "lr": lr * head_lr_mult, "base_lr": lr * head_lr_mult}]


def load_init_weights(model: PSPNet, init: PSPNet, source: str) -> None:
    """Start ``model`` from ``init``: the trunk (backbone, ppm, cls) must fit; heads it lacks start fresh.

    So a model without an aux head, or one with the skip decoder, can start from earlier weights.
    """
    own, state = model.state_dict(), init.state_dict()
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if wrong:
        raise PSPNetError(f"{source}: init weights do not fit this model: {len(wrong)} tensors have other shapes, "
                          f"e.g. {wrong[0]} {tuple(state[wrong[0]].shape)} vs {tuple(own[wrong[0]].shape)}")
    result = model.load_state_dict(state, strict=False)
    trunk = [k for k in result.missing_keys if not k.startswith(("aux.", "decoder."))]
    if trunk:
        raise PSPNetError(f"{source}: init weights lack {len(trunk)} tensors of this model, e.g. {trunk[:3]}")
    fresh = sorted({k.split(".")[0] for k in result.missing_keys})
    if fresh:
        print(f"init weights from {source}; newly initialised: {', '.join(fresh)}", file=sys.stderr)


def _distributed() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def _rng_state() -> dict[str, Any]:
    """Every RNG the run touches, as tensors and ints only, so ``torch.load(weights_only=True)`` reads it back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    numpy_state = state.get("numpy")
    if isinstance(numpy_state, (list, tuple)) and isinstance(numpy_state[1], torch.Tensor):
        kind, keys, pos, has_gauss, gauss = numpy_state
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    # (older checkpoints pickled a numpy array, which the safe loader cannot rebuild; nothing here draws from numpy)
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train(cfg: TrainConfig, resume: str | Path | None = None, progress: bool = True,
          stop_after: int | None = None) -> dict[str, Any]:
    """Run (or continue) a training run; returns a summary with the best val mIoU, paths and the model.

    ``stop_after`` ends this call after that many iterations with a checkpoint (for time-boxed jobs);
    ``resume="auto"`` then carries on exactly where it stopped.
    """
    rank, local_rank, world = _distributed()
    own_group = world > 1 and not dist.is_initialized()
    if own_group:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = resolve_device(f"cuda:{local_rank}" if cfg.device == "auto" and torch.cuda.is_available() else cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    precision = resolve_precision(cfg.precision, device)
    out = Path(cfg.out_dir)
    is_main = rank == 0

    ckpt = None
    if resume:
        resume_path = out / "last.pt" if resume in (True, "auto") else Path(resume)
        if resume == "auto" and not resume_path.exists():
            resume_path = None
        ckpt = load_checkpoint(resume_path) if resume_path else None

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    train_set = build_dataset(cfg.dataset, cfg.data_root, cfg.train_split, **cfg.dataset_options)
    if cfg.epochs is not None:
        cfg = dataclasses.replace(cfg, iterations=epochs_to_iterations(cfg.epochs, len(train_set), cfg.batch_size,
                                                                       world))
    model_kwargs = {"class_names": train_set.class_names, "palette": train_set.palette, **cfg.model_kwargs}
    model = create_model(cfg.model, num_classes=train_set.num_classes,
                         pretrained_backbone=False if ckpt else cfg.pretrained_backbone, **model_kwargs)
    if cfg.init_weights and ckpt is None:
        # weights for another class count are refused with a message on giving them a new head
        init = PSPNet.from_pretrained(cfg.init_weights, num_classes=model.num_classes)
        load_init_weights(model, init, cfg.init_weights)
    weight = loss_weights(cfg.class_weights, train_set)
    weight = weight.to(device) if weight is not None else None
    if model.aux is None and cfg.aux_weight:
        raise PSPNetError("aux_weight > 0 needs a model built with aux=True")
    with_aux = bool(cfg.aux_weight)
    mean, std = model.config["mean"], model.config["std"]
    train_set.transform = train_transforms(cfg.crop_size, mean, std, cfg.scale, cfg.rotate)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)

    groups = param_groups(model, cfg.head_lr_mult, cfg.lr)
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        raise PSPNetError(f"optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: poly_lr(it, cfg.iterations, cfg.power, cfg.warmup_iters))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    start, best_miou, history = 0, -1.0, []
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start, best_miou, history = ckpt["iteration"], ckpt["best_miou"], ckpt.get("history", [])

    net: nn.Module = model
    sync_bn = world > 1 and device.type == "cuda"  # PyTorch's SyncBatchNorm has no CPU kernel
    if world > 1:
        if sync_bn:
            net = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    sampler = EpochSampler(len(train_set), cfg.batch_size, cfg.seed, start, rank, world)
    loader = DataLoader(SeededSamples(train_set, cfg.seed), batch_size=cfg.batch_size, sampler=sampler,
                        num_workers=cfg.workers, pin_memory=device.type == "cuda", drop_last=True,
                        persistent_workers=cfg.workers > 0)
    val_set = None
    if cfg.val_split and is_main:
        val_set = build_dataset(cfg.dataset, cfg.data_root, cfg.val_split, eval_transforms(mean, std),
                                **cfg.dataset_options)

    writer = _tensorboard(out) if cfg.tensorboard and is_main else None
    wandb_run = _wandb(cfg) if cfg.wandb and is_main else None

    def save(name: str, iteration: int) -> None:
        atomic_save({"model": model.state_dict(), "config": {**model.config}, "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "iteration": iteration,
                     "epoch": iteration // sampler.iters_per_epoch, "best_miou": best_miou, "rng": _rng_state(),
                     "train_config": dataclasses.asdict(cfg), "history": history}, out / name)

    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".*.tmp"):  # left by a save that a SIGKILL interrupted
            stale.unlink(missing_ok=True)
        (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    net.train()
    bar = tqdm(total=cfg.iterations, initial=start, desc="train", disable=not (progress and is_main),
               dynamic_ncols=True)
    batches = iter(loader)  # draws the loader's base seed from the global RNG, so restore the RNG after it
    if ckpt is not None:
        _set_rng_state(ckpt["rng"])
    t_last = time.perf_counter()
    end = cfg.iterations if stop_after is None else min(cfg.iterations, start + stop_after)
    for it in range(start, end):
        try:
            images, masks = next(batches)
        except PSPNetError as err:  # raised in a loader worker, its message carries the worker's traceback
            raise PSPNetError(str(err).strip().splitlines()[-1].removeprefix("pspnet.errors.PSPNetError: ")) from err
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            outputs = net(images, return_aux=with_aux)
        logits, aux = outputs if with_aux else (outputs, None)
        main_loss = F.cross_entropy(logits.float(), masks, weight, ignore_index=255)
        loss = main_loss + cfg.aux_weight * F.cross_entropy(aux.float(), masks, weight, ignore_index=255) if aux is not None else main_loss
        if not torch.isfinite(loss):
            last = out / "last.pt"
            raise PSPNetError(f"loss became {loss.item()} at iteration {it + 1}: training diverged. Lower the "
                              f"learning rate (now {scheduler.get_last_lr()[0]:.3g}), add --warmup-iters or use "
                              "--precision fp32; " + (f"the last good checkpoint is {last}" if last.exists()
                                                      else "no checkpoint was written yet"))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        done = it + 1
        if is_main:
            lr = optimizer.param_groups[0]["lr"]
            bar.update(1)
            bar.set_postfix(loss=f"{main_loss.item():.3f}", lr=f"{lr:.2e}")
            if done % cfg.log_every == 0 or done == cfg.iterations:
                now = time.perf_counter()
                record = {"iteration": done, "loss": loss.item(), "main_loss": main_loss.item(), "lr": lr,
                          "sec_per_iter": (now - t_last) / min(cfg.log_every, done - start)}
                t_last = now
                history.append(record)
                _log(writer, wandb_run, {"train/loss": record["loss"], "train/lr": lr}, done)
            if val_set is not None and (done % cfg.eval_every == 0 or done == cfg.iterations):
                metrics = evaluate(model, val_set, model.num_classes, device=device, precision=precision,
                                   progress=False, class_names=model.class_names)
                history.append({"iteration": done, "val_miou": metrics.miou, "val_macc": metrics.macc,
                                "val_aacc": metrics.aacc})
                _log(writer, wandb_run, {"val/mIoU": metrics.miou, "val/mAcc": metrics.macc}, done)
                if writer is not None and cfg.tb_images:
                    _log_overlays(writer, model, val_set, cfg.tb_images, device, precision, done)
                bar.write(f"iteration {done}: val mIoU {100 * metrics.miou:.2f}  mAcc {100 * metrics.macc:.2f}")
                if metrics.miou > best_miou:
                    best_miou = metrics.miou
                    save("best.pt", done)
                    save_safetensors(model, out / "best.safetensors")
                    (out / "best_metrics.json").write_text(json.dumps({"iteration": done, **metrics.to_dict()}, indent=2))
            if done % cfg.checkpoint_every == 0 or done in (cfg.iterations, end):
                save("last.pt", done)
    bar.close()
    if world > 1 and not sync_bn:
        _average_buffers(model, world)  # plain BN: each rank's running stats saw only its own data
    if is_main:
        save_safetensors(model, out / "last.safetensors")
        (out / "history.json").write_text(json.dumps(history, indent=1))
        if writer is not None:
            writer.close()
    if world > 1:
        dist.barrier()
        if own_group:
            dist.destroy_process_group()
    return {"best_miou": best_miou, "out_dir": str(out), "iterations": cfg.iterations, "history": history,
            "model": model}


def _average_buffers(model: nn.Module, world: int) -> None:
    """Average floating-point buffers (BN running mean/var) over ranks so every rank ends identical."""
    for buf in model.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf /= world


@torch.no_grad()
def _log_overlays(writer, model: PSPNet, dataset: Dataset, count: int, device: torch.device, precision: str,
                  step: int) -> None:
    """A few val images as image | ground truth | prediction strips (cheap: ``count`` forward passes)."""
    from pspnet.inference.visualize import colorize

    model.eval()
    mean = torch.tensor(model.config["mean"]).view(3, 1, 1)
    std = torch.tensor(model.config["std"]).view(3, 1, 1)
    palette = model.config["palette"]
    try:
        for i in range(min(count, len(dataset))):
            image, mask = dataset[i]
            with autocast(device, precision):
                pred = model(image[None].to(device)).argmax(1)[0].cpu().numpy()
            rgb = ((image * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
            truth = colorize(mask.numpy(), palette)
            truth[mask.numpy() == 255] = 0
            blend = (0.5 * rgb + 0.5 * colorize(pred, palette)).astype(np.uint8)
            writer.add_image(f"val/sample_{i}", np.concatenate([rgb, truth, blend], 1), step, dataformats="HWC")
    finally:
        model.train()


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tb"))


def _wandb(cfg: TrainConfig):
    try:
        import wandb
    except ImportError as err:
        raise PSPNetError("--wandb needs the wandb package: pip install wandb") from err
    return wandb.init(project="pspnet", config=dataclasses.asdict(cfg))


def _log(writer, wandb_run, scalars: dict[str, float], step: int) -> None:
    if writer is not None:
        for k, v in scalars.items():
            writer.add_scalar(k, v, step)
    if wandb_run is not None:
        wandb_run.log(scalars, step=step)


def epochs_to_iterations(epochs: float, dataset_size: int, batch_size: int, world: int = 1) -> int:
    return math.ceil(epochs * (dataset_size // (batch_size * world)))
