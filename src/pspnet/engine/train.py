"""The training loop: the official recipe (SGD 0.9, wd 1e-4, lr 0.01 poly 0.9, head lr x10, aux 0.4).

``train()`` reads as setup -> loop -> finish. Plain and iteration-based, so a run resumes exactly: the
sampling order and every augmentation are functions of (seed, epoch, position) (``sampling.py``), and
the checkpoint holds model, optimizer, scheduler, scaler, iteration and RNG states.
``torchrun --nproc_per_node N -m pspnet train ...`` runs it under DDP.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pspnet.data import SEQUENCE_OPTIONS, build_dataset
from pspnet.data.datasets import SEQUENCE_PATTERN
from pspnet.data.device_augment import DeviceAugment
from pspnet.data.transforms import Augment, class_mix, eval_transforms, train_transforms
from pspnet.engine.checkpoint import LAST, PREVIOUS, atomic_save, find_checkpoint, load_with_fallback
from pspnet.engine.config import TrainConfig
from pspnet.engine.curves import plot_history
from pspnet.engine.distill import Teachers
from pspnet.engine.evaluate import evaluate, sequence_names
from pspnet.engine.loggers import RunLogger
from pspnet.engine.mix_style import attach_mix_style
from pspnet.engine.sampling import (EpochSampler, SampleKeys, SeededSamples, batch_seed, rare_class_frame_weights,
                                   rng_state, sample_seed, seed_everything, set_rng_state)
from pspnet.engine.step import (Criterion, build_criterion, build_optimizer, param_groups, poly_lr,
                                train_step)
from pspnet.engine.summary import (SHARE_SAMPLE, collapse_warning, format_summary, frame_pixels, loss_weights,
                                  pixel_counts)
from pspnet.errors import PSPNetError
from pspnet.files import atomic_write_text
from pspnet.model import create_model
from pspnet.model.pspnet import PSPNet
from pspnet.model.serialization import save_safetensors
from pspnet.model.timm_backbone import EFFICIENTNET_LITE_PACKAGES
from pspnet.device import resolve_device, resolve_precision

__all__ = ["TrainConfig", "train", "loss_weights", "poly_lr", "param_groups", "epochs_to_iterations",
           "EpochSampler", "load_init_weights", "resume_config"]

# What a run folder holds; --overwrite removes exactly these before starting again.
RUN_FILES = (LAST, PREVIOUS, "best.pt", "best.safetensors", "best_metrics.json", "last.safetensors", "history.json",
             "curves.png", "train_config.json")


@dataclass
class Run:
    """The state of one training run, built by ``_setup`` and advanced by ``_loop``."""

    cfg: TrainConfig
    out: Path
    device: torch.device
    precision: str
    rank: int
    world: int
    own_group: bool
    model: PSPNet
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    criterion: Criterion
    has_aux: bool
    teachers: Teachers | None
    sampler: EpochSampler
    loader: DataLoader
    val_set: Dataset | None
    log: RunLogger
    start: int = 0
    best_miou: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_rng: dict[str, Any] | None = None
    started: float = field(default_factory=time.perf_counter)  # for max_minutes: setup counts too
    eval_seconds: float = 0.0  # the last evaluation's duration: reserved at the end of a time-boxed run
    cropper: DeviceAugment | None = None  # with device_augment: the loader yields keys, this cuts the crops

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def train(cfg: TrainConfig, resume: str | Path | bool | None = None, progress: bool = True,
          stop_after: int | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Run (or continue) a training run; returns a summary with the best val mIoU, paths and the model.

    ``resume``: a checkpoint or run folder (an error if it has none), ``True`` for ``cfg.out_dir``'s
    last.pt, or ``"auto"`` to continue if a checkpoint is there and start otherwise. Without it an
    existing run folder is refused unless ``overwrite``. ``stop_after`` ends this call after that many
    iterations with a checkpoint (for time-boxed jobs).
    """
    run = _setup(cfg, resume, overwrite, progress)
    _loop(run, stop_after, progress)
    return _finish(run)


# ---- setup ----------------------------------------------------------------------------------------------------------


def _setup(cfg: TrainConfig, resume: str | Path | bool | None, overwrite: bool, progress: bool) -> Run:
    started = time.perf_counter()
    rank, local_rank, world = _distributed()
    own_group = world > 1 and not dist.is_initialized()
    if own_group:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = resolve_device(f"cuda:{local_rank}" if cfg.device == "auto" and torch.cuda.is_available() else cfg.device)
    if device.type == "cuda":  # --device cuda names no index, which set_device refuses
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # one crop size throughout: the fastest kernels are found once
    precision = resolve_precision(cfg.precision, device)
    out = Path(cfg.out_dir)

    ckpt, ckpt_path = _checkpoint_to_resume(out, resume)

    seed_everything(cfg.seed)
    if not Path(cfg.data_root).exists():
        raise PSPNetError(f"{cfg.data_root}: dataset root does not exist; pass the dataset's folder with --data-root")
    train_set = build_dataset(cfg.dataset, cfg.data_root, cfg.train_split, **cfg.dataset_options)
    if cfg.epochs is not None:
        cfg = dataclasses.replace(cfg, iterations=epochs_to_iterations(cfg.epochs, len(train_set), cfg.batch_size,
                                                                       world))
    model = _build_model(cfg, train_set, resuming=ckpt is not None)
    _check_class_mix(cfg, model.num_classes)
    if cfg.mix_style:
        attach_mix_style(model, cfg.mix_style)
    if ckpt is not None:
        check_same_model(ckpt.get("config", {}), model.config, ckpt_path)
    else:
        _refuse_existing_run(out, overwrite)
    teachers = None
    if cfg.teachers and cfg.distill_weight > 0:
        teachers = Teachers(cfg.teachers, model, cfg.distill_weight, cfg.distill_temperature, cfg.distill_scales)
    if rank == 0:  # before anything is written, and after every check of the config, data and model
        _prepare_run_folder(out, clear=overwrite and ckpt is None)

    # Rare class sampling needs every frame's class pixels; the class shares and weights are then their sums.
    frames = frame_pixels(train_set, range(len(train_set))) if cfg.rare_class_sampling is not None else None
    counts = pixel_counts(train_set, None if isinstance(cfg.class_weights, str) else SHARE_SAMPLE, frames)
    weight = loss_weights(cfg.class_weights, train_set, counts)
    if model.aux is None and cfg.aux_weight:
        raise PSPNetError("aux_weight > 0 needs a model with an aux head: pass --aux-weight 0, or drop "
                          "model_kwargs aux: false")
    mean, std = model.config["mean"], model.config["std"]
    augment = Augment.from_dict(cfg.augment)
    cropper = None
    if cfg.device_augment:
        cropper = DeviceAugment(train_set, cfg.crop_size, mean, std, cfg.scale, cfg.rotate, augment, device,
                                progress=progress and rank == 0)
    else:
        train_set.transform = train_transforms(cfg.crop_size, mean, std, cfg.scale, cfg.rotate, augment=augment)
    model.to(device)
    if teachers is not None:
        teachers.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
        if teachers is not None:
            teachers.to(memory_format=torch.channels_last)

    optimizer = build_optimizer(cfg.optimizer, param_groups(model, cfg.head_lr_mult, cfg.lr), cfg.lr, cfg.momentum,
                                cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    start, best_miou, history, rng = 0, -1.0, [], None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start, best_miou, history, rng = ckpt["iteration"], ckpt["best_miou"], ckpt.get("history", []), ckpt["rng"]

    net: nn.Module = model
    if world > 1:
        if device.type == "cuda":  # PyTorch's SyncBatchNorm has no CPU kernel
            net = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    frame_weights = None if frames is None else rare_class_frame_weights(frames[0], cfg.rare_class_sampling)
    sampler = EpochSampler(len(train_set), cfg.batch_size, cfg.seed, start, rank, world, frame_weights)
    if cropper is None:
        loader = DataLoader(SeededSamples(train_set, cfg.seed), batch_size=cfg.batch_size, sampler=sampler,
                            num_workers=cfg.workers, pin_memory=device.type == "cuda", drop_last=True,
                            persistent_workers=cfg.workers > 0)
    else:  # the loader hands over (epoch, index) keys; the crops are cut on the device
        loader = DataLoader(SampleKeys(len(train_set)), batch_size=cfg.batch_size, sampler=sampler, drop_last=True)
    val_set = None
    if cfg.val_split and rank == 0:
        val_set = build_dataset(cfg.dataset, cfg.data_root, cfg.val_split, eval_transforms(mean, std),
                                **cfg.dataset_options)
    log = RunLogger(out, cfg.tensorboard, cfg.wandb, cfg.to_dict(), enabled=rank == 0)
    run = Run(cfg, out, device, precision, rank, world, own_group, model, net, optimizer, scheduler, scaler,
              build_criterion(cfg.loss, weight.to(device) if weight is not None else None, options=cfg.loss_options),
              model.aux is not None and cfg.aux_weight > 0, teachers, sampler, loader, val_set, log, start, best_miou,
              history, rng, started, cropper=cropper)
    summary = format_summary(_summary_rows(run, train_set, ckpt_path if ckpt is not None else None),
                             train_set.class_names, counts[0] / max(counts[0].sum(), 1), weight, counts[2],
                             len(train_set))
    log.info("training run\n%s", summary)
    log.text("run/summary", summary, start)
    if rank == 0:
        atomic_write_text(out / "train_config.json", json.dumps(cfg.to_dict(), indent=2))
    return run


def _schedule(cfg: TrainConfig) -> Any:
    """The learning-rate multiplier of each iteration for ``cfg``'s length."""
    return lambda it: poly_lr(it, cfg.iterations, cfg.power, cfg.warmup_iters)


def _fit_time_budget(run: Run, done: int, per_iter: float) -> None:
    """Shorten a run whose measured pace would overrun ``max_minutes``; the poly schedule ends at the new end."""
    cfg = run.cfg
    left = cfg.max_minutes * 60 - (time.perf_counter() - run.started) - run.eval_seconds - 5
    fits = done + max(0, int(left / per_iter))
    if fits >= cfg.iterations:
        return
    run.cfg = dataclasses.replace(cfg, iterations=max(done + 1, fits))
    run.scheduler.lr_lambdas = [_schedule(run.cfg)] * len(run.optimizer.param_groups)
    run.log.info("max_minutes %g: %.2f s per iteration here, so %d iterations instead of %d", cfg.max_minutes,
                 per_iter, run.cfg.iterations, cfg.iterations)


def _checkpoint_to_resume(out: Path, resume: str | Path | bool | None
                          ) -> tuple[dict[str, Any] | None, Path | None]:
    """The checkpoint this run continues from (None for a new run)."""
    if resume == "auto":
        has = (out / LAST).is_file() or (out / PREVIOUS).is_file()
        return load_with_fallback(find_checkpoint(out)) if has else (None, None)
    if resume is True:
        return load_with_fallback(find_checkpoint(out))
    if resume:
        return load_with_fallback(find_checkpoint(resume))
    return None, None


def _refuse_existing_run(out: Path, overwrite: bool) -> None:
    """A new run never mixes into an old run's folder unless asked to replace it."""
    # train_config.json alone is a start that failed before its first checkpoint: nothing to lose
    existing = [name for name in RUN_FILES if (out / name).exists() and name != "train_config.json"]
    if existing and not overwrite:
        raise PSPNetError(f"{out}: already holds a training run ({', '.join(existing[:3])}); continue it with "
                          "--resume, start again with --overwrite, or pick a new --out-dir")


def _prepare_run_folder(out: Path, clear: bool) -> None:
    """Create the run folder and prove it writable before the first iteration; ``clear`` empties an old run."""
    if out.exists() and not out.is_dir():
        raise PSPNetError(f"{out}: exists and is not a folder; pass another --out-dir")
    try:
        out.mkdir(parents=True, exist_ok=True)
        if clear:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
            shutil.rmtree(out / "tb", ignore_errors=True)
        for stale in out.glob(".*.tmp*"):  # left by a save that a SIGKILL interrupted (pspnet.files.atomic_path)
            stale.unlink(missing_ok=True)
        probe = out / f".write_test.{os.getpid()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PSPNetError(f"{out}: cannot write the run folder ({err.strerror or err}); pass a writable "
                          "--out-dir") from err


def _build_model(cfg: TrainConfig, train_set: Any, resuming: bool) -> PSPNet:
    model_kwargs = {"class_names": train_set.class_names, "palette": train_set.palette,
                    "mask_values": _stored_values(train_set), **cfg.resolved_model_kwargs}
    try:
        model = create_model(cfg.model_name, num_classes=train_set.num_classes,
                             pretrained_backbone=False if resuming else cfg.pretrained_backbone, **model_kwargs)
    except (TypeError, ValueError) as err:
        raise PSPNetError(f"model {cfg.model_name} with model_kwargs {cfg.model_kwargs}: {err}; see `pspnet models` "
                          "and --set model_kwargs=...") from err
    if cfg.init_weights and not resuming:
        # weights for another class count are refused with a message on giving them a new head
        init = PSPNet.from_pretrained(cfg.init_weights, num_classes=model.num_classes)
        load_init_weights(model, init, cfg.init_weights)
    return model


def _stored_values(dataset: Any) -> list[int] | None:
    """The dataset's stored mask value per class (folder/list/medical data), unless they are the class ids."""
    values = getattr(dataset, "mask_values", None)
    if values is None or list(values) == list(range(dataset.num_classes)):
        return None
    return [int(v) for v in values]


def check_same_model(saved: dict[str, Any], current: dict[str, Any], source: Path | None) -> None:
    """Refuse to resume into a model whose config differs from the checkpoint's, naming every difference."""
    diffs = [f"{k}: {saved[k]!r} in the checkpoint, {current[k]!r} now"
             for k in sorted(set(saved) & set(current)) if saved[k] != current[k]]
    if diffs:
        raise PSPNetError(f"{source}: the checkpoint is of another model ({'; '.join(diffs)}); resume without the "
                          "options that change the model, or start a new run with another --out-dir")


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
        import logging

        logging.getLogger("pspnet.train").info("init weights from %s; newly initialised: %s", source,
                                               ", ".join(fresh))


def _summary_rows(run: Run, train_set: Any, resumed_from: Path | None) -> list[tuple[str, str]]:
    cfg, model = run.cfg, run.model
    c = model.config
    total = sum(p.numel() for p in model.parameters())
    if resumed_from is not None:
        init = f"resumed from {resumed_from} at iteration {run.start}"
    elif cfg.init_weights:
        init = f"init weights {cfg.init_weights}"
    elif isinstance(cfg.pretrained_backbone, str):
        init = f"ImageNet backbone from {cfg.pretrained_backbone}"
    elif cfg.pretrained_backbone:
        package = EFFICIENTNET_LITE_PACKAGES.get(c["backbone"])
        init = (f"ImageNet backbone from the {package.replace('_', '-')} package (offline)" if package
                else "ImageNet backbone from timm (its cache or the Hugging Face Hub)")
    else:
        init = "random: training from scratch (--no-pretrained)"
    arch = (f"{cfg.model_name}: backbone {c['backbone']}, output stride {c['output_stride']}, "
            f"bins {c['bins']}, decoder {c['decoder_channels'] or 'none'}, aux head {'yes' if model.aux else 'no'}")
    val = f", val {len(run.val_set)}" if run.val_set is not None else ""  # type: ignore[arg-type]
    precision = run.precision if cfg.precision == run.precision else f"{run.precision} (from {cfg.precision})"
    ranks = f" x {run.world} ranks" if run.world > 1 else ""
    return [
        ("device", f"{run.device}{ranks}"),
        ("precision", precision),
        ("model", arch),
        ("parameters", f"{total / 1e6:.2f} M ({sum(p.numel() for p in model.backbone.parameters()) / 1e6:.2f} M "
                       "backbone)"),
        ("weights", init),
        ("dataset", f"{cfg.dataset} at {cfg.data_root}: train {len(train_set)}{val}"),
        ("schedule", f"{cfg.iterations} iterations of {cfg.batch_size} x {tuple(cfg.crop_size)} crops "
                     f"({cfg.iterations / run.sampler.iters_per_epoch:.1f} epochs), {cfg.optimizer} lr {cfg.lr:g} "
                     f"poly {cfg.power:g}, heads x{cfg.head_lr_mult:g}, aux weight {cfg.aux_weight:g}"
                     + (f", rare class sampling at temperature {cfg.rare_class_sampling:g}"
                        if cfg.rare_class_sampling is not None else "")
                     + (", crops cut on the device" if run.cropper is not None else "")
                     + _class_mix_words(cfg)
                     + (f", feature styles mixed at strides 4 and 8 (p {cfg.mix_style:g})" if cfg.mix_style else "")),
        ("loss", cfg.loss + (f" {cfg.loss_options}" if cfg.loss_options else "")
                 + (f", class weights {cfg.class_weights if isinstance(cfg.class_weights, str) else 'given'}"
                             if cfg.class_weights is not None else "")
                 + (_distillation(cfg) if run.teachers is not None else "")),
        ("output", str(run.out)),
    ]


def _check_class_mix(cfg: TrainConfig, num_classes: int) -> None:
    """class_mix pastes between the crops of one batch, of classes the model has."""
    if not cfg.class_mix:
        return
    unknown = sorted(c for c in cfg.class_mix if c >= num_classes)
    if unknown:
        raise PSPNetError(f"class_mix: classes {unknown} do not exist; this dataset has classes 0-{num_classes - 1}")
    if cfg.batch_size < 2:
        raise PSPNetError("class_mix pastes between the crops of a batch: it needs batch_size >= 2")


def _class_mix_words(cfg: TrainConfig) -> str:
    """The summary's words for class_mix, empty when it is off."""
    if not cfg.class_mix:
        return ""
    share = f", a share {cfg.class_mix_share:g} of those each source holds" if cfg.class_mix_share < 1 else ""
    return f", classes {cfg.class_mix} pasted between crops (p {cfg.class_mix_p:g}{share})"


def _distillation(cfg: TrainConfig) -> str:
    """The summary's words for the distillation term of the loss."""
    scales = (f", teachers at scales {', '.join(f'{s:g}' for s in cfg.distill_scales)}"
              if cfg.distill_scales != [1.0] else "")
    return (f", + {cfg.distill_weight:g} x distillation (temperature {cfg.distill_temperature:g}{scales}) "
            f"from {', '.join(cfg.teachers)}")


# ---- loop -----------------------------------------------------------------------------------------------------------


def _loop(run: Run, stop_after: int | None, progress: bool) -> None:
    cfg = run.cfg
    run.net.train()
    bar = tqdm(total=cfg.iterations, initial=run.start, desc="train", disable=not (progress and run.is_main),
               dynamic_ncols=True)
    batches = iter(run.loader)  # draws the loader's base seed from the global RNG, so restore the RNG after it
    if run.resumed_rng is not None:
        set_rng_state(run.resumed_rng)
    t_last = time.perf_counter()
    paced: tuple[int, float] | None = None  # (iteration, time) where pace measuring starts, past the loader start
    end = cfg.iterations if stop_after is None else min(cfg.iterations, run.start + stop_after)
    try:
        it = run.start
        while it < end:
            if run.cropper is None:
                images, masks = _next_batch(batches)
            else:  # the loader's (epoch, index) keys -> crops cut on the device
                epochs, indices = (keys.tolist() for keys in next(batches))
                images, masks = run.cropper(indices, [sample_seed(cfg.seed, e, i) for e, i in zip(epochs, indices)])
            images, masks = images.to(run.device, non_blocking=True), masks.to(run.device, non_blocking=True)
            if cfg.class_mix:  # drawn from the run's seed and the iteration, so a resumed run mixes alike
                draws = torch.Generator().manual_seed(batch_seed(cfg.seed, it, run.rank))
                images, masks = class_mix(images, masks, cfg.class_mix, cfg.class_mix_p, draws, cfg.class_mix_share)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            try:
                loss, main_loss = train_step(run.net, images, masks, criterion=run.criterion, has_aux=run.has_aux,
                                             aux_weight=cfg.aux_weight, optimizer=run.optimizer,
                                             scheduler=run.scheduler, scaler=run.scaler, device=run.device,
                                             precision=run.precision, teachers=run.teachers)
            except FloatingPointError as err:
                raise _diverged(run, err.args[0], it + 1) from None
            done = it = it + 1
            if cfg.max_minutes and run.world == 1:  # one process: ranks must agree on the length
                if paced is None and done - run.start >= 2:
                    paced = (done, time.perf_counter())
                elif paced is not None and (done - paced[0]) % 5 == 0:
                    _fit_time_budget(run, done, (time.perf_counter() - paced[1]) / (done - paced[0]))
                    if run.cfg is not cfg:
                        cfg = run.cfg
                        end = cfg.iterations if stop_after is None else min(cfg.iterations, end)
                        bar.total = cfg.iterations
            if not run.is_main:
                continue
            lr = run.optimizer.param_groups[0]["lr"]
            bar.update(1)
            bar.set_postfix(loss=f"{main_loss:.3f}", lr=f"{lr:.2e}")
            if done % cfg.log_every == 0 or done == cfg.iterations:
                now = time.perf_counter()
                run.history.append({"iteration": done, "loss": loss, "main_loss": main_loss, "lr": lr,
                                    "sec_per_iter": (now - t_last) / min(cfg.log_every, done - run.start)})
                t_last = now
                run.log.scalars({"train/loss": loss, "train/lr": lr}, done)
            if run.val_set is not None and (done % cfg.eval_every == 0 or done == cfg.iterations):
                _validate(run, done, bar)
            if done % cfg.checkpoint_every == 0 or done in (cfg.iterations, end):
                _save(run, LAST, done)
    except OSError as err:  # e.g. the run folder was made read-only or the disk filled up mid-run
        raise PSPNetError(f"{run.out}: cannot write ({err.strerror or err}); make it writable, then continue "
                          "with --resume") from err
    finally:
        bar.close()


def _next_batch(batches: Any) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        return next(batches)
    except PSPNetError as err:  # raised in a loader worker, its message carries the worker's traceback
        raise PSPNetError(str(err).strip().splitlines()[-1].removeprefix("pspnet.errors.PSPNetError: ")) from err


def _diverged(run: Run, value: float, iteration: int) -> PSPNetError:
    last = run.out / LAST
    return PSPNetError(f"loss became {value} at iteration {iteration}: training diverged. Lower the learning rate "
                       f"(--lr, now {run.scheduler.get_last_lr()[0]:.3g}), add --warmup-iters or use --precision "
                       "fp32; " + (f"the last good checkpoint is {last}" if last.exists()
                                   else "no checkpoint was written yet"))


def _val_sequences(run: Run) -> list[str] | None:
    """The sequence of each val frame when the run splits by sequence (a sequence option in dataset_options) and
    val holds more than one: each held-out drive is then scored on its own too, not only pooled."""
    options = run.cfg.dataset_options or {}
    if not any(key in options for key in SEQUENCE_OPTIONS) or not hasattr(run.val_set, "pairs"):
        return None
    names = sequence_names(run.val_set, options.get("sequence_pattern", SEQUENCE_PATTERN))  # type: ignore[arg-type]
    return names if len(set(names)) > 1 else None


def _validate(run: Run, done: int, bar: tqdm) -> None:
    """Evaluate on the val split, log it, keep the best weights and warn if the run has collapsed."""
    t0 = time.perf_counter()
    metrics = evaluate(run.model, run.val_set, run.model.num_classes, device=run.device, precision=run.precision,
                       progress=False, class_names=run.model.class_names, sequences=_val_sequences(run))
    run.eval_seconds = time.perf_counter() - t0
    record = {"iteration": done, "val_miou": metrics.miou, "val_mdice": metrics.mdice, "val_macc": metrics.macc,
              "val_aacc": metrics.aacc}
    by_sequence = {s: m.miou for s, m in metrics.per_sequence.sequences.items()} if metrics.per_sequence else {}
    if by_sequence:
        record["val_miou_by_sequence"] = by_sequence
    run.history.append(record)
    run.log.scalars({"val/mIoU": metrics.miou, "val/mDice": metrics.mdice, "val/mAcc": metrics.macc,
                     **{f"val/mIoU/{s}": v for s, v in by_sequence.items()}}, done)
    run.log.overlays(run.model, run.val_set, run.cfg.tb_images, run.device, run.precision, done)
    each = "".join(f", {s} {100 * v:.2f}" for s, v in by_sequence.items())
    bar.write(f"iteration {done}: val mIoU {100 * metrics.miou:.2f}{f' ({each[2:]})' if each else ''}  "
              f"mDice {100 * metrics.mdice:.2f}  mAcc {100 * metrics.macc:.2f}")
    warning = collapse_warning(metrics.confusion_matrix, run.model.class_names, done)
    if warning:
        run.log.warning("%s", warning)
        run.log.text("run/warnings", warning, done)
    if metrics.miou > run.best_miou:
        run.best_miou = metrics.miou
        _save(run, "best.pt", done)
        save_safetensors(run.model, run.out / "best.safetensors")
        atomic_write_text(run.out / "best_metrics.json", json.dumps({"iteration": done, **metrics.to_dict()}, indent=2))


def _save(run: Run, name: str, iteration: int) -> None:
    atomic_save({"model": run.model.state_dict(), "config": {**run.model.config},
                 "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                 "scaler": run.scaler.state_dict(), "iteration": iteration,
                 "epoch": iteration // run.sampler.iters_per_epoch, "best_miou": run.best_miou, "rng": rng_state(),
                 "train_config": run.cfg.to_dict(), "history": run.history}, run.out / name,
                keep_previous=name == LAST)


# ---- finish ---------------------------------------------------------------------------------------------------------


def _finish(run: Run) -> dict[str, Any]:
    if run.world > 1 and run.device.type != "cuda":
        _average_buffers(run.model, run.world)  # plain BN: each rank's running stats saw only its own data
    if run.is_main and run.start >= run.cfg.iterations and (run.out / "last.safetensors").is_file():
        run.log.info("%s had already ended at iteration %d: its weights, history and curves are left as they were",
                     run.out, run.start)  # `--resume auto` run again on a finished run writes nothing anew
    elif run.is_main:
        save_safetensors(run.model, run.out / "last.safetensors")
        atomic_write_text(run.out / "history.json", json.dumps(run.history, indent=1))
        plot_history(run.history, run.out / "curves.png", title=f"{run.cfg.model_name} on {run.cfg.dataset}")
    run.log.close()
    if run.world > 1:
        dist.barrier()
        if run.own_group:
            dist.destroy_process_group()
    return {"best_miou": run.best_miou, "out_dir": str(run.out), "iterations": run.cfg.iterations,
            "history": run.history, "model": run.model}


def _average_buffers(model: nn.Module, world: int) -> None:
    """Average floating-point buffers (BN running mean/var) over ranks so every rank ends identical."""
    for buf in model.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf /= world


# ---- helpers --------------------------------------------------------------------------------------------------------


def resume_config(target: str | Path, overrides: dict[str, Any]) -> tuple[TrainConfig, Path, list[str]]:
    """The saved config of the run that ``target`` (a checkpoint or run folder) belongs to, with ``overrides``.

    Returns (config, checkpoint path, one message per override that changes a saved value). The run
    folder is the checkpoint's folder unless ``out_dir`` is overridden.
    """
    path = find_checkpoint(target)
    ckpt, path = load_with_fallback(path)
    saved = ckpt.get("train_config")
    if not isinstance(saved, dict):
        raise PSPNetError(f"{path}: the checkpoint holds no training config; resume it from Python with "
                          "train(cfg, resume=path)")
    values = {**saved, "out_dir": str(path.parent)}
    changed = [f"{k}={v!r} overrides the run's {values.get(k)!r}" for k, v in overrides.items()
               if k in values and _differs(values[k], v)]
    values.update(overrides)
    return TrainConfig.from_dict(values, source=f"{path} (saved config with overrides)"), path, changed


def _differs(a: Any, b: Any) -> bool:
    """Whether two config values differ, a tuple and a list of the same items being the same."""
    return (list(a) if isinstance(a, tuple) else a) != (list(b) if isinstance(b, tuple) else b)


def _distributed() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def epochs_to_iterations(epochs: float, dataset_size: int, batch_size: int, world: int = 1) -> int:
    return math.ceil(epochs * (dataset_size // (batch_size * world)))
