"""PSPNet (Zhao et al., CVPR 2017) in one file: pyramid pooling, heads, and weights as safetensors.

Defaults follow the paper and hszhao/semseg: dilated ResNet-50 with the deep stem (output stride
8), bins (1, 2, 3, 6), a 512-channel 3x3 classifier with Dropout2d(0.1), and an auxiliary FCN head on
layer3 that only runs in training (loss weight 0.4). Module names match semseg's, under ``backbone.``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from pspnet.errors import PSPNetError
from pspnet.model.resnet import DEPTHS, DilatedResNet
from pspnet.model.timm_backbone import TimmBackbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class PoolBatchNorm(nn.BatchNorm2d):
    """BatchNorm that survives one value per channel (bin 1, batch 1) in training.

    Batch statistics of a single value are undefined and plain BatchNorm raises. Here such a batch
    is normalised with the running statistics, which it does not update; any larger batch trains
    as usual. The state dict is a plain BatchNorm2d's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.numel() == x.shape[1]:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class PPM(nn.Module):
    """Pyramid pooling: pool to each bin size, 1x1 conv to in/len(bins) channels, upsample, concat."""

    def __init__(self, in_channels: int, bins: Sequence[int], align_corners: bool = True):
        super().__init__()
        if in_channels % len(bins):
            raise ValueError(f"{in_channels} input channels do not split evenly over {len(bins)} bins")
        reduction = in_channels // len(bins)
        self.align_corners = align_corners
        self.features = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(in_channels, reduction, 1, bias=False),
                PoolBatchNorm(reduction),
                nn.ReLU(inplace=True),
            )
            for b in bins
        )
        self.out_channels = in_channels * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        out = [x] + [F.interpolate(f(x), size, mode="bilinear", align_corners=self.align_corners) for f in self.features]
        return torch.cat(out, 1)


def segmentation_head(in_channels: int, mid_channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    """3x3 conv -> BN -> ReLU -> Dropout2d -> 1x1 conv; indices 0, 1, 4 hold weights as in semseg."""
    return nn.Sequential(
        nn.Conv2d(in_channels, mid_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(mid_channels),
        nn.ReLU(inplace=True),
        nn.Dropout2d(dropout),
        nn.Conv2d(mid_channels, num_classes, 1),
    )


class SkipDecoder(nn.Module):
    """Optional, not in the paper: fuse the pyramid head with stride-4 backbone features.

    At output stride 16 a 2-5 px pole or sign post covers a fraction of one cell, and dilating the
    backbone to stride 8 costs 3.6x the FLOPs. DeepLabV3+'s decoder instead upsamples the head's
    features to 1/4 and refines them with low-level ones: the 1x1 reduce runs at 1/16, one 3x3 conv
    at 1/4. ``fuse`` is a ``segmentation_head``, so its index 4 is the classifier as in ``cls``.
    """

    def __init__(self, head_channels: int, low_channels: int, channels: int, num_classes: int, dropout: float,
                 align_corners: bool = True, skip_channels: int = 48):
        super().__init__()
        self.align_corners = align_corners
        self.reduce = nn.Sequential(nn.Conv2d(head_channels, channels, 1, bias=False), nn.BatchNorm2d(channels),
                                    nn.ReLU(inplace=True))
        self.skip = nn.Sequential(nn.Conv2d(low_channels, skip_channels, 1, bias=False),
                                  nn.BatchNorm2d(skip_channels), nn.ReLU(inplace=True))
        self.fuse = segmentation_head(channels + skip_channels, channels, num_classes, dropout)

    def forward(self, x: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.reduce(x), low.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        return self.fuse(torch.cat([x, self.skip(low)], 1))


class PSPNet(nn.Module, PyTorchModelHubMixin, library_name="pspnet", tags=["semantic-segmentation", "pspnet"]):
    """Pyramid Scene Parsing Network.

    ``forward(x)`` takes normalised images (N, 3, H, W) of any size and returns logits
    (N, num_classes, H, W). In training mode with ``aux=True`` it returns ``(logits, aux_logits)``.
    Every constructor argument is JSON-serialisable and saved with the weights, so a weights file
    alone rebuilds the model.
    """

    def __init__(
        self,
        num_classes: int = 21,
        layers: int = 50,
        backbone: str | None = None,
        output_stride: int = 8,
        bins: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        aux: bool = True,
        align_corners: bool = True,
        head_channels: int = 512,
        aux_channels: int = 256,
        decoder_channels: int = 0,
        stem_widths: Sequence[int] = (64, 64, 128),
        contract_dilation: bool = False,
        pretrained_backbone: bool | str = False,
        class_names: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        backbone = backbone or f"resnet{layers}"
        self.config: dict[str, Any] = {
            "num_classes": num_classes, "backbone": backbone, "output_stride": output_stride,
            "bins": list(bins), "dropout": dropout, "aux": aux, "align_corners": align_corners,
            "head_channels": head_channels, "aux_channels": aux_channels, "decoder_channels": decoder_channels,
            "stem_widths": list(stem_widths),
            "contract_dilation": contract_dilation,
            "class_names": list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)],
            "palette": [list(c) for c in palette] if palette else default_palette(num_classes),
            "mean": list(mean), "std": list(std),
        }
        resnet_depth = {f"resnet{d}": d for d in DEPTHS}.get(backbone)
        if resnet_depth is not None:
            if pretrained_backbone:
                raise PSPNetError(
                    "ImageNet weights for the deep-stem ResNet come from semseg/mmseg checkpoints: "
                    "use PSPNet.from_pretrained(path) or `pspnet convert`"
                )
            self.backbone = DilatedResNet(resnet_depth, output_stride, tuple(stem_widths), contract_dilation,
                                          low_level=decoder_channels > 0)
        else:
            self.backbone = TimmBackbone(backbone, output_stride, pretrained_backbone, low_level=decoder_channels > 0)
        aux_in, feat_in = self.backbone.channels[-2:]
        self.align_corners = align_corners
        self.ppm = PPM(feat_in, bins, align_corners)
        self.cls = segmentation_head(self.ppm.out_channels, head_channels, num_classes, dropout)
        self.decoder = None
        if decoder_channels:  # cls keeps its 3x3 conv (same keys), the decoder classifies
            self.cls = self.cls[:3]
            self.decoder = SkipDecoder(head_channels, self.backbone.channels[0], decoder_channels, num_classes,
                                       dropout, align_corners)
        self.aux = segmentation_head(aux_in, aux_channels, num_classes, dropout) if aux else None

    @property
    def num_classes(self) -> int:
        return self.config["num_classes"]

    @property
    def class_names(self) -> list[str]:
        return self.config["class_names"]

    @property
    def classifier_head(self) -> nn.Sequential:
        """The head whose index 4 is the final 1x1 conv (``cls``, or the decoder's ``fuse``)."""
        return self.decoder.fuse if self.decoder is not None else self.cls

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        size = x.shape[-2:]
        features = self.backbone(x)
        c_aux, c_last = features[-2:]
        logits = self.cls(self.ppm(c_last))
        if self.decoder is not None:
            logits = self.decoder(logits, features[0])
        # For 8n+1 inputs this is exactly semseg's zoom to (H-1)/8*8+1; any other size works too.
        logits = F.interpolate(logits, size, mode="bilinear", align_corners=self.align_corners)
        if self.training and self.aux is not None:
            aux = F.interpolate(self.aux(c_aux), size, mode="bilinear", align_corners=self.align_corners)
            return logits, aux
        return logits

    # ---- weights with their config --------------------------------------------------------------

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:  # type: ignore[override]
        """Write ``model.safetensors`` (config in its metadata), ``config.json`` and a model card to a directory."""
        kwargs["config"] = kwargs.get("config") or self.config  # push_to_hub passes config=None explicitly
        super().save_pretrained(save_directory, **kwargs)

    def generate_model_card(self, *args: Any, **kwargs: Any) -> Any:
        """A README.md that says what the weights expect (preprocessing, classes) and how to load them.

        ``model_card_kwargs`` may give ``repo_id``, ``source`` (a line on where the weights come from)
        and ``license``.
        """
        from huggingface_hub import ModelCard, ModelCardData

        c = self.config
        repo = kwargs.get("repo_id") or "ORG/NAME"
        backbone = c["backbone"]
        if backbone.startswith("resnet"):
            backbone += f" (deep stem {c['stem_widths']}{', contracted dilation' if c['contract_dilation'] else ''})"
        card_data = ModelCardData(library_name="pspnet", pipeline_tag="image-segmentation", license=kwargs.get("license"),
                                  tags=["semantic-segmentation", "pspnet", c["backbone"]])
        text = "\n".join([
            "---", card_data.to_yaml(), "---", "",
            f"# PSPNet ({c['backbone']}, {c['num_classes']} classes)", "",
            "Pyramid Scene Parsing Network (Zhao et al., CVPR 2017) for semantic segmentation, saved by the "
            "`pspnet` library.", "",
            *([kwargs["source"], ""] if kwargs.get("source") else []),
            "| setting | value |", "| --- | --- |",
            f"| backbone | {backbone}, output stride {c['output_stride']} |",
            f"| pyramid bins | {c['bins']} |", f"| align_corners | {c['align_corners']} |",
            *([f"| decoder | skip decoder at stride 4, {c['decoder_channels']} channels (not in the paper) |"]
              if c["decoder_channels"] else []),
            f"| input | RGB scaled to 0..1, then normalised with mean {c['mean']} and std {c['std']} |", "",
            "## Classes", "", ", ".join(f"`{n}`" for n in c["class_names"]), "",
            "## Use", "", "```python", "import pspnet", "",
            f'model = pspnet.PSPNet.from_pretrained("{repo}")  # or a local folder',
            'labels = pspnet.Segmenter(model)("street.jpg")  # (H, W) class indices, preprocessing as above',
            "logits = model(images)  # (N, 3, H, W) normalised as above -> (N, classes, H, W)",
            "```", "", f"or `pspnet predict --model {repo} street.jpg`. The weights are safetensors with the config "
            "in their metadata: loading them runs no code from the file.", "",
        ])
        return ModelCard(text)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:  # type: ignore[override]
        """Upload weights, config and model card to the Hub repo ``repo_id`` (created if missing)."""
        kwargs["model_card_kwargs"] = {"repo_id": repo_id, **(kwargs.get("model_card_kwargs") or {})}
        return super().push_to_hub(repo_id, **kwargs)

    def _save_pretrained(self, save_directory: Path) -> None:
        save_safetensors(self, save_directory / WEIGHTS_NAME)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> "PSPNet":  # type: ignore[override]
        """Load from a directory, a .safetensors file, a checkpoint (.pth: ours, semseg or mmseg) or a Hub id."""
        path = Path(pretrained_model_name_or_path)
        if path.is_file():
            from pspnet.model.convert import load_weights_file

            return load_weights_file(path, **kwargs)
        if path.is_dir() and not (path / WEIGHTS_NAME).is_file():
            raise PSPNetError(f"{path}: directory has no {WEIGHTS_NAME}")
        if not path.exists() and (str(pretrained_model_name_or_path).count("/") != 1 or path.suffix):
            raise PSPNetError(f"{path}: no such file, directory or Hub id (Hub ids look like 'org/name')")
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

        try:
            return super().from_pretrained(str(pretrained_model_name_or_path), **kwargs)
        except (EntryNotFoundError, HfHubHTTPError, ConnectionError) as err:  # no network, no repo, no file
            raise PSPNetError(f"{pretrained_model_name_or_path}: could not get {WEIGHTS_NAME} from the Hugging Face "
                              f"Hub ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from err

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None = None, cache_dir: Any = None,
                         force_download: bool = False, local_files_only: bool = False, token: Any = None,
                         map_location: str = "cpu", strict: bool = True, **config: Any) -> "PSPNet":
        if Path(model_id).is_dir():
            weights = Path(model_id) / WEIGHTS_NAME
        else:
            from huggingface_hub import hf_hub_download

            weights = Path(hf_hub_download(model_id, WEIGHTS_NAME, revision=revision, cache_dir=cache_dir,
                                           force_download=force_download, token=token,
                                           local_files_only=local_files_only))
        return load_safetensors(weights, map_location=map_location, **config)


def default_palette(num_classes: int) -> list[list[int]]:
    """Pascal VOC's bit-interleaved colour map, which gives any number of distinct colours."""
    palette = []
    for i in range(num_classes):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append([r, g, b])
    return palette


def save_safetensors(model: PSPNet, path: str | Path) -> None:
    """Write weights with the config in the metadata, atomically (temp file, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"pspnet_config": json.dumps(model.config), "format": "pt"})
    tmp.chmod(0o644)  # safetensors creates 0600 files; published weights must be readable by everyone
    tmp.replace(path)


def read_safetensors_config(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for a damaged header
        raise PSPNetError(f"{path}: not a readable safetensors file ({err})") from err
    if "pspnet_config" in meta:
        return json.loads(meta["pspnet_config"])
    config_json = path.parent / CONFIG_NAME
    if config_json.is_file():
        return json.loads(config_json.read_text())
    raise PSPNetError(f"{path}: no pspnet config in its metadata and no {CONFIG_NAME} beside it")


def load_safetensors(path: str | Path, map_location: str = "cpu", **overrides: Any) -> PSPNet:
    """Rebuild a PSPNet from a safetensors file; ``overrides`` change config values (e.g. ``aux``)."""
    from safetensors.torch import load_file

    path = Path(path)
    config = read_safetensors_config(path)
    config.update({k: v for k, v in overrides.items() if k in config or k == "pretrained_backbone"})
    config["pretrained_backbone"] = False
    state = load_file(str(path), device=str(map_location))
    return build_with_state(config, state, str(path))


def classifier_key(config: dict[str, Any]) -> str:
    """The state-dict key of the final 1x1 conv's weight (its rows are the classes) for ``config``."""
    return "decoder.fuse.4.weight" if config.get("decoder_channels") else "cls.4.weight"


def build_with_state(config: dict[str, Any], state: dict[str, torch.Tensor], source: str) -> PSPNet:
    """Build the model from ``config`` and load ``state`` strictly, explaining any mismatch."""
    classifier = state.get(classifier_key(config))
    if classifier is not None and classifier.shape[0] != config.get("num_classes"):
        found, asked = classifier.shape[0], config.get("num_classes")
        raise PSPNetError(f"{source}: the weights have {found} classes, not {asked}. To fine-tune them on {asked} "
                          f"classes, give them a new head: `pspnet convert WEIGHTS --num-classes {asked} --out DIR`, "
                          f"then `pspnet train ... --set init_weights=DIR` (in Python: pspnet.replace_head(model, {asked}))")
    try:
        model = PSPNet(**config)
    except (TypeError, ValueError) as err:  # a config that no PSPNet has: unknown key, names vs class count
        raise PSPNetError(f"{source}: its config does not build a PSPNet ({err})") from err
    if not config.get("aux", True):
        state = {k: v for k, v in state.items() if not k.startswith("aux.")}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise PSPNetError(f"{source}: weights do not fit the model: missing {missing[:5]}{'...' if len(missing) > 5 else ''} "
                          f"({len(missing)}), unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} ({len(unexpected)})")
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if state[k].shape != v.shape]
    if wrong:
        raise PSPNetError(f"{source}: {len(wrong)} tensors have other shapes, e.g. {wrong[0][0]} {wrong[0][1]} vs {wrong[0][2]}")
    model.load_state_dict(state)
    return model.eval()


def replace_head(model: PSPNet, num_classes: int, class_names: Sequence[str] | None = None,
                 palette: Sequence[Sequence[int]] | None = None) -> PSPNet:
    """Swap the final 1x1 convs for ``num_classes`` outputs, keeping every other weight (fine-tuning)."""
    for head in (model.classifier_head, model.aux):
        if head is not None:
            old = head[4]
            head[4] = nn.Conv2d(old.in_channels, num_classes, 1).to(old.weight.device)
    model.config.update(
        num_classes=num_classes,
        class_names=list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)],
        palette=[list(c) for c in palette] if palette else default_palette(num_classes),
    )
    return model
