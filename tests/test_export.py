"""ONNX export at dynamic sizes, BN folding, fast paths, the onnxruntime backend and int8.

Tiny models only (a timm test EfficientNet with a 16-channel head): the properties tested here do
not depend on the model's size, and the whole file runs in well under a minute on two cores.
"""

import copy
import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from pspnet import create_model
from pspnet.cli import main
from pspnet.errors import PSPNetError
from pspnet.inference.fast import FastPath, fast_call, fast_model
from pspnet.model.bundled import SAMPLE_IMAGE
from pspnet.inference.fold import fold_batchnorm
from pspnet.export.pooling import ExportableAdaptiveAvgPool2d

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from pspnet.export.onnx import cached_onnx, export_onnx, parity  # noqa: E402
from pspnet.inference.ort import read_onnx_config  # noqa: E402
from pspnet.inference.ort import OrtModel  # noqa: E402

TRACED = (64, 96)
SIZES = ((97, 131), (160, 120))  # odd and even, neither the traced size; bins 2, 3, 6 do not divide them


def tiny_model(seed: int = 0, **kwargs) -> nn.Module:
    """A small PSPNet whose BN statistics are far from the identity, so folding them is a real test."""
    torch.manual_seed(seed)
    model = create_model("pspnet_test_efficientnet", num_classes=3, head_channels=16, aux_channels=8, **kwargs)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.3, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return tiny_model()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    report = export_onnx(model, path, size=TRACED, check_sizes=SIZES)
    return path, report


# ---- pyramid pooling that stays exact at every size ---------------------------------------------------------------

@pytest.mark.parametrize("bins", [1, 2, 3, 6, (2, 5)])
@pytest.mark.parametrize("size", [(4, 5), (13, 17), (60, 60)])
def test_exportable_pooling_equals_adaptive_avg_pool(bins, size):
    x = torch.randn(2, 3, *size)
    torch.testing.assert_close(ExportableAdaptiveAvgPool2d(bins)(x), nn.AdaptiveAvgPool2d(bins)(x))


def test_plain_adaptive_pooling_cannot_export_dynamic_sizes_ours_can(tmp_path):
    """Why pooling.py exists: the stock exporter refuses adaptive pooling on a dynamic size (and with a fixed
    size bakes that size's kernel into the graph); ours is exact at a size it never saw."""
    import onnxruntime as ort

    x, other = torch.randn(1, 2, 12, 12), torch.randn(1, 2, 10, 14)
    kwargs = {"dynamo": False, "input_names": ["x"], "dynamic_axes": {"x": {2: "h", 3: "w"}}}
    with pytest.raises(Exception, match="adaptive_avg_pool2d"):
        torch.onnx.export(nn.AdaptiveAvgPool2d(3), (x,), str(tmp_path / "plain.onnx"), **kwargs)
    torch.onnx.export(ExportableAdaptiveAvgPool2d(3), (x,), str(tmp_path / "ours.onnx"), **kwargs)
    session = ort.InferenceSession(str(tmp_path / "ours.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"x": other.numpy()})[0])
    torch.testing.assert_close(got, nn.AdaptiveAvgPool2d(3)(other))


# ---- ONNX export ---------------------------------------------------------------------------------------------------

def test_onnx_matches_pytorch_at_two_sizes_other_than_traced(model, exported):
    path, report = exported
    assert report["traced_size"] == list(TRACED)
    assert [p["size"] for p in report["parity"]] == [list(s) for s in SIZES]
    for p in parity(model, path, SIZES, batch=2, seed=1):  # batch 2: the batch axis is dynamic too
        assert p["max_abs_diff"] <= 1e-3, p
        assert p["argmax_agreement"] >= 0.999, p
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert not ops & {"AveragePool", "BatchNormalization"}  # no baked pool kernels, BN folded
    dims = [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] and dims[2] and dims[3] and not dims[1]  # N, H, W symbolic; 3 channels fixed


def test_skip_decoder_exports_with_dynamic_sizes(tmp_path):
    model = tiny_model(decoder_channels=8)
    report = export_onnx(model, tmp_path / "decoder.onnx", size=TRACED, check_sizes=SIZES)
    assert all(p["max_abs_diff"] <= 1e-3 and p["argmax_agreement"] >= 0.999 for p in report["parity"]), report
    assert read_onnx_config(tmp_path / "decoder.onnx")["decoder_channels"] == 8


def test_eval_scale_exports_with_dynamic_sizes(tmp_path):
    """A model that reads frames enlarged (the bundled CamVid model) keeps that resize in its ONNX graph."""
    model = tiny_model(decoder_channels=8, eval_scale=1.2)
    report = export_onnx(model, tmp_path / "scaled.onnx", size=TRACED, check_sizes=SIZES)
    assert all(p["max_abs_diff"] <= 1e-3 and p["argmax_agreement"] >= 0.999 for p in report["parity"]), report
    assert read_onnx_config(tmp_path / "scaled.onnx")["eval_scale"] == 1.2


def test_every_conv_bias_is_an_initializer(tmp_path):
    """Untrained BNs fold to equal biases, which the exporter would share through Identity nodes; the int8
    quantizer needs each bias as an initializer of its own."""
    torch.manual_seed(0)
    model = create_model("pspnet_test_efficientnet", num_classes=3, head_channels=16, aux_channels=8).eval()
    export_onnx(model, tmp_path / "plain.onnx", size=TRACED, check=False)
    graph = onnx.load(str(tmp_path / "plain.onnx")).graph
    inits = {i.name for i in graph.initializer}
    biases = [n.input[2] for n in graph.node if n.op_type == "Conv" and len(n.input) > 2]
    assert biases and all(b in inits for b in biases)
    assert not any(n.op_type == "Identity" for n in graph.node)


def test_onnx_metadata_carries_the_config(model, exported):
    path, _ = exported
    config = read_onnx_config(path)
    for key in ("class_names", "palette", "mean", "std", "num_classes"):
        assert config[key] == json.loads(json.dumps(model.config[key]))
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert json.loads(meta["class_names"]) == config["class_names"]
    assert json.loads(meta["palette"]) == config["palette"]


def test_export_errors_are_clear(model, tmp_path):
    with pytest.raises(PSPNetError, match=r"\.onnx"):
        export_onnx(model, tmp_path / "model.bin", check=False)
    foreign = tmp_path / "foreign.onnx"
    torch.onnx.export(nn.Conv2d(3, 2, 1), (torch.randn(1, 3, 4, 4),), str(foreign), dynamo=False)
    with pytest.raises(PSPNetError, match="no 'pspnet_config'"):
        read_onnx_config(foreign)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(PSPNetError, match="not a readable ONNX file"):
        read_onnx_config(tmp_path / "junk.onnx")
    with pytest.raises(PSPNetError, match="runs .onnx files; export the model first"):
        OrtModel(model)  # type: ignore[arg-type]


def test_export_cli_writes_a_checked_file_with_metadata(model, tmp_path, capsys):
    weights = tmp_path / "tiny"
    model.save_pretrained(weights)
    out = tmp_path / "cli.onnx"
    assert main(["export", "--model", str(weights), "--out", str(out), "--size", "64", "64"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["path"] == str(out) and len(report["parity"]) == 2
    assert all(p["max_abs_diff"] <= 1e-3 for p in report["parity"])
    assert read_onnx_config(out)["class_names"] == model.config["class_names"]
    assert main(["export", "--model", str(weights), "--out", str(out), "--int8"]) == 2
    assert "--calib" in capsys.readouterr().err


# ---- BN folding and the PyTorch fast paths ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, kwargs", [
    ("pspnet_test_efficientnet", {}),  # timm BatchNormAct2d (BN + activation in one module)
    ("pspnet_resnet18", {}),  # our dilated ResNet: BasicBlock, deep stem, pyramid branches, head
    ("pspnet_resnet18", {"decoder_channels": 8}),  # and the skip decoder's convs
])
def test_folded_model_equals_unfolded(name, kwargs):
    torch.manual_seed(0)
    model = tiny_model() if name == "pspnet_test_efficientnet" else create_model(
        name, num_classes=3, head_channels=16, aux_channels=8, **kwargs).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    x = torch.randn(2, 3, 57, 75)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)


def test_fast_fp32_path_equals_eager(model):
    x = torch.randn(1, 3, 70, 90)
    path = FastPath("fp32 fold+NHWC", fold_bn=True, channels_last=True)
    with torch.no_grad():
        torch.testing.assert_close(fast_call(fast_model(model, path), x, path), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kernel, size", [(3, (64, 80)), (3, (65, 81)), (5, (64, 81)), (5, (7, 6)), (3, (1, 2))])
def test_zero_tap_same_conv_equals_timms_padded_conv(kernel, size):
    """TF "same" padding as zero kernel taps: the windows timm's Conv2dSame gets by padding the input."""
    from timm.layers import Conv2dSame

    from pspnet.inference.fast import ZeroTapSameConv

    torch.manual_seed(0)
    for groups, bias in ((8, False), (1, True)):
        timm_conv = Conv2dSame(8, 8, kernel, stride=2, groups=groups, bias=bias)
        conv = ZeroTapSameConv(8, 8, kernel, stride=2, groups=groups, bias=bias)
        conv.load_state_dict(timm_conv.state_dict())
        x = torch.randn(2, 8, *size).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            torch.testing.assert_close(conv(x), timm_conv(x), atol=1e-5, rtol=1e-5)


def test_zero_tap_same_path_swaps_every_tf_same_conv_and_keeps_the_labels():
    from timm.layers import Conv2dSame

    from pspnet.inference.fast import ZeroTapSameConv

    torch.manual_seed(0)
    model = create_model("pspnet_tf_efficientnet_lite0", num_classes=3, output_stride=16, head_channels=16,
                         aux_channels=8, decoder_channels=8).eval()
    assert sum(isinstance(m, Conv2dSame) for m in model.modules()) == 4  # the stem and three stride-2 blocks
    plain = FastPath("fp32 fold+NHWC", fold_bn=True, channels_last=True)
    taps = FastPath("fp32 fold+NHWC taps", fold_bn=True, channels_last=True, zero_tap_same=True)
    net = fast_model(model, taps)
    assert sum(isinstance(m, ZeroTapSameConv) for m in net.modules()) == 4
    assert not any(isinstance(m, Conv2dSame) for m in net.modules())
    assert any(isinstance(m, Conv2dSame) for m in model.modules())  # the model given is left alone
    for size in ((64, 96), (67, 93)):
        x = torch.randn(1, 3, *size)
        expected = fast_call(fast_model(model, plain), x, plain)
        torch.testing.assert_close(fast_call(net, x, taps), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act", [nn.ReLU(), nn.ReLU6()])
def test_conv_act_is_the_conv_then_the_activation_bit_for_bit(act, dtype):
    """One oneDNN call with the activation as a post-op: the same values as the two modules, also for a TF-same
    conv, with and without autocast, and the plain path where there is a gradient to keep."""
    from pspnet.device import autocast
    from pspnet.inference.fast import ConvAct, ZeroTapSameConv

    torch.manual_seed(0)
    for conv in (nn.Conv2d(16, 24, 3, padding=1), nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=16),
                 ZeroTapSameConv(16, 16, 5, stride=2, groups=16), nn.Conv2d(16, 8, 1, bias=False)):
        conv = conv.to(memory_format=torch.channels_last)
        if conv.bias is not None:
            nn.init.normal_(conv.bias, 0, 3)  # outputs on both sides of 0 and 6
        x = (3 * torch.randn(2, 16, 23, 30)).contiguous(memory_format=torch.channels_last)
        fused = ConvAct(copy.deepcopy(conv).to(dtype), act)
        with torch.inference_mode():
            expected = act(copy.deepcopy(conv).to(dtype)(x.to(dtype)))
            assert torch.equal(fused(x.to(dtype)), expected)
            if dtype == torch.bfloat16:  # autocast with fp32 weights and input: autocast's dtype, the same values
                with autocast(torch.device("cpu"), "bf16"):
                    assert torch.equal(ConvAct(conv, act)(x), act(conv(x)))
        out = ConvAct(conv, act)(x.requires_grad_())  # training: the plain modules, so backward works
        out.sum().backward()
        assert x.grad is not None
        x.grad = None


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fused_activations_path_gives_the_unfused_logits(precision):
    """Every ReLU6 of EfficientNet-Lite (after BN folding) and every ReLU of the heads is fused, the fp32 stem's
    convs inside their Float32 wrapper; the logits are the unfused path's (bit for bit in bf16)."""
    from pspnet.inference.fast import ConvAct, Float32

    torch.manual_seed(0)
    model = create_model("pspnet_tf_efficientnet_lite0", num_classes=3, output_stride=16, head_channels=16,
                         aux_channels=8, decoder_channels=8).eval()
    kwargs = {"fold_bn": True, "channels_last": True, "zero_tap_same": True, "fp32_stem": precision == "bf16"}
    plain = FastPath("plain", precision, **kwargs)
    fused = FastPath("fused", precision, fuse_act=True, **kwargs)
    net = fast_model(model, fused)
    convs_with_act = sum(isinstance(m, (nn.ReLU, nn.ReLU6)) for m in model.modules())
    acts = [m for m in net.modules() if isinstance(m, ConvAct)]
    assert len(acts) == convs_with_act  # every activation follows a conv and its (folded) BN
    assert all(isinstance(m.act, (nn.ReLU, nn.ReLU6)) for m in acts)
    if precision == "bf16":
        assert any(isinstance(m, Float32) and isinstance(m.module, ConvAct) for m in net.modules())
    x = torch.randn(1, 3, 67, 93)
    got, expected = fast_call(net, x, fused), fast_call(fast_model(model, plain), x, plain)
    if precision == "bf16":
        assert torch.equal(got, expected)
    else:  # oneDNN may pick another fp32 kernel for a conv with a post-op: the same sums in another order
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_fp32_stem_is_the_narrow_half_resolution_convs():
    """EfficientNet-Lite's stem and first block stay fp32; its first expansion (96 channels at half resolution, the
    largest activation) and the deep ResNet stem's 128-channel conv do not."""
    from pspnet.inference.fast import high_resolution_convs

    lite = create_model("pspnet_tf_efficientnet_lite0", num_classes=3, output_stride=16, head_channels=16,
                        aux_channels=8, decoder_channels=8).eval()
    assert high_resolution_convs(lite) == ["backbone.body.conv_stem", "backbone.body.blocks.0.0.conv_dw",
                                           "backbone.body.blocks.0.0.conv_pw"]
    assert high_resolution_convs(lite, max_channels=96)[-1] == "backbone.body.blocks.1.0.conv_pw"
    resnet = create_model("pspnet_resnet18", num_classes=3, head_channels=16, aux_channels=8).eval()
    assert high_resolution_convs(resnet) == ["backbone.layer0.0", "backbone.layer0.3"]


def test_fp32_stem_keeps_the_half_resolution_convs_in_fp32(model):
    from pspnet.inference.fast import Float32, high_resolution_convs

    stem = high_resolution_convs(model)
    assert stem and all(name.startswith("backbone.") for name in stem)
    path = FastPath("bf16 fp32-stem", "bf16", fold_bn=True, channels_last=True, fp32_stem=True)
    net = fast_model(model, path)
    assert sum(isinstance(m, Float32) for m in net.modules()) == len(stem)
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        out = fast_call(net, x, path).float()
        assert out.shape == (1, 3, 64, 80)
        assert (out - model(x)).abs().max() < 0.1  # bf16 after the stem: close, not equal
    with pytest.raises(PSPNetError, match="autocast only"):
        fast_model(model, FastPath("x", "bf16", cast_weights=True, fp32_stem=True))


def test_autocast_path_stores_the_low_precision_conv_weights_once_with_identical_logits(model):
    """Weights that autocast would round to bf16 on every call are stored rounded: same logits, bit for bit;
    the fp32 stem keeps its fp32 weights and the model given is left alone."""
    import copy

    from pspnet.device import autocast
    from pspnet.inference.fast import Float32

    path = FastPath("bf16 fp32-stem", "bf16", fold_bn=True, channels_last=True, fp32_stem=True)
    net = fast_model(model, path)
    stem = [m.module for m in net.modules() if isinstance(m, Float32)]
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert stem and all(m.weight.dtype == torch.float32 for m in stem)
    assert all(m.weight.dtype == torch.bfloat16 for m in convs if not any(m is s for s in stem))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    reference = copy.deepcopy(net)  # the same net with fp32 weights: what autocast alone would run
    for m in reference.modules():
        if isinstance(m, nn.Conv2d):
            m.float()
    x = torch.randn(2, 3, 64, 80).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(torch.device("cpu"), "bf16"):
        assert torch.equal(net(x), reference(x))


def test_segmenter_in_bf16_uses_the_fp32_stem_and_leaves_the_model_alone(model):
    from pspnet.inference.fast import Float32
    from pspnet.inference.segmenter import Segmenter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # emulated bf16 on CPUs without it: slow, still correct
        seg = Segmenter(model, device="cpu", precision="bf16")
    assert any(isinstance(m, Float32) for m in seg._net.modules())
    assert seg.model is model and not any(isinstance(m, Float32) for m in model.modules())
    assert seg(np.zeros((40, 50, 3), np.uint8)).shape == (40, 50)


# ---- the onnxruntime backend ---------------------------------------------------------------------------------------

def test_segmenter_onnxruntime_backend_gives_the_torch_labels(model, exported, tmp_path, monkeypatch):
    from pspnet.inference.segmenter import Segmenter

    monkeypatch.setenv("PSPNET_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "tiny"
    model.save_pretrained(weights)
    images = [(np.random.RandomState(i).rand(70 + 9 * i, 90, 3) * 255).astype(np.uint8) for i in range(2)]
    expected = Segmenter(model, device="cpu", precision="fp32").predict_batch(images)
    by_file = Segmenter(exported[0]).predict_batch(images)  # an .onnx file picks the backend itself
    by_weights = Segmenter(cached_onnx(weights), backend="onnxruntime")  # exported once into the cache
    assert list((tmp_path / "cache" / "onnx").glob("*.onnx"))
    for got in (by_file, by_weights.predict_batch(images)):
        for a, b in zip(expected, got):
            assert a.shape == b.shape and (a == b).mean() >= 0.999
    assert by_weights.class_names == model.config["class_names"]


# ---- int8 on real frames ---------------------------------------------------------------------------------------------

def test_int8_quantization_on_real_camvid_frames(exported, camvid_root, tmp_path):
    from pspnet.export.quantize import compare_on_frames, quantize_onnx

    out = tmp_path / "tiny_int8.onnx"
    report = quantize_onnx(exported[0], out, camvid_root / "train", count=3, size=TRACED)
    assert report["frames"] == 3 and report["quantized_convs"] > 0
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "QuantizeLinear" in ops and "AveragePool" not in ops
    assert "quantization" in {p.key for p in onnx.load(str(out)).metadata_props}
    assert read_onnx_config(out)["class_names"] == read_onnx_config(exported[0])["class_names"]
    cmp = compare_on_frames(exported[0], out, camvid_root / "val", count=2, size=SIZES[0])  # not the calibration size
    assert cmp["frames"] == 2 and cmp["max_abs_diff"] > 0  # really int8: not the fp32 graph again
    assert not list(tmp_path.glob("*augmented*"))  # onnxruntime's scratch file is cleaned up


@pytest.mark.slow
def test_int8_bundled_model_keeps_the_fp32_labels_on_frames_made_here(tmp_path):
    """The default int8 variant of the bundled model agrees with fp32 (calibrated and compared on different frames)."""
    from PIL import Image, ImageEnhance, ImageOps

    from pspnet.export.quantize import compare_on_frames, quantize_onnx

    sample = Image.open(SAMPLE_IMAGE).convert("RGB")
    calib, held = tmp_path / "calib", tmp_path / "held"
    calib.mkdir()
    held.mkdir()
    for i, box in enumerate([(0, 0, 360, 270), (120, 90, 480, 360), (60, 0, 420, 270), (0, 90, 360, 360)]):
        sample.crop(box).resize((480, 360)).save(calib / f"crop{i}.png")
    ImageOps.mirror(sample).save(held / "mirrored.png")
    ImageEnhance.Brightness(sample).enhance(0.7).save(held / "darker.png")
    fp32, int8 = tmp_path / "camvid.onnx", tmp_path / "camvid_int8.onnx"
    export_onnx("camvid", fp32, check=False)
    quantize_onnx(fp32, int8, calib, count=4, size=(360, 480))
    cmp = compare_on_frames(fp32, int8, held, count=2, size=(360, 480))
    assert cmp["frames"] == 2 and cmp["argmax_agreement"] >= 0.99, cmp


def test_int8_needs_real_frames(exported, tmp_path):
    from pspnet.export.quantize import quantize_onnx

    with pytest.raises(PSPNetError, match="does not exist"):
        quantize_onnx(exported[0], tmp_path / "q.onnx", tmp_path / "missing")


def test_cached_onnx_is_made_per_eval_scale(tmp_path, monkeypatch):
    """--backend onnxruntime --eval-scale S: an export per factor, with the resize in its graph."""
    from pspnet.model.serialization import save_safetensors

    monkeypatch.setenv("PSPNET_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "tiny.safetensors"
    save_safetensors(tiny_model(), weights)
    own, enlarged = cached_onnx(weights), cached_onnx(weights, 1.5)
    assert own != enlarged and cached_onnx(weights, 1.5) == enlarged  # made once per factor
    assert read_onnx_config(own)["eval_scale"] == 1.0 and read_onnx_config(enlarged)["eval_scale"] == 1.5
    with pytest.raises(PSPNetError, match=r"own\.onnx|reads frames at the size fixed in its graph"):
        cached_onnx(own.rename(tmp_path / "own.onnx"), 1.5)
