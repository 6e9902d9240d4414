"""Every dataset layout, from tiny fixtures written in its real on-disk layout, and check-data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pspnet.cli import main
from pspnet.data import DATASETS, build_dataset, collect_problems
from pspnet.data.check import check_dataset
from pspnet.data.datasets import CITYSCAPES_LABEL_TO_TRAIN, IGNORE
from pspnet.errors import PSPNetError

H, W = 12, 16


def write_image(path: Path, size=(W, H), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def write_mask(path: Path, values, size=(W, H), mode: str = "L", palette: list[int] | None = None) -> Path:
    """A mask whose pixels cycle through ``values`` (so each value is present)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.asarray(values)
    arr = values[np.arange(size[0] * size[1]) % len(values)].reshape(size[1], size[0], *values.shape[1:])
    if mode == "RGB":
        Image.fromarray(arr.astype(np.uint8), "RGB").save(path)
        return path
    img = Image.fromarray(arr.astype(np.uint16 if mode == "I;16" else np.uint8))
    if mode == "P":
        img = img.convert("P")
        img.putpalette(palette or list(range(256)) * 3)
    img.save(path)
    return path


def labels(ds, i=0) -> set[int]:
    return set(torch.unique(ds[i][1]).tolist())


def test_camvid_segnet_layout(tmp_path):
    for split in ("train", "val"):
        for k in range(2):
            write_image(tmp_path / split / f"f{k}.png")
            write_mask(tmp_path / f"{split}annot" / f"f{k}.png", [0, 5, 10, 11])
    ds = build_dataset("camvid", tmp_path, "val")
    assert len(ds) == 2 and ds.num_classes == 11 and ds.class_names[0] == "Sky"
    image, mask = ds[0]
    assert image.shape == (3, H, W) and mask.shape == (H, W) and mask.dtype == torch.long
    assert labels(ds) == {0, 5, 10, IGNORE}  # 11 (void) is ignored


def test_voc_with_sbd_augmented_list(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2012"
    for i in ("2007_000032", "2007_000033", "2008_000001"):
        write_image(base / "JPEGImages" / f"{i}.jpg")
        write_mask(base / "SegmentationClass" / f"{i}.png", [0, 15, 20, 255], mode="P")
        write_mask(base / "SegmentationClassAug" / f"{i}.png", [0, 1, 2])
    write_mask(base / "SegmentationClassAug" / "2011_999999.png", [0, 3])  # SBD-only image
    write_image(base / "JPEGImages" / "2011_999999.jpg")
    sets = base / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2007_000032\n2008_000001\n")
    (sets / "val.txt").write_text("2007_000033\n")
    # semseg's two-column form of the augmented list
    (sets / "train_aug.txt").write_text("\n".join(f"JPEGImages/{i}.jpg SegmentationClassAug/{i}.png"
                                                  for i in ("2007_000032", "2008_000001", "2011_999999")))
    train = build_dataset("voc", tmp_path, "train")  # root may be above VOCdevkit
    assert len(train) == 2 and train.num_classes == 21 and train.class_names[15] == "person"
    assert labels(train) == {0, 15, 20, IGNORE}  # palette PNG indices, 255 border ignored
    aug = build_dataset("voc", base, "train_aug")
    assert len(aug) == 3 and aug.pairs[2][1].parent.name == "SegmentationClassAug"
    assert labels(aug, 2) == {0, 3}
    (sets / "val.txt").write_text("2007_000033\nmissing_id\n")
    with pytest.raises(PSPNetError, match="missing_id.jpg"):
        build_dataset("voc", base, "val")


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    for split, city in (("train", "aachen"), ("val", "frankfurt")):
        for k in range(2):
            stem = f"{city}_00000{k}_000019"
            write_image(tmp_path / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
            write_mask(tmp_path / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", [0, 7, 26, 33, 9, 4])
            write_mask(tmp_path / "gtFine" / split / city / f"{stem}_gtFine_color.png", [0])  # ignored file
    ds = build_dataset("cityscapes", tmp_path, "val")
    assert len(ds) == 2 and ds.num_classes == 19
    assert labels(ds) == {0, 13, 18, IGNORE}  # road, car, bicycle; unlabeled/parking/static ignored
    assert CITYSCAPES_LABEL_TO_TRAIN[26] == 13 and len(CITYSCAPES_LABEL_TO_TRAIN) == 19
    write_mask(tmp_path / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000019_gtFine_labelIds.png", [7, 40])
    with pytest.raises(PSPNetError, match=r"frankfurt_000000_000019_gtFine_labelIds.png: label values \[40\]"):
        ds[0]


def test_ade20k_zero_is_ignored_and_values_shift(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    for split, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        write_image(base / "images" / split / f"{prefix}_00000001.jpg")
        write_mask(base / "annotations" / split / f"{prefix}_00000001.png", [0, 1, 150])
    ds = build_dataset("ade20k", tmp_path, "val")
    assert len(ds) == 1 and ds.num_classes == 150 and ds.class_names[0] == "wall"
    assert labels(ds) == {IGNORE, 0, 149}


def test_coco_stuff_164k_171_classes(tmp_path):
    write_image(tmp_path / "images" / "val2017" / "000000000139.jpg")
    write_mask(tmp_path / "annotations" / "val2017" / "000000000139.png", [0, 11, 12, 181, 255])
    ds = build_dataset("coco_stuff", tmp_path, "val")
    assert ds.num_classes == 171 == len(ds.class_names)
    assert ds.class_names[10] == "fire hydrant" and ds.class_names[11] == "stop sign" and ds.class_names[-1] == "wood"
    # 0 person -> 0, 11 (unused COCO id 12) -> ignore, 12 (stop sign, id 13) -> 11, 181 (wood) -> 170
    assert labels(ds) == {0, 11, 170, IGNORE}


def test_folder_index_masks_split_subfolders_and_dataset_yaml(tmp_path):
    for split in ("train", "val"):
        write_image(tmp_path / "images" / split / "a.jpg")
        write_mask(tmp_path / "masks" / split / "a.png", [0, 1, 2, 255])
    (tmp_path / "dataset.yaml").write_text("classes: [sky, road, car]\n")
    ds = build_dataset("folder", tmp_path, "train")
    assert ds.num_classes == 3 and ds.class_names == ["sky", "road", "car"] and labels(ds) == {0, 1, 2, IGNORE}
    (tmp_path / "dataset.yaml").unlink()  # without options the classes come from the mask values 0, 1, 2
    auto = build_dataset("folder", tmp_path, "train")
    assert auto.num_classes == 3 and auto.mask_values == [0, 1, 2] and labels(auto) == {0, 1, 2, IGNORE}
    assert build_dataset("folder", tmp_path, "val", num_classes=3).num_classes == 3
    with pytest.raises(PSPNetError, match=r"label values \[2\]"):
        build_dataset("folder", tmp_path, "val", num_classes=2)[0]


def test_folder_rgb_masks_with_colour_map_and_split_list(tmp_path):
    colours = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]
    for stem in ("x", "y", "z"):
        write_image(tmp_path / "images" / f"{stem}.png")
        write_mask(tmp_path / "masks" / f"{stem}_mask.png", [colours[0], colours[2], [255, 255, 255]], mode="RGB")
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "val.txt").write_text("x\nz\n")
    ds = build_dataset("folder", tmp_path, "val", palette=colours, ignore_colours=[[255, 255, 255]],
                       mask_suffix="_mask")
    assert len(ds) == 2 and ds.num_classes == 3 and labels(ds) == {0, 2, IGNORE}
    assert len(build_dataset("folder", tmp_path, "all", palette=colours, mask_suffix="_mask",
                             ignore_colours=[[255, 255, 255]])) == 3
    bad = build_dataset("folder", tmp_path, "val", palette=colours, mask_suffix="_mask")
    with pytest.raises(PSPNetError, match=r"x_mask.png: colours \[\(255, 255, 255\)\]"):
        bad[0]
    with pytest.raises(PSPNetError, match="no split 'train'"):
        build_dataset("folder", tmp_path, "train", palette=colours)


@pytest.mark.parametrize("option,stored,expected", [
    ({"binary": True}, [0, 255], {0, 1}),
    ({"binary": True}, [0, 3, 250, 252], {0, 1}),  # JPEG-ish noise around 0 and 255
    ({"binary": True}, [0, 1], {0, 1}),  # 0/1 masks
    ({"mask_values": [0, 255]}, [0, 255], {0, 1}),
    ({"mask_values": [0, 85, 170, 255], "ignore_index": 100}, [0, 85, 170, 255, 100], {0, 1, 2, 3, IGNORE}),
])
def test_medical_and_binary_masks(tmp_path, option, stored, expected):
    write_image(tmp_path / "train" / "images" / "scan.png")
    write_mask(tmp_path / "train" / "masks" / "scan.png", stored)
    ds = build_dataset("folder", tmp_path, "train", **option)
    assert labels(ds) == expected


def test_semseg_list_files(tmp_path):
    write_image(tmp_path / "img" / "a.jpg")
    write_mask(tmp_path / "ann" / "a.png", [0, 1])
    write_image(tmp_path / "img" / "b.jpg")
    write_mask(tmp_path / "ann" / "b.png", [1])
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "train.txt").write_text("img/a.jpg ann/a.png\nimg/b.jpg ann/b.png\n")
    ds = build_dataset("list", tmp_path, "train", num_classes=2)
    assert len(ds) == 2 and labels(ds, 1) == {1}
    other = tmp_path / "elsewhere.txt"
    other.write_text("img/b.jpg ann/b.png\n")
    assert len(build_dataset("list", tmp_path, str(other), num_classes=2)) == 1


def test_registry_and_errors(tmp_path):
    assert {"camvid", "voc", "cityscapes", "ade20k", "coco_stuff", "folder", "list"} <= set(DATASETS)
    with pytest.raises(PSPNetError, match="unknown dataset"):
        build_dataset("nope", tmp_path, "train")
    with pytest.raises(PSPNetError, match="takes no options"):
        build_dataset("camvid", tmp_path, "train", num_classes=3)
    with pytest.raises(PSPNetError, match="image folder does not exist"):
        build_dataset("camvid", tmp_path, "train")
    with collect_problems() as problems:  # the same problem is recorded instead of raised
        build_dataset("camvid", tmp_path, "train")
    assert [p.kind for p in problems] == ["layout", "empty"]


def broken_camvid(root: Path) -> dict[str, str]:
    """A CamVid folder with one problem of each kind; returns file name -> expected kind."""
    for k in range(3):
        write_image(root / "train" / f"ok{k}.png", seed=k)
        write_mask(root / "trainannot" / f"ok{k}.png", [0, 1, 2])
    write_image(root / "train" / "nomask.png")
    write_mask(root / "trainannot" / "orphan.png", [0])
    write_image(root / "train" / "small.png")
    write_mask(root / "trainannot" / "small.png", [0], size=(W // 2, H))
    write_image(root / "train" / "labels.png")
    write_mask(root / "trainannot" / "labels.png", [0, 12, 40])
    (root / "train" / "empty.png").write_bytes(b"")
    write_mask(root / "trainannot" / "empty.png", [0])
    write_image(root / "train" / "corrupt.png")
    write_mask(root / "trainannot" / "corrupt.png", [0])
    data = (root / "trainannot" / "corrupt.png").read_bytes()
    (root / "trainannot" / "corrupt.png").write_bytes(data[: len(data) // 2])
    (root / "val").mkdir()
    (root / "valannot").mkdir()
    return {"nomask.png": "missing_mask", "orphan.png": "missing_image", "small.png": "size_mismatch",
            "labels.png": "bad_labels", "empty.png": "unreadable", "corrupt.png": "unreadable", "val": "empty"}


def test_check_data_reports_every_problem_at_once(tmp_path):
    expected = broken_camvid(tmp_path)
    report = check_dataset("camvid", tmp_path, ("train", "val"), progress=False)
    found = {Path(p.path).name: p.kind for p in report.problems}
    assert found == expected, report.text()
    assert report.samples == {"train": 7, "val": 0}
    text = report.text()
    assert "label values [12, 40]" in text and "labels.png" in text and "0 bytes" in text and "8x12" in text
    assert "7 problems" in text


def test_check_data_cli_exit_codes(tmp_path, capsys):
    broken_camvid(tmp_path / "bad")
    out_json = tmp_path / "report.json"
    assert main(["check-data", "--dataset", "camvid", "--data-root", str(tmp_path / "bad"), "--no-progress",
                 "--json", str(out_json)]) == 2
    printed = capsys.readouterr().out
    assert "images without a mask" in printed and "orphan.png" in printed and "corrupt" in printed
    assert len(json.loads(out_json.read_text())["problems"]) == 7
    for split in ("train", "val"):
        write_image(tmp_path / "good" / split / "a.png")
        write_mask(tmp_path / "good" / f"{split}annot" / "a.png", [0, 1])
    assert main(["check-data", "--dataset", "camvid", "--data-root", str(tmp_path / "good"), "--no-progress"]) == 0
    assert "no problems found" in capsys.readouterr().out
    assert main(["check-data", "--dataset", "folder", "--data-root", str(tmp_path / "good"), "--split", "all",
                 "--no-progress"]) == 2  # no such split: a layout problem, still exit code 2


def test_real_camvid_if_present(camvid_root):
    ds = build_dataset("camvid", camvid_root, "val")
    assert len(ds) == 101
    image, mask = ds[0]
    assert image.shape[-2:] == mask.shape == (360, 480)
