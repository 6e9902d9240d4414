"""Hugging Face Hub: push_to_hub and from_pretrained("org/name") round trip, offline.

The Hub is a local Hugging Face cache read in offline mode (``HF_HUB_OFFLINE``), exactly as after a
download: ``from_pretrained`` runs the real ``hf_hub_download``. Only the two upload calls of the
public ``HfApi`` class are replaced, by writing the pushed folder into that cache as a snapshot.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, constants
from PIL import Image

import pspnet
from pspnet import PSPNet, PSPNetError, create_model
from pspnet.cli import main

COMMIT = "0" * 40


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """Returns repo_id -> the folder that the offline cache serves for it."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def snapshot(repo_id: str) -> Path:
        return cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / COMMIT

    def create_repo(self, repo_id, **kwargs):
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id, folder_path, **kwargs):
        shutil.copytree(folder_path, snapshot(repo_id), dirs_exist_ok=True)
        refs = snapshot(repo_id).parents[1] / "refs"
        refs.mkdir(exist_ok=True)
        (refs / "main").write_text(COMMIT)
        return f"https://huggingface.co/{repo_id}/commit/{COMMIT}"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return snapshot


@pytest.fixture
def tiny() -> PSPNet:
    torch.manual_seed(0)
    return create_model("pspnet_test_efficientnet", num_classes=3, head_channels=16, aux_channels=8,
                        class_names=["sky", "road", "car"]).eval()


def test_push_to_hub_and_back_gives_identical_logits(hub, tiny):
    tiny.push_to_hub("org/tiny-pspnet")
    assert sorted(p.name for p in hub("org/tiny-pspnet").iterdir()) == ["README.md", "config.json",
                                                                      "model.safetensors"]
    card = (hub("org/tiny-pspnet") / "README.md").read_text()
    assert "library_name: pspnet" in card and "pipeline_tag: image-segmentation" in card
    assert 'PSPNet.from_pretrained("org/tiny-pspnet")' in card and "`sky`, `road`, `car`" in card
    assert f"mean {tiny.config['mean']}" in card
    model = PSPNet.from_pretrained("org/tiny-pspnet")
    assert model.config == tiny.config
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(model(x), tiny(x))


def test_cli_predicts_with_a_hub_model(hub, tiny, tmp_path):
    tiny.push_to_hub("org/tiny-pspnet")
    Image.new("RGB", (24, 16), (90, 120, 200)).save(tmp_path / "street.png")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "street.png"), "--model", "org/tiny-pspnet", "--out", str(out),
                 "--device", "cpu", "--no-progress"]) == 0
    assert Image.open(out / "street.png").size == (24, 16)
    assert pspnet.load("org/tiny-pspnet").class_names == ["sky", "road", "car"]


def test_save_pretrained_folder_round_trip_and_card(tmp_path, tiny):
    tiny.save_pretrained(tmp_path / "tiny")
    assert "ORG/NAME" in (tmp_path / "tiny" / "README.md").read_text()
    model = PSPNet.from_pretrained(tmp_path / "tiny")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), tiny(x))


def test_missing_hub_repo_or_file_is_a_clear_error(hub, tiny, capsys):
    with pytest.raises(PSPNetError, match=r"org/absent: could not get model.safetensors from the Hugging Face Hub"):
        PSPNet.from_pretrained("org/absent")
    assert main(["predict", "--model", "org/absent"]) == 2
    err = capsys.readouterr().err
    assert "org/absent: could not get model.safetensors" in err and "Traceback" not in err
    with pytest.raises(PSPNetError, match="no such file, directory or Hub id"):
        PSPNet.from_pretrained("not/a/hub/id")
