"""``create_model``: PSPNet by name, e.g. ``pspnet_resnet50`` or ``pspnet_<any timm model>``."""

from __future__ import annotations

from typing import Any

from pspnet.errors import PSPNetError
from pspnet.model.pspnet import PSPNet
from pspnet.model.resnet import DEPTHS

# mmsegmentation's ResNetV1c: a narrower deep stem and the first dilated block at half dilation.
V1C = {"stem_widths": (32, 32, 64), "contract_dilation": True, "align_corners": False}


def _timm_norm(backbone: str) -> dict[str, Any]:
    """The mean/std the timm backbone was trained with (EfficientNet-Lite: 0.5/0.5)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(backbone.split(".")[0]) if timm.is_model(backbone) else None
    if cfg is None:
        return {}
    return {"mean": tuple(cfg.mean), "std": tuple(cfg.std)}


def create_model(name: str = "pspnet_resnet50", num_classes: int = 21, **kwargs: Any) -> PSPNet:
    """Build a PSPNet.

    ``pspnet_resnet{18,34,50,101,152}`` is the paper's deep-stem dilated ResNet (semseg layout),
    ``pspnet_resnet50_v1c`` mmsegmentation's variant, and ``pspnet_<timm name>`` (or
    ``create_model("pspnet", backbone=<timm name>)``) any timm model with ``features_only``.

    ``pretrained_backbone``: ``True`` loads a timm backbone's ImageNet weights; for the deep-stem ResNet
    it is the path of an ImageNet weights file (semseg, mmseg or timm layout, see ``pretrained.py``).
    """
    if not name.startswith("pspnet"):
        raise ValueError(f"model names start with 'pspnet', got {name!r}")
    backbone = kwargs.pop("backbone", None) or name.removeprefix("pspnet").removeprefix("_") or "resnet50"
    if backbone.endswith("_v1c") and backbone.removesuffix("_v1c") in {f"resnet{d}" for d in DEPTHS}:
        backbone = backbone.removesuffix("_v1c")
        kwargs = {**V1C, **kwargs}
    if backbone not in {f"resnet{d}" for d in DEPTHS}:
        kwargs = {**_timm_norm(backbone), **kwargs}
        return PSPNet(num_classes=num_classes, backbone=backbone, **kwargs)
    weights = kwargs.pop("pretrained_backbone", False)
    if weights is True:
        raise PSPNetError(f"{name}: ImageNet weights for the deep-stem ResNet come from a local file: pass "
                          "--backbone-weights FILE (semseg resnet50_v2.pth, mmseg resnet50_v1c or timm resnet50d; "
                          "pretrained_backbone='FILE' in Python), or train from scratch with --no-pretrained")
    model = PSPNet(num_classes=num_classes, backbone=backbone, **kwargs)
    if weights:
        from pspnet.model.pretrained import load_backbone_weights

        load_backbone_weights(model.backbone, weights)
    return model
