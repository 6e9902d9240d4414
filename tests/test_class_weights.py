"""Median-frequency class weights for the loss, and starting a run from earlier weights."""

import numpy as np
import pytest
import torch
from PIL import Image

from pspnet.data.datasets import SegmentationDataset, identity_lut
from pspnet.engine.train import loss_weights
from pspnet.errors import PSPNetError


def _dataset(tmp_path, masks):
    pairs = []
    for i, m in enumerate(masks):
        img, msk = tmp_path / f"{i}.png", tmp_path / f"{i}_m.png"
        Image.new("RGB", m.shape[::-1]).save(img)
        Image.fromarray(m.astype(np.uint8)).save(msk)
        pairs.append((img, msk))
    return SegmentationDataset(pairs, 3, identity_lut(3))


def test_median_frequency_by_hand(tmp_path):
    a = np.zeros((4, 4), np.uint8)
    a[:, :1] = 1  # image 0: class 0 12 px, class 1 4 px
    b = np.full((4, 4), 2, np.uint8)
    b[0, 0] = 255  # image 1: class 2 15 px, 1 ignored
    ds = _dataset(tmp_path, [a, b])
    # frequencies: class 0 12/16, class 1 4/16, class 2 15/16 -> median 12/16
    w = loss_weights("median_frequency", ds)
    torch.testing.assert_close(w, torch.tensor([1.0, 3.0, 12 / 15]))
    torch.testing.assert_close(loss_weights("sqrt_median_frequency", ds), w.sqrt())
    assert loss_weights(None, ds) is None
    torch.testing.assert_close(loss_weights([1, 2, 3], ds), torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(PSPNetError, match="3 classes"):
        loss_weights([1, 2], ds)
