"""``Segmenter``: a model plus its preprocessing, for images in any form.

    seg = pspnet.Segmenter("camvid")
    labels = seg("street.png")          # (H, W) class indices at the original resolution
    seg.overlay("street.png").save("overlay.png")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from pspnet.data.io import ImageLike, to_input, to_pil
from pspnet.device import autocast, resolve_device, resolve_precision
from pspnet.errors import PSPNetError
from pspnet.inference.fast import FastPath, fast_model
from pspnet.inference.int8 import int8_available, int8_ready, use_int8
from pspnet.inference.ort import OrtModel, uses_onnxruntime
from pspnet.inference.predict import MAX_WHOLE_IMAGE_PIXELS, check_mode, predict_probs, threshold_prediction
from pspnet.inference.visualize import overlay as draw_overlay
from pspnet.model.bundled import load
from pspnet.model.pspnet import PSPNet

def default_net(model: PSPNet, device: torch.device, precision: str = "auto") -> tuple[nn.Module, str, list[str]]:
    """What ``pspnet predict``, ``serve`` and ``eval`` run for ``model``: the network, the precision ``precision``
    resolves to on ``device``, and the convs that run in int8. ``model`` itself is left as it is."""
    resolved = resolve_precision(precision, device)
    # A BN-folded channels_last copy with TF "same" padding as zero taps and each conv's ReLU in the same oneDNN
    # call: faster on CPUs with identical labels; bf16/fp16 keep >= 99.5% argmax agreement with fp32 only with an
    # fp32 stem (see pspnet.inference.fast).
    net = fast_model(model, FastPath(resolved, resolved, fold_bn=True, channels_last=True, fp32_stem=True,
                                     zero_tap_same=True, fuse_act=True), device)
    # precision "auto" on a CPU where int8 beats bf16 also runs the head's two big convs in int8 if the model
    # carries ranges calibrated for its weights (pspnet.inference.int8): >= 99.5% agreement kept
    if (precision == "auto" and resolved == "bf16" and device.type == "cpu" and int8_ready(model)
            and int8_available()):
        return net, resolved, use_int8(net, model.config["int8_ranges"])
    # where the int8 head does not run, an enlarged reading may be slower than its budget: "auto" reads at the
    # model's fallback (the bundled camvid model: 1.33x with the int8 head, the frame's own size elsewhere)
    if precision == "auto" and model.config.get("fallback_eval_scale") is not None:
        net.eval_scale = model.config["fallback_eval_scale"]
    return net, resolved, []


def path_name(net: nn.Module, model: PSPNet, precision: str, int8_layers: Sequence[str]) -> str:
    """How ``default_net`` runs, in words: e.g. "bf16 + int8 cls.0, decoder.fuse.0", "fp32, read at 1x"."""
    name = precision + (f" + int8 {', '.join(int8_layers)}" if int8_layers else "")
    if net.eval_scale != model.eval_scale:
        name += f", read at {net.eval_scale:g}x (fallback_eval_scale: the int8 head does not run here)"
    return name


class Segmenter:
    """Runs a PSPNet on images of any size and returns class maps at the original resolution."""

    def __init__(self, model: str | Path | PSPNet = "camvid", device: str = "auto", precision: str = "auto",
                 mode: str = "whole", crop: Sequence[int] | None = None, scales: Sequence[float] = (1.0,),
                 flip: bool = False, backend: str = "torch", batch_size: int = 4, threshold: float | None = None,
                 positive: int = 1, mask_values: Sequence[int] | str | None = None,
                 eval_scale: float | None = None):
        """``threshold``: two-class models label ``positive`` where its probability >= threshold (else argmax).
        ``mask_values``: the stored value of each class for written masks (default: the model config's, e.g.
        [0, 255] for a model trained on 0/255 masks; None there, or ``"ids"``, means class ids).
        ``eval_scale``: read frames enlarged by this factor instead of the model's own ``eval_scale`` (a model
        given by name or path; a PSPNet instance or an .onnx file keeps its own)."""
        check_mode(mode, crop)  # before loading a model
        self.int8_layers: list[str] = []  # the convs that run in int8 (see default_net)
        if eval_scale is not None and (isinstance(model, PSPNet) or uses_onnxruntime(model, backend)):
            raise PSPNetError("eval_scale applies when the Segmenter loads the model: pass a name or weights path, "
                              "or load it with PSPNet.from_pretrained(..., eval_scale=S) / export it with --eval-scale")
        if uses_onnxruntime(model, backend):
            self.model: Any = OrtModel(model, device=device)
            self.device = torch.device("cpu")
            self.precision = "fp32"
            self._net: Any = self.model
        else:
            self.device = resolve_device(device)
            self.model = model if isinstance(model, PSPNet) else load(model, eval_scale)
            self.model.eval().to(self.device)
            self._net, self.precision, self.int8_layers = default_net(self.model, self.device, precision)
        cfg = self.model.config
        # the factor frames are enlarged by before the network: the model's, or its fallback (see default_net)
        self.eval_scale: float = getattr(self._net, "eval_scale", cfg.get("eval_scale", 1.0))
        self.class_names: list[str] = cfg["class_names"]
        self.palette: list[list[int]] = cfg["palette"]
        self.num_classes: int = cfg["num_classes"]
        self.mean: list[float] = cfg["mean"]
        self.std: list[float] = cfg["std"]
        self.align_corners = cfg.get("align_corners", True)
        self.mode, self.crop, self.scales, self.flip = mode, crop, tuple(scales), flip
        self.batch_size = batch_size
        if threshold is not None:
            threshold_prediction(torch.zeros(1, self.num_classes, 1, 1), threshold, positive)  # checks, one message
        if positive not in (0, 1):
            raise PSPNetError(f"positive must be class 0 or 1, got {positive}")
        self.threshold, self.positive = threshold, positive
        values = cfg.get("mask_values") if mask_values is None else None if mask_values == "ids" else mask_values
        if values is not None and len(values) != self.num_classes:
            raise PSPNetError(f"mask values {list(values)}: one per class needed, the model has {self.num_classes} "
                              f"classes ({', '.join(self.class_names)})")
        self.mask_values: list[int] | None = [int(v) for v in values] if values is not None else None

    def check_size(self, image: Image.Image) -> None:
        """Refuse whole-image inference that would need more memory than the limit (only the size is read)."""
        scale = max(self.scales) * self.model.config.get("eval_scale", 1.0)  # the model may enlarge it too
        if self.mode == "whole" and image.width * image.height * scale**2 > MAX_WHOLE_IMAGE_PIXELS:
            at = f" at scale {scale:g}" if scale != 1 else ""
            raise PSPNetError(
                f"image of {image.width}x{image.height}{at} is above the whole-image limit of "
                f"{MAX_WHOLE_IMAGE_PIXELS / 1e6:.0f} MP (memory); use mode='slide' with a crop (--mode slide --crop 512 512)")

    def _batched(self, images: Sequence[ImageLike], run: Callable[[torch.Tensor], torch.Tensor]) -> list[np.ndarray]:
        """``run`` on normalised batches of equal-sized images, its output split back per image, in order."""
        pils = [to_pil(im) for im in images]
        for im in pils:
            self.check_size(im)
        out: list[np.ndarray | None] = [None] * len(pils)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(pils):
            groups.setdefault(im.size, []).append(i)
        for idx in groups.values():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                x = to_input([pils[i] for i in chunk], self.mean, self.std).to(self.device)
                with torch.inference_mode(), autocast(self.device, self.precision):
                    y = run(x)
                for i, yi in zip(chunk, y.cpu().numpy()):
                    out[i] = yi
        return out  # type: ignore[return-value]

    def probs_batch(self, images: Sequence[ImageLike]) -> list[np.ndarray]:
        """Class probabilities (C, H, W) per image; equal-sized images share a forward pass."""
        return self._batched(images, lambda x: predict_probs(
            self._net, x, self.num_classes, self.mode, self.crop, self.scales, self.flip, self.align_corners).float())

    def labels(self, probs: np.ndarray) -> np.ndarray:
        """(H, W) class ids (uint8 when classes fit) from (C, H, W) probabilities: argmax, or the threshold."""
        dtype = np.uint8 if self.num_classes <= 256 else np.int32
        if self.threshold is None:
            return probs.argmax(0).astype(dtype)
        return threshold_prediction(torch.from_numpy(probs[None]), self.threshold, self.positive)[0].numpy().astype(dtype)

    def predict_batch(self, images: Sequence[ImageLike]) -> list[np.ndarray]:
        """(H, W) class maps (uint8 when classes fit) for a list of images."""
        if self.threshold is None and self.mode == "whole" and self.scales == (1.0,) and not self.flip:
            # One plain forward pass: the argmax of the logits is the argmax of the probabilities (softmax is
            # monotonic and ties go to the first class in both; only two logits within one fp32 rounding step
            # of each other could tie after the softmax and not before), without the softmax and the float copy.
            dtype = torch.uint8 if self.num_classes <= 256 else torch.int32
            return self._batched(images, lambda x: self._net(x).argmax(1).to(dtype))
        return [self.labels(p) for p in self.probs_batch(images)]

    def __call__(self, image: ImageLike) -> np.ndarray:
        return self.predict_batch([image])[0]

    def probs(self, image: ImageLike) -> np.ndarray:
        return self.probs_batch([image])[0]

    def overlay(self, image: ImageLike, labels: np.ndarray | None = None, alpha: float = 0.5,
                legend: bool = True) -> Image.Image:
        """The image with class colours blended in, and a legend of the classes present."""
        pil = to_pil(image)
        labels = self(pil) if labels is None else labels
        return draw_overlay(pil, labels, self.palette, self.class_names, alpha, legend)
