"""Where a run reports: the ``logging`` log, TensorBoard (scalars, text, val overlays) and Weights & Biases."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pspnet.errors import PSPNetError
from pspnet.device import autocast

logger = logging.getLogger("pspnet.train")


class RunLogger:
    """One object for every sink, so the loop says ``log.scalars(...)`` and never checks which exist."""

    def __init__(self, out: Path, tensorboard: bool, wandb: bool, config: dict[str, Any], enabled: bool = True):
        self.writer = _tensorboard(out) if tensorboard and enabled else None
        self.wandb_run = _wandb(config) if wandb and enabled else None
        self.enabled = enabled

    def info(self, message: str, *args: Any) -> None:
        if self.enabled:
            logger.info(message, *args)

    def warning(self, message: str, *args: Any) -> None:
        if self.enabled:
            logger.warning(message, *args)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)
        if self.wandb_run is not None:
            self.wandb_run.log(values, step=step)

    def text(self, tag: str, text: str, step: int) -> None:
        """A block of text (the run summary, a warning) in TensorBoard's Text tab, as preformatted Markdown."""
        if self.writer is not None:
            self.writer.add_text(tag, "    " + text.replace("\n", "\n    "), step)

    @torch.no_grad()
    def overlays(self, model: Any, dataset: Dataset, count: int, device: torch.device, precision: str,
                 step: int) -> None:
        """A few val images as image | ground truth | prediction strips (cheap: ``count`` forward passes)."""
        if self.writer is None or not count:
            return
        from pspnet.inference.visualize import colorize

        was_training = model.training
        model.eval()
        mean = torch.tensor(model.config["mean"]).view(3, 1, 1)
        std = torch.tensor(model.config["std"]).view(3, 1, 1)
        palette = model.config["palette"]
        try:
            for i in range(min(count, len(dataset))):  # type: ignore[arg-type]
                image, mask = dataset[i]
                with autocast(device, precision):
                    pred = model(image[None].to(device)).argmax(1)[0].cpu().numpy()
                rgb = ((image * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
                truth = colorize(mask.numpy(), palette)
                truth[mask.numpy() == 255] = 0
                blend = (0.5 * rgb + 0.5 * colorize(pred, palette)).astype(np.uint8)
                self.writer.add_image(f"val/sample_{i}", np.concatenate([rgb, truth, blend], 1), step,
                                      dataformats="HWC")
        finally:
            model.train(was_training)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.warning("TensorBoard is not installed (pip install tensorboard): logging to the console only")
        return None
    return SummaryWriter(str(out / "tb"))


def _wandb(config: dict[str, Any]):
    try:
        import wandb
    except ImportError as err:
        raise PSPNetError("--wandb needs the wandb package: pip install wandb (or drop --wandb)") from err
    return wandb.init(project="pspnet", config=config)
