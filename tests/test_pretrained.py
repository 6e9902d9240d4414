"""ImageNet backbone weights for the deep-stem ResNet from semseg, mmseg and timm files (synthetic, real key names)."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from pspnet import create_model
from pspnet.errors import PSPNetError
from pspnet.model.pretrained import map_backbone_keys
from pspnet.model.resnet import DilatedResNet

# Our names -> each library's, i.e. the inverse of pretrained.KEY_MAPS, written out independently.
SEMSEG_STEM = {"layer0.0.": "conv1.", "layer0.1.": "bn1.", "layer0.3.": "conv2.", "layer0.4.": "bn2.",
               "layer0.6.": "conv3.", "layer0.7.": "bn3."}


def semseg_state(depth: int = 50) -> dict[str, torch.Tensor]:
    """resnet50_v2.pth as hszhao/semseg's ``resnet.py`` (deep_base) names it, with the ImageNet ``fc``."""
    state = {}
    for key, value in DilatedResNet(depth).state_dict().items():
        for ours, theirs in SEMSEG_STEM.items():
            if key.startswith(ours):
                key = theirs + key.removeprefix(ours)
        state[key] = value.clone() + 0.5 if value.is_floating_point() else value.clone()
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 2048), torch.randn(1000)
    return state


def mmseg_state() -> dict[str, torch.Tensor]:
    """mmseg's resnet50_v1c: ``stem.0/1/3/4/6/7``, 32-32-64 wide, under ``state_dict``."""
    state = {re.sub(r"^layer0\.", "stem.", k): v.clone() + 0.25 if v.is_floating_point() else v.clone()
             for k, v in DilatedResNet(50, stem_widths=(32, 32, 64), contract_dilation=True).state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 2048), torch.randn(1000)
    return state


def timm_state() -> dict[str, torch.Tensor]:
    """timm's resnet50d, straight from timm (random init): ``conv1.0/1/3/4/6``, ``bn1``, ``downsample.1/2``."""
    import timm

    return timm.create_model("resnet50d", pretrained=False).state_dict()


def backbone_of(model) -> dict[str, torch.Tensor]:
    return model.backbone.state_dict()


def test_semseg_resnet50_v2_loads_every_tensor(tmp_path):
    state = semseg_state()
    torch.save(state, tmp_path / "resnet50_v2.pth")
    model = create_model("pspnet_resnet50", num_classes=5, pretrained_backbone=str(tmp_path / "resnet50_v2.pth"))
    got = backbone_of(model)
    assert torch.equal(got["layer0.0.weight"], state["conv1.weight"])
    assert torch.equal(got["layer0.7.running_var"], state["bn3.running_var"])
    assert torch.equal(got["layer4.2.conv3.weight"], state["layer4.2.conv3.weight"])
    assert torch.equal(got["layer1.0.downsample.1.bias"], state["layer1.0.downsample.1.bias"])
    assert len([k for k in got if not k.endswith("num_batches_tracked")]) == \
        len([k for k in state if not k.startswith("fc.") and not k.endswith("num_batches_tracked")])


def test_semseg_resnet101_v2_in_a_wrapper_with_module_prefix(tmp_path):
    state = {"state_dict": {f"module.{k}": v for k, v in semseg_state(101).items()}}
    torch.save(state, tmp_path / "resnet101_v2.pth")
    model = create_model("pspnet_resnet101", num_classes=3, pretrained_backbone=str(tmp_path / "resnet101_v2.pth"))
    assert torch.equal(backbone_of(model)["layer3.22.bn2.weight"],
                       state["state_dict"]["module.layer3.22.bn2.weight"])


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_mmseg_resnet50_v1c(tmp_path, suffix):
    state = mmseg_state()
    path = tmp_path / f"resnet50_v1c{suffix}"
    if suffix == ".pth":
        torch.save({"meta": {"epoch": 100}, "state_dict": state}, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = create_model("pspnet_resnet50_v1c", num_classes=4, pretrained_backbone=str(path))
    got = backbone_of(model)
    assert torch.equal(got["layer0.3.weight"], state["stem.3.weight"])
    assert torch.equal(got["layer0.7.running_mean"], state["stem.7.running_mean"])
    assert torch.equal(got["layer2.0.downsample.0.weight"], state["layer2.0.downsample.0.weight"])


def test_timm_resnet50d(tmp_path, caplog):
    state = timm_state()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "resnet50d.safetensors"))
    model = create_model("pspnet_resnet50_v1c", num_classes=4,
                         pretrained_backbone=str(tmp_path / "resnet50d.safetensors"))
    got = backbone_of(model)
    assert torch.equal(got["layer0.6.weight"], state["conv1.6.weight"])
    assert torch.equal(got["layer0.7.weight"], state["bn1.weight"])
    assert torch.equal(got["layer1.0.downsample.0.weight"], state["layer1.0.downsample.1.weight"])
    assert torch.equal(got["layer3.0.downsample.1.running_var"], state["layer3.0.downsample.2.running_var"])
    assert "average-pools" in caplog.text


def test_layouts_are_detected_from_keys():
    assert map_backbone_keys(semseg_state())[0] == "semseg"
    assert map_backbone_keys(mmseg_state())[0] == "mmseg"
    assert map_backbone_keys({f"backbone.{k}": v for k, v in mmseg_state().items()})[0] == "mmseg"
    assert map_backbone_keys(timm_state())[0] == "timm"


def test_wrong_stem_names_the_model_that_fits(tmp_path):
    torch.save(mmseg_state(), tmp_path / "v1c.pth")
    with pytest.raises(PSPNetError, match=r"v1c\.pth: mmseg ImageNet weights do not fit.*other shapes"
                                          r".*layer0\.0\.weight.*pspnet_resnet50_v1c"):
        create_model("pspnet_resnet50", pretrained_backbone=str(tmp_path / "v1c.pth"))


def test_missing_and_extra_tensors_are_named(tmp_path):
    state = semseg_state()
    del state["layer4.2.bn3.running_mean"]
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(PSPNetError, match=r"1 missing, e\.g\. layer4\.2\.bn3\.running_mean; 1 extra, e\.g\. "
                                          r"layer5\.0\.conv1\.weight"):
        create_model("pspnet_resnet50", pretrained_backbone=str(tmp_path / "cut.pth"))
    before = create_model("pspnet_resnet50").backbone.layer0[0].weight.shape  # nothing half-loaded either way
    assert before == (64, 3, 3, 3)


@pytest.mark.parametrize("content, message", [
    (None, "no such backbone weights file.*--backbone-weights.*--no-pretrained"),
    ({"conv.weight": torch.zeros(1)}, "not ImageNet weights of a deep-stem ResNet"),
    (b"not a checkpoint", "not a readable PyTorch checkpoint"),
])
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "w.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(PSPNetError, match=message):
        create_model("pspnet_resnet50", pretrained_backbone=str(path))


def test_resnet_without_a_file_names_the_flags_that_work():
    with pytest.raises(PSPNetError, match="--backbone-weights FILE.*--no-pretrained"):
        create_model("pspnet_resnet50", pretrained_backbone=True)
