"""Binary and few-class folders that work without options, and every mismatch caught before training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pspnet.cli import main
from pspnet.data import build_dataset
from pspnet.data.check import check_dataset
from pspnet.data.custom import to_stored_values
from pspnet.data.datasets import IGNORE
from pspnet.errors import PSPNetError

H, W = 8, 10


def write_pair(root: Path, split: str, stem: str, values, rgb_mask: bool = False) -> None:
    """An image and a mask whose pixels cycle through ``values`` (so each is present), in ``split/``."""
    for sub in ("images", "masks"):
        (root / split / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W), 128, np.uint8)).save(root / split / "images" / f"{stem}.png")
    arr = np.asarray(values, np.uint8)[np.arange(H * W) % len(values)].reshape(H, W)
    Image.fromarray(np.stack([arr] * 3, -1) if rgb_mask else arr).save(root / split / "masks" / f"{stem}.png")


def labels(ds) -> set[int]:
    return set(torch.unique(torch.cat([ds[i][1].flatten() for i in range(len(ds))])).tolist())


@pytest.mark.parametrize("stored,mask_values,names", [
    ([0, 255], [0, 255], ["background", "foreground"]),
    ([0, 1], [0, 1], ["background", "foreground"]),
    ([0, 85, 170, 255], [0, 85, 170, 255], ["class_0", "class_1", "class_2", "class_3"]),
    ([0, 1, 2, 255], [0, 1, 2], ["class_0", "class_1", "class_2"]),  # 255 stays 'ignore' after 0..K-1
])
def test_classes_come_from_the_mask_values_without_options(tmp_path, stored, mask_values, names):
    write_pair(tmp_path, "train", "a", stored)
    write_pair(tmp_path, "val", "a", stored[:1])  # val alone holds one value: the classes still come from train
    for split in ("train", "val"):
        ds = build_dataset("folder", tmp_path, split)
        assert ds.mask_values == mask_values and ds.num_classes == len(mask_values) and ds.class_names == names
    expected = set(range(len(mask_values))) | ({IGNORE} if 255 in stored and 255 not in mask_values else set())
    assert labels(build_dataset("folder", tmp_path, "train")) == expected


def test_grayscale_masks_saved_as_rgb_are_label_maps(tmp_path):
    write_pair(tmp_path, "train", "a", [0, 255], rgb_mask=True)
    ds = build_dataset("folder", tmp_path, "train")
    assert ds.mask_values == [0, 255] and labels(ds) == {0, 1}


def test_num_classes_2_on_0_255_masks_makes_255_a_class_not_ignore(tmp_path):
    write_pair(tmp_path, "train", "a", [0, 255])
    ds = build_dataset("folder", tmp_path, "train", num_classes=2)
    assert ds.mask_values == [0, 255] and labels(ds) == {0, 1}
    # saying so keeps the old meaning, and then check-data shows that class 1 is empty
    ds = build_dataset("folder", tmp_path, "train", num_classes=2, ignore_index=255)
    assert labels(ds) == {0, IGNORE}
    report = check_dataset("folder", tmp_path, ["train"], progress=False, num_classes=2, ignore_index=255)
    assert not report.ok and [p.kind for p in report.problems] == ["empty_class"]
    assert "class_1" in report.problems[0].message and "mask values 1" in report.problems[0].message
    assert "ignored 50.0%" in report.text()


def test_unclaimed_values_are_an_error_with_counts_and_the_fix(tmp_path):
    write_pair(tmp_path, "train", "a", [0, 1, 7, 7])
    with pytest.raises(PSPNetError) as err:
        build_dataset("folder", tmp_path, "train", num_classes=2)
    message = str(err.value)
    assert message.startswith(str(tmp_path / "train" / "masks" / "a.png"))
    assert "label values [7] are outside the class set" in message and "7: 40 px" in message
    assert "mask_values: [0, 1, 7]" in message
    assert "binary: true" in message
    report = check_dataset("folder", tmp_path, ["train"], progress=False, num_classes=2)
    assert [p.kind for p in report.problems] == ["bad_labels"]  # the file, and beside it the counts and the fix
    assert len(report.label_fixes) == 1 and "7: 40 px" in report.label_fixes[0]
    assert "in all: train: label values [7]" in report.text() and "mask_values: [0, 1, 7]" in report.text()
    with pytest.raises(PSPNetError, match=r"\[0, 2, 2\] repeat"):
        build_dataset("folder", tmp_path, "train", mask_values=[0, 2, 2])


def test_lossy_or_intensity_masks_are_refused_with_the_fix(tmp_path):
    write_pair(tmp_path, "train", "a", list(range(0, 160, 2)))  # JPEG noise; 0..K-1 would be K classes
    with pytest.raises(PSPNetError, match="80 different values.*binary: true"):
        build_dataset("folder", tmp_path, "train")
    assert labels(build_dataset("folder", tmp_path, "train", binary=True)) == {0, 1}
    write_pair(tmp_path / "one", "train", "a", [3])
    with pytest.raises(PSPNetError, match="only the value 3"):
        build_dataset("folder", tmp_path / "one", "train")


def test_check_data_cli_fails_on_an_empty_class_and_lists_the_stored_values(tmp_path, capsys):
    write_pair(tmp_path, "train", "a", [0, 255])
    write_pair(tmp_path, "val", "a", [0, 255])
    out = tmp_path / "report.json"
    assert main(["check-data", "--dataset", "folder", "--data-root", str(tmp_path), "--no-progress",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "background = 0, foreground = 255" in printed and "no problems found" in printed
    assert json.loads(out.read_text())["mask_values"] == [0, 255]
    assert main(["check-data", "--dataset", "folder", "--data-root", str(tmp_path), "--no-progress",
                 "--data-opt", "mask_values=[0, 128, 255]"]) == 2
    printed = capsys.readouterr().out
    assert "classes with no pixels in the training split" in printed and "['class_1'] (mask values 128)" in printed


def test_predictions_go_back_in_the_stored_values(tmp_path):
    write_pair(tmp_path, "train", "a", [0, 255])
    ds = build_dataset("folder", tmp_path, "train")
    labels = np.array([[0, 1], [1, 0]])
    out = to_stored_values(labels, ds.mask_values)
    assert out.dtype == np.uint8 and out.tolist() == [[0, 255], [255, 0]]
    assert to_stored_values(labels, [0, 1000]).dtype == np.uint16
    assert (to_stored_values(labels, None) == labels).all()
    with pytest.raises(PSPNetError, match="only 1 mask_values"):
        to_stored_values(labels, [0])
