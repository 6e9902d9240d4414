"""mix_style: feature statistics blended between crops in the early stages, in training only; resumable."""

from __future__ import annotations

import copy

import pytest
import torch

from pspnet.engine.config import TrainConfig
from pspnet.engine.mix_style import attach_mix_style, mix_style, style_stages
from pspnet.errors import PSPNetError
from pspnet.model import create_model
from test_engine import TINY, assert_option_resumes_alike_and_matters, data  # noqa: F401  (data is a fixture)


def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(dim=(2, 3)), x.var(dim=(2, 3)).sqrt()


def test_each_crop_keeps_its_content_and_takes_a_blend_of_two_crops_styles():
    torch.manual_seed(0)
    x = torch.randn(6, 4, 10, 12) * torch.rand(6, 4, 1, 1) * 3 + torch.randn(6, 4, 1, 1) * 2
    out = mix_style(x, p=1.0)
    mu, sig = stats(x)
    mu_out, sig_out = stats(out)
    normalised = (x - mu[..., None, None]) / sig[..., None, None]
    torch.testing.assert_close((out - mu_out[..., None, None]) / sig_out[..., None, None], normalised,
                               atol=1e-3, rtol=1e-3)  # content: the same pattern in every channel
    # each crop's new mean and std are lam * own + (1 - lam) * another crop's: one lam, one partner, all channels
    for i in range(6):
        fits = []
        for j in range(6):
            d = mu[i] - mu[j]
            lam = ((mu_out[i] - mu[j]) @ d / (d @ d)).item() if j != i else 1.0
            fits.append(-1e-3 <= lam <= 1 + 1e-3
                        and torch.allclose(mu_out[i], lam * mu[i] + (1 - lam) * mu[j], atol=1e-3)
                        and torch.allclose(sig_out[i], lam * sig[i] + (1 - lam) * sig[j], atol=1e-3))
        assert any(fits), f"crop {i} took a style that is no blend of two crops"
    assert not torch.allclose(out, x)


def test_p_gates_whole_batches_and_one_crop_is_left_alone():
    x = torch.randn(4, 3, 5, 5)
    assert mix_style(x, p=0.0) is x
    assert torch.equal(mix_style(x[:1], p=1.0), x[:1])
    torch.manual_seed(1)
    mixed = sum(not torch.equal(mix_style(x, p=0.5), x) for _ in range(400))
    assert 160 < mixed < 240


def test_bf16_features_come_back_in_bf16():
    out = mix_style(torch.randn(4, 3, 6, 6).bfloat16(), p=1.0)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name, kwargs, channels", [
    ("pspnet_test_efficientnet", TINY, (24, 32)),  # output stride 8: the dilated stages repeat stride 8
    ("pspnet_test_efficientnet", {"output_stride": 16, "decoder_channels": 8}, (24, 32)),
    ("pspnet_resnet18", {"stem_widths": (8, 8, 16)}, (64, 128)),
])
def test_hooks_sit_after_the_stride_4_and_8_stages_and_act_only_in_training(name, kwargs, channels):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, **kwargs)
    for module in model.modules():  # no dropout: a training forward then differs only by the mixing
        if isinstance(module, torch.nn.Dropout2d):
            module.p = 0.0
    seen = []
    for stage in style_stages(model):
        stage.register_forward_hook(lambda m, i, o: seen.append((o.shape[1], o.shape[2])))
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        plain_eval = model.eval()(x)
        before = copy.deepcopy(model.state_dict())  # a training forward moves the BN running statistics
        torch.manual_seed(5)
        plain_train = model.train()(x)
        assert seen[:2] == [(channels[0], 16), (channels[1], 8)]
        model.load_state_dict(before)
        handles = attach_mix_style(model, p=1.0)
        assert torch.equal(model.eval()(x), plain_eval)  # eval mode: exactly the model without it
        torch.manual_seed(5)
        assert not torch.allclose(model.train()(x), plain_train)
    for handle in handles:
        handle.remove()


def test_a_mix_style_run_resumes_bit_identically_and_differs_from_one_without(data, tmp_path):  # noqa: F811
    assert_option_resumes_alike_and_matters(data, tmp_path, mix_style=1.0)


def test_bad_values_are_refused_by_name():
    with pytest.raises(PSPNetError, match="mix_style: 1.5 is not allowed; expected a probability in"):
        TrainConfig.from_dict({"mix_style": 1.5})
