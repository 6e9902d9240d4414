"""semseg and mmseg checkpoints map onto PSPNet by name; mistakes are explained, not guessed around.

The checkpoints here are synthetic: our own state dicts renamed to the other project's key layout
(written out independently of pspnet.model.convert), wrapped the way that project saves them. The
real layouts were checked against hszhao/semseg's and mmsegmentation 1.2.2's own models.
"""

import re
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from pspnet import PSPNet, PSPNetError, create_model
from pspnet.cli import main
from pspnet.model.convert import detect_format
from pspnet.model.serialization import convert_checkpoint, load_weights_file, safe_torch_load

CITYSCAPES_CFG = """
data_preprocessor = dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=(512, 1024))
model = dict(type='EncoderDecoder', backbone=dict(type='ResNetV1c', depth=50, dilations=(1, 1, 2, 4),
    strides=(1, 2, 1, 1), style='pytorch', contract_dilation=True),
    decode_head=dict(type='PSPHead', in_channels=2048, channels=512, pool_scales=(1, 2, 3, 6), num_classes=19,
    align_corners=False))
"""


def to_semseg(state: dict) -> dict:
    """Our names -> semseg's as its DataParallel-wrapped model saves them."""
    return {"module." + k.removeprefix("backbone."): v.clone() for k, v in state.items()}


def to_mmseg(state: dict) -> dict:
    """Our names -> mmseg 1.x's EncoderDecoder(ResNetV1c, PSPHead, FCNHead) names."""
    out = {}
    for k, v in state.items():
        k = k.replace("backbone.layer0.", "backbone.stem.")
        k = re.sub(r"^ppm\.features\.(\d)\.1\.", r"decode_head.psp_modules.\1.1.conv.", k)
        k = re.sub(r"^ppm\.features\.(\d)\.2\.", r"decode_head.psp_modules.\1.1.bn.", k)
        for ours, theirs in (("cls.0.", "decode_head.bottleneck.conv."), ("cls.1.", "decode_head.bottleneck.bn."),
                             ("cls.4.", "decode_head.conv_seg."), ("aux.0.", "auxiliary_head.convs.0.conv."),
                             ("aux.1.", "auxiliary_head.convs.0.bn."), ("aux.4.", "auxiliary_head.conv_seg.")):
            if k.startswith(ours):
                k = theirs + k.removeprefix(ours)
        out[k] = v.clone()
    return out


def randomised(model: PSPNet) -> PSPNet:
    """Non-default BN statistics so that a swapped tensor could not go unnoticed."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def r50_semseg():
    return randomised(PSPNet(num_classes=21, layers=50))


@pytest.fixture(scope="module")
def r50_v1c():
    return randomised(create_model("pspnet_resnet50_v1c", num_classes=19))


def assert_same_weights(a: PSPNet, b: PSPNet) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_semseg_checkpoint_maps_every_tensor(r50_semseg):
    sd = to_semseg(r50_semseg.state_dict())
    # real semseg PSPNet-50 (VOC) names and shapes
    for key, shape in {"module.layer0.0.weight": (64, 3, 3, 3), "module.layer0.6.weight": (128, 64, 3, 3),
                       "module.layer1.0.downsample.0.weight": (256, 128, 1, 1),
                       "module.ppm.features.3.1.weight": (512, 2048, 1, 1), "module.ppm.features.3.2.running_var": (512,),
                       "module.cls.0.weight": (512, 4096, 3, 3), "module.cls.4.weight": (21, 512, 1, 1),
                       "module.aux.0.weight": (256, 1024, 3, 3), "module.aux.4.bias": (21,)}.items():
        assert tuple(sd[key].shape) == shape, key
    ckpt = {"epoch": 50, "state_dict": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 0.01}]}}
    assert detect_format(ckpt) == "semseg"
    model = convert_checkpoint(ckpt, PSPNet)
    assert_same_weights(model, r50_semseg)
    c = model.config
    assert (c["backbone"], c["stem_widths"], c["contract_dilation"], c["align_corners"]) == ("resnet50", [64, 64, 128],
                                                                                             False, True)
    assert c["mean"] == [0.485, 0.456, 0.406] and c["std"] == [0.229, 0.224, 0.225]
    assert model.class_names[:2] == ["background", "aeroplane"]  # 21 classes -> VOC names, guessed


def test_semseg_file_is_detected_by_from_pretrained(tmp_path):
    src = randomised(PSPNet(num_classes=4, layers=18, head_channels=16, aux_channels=8))
    path = tmp_path / "train_epoch_50.pth"
    torch.save({"epoch": 50, "state_dict": to_semseg(src.state_dict()), "optimizer": {"state": {}}}, path)
    model = PSPNet.from_pretrained(path)
    assert_same_weights(model, src)
    assert model.config["backbone"] == "resnet18" and model.class_names == [f"class_{i}" for i in range(4)]
    x = torch.randn(1, 3, 33, 41)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))


def test_semseg_eval_checkpoint_without_aux_head(r50_semseg):
    sd = {k: v for k, v in to_semseg(r50_semseg.state_dict()).items() if not k.startswith("module.aux.")}
    model = convert_checkpoint({"state_dict": sd}, PSPNet, dataset="voc")
    assert model.aux is None and model.config["aux"] is False


def test_mmseg_checkpoint_maps_every_tensor_and_reads_meta(r50_v1c):
    sd = to_mmseg(r50_v1c.state_dict())
    # real mmseg 1.x names and shapes of PSPNet-R50-D8 (Cityscapes)
    for key, shape in {"backbone.stem.0.weight": (32, 3, 3, 3), "backbone.stem.6.weight": (64, 32, 3, 3),
                       "backbone.layer1.0.downsample.0.weight": (256, 64, 1, 1),
                       "decode_head.psp_modules.3.1.conv.weight": (512, 2048, 1, 1),
                       "decode_head.psp_modules.3.1.bn.running_var": (512,),
                       "decode_head.bottleneck.conv.weight": (512, 4096, 3, 3),
                       "decode_head.conv_seg.weight": (19, 512, 1, 1),
                       "auxiliary_head.convs.0.conv.weight": (256, 1024, 3, 3),
                       "auxiliary_head.conv_seg.bias": (19,)}.items():
        assert tuple(sd[key].shape) == shape, key
    palette = [[i, i, i] for i in range(19)]
    ckpt = {"meta": {"cfg": CITYSCAPES_CFG, "dataset_meta": {"classes": tuple(f"c{i}" for i in range(19)),
                                                              "palette": palette}},
            "state_dict": sd}
    assert detect_format(ckpt) == "mmseg"
    model = convert_checkpoint(ckpt, PSPNet)
    assert_same_weights(model, r50_v1c)
    c = model.config
    assert (c["stem_widths"], c["contract_dilation"], c["align_corners"]) == ([32, 32, 64], True, False)
    assert c["mean"] == [0.485, 0.456, 0.406] and c["std"] == [0.229, 0.224, 0.225]  # 0-255 units -> 0-1
    assert model.class_names[:2] == ["c0", "c1"] and c["palette"] == palette  # the checkpoint's own metadata wins


def test_mmseg_0x_meta_and_dataset_guess(r50_v1c):
    sd = to_mmseg(r50_v1c.state_dict())
    model = convert_checkpoint({"meta": {"CLASSES": None}, "state_dict": sd}, PSPNet)
    assert model.class_names[0] == "road" and model.config["palette"][0] == [128, 64, 128]  # 19 -> Cityscapes
    with pytest.raises(PSPNetError, match="19 classes but ade20k has 150"):
        convert_checkpoint({"meta": {}, "state_dict": sd}, PSPNet, dataset="ade20k")


def test_missing_and_extra_keys_are_listed(r50_v1c):
    sd = to_mmseg(r50_v1c.state_dict())
    del sd["decode_head.bottleneck.bn.running_mean"]
    sd["decode_head.extra_conv.weight"] = torch.zeros(1)
    with pytest.raises(PSPNetError) as err:
        convert_checkpoint({"meta": {}, "state_dict": sd}, PSPNet, origin="ckpt.pth")
    msg = str(err.value)
    assert "ckpt.pth" in msg and "missing ['cls.1.running_mean']" in msg and "decode_head.extra_conv.weight" in msg


def test_pyramid_levels_must_match_the_bins(r50_semseg):
    sd = {k: v for k, v in to_semseg(r50_semseg.state_dict()).items() if not k.startswith("module.ppm.features.3.")}
    with pytest.raises(PSPNetError, match=r"pyramid has 3 levels but bins are \[1, 2, 3, 6\]; pass bins="):
        convert_checkpoint({"state_dict": sd}, PSPNet)


def test_wrong_class_count_says_how_to_fine_tune(r50_semseg):
    with pytest.raises(PSPNetError, match=r"21 classes, not 5.*pspnet convert .*--num-classes 5.*replace_head"):
        convert_checkpoint({"state_dict": to_semseg(r50_semseg.state_dict())}, PSPNet, num_classes=5)


def test_source_mismatch_and_unknown_layouts(r50_semseg):
    sd = to_semseg(r50_semseg.state_dict())
    with pytest.raises(PSPNetError, match="not a mmseg PSPNet checkpoint.*which look like semseg"):
        convert_checkpoint({"state_dict": sd}, PSPNet, source="mmseg")
    assert detect_format({"state_dict": {"fc.weight": torch.zeros(1)}}) is None
    with pytest.raises(PSPNetError, match=r"not a semseg or mmseg PSPNet checkpoint \(it has keys \['fc.weight'\]\)"):
        convert_checkpoint({"state_dict": {"fc.weight": torch.zeros(1)}}, PSPNet)


def test_mmseg_bgr_model_is_turned_into_an_rgb_one():
    """A model trained on BGR (to_rgb=False) gives the same logits from RGB input after conversion."""
    torch.manual_seed(0)
    src = randomised(create_model("pspnet_resnet18_v1c", num_classes=3, head_channels=32, aux=False))
    cfg = "img_norm_cfg = dict(mean=[103.53, 116.28, 123.675], std=[57.375, 57.12, 58.395], to_rgb=False)"
    model = convert_checkpoint({"meta": {"config": cfg}, "state_dict": to_mmseg(src.state_dict())}, PSPNet)
    assert model.config["mean"] == [0.485, 0.456, 0.406]
    rgb = torch.rand(1, 3, 33, 33)
    bgr_norm = (rgb.flip(1) - torch.tensor([0.406, 0.456, 0.485]).view(1, 3, 1, 1)) / torch.tensor(
        [0.225, 0.224, 0.229]).view(1, 3, 1, 1)
    rgb_norm = (rgb - torch.tensor(model.config["mean"]).view(1, 3, 1, 1)) / torch.tensor(model.config["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(src(bgr_norm), model(rgb_norm), atol=1e-5)


@pytest.fixture
def fake_mmengine(monkeypatch):
    """A stand-in for mmengine's HistoryBuffer, so a checkpoint pickles the globals mmengine's do."""
    module = types.ModuleType("mmengine.logging.history_buffer")

    class HistoryBuffer:
        def __init__(self):
            self._log_history = np.array([1.0, 0.5])
            self._statistics_methods = {"min": HistoryBuffer.min}  # pickled as getattr(HistoryBuffer, "min")

        def min(self):
            return self._log_history.min()

    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = module.__name__, "HistoryBuffer"
    HistoryBuffer.min.__module__, HistoryBuffer.min.__qualname__ = module.__name__, "HistoryBuffer.min"
    module.HistoryBuffer = HistoryBuffer
    for name in ("mmengine", "mmengine.logging"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return HistoryBuffer


def mmseg_checkpoint(model: PSPNet, history_buffer: type) -> dict:
    """Laid out as mmengine's Runner saves it: numpy and mmengine objects in the metadata."""
    return {"meta": {"cfg": CITYSCAPES_CFG.replace("num_classes=19", "num_classes=3"), "seed": np.int64(1234),
                     "dataset_meta": {"classes": ("a", "b", "c"), "palette": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]}},
            "state_dict": to_mmseg(model.state_dict()), "message_hub": {"log_scalars": {"loss": history_buffer()}}}


def test_mmengine_metadata_loads_as_inert_placeholders(tmp_path, fake_mmengine, monkeypatch):
    src = randomised(create_model("pspnet_resnet18_v1c", num_classes=3, head_channels=16, aux_channels=8))
    path = tmp_path / "iter_40000.pth"
    torch.save(mmseg_checkpoint(src, fake_mmengine), path)
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    assert {"builtins.getattr", "mmengine.logging.history_buffer.HistoryBuffer"} <= unsafe
    assert any(g.startswith("numpy.") for g in unsafe)
    for name in ("mmengine", "mmengine.logging", "mmengine.logging.history_buffer"):
        monkeypatch.delitem(sys.modules, name)  # nothing of it is needed to load
    model = PSPNet.from_pretrained(path)
    assert_same_weights(model, src)
    assert model.class_names == ["a", "b", "c"] and model.config["align_corners"] is False


def test_cli_convert_writes_a_model_folder(tmp_path, fake_mmengine, capsys):
    src = randomised(create_model("pspnet_resnet18_v1c", num_classes=3, head_channels=16, aux_channels=8))
    path = tmp_path / "iter_80000.pth"
    torch.save(mmseg_checkpoint(src, fake_mmengine), path)
    out = tmp_path / "converted"
    assert main(["convert", str(path), "--from", "mmseg", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    card = (out / "README.md").read_text()
    assert "`a`, `b`, `c`" in card and "iter_80000.pth" in card and "library_name: pspnet" in card
    assert_same_weights(PSPNet.from_pretrained(out), src)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # a second run into the same folder refuses, and a bad checkpoint never touches it
    assert main(["convert", str(path), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "nope.pth"), "--out", str(out), "--overwrite"]) == 2
    assert "nope.pth: no such file" in capsys.readouterr().err
    assert main(["convert", str(path), "--from", "semseg", "--out", str(out), "--overwrite"]) == 2
    assert "not a semseg PSPNet checkpoint" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_cli_convert_with_a_new_head_feeds_fine_tuning(tmp_path, capsys):
    src = randomised(PSPNet(num_classes=21, layers=18, head_channels=16, aux_channels=8))
    path = tmp_path / "train_epoch_50.pth"
    torch.save({"epoch": 50, "state_dict": to_semseg(src.state_dict())}, path)
    assert main(["convert", str(path), "--num-classes", "5", "--out", str(tmp_path / "head5")]) == 0
    model = PSPNet.from_pretrained(tmp_path / "head5")
    assert model.num_classes == 5 and model.cls[4].out_channels == 5 and model.aux[4].out_channels == 5
    assert torch.equal(model.state_dict()["cls.0.weight"], src.state_dict()["cls.0.weight"])
    assert "new 5-class" in (tmp_path / "head5" / "README.md").read_text()


def test_load_weights_file_reports_missing_directories_and_damage(tmp_path):
    with pytest.raises(PSPNetError, match="no such file"):
        load_weights_file(tmp_path / "missing.pth", PSPNet)
    with pytest.raises(PSPNetError, match="is a directory"):
        load_weights_file(tmp_path, PSPNet)
    good = tmp_path / "good.pth"
    torch.save({"state_dict": {"w": torch.zeros(100)}}, good)
    for name, data in [("truncated.pth", good.read_bytes()[:300]), ("junk.pth", bytes(range(256)) * 4)]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(PSPNetError, match=f"{name}: not a readable PyTorch checkpoint, the file is damaged"):
            safe_torch_load(tmp_path / name)
    with pytest.raises(PSPNetError, match=r"good.pth: not a pspnet, semseg or mmseg PSPNet checkpoint \(it has keys"):
        load_weights_file(good, PSPNet)


# ---- malicious pickles: refused by every loading path, and nothing runs ----------------------------------------


class WritesAFile:
    """Unpickling this creates ``target``: by os.system, or by calling open() directly."""

    def __init__(self, target, how):
        self.target, self.how = str(target), how

    def __reduce__(self):
        if self.how == "system":
            import os

            return os.system, (f"touch '{self.target}'",)
        return open, (self.target, "w")


@pytest.fixture(params=[("zip", "system"), ("zip", "open"), ("legacy", "system"), ("legacy", "open")],
                ids=lambda p: "-".join(p))
def evil(request, tmp_path):
    """A checkpoint-shaped .pth whose unpickling would write ``pwned``; yields (path, target)."""
    fmt, how = request.param
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    ckpt = {"epoch": 1, "state_dict": {"module.layer0.0.weight": torch.zeros(1)}, "meta": WritesAFile(target, how)}
    torch.save(ckpt, path, _use_new_zipfile_serialization=fmt == "zip")
    yield path, target
    assert not target.exists(), "unpickling ran code from the file"


def test_malicious_pickle_is_refused_by_the_python_api(evil):
    from pspnet.engine.checkpoint import load_checkpoint

    path, _ = evil
    for load in (lambda p: load_weights_file(p, PSPNet), PSPNet.from_pretrained, load_checkpoint):
        with pytest.raises(PSPNetError, match=r"evil.pth: refused to load: the pickle asks for \S*(system|open)"):
            load(path)


def test_malicious_pickle_is_refused_by_the_cli(evil, tmp_path, capsys):
    path, _ = evil
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.png").write_bytes(b"earlier result")
    for argv in (["predict", "--model", str(path), str(tmp_path / "x.png"), "--out", str(out)],
                 ["convert", str(path), "--out", str(out), "--overwrite"]):
        Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "evil.pth: refused to load: the pickle asks for" in err and "Traceback" not in err
    assert [p.name for p in out.iterdir()] == ["keep.png"] and (out / "keep.png").read_bytes() == b"earlier result"


def test_getattr_is_only_allowed_on_metadata_placeholders(tmp_path):
    """mmengine needs builtins.getattr; on anything but a placeholder it is refused."""
    import collections

    class Sneaky:
        def __reduce__(self):
            return getattr, (collections.OrderedDict, "fromkeys")

    path = tmp_path / "sneaky.pth"
    torch.save({"x": Sneaky()}, path)
    with pytest.raises(PSPNetError, match=r"sneaky.pth: refused to load: the pickle asks for builtins.getattr"):
        safe_torch_load(path)
