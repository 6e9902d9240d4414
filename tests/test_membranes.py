"""The synthetic membrane set is a 0/255 binary folder that pspnet takes without options."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pspnet.data import build_dataset
from pspnet.data.check import check_dataset


def load_generator():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "make_membranes.py"
    spec = importlib.util.spec_from_file_location("make_membranes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_membrane_frames_are_thin_dark_lines_over_cells(tmp_path):
    gen = load_generator()
    image, mask = gen.make_frame(np.random.default_rng(1), size=256)
    assert image.shape == mask.shape == (256, 256) and image.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 255}
    share = (mask == 0).mean()
    assert 0.08 < share < 0.35, share  # thin: a minority class
    assert image[mask == 0].mean() < image[mask == 255].mean() - 40  # membranes are darker than the cells
    root = gen.write_dataset(tmp_path / "em", train=2, val=1, size=128)
    report = check_dataset("folder", root, ("train", "val"), progress=False)
    assert report.ok and report.mask_values == [0, 255] and report.samples == {"train": 2, "val": 1}
    ds = build_dataset("folder", root, "val")
    assert ds.num_classes == 2 and set(ds[0][1].unique().tolist()) == {0, 1}
    with pytest.raises(SystemExit, match="already exists"):
        gen.write_dataset(root, train=1, val=0, size=128)
    assert np.asarray(Image.open(root / "train" / "masks" / "frame_000.png")).dtype == np.uint8
