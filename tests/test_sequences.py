"""Splits by sequence (whole drives held out, train+val merged) and per-sequence evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from pspnet.data import build_dataset
from pspnet.data.datasets import group_by_sequence, leave_one_sequence_out, sequence_of
from pspnet.data.transforms import eval_transforms
from pspnet.engine.evaluate import evaluate_by_sequence
from pspnet.errors import PSPNetError

H, W = 8, 12
TRAIN = {"0001TP": 2, "0006R0": 3, "0016E5": 4}
VAL = {"0016E5": 2}


def write_pair(root: Path, split: str, name: str, red: bool) -> None:
    """Left half class 1, right half class 0; the image is red over class 1 when ``red``, else black."""
    mask = np.zeros((H, W), np.uint8)
    mask[:, : W // 2] = 1
    mask[0] = 11  # void row
    image = np.zeros((H, W, 3), np.uint8)
    if red:
        image[..., 0] = np.where(mask == 1, 255, 0)
    for folder, arr in ((root / split, image), (root / f"{split}annot", mask)):
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(folder / f"{name}.png")


@pytest.fixture(scope="module")
def camvid_like(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("camvid")
    for split, counts in (("train", TRAIN), ("val", VAL)):
        for seq, n in counts.items():
            for k in range(n):
                write_pair(root, split, f"{seq}_{split}{k:05d}", red=seq != "0006R0")
    return root


def write_drives(root: Path, split: str, drives: tuple[str, ...]) -> None:
    """A two-class folder dataset, two 32x32 frames per drive named ``<drive>_<k>.png``: colour gives the class."""
    rng = np.random.default_rng(0)
    for seq in drives:
        for k in range(2):
            mask = np.repeat(rng.integers(0, 2, (1, 4)), 8, axis=1).repeat(32, 0).astype(np.uint8)
            image = np.stack([mask * 200, 255 - mask * 200, mask * 0], -1).astype(np.uint8)
            for sub, arr in (("images", image), ("masks", mask)):
                (root / sub / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(root / sub / split / f"{seq}_{k}.png")
    (root / "dataset.yaml").write_text("classes: [a, b]\n")


def sequences(ds) -> dict[str, int]:
    return {s: len(i) for s, i in group_by_sequence(ds).items()}


def test_sequence_names_from_file_names():
    assert sequence_of("x/0016E5_08059.png") == "0016E5"
    assert sequence_of("Seq05VD_f00000.png") == "Seq05VD"
    assert sequence_of("aachen_000000_000019_leftImg8bit.png") == "aachen"
    assert sequence_of("scan-12-slice003.png", r"^scan-\d+") == "scan-12"  # no group: the whole match
    with pytest.raises(PSPNetError, match="does not match sequence_pattern"):
        sequence_of("frame1.png")
    with pytest.raises(PSPNetError, match="not a valid regular expression"):
        sequence_of("a_b.png", "(")


def test_holdout_splits_never_share_a_drive(camvid_like):
    options = {"holdout_sequences": ["0006R0"]}
    train = build_dataset("camvid", camvid_like, "train", **options)
    held = build_dataset("camvid", camvid_like, "holdout", **options)
    assert sequences(train) == {"0001TP": 2, "0016E5": 4}
    assert sequences(held) == {"0006R0": 3}
    assert not {p for p, _ in train.pairs} & {p for p, _ in held.pairs}
    assert held.num_classes == 11 and held.class_names == train.class_names


def test_train_plus_val_merges_and_holds_out_from_both(camvid_like):
    both = build_dataset("camvid", camvid_like, "train+val")
    assert sequences(both) == {"0001TP": 2, "0006R0": 3, "0016E5": 6}
    options = {"holdout_sequences": "0016E5", "holdout_from": "train+val"}
    assert sequences(build_dataset("camvid", camvid_like, "train+val", **options)) == {"0001TP": 2, "0006R0": 3}
    assert sequences(build_dataset("camvid", camvid_like, "holdout", **options)) == {"0016E5": 6}


def test_bad_sequence_options_name_the_problem(camvid_like):
    with pytest.raises(PSPNetError, match=r"sequences \['Seq05VD'\] are not in this split; it has 0001TP \(2\)"):
        build_dataset("camvid", camvid_like, "holdout", holdout_sequences=["Seq05VD"])
    with pytest.raises(PSPNetError, match="needs holdout_sequences or holdout_tails"):
        build_dataset("camvid", camvid_like, "holdout")
    with pytest.raises(PSPNetError, match="no image/mask pairs left"):
        build_dataset("camvid", camvid_like, "val", holdout_sequences=["0016E5"])
    with pytest.raises(PSPNetError, match="takes no options"):
        build_dataset("camvid", camvid_like, "val", holdout_sequences=["0016E5"], num_classes=3)


def test_holdout_tails_hold_out_a_drives_later_frames(camvid_like):
    """The last fraction of a drive, by frame number, is held out with the whole held-out drives; training keeps
    the start of that drive, and the cut is the same for train and train+val."""
    options = {"holdout_sequences": ["0006R0"], "holdout_tails": {"0016E5": 0.5}, "holdout_from": "train+val"}
    held = build_dataset("camvid", camvid_like, "holdout", **options)
    assert sequences(held) == {"0006R0": 3, "0016E5": 3}
    # 0016E5 in train+val, by name: train00000..00003 then val00000..00001; the last three are held out
    assert sorted(Path(p).stem for p, _ in held.pairs if "0016E5" in str(p)) == [
        "0016E5_train00003", "0016E5_val00000", "0016E5_val00001"]
    for split, left in (("train+val", {"0001TP": 2, "0016E5": 3}), ("train", {"0001TP": 2, "0016E5": 3})):
        kept = build_dataset("camvid", camvid_like, split, **options)
        assert sequences(kept) == left
        assert not {p for p, _ in kept.pairs} & {p for p, _ in held.pairs}
    assert sequences(build_dataset("camvid", camvid_like, "holdout", holdout_tails={"0016E5": 0.25})) == {"0016E5": 1}


def test_bad_holdout_tails_name_the_problem(camvid_like):
    with pytest.raises(PSPNetError, match="holdout_tails names sequence 'Seq05VD'"):
        build_dataset("camvid", camvid_like, "holdout", holdout_tails={"Seq05VD": 0.5})
    with pytest.raises(PSPNetError, match="0 < f < 1"):
        build_dataset("camvid", camvid_like, "train", holdout_tails={"0016E5": 1.0})
    with pytest.raises(PSPNetError, match="both parts need at least one frame"):
        build_dataset("camvid", camvid_like, "train", holdout_tails={"0001TP": 0.1})


def test_leave_one_sequence_out_rotates_every_drive(camvid_like):
    folds = leave_one_sequence_out(build_dataset("camvid", camvid_like, "train"))
    assert [s for s, _, _ in folds] == ["0001TP", "0006R0", "0016E5"]
    for s, kept, held in folds:
        assert sequences(held) == {s: TRAIN[s]} and s not in sequences(kept)
        assert len(kept) + len(held) == sum(TRAIN.values())


class RedIsOne(torch.nn.Module):
    """Predicts class 1 where the (normalised) red channel is high, class 0 elsewhere, of 11 classes."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 11, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.fill_(-100.0)
            self.conv.bias[:2] = 0
            self.conv.weight[0, 0] = -10.0
            self.conv.weight[1, 0] = 10.0

    def forward(self, x):
        return self.conv(x)


def test_per_sequence_metrics(camvid_like):
    ds = build_dataset("camvid", camvid_like, "train", eval_transforms((0.5,) * 3, (0.5,) * 3))
    result = evaluate_by_sequence(RedIsOne(), ds, 11, progress=False)
    assert result.frames == TRAIN
    assert result.sequences["0001TP"].miou == pytest.approx(1.0)  # red over class 1: all right
    dark = result.sequences["0006R0"]  # black frames: everything predicted 0
    assert dark.iou[0] == pytest.approx(0.5) and dark.iou[1] == 0.0 and dark.miou == pytest.approx(0.25)
    total = sum(np.asarray(m.confusion_matrix) for m in result.sequences.values())
    assert np.array_equal(np.asarray(result.overall.confusion_matrix), total)
    assert result.overall.iou[2] is None  # absent classes stay out of the mean
    table = result.table()
    assert "0006R0" in table and " 25.00 " in table and table.splitlines()[-1].startswith("overall")
    report = json.loads(json.dumps(result.to_dict()))
    assert report["sequences"]["0006R0"]["frames"] == 3 and report["miou"] == result.overall.miou
    limited = evaluate_by_sequence(RedIsOne(), Subset(ds, range(3)), 11, progress=False)
    assert limited.frames == {"0001TP": 2, "0006R0": 1}


@pytest.mark.parametrize("held", [["driveB"], ["driveB", "driveC"]])
def test_trainer_validates_on_the_held_out_drive(tmp_path, held):
    """The current trainer takes the options as they are: dataset_options + val_split: holdout. Two held-out
    drives are also scored one by one in the history (and the curve), one drive only pooled."""
    from pspnet.engine.train import TrainConfig, train

    root = tmp_path / "data"
    write_drives(root, "train", ("driveA", "driveB", "driveC"))
    cfg = TrainConfig.from_dict(dict(
        dataset="folder", data_root=str(root), dataset_options={"holdout_sequences": held},
        train_split="train", val_split="holdout", model="pspnet_test_efficientnet",
        model_kwargs={"head_channels": 16, "aux_channels": 8, "output_stride": 8}, pretrained_backbone=False,
        out_dir=str(tmp_path / "run"), crop_size=[32, 32], batch_size=2, iterations=2, precision="fp32",
        device="cpu", workers=0, eval_every=2, checkpoint_every=2, log_every=1, tensorboard=False))
    result = train(cfg, progress=False)
    assert 0 <= result["best_miou"] <= 1 and (tmp_path / "run" / "best_metrics.json").is_file()
    val = [h for h in json.loads((tmp_path / "run" / "history.json").read_text()) if "val_miou" in h]
    by_sequence = val[-1].get("val_miou_by_sequence", {})
    assert sorted(by_sequence) == (held if len(held) > 1 else [])
    assert all(0 <= v <= 1 for v in by_sequence.values())
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0


def test_real_camvid_sequence_inventory(camvid_root):
    assert sequences(build_dataset("camvid", camvid_root, "train")) == {"0001TP": 62, "0006R0": 101, "0016E5": 204}
    assert sequences(build_dataset("camvid", camvid_root, "val")) == {"0016E5": 101}
    options = {"holdout_sequences": ["0006R0"], "holdout_from": "train+val"}
    assert len(build_dataset("camvid", camvid_root, "train+val", **options)) == 367
    assert len(build_dataset("camvid", camvid_root, "holdout", **options)) == 101


def test_eval_by_sequence_scores_each_drive_and_sums_to_the_overall(camvid_like, tmp_path, capsys):
    from pspnet import create_model
    from pspnet.cli import main

    torch.manual_seed(0)
    model = create_model("pspnet_test_efficientnet", num_classes=11, head_channels=16, aux_channels=8,
                         output_stride=8)
    model.save_pretrained(tmp_path / "model")
    args = ["eval", "--model", str(tmp_path / "model"), "--dataset", "camvid", "--data-root", str(camvid_like),
            "--split", "train", "--precision", "fp32", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "plain")]) == 0
    capsys.readouterr()
    assert main(args + ["--by-sequence", "--out", str(tmp_path / "seq")]) == 0
    out = capsys.readouterr().out
    assert "IoU % per sequence" in out and all(s in out for s in TRAIN)
    assert (tmp_path / "seq" / "per_sequence_iou.png").stat().st_size > 0
    assert not (tmp_path / "plain" / "per_sequence_iou.png").exists()
    plain, report = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("plain", "seq"))
    assert {s: r["frames"] for s, r in report["sequences"].items()} == TRAIN
    total = sum(np.asarray(r["confusion_matrix"]) for r in report["sequences"].values())
    assert np.array_equal(total, np.asarray(report["confusion_matrix"]))
    assert report["confusion_matrix"] == plain["confusion_matrix"] and report["miou"] == plain["miou"]
    # a pattern the file names do not match is one line naming a file, not a traceback
    assert main(args + ["--by-sequence", "--data-opt", "sequence_pattern=^zz"]) == 2
    assert "does not match sequence_pattern" in capsys.readouterr().err


def test_by_sequence_keeps_the_two_class_curve_and_threshold(tmp_path):
    """One pass gives both: the per-sequence sets and, for two classes, the precision-recall curve."""
    from pspnet import create_model
    from pspnet.engine.evaluate import evaluate_model

    write_drives(tmp_path, "val", ("driveA", "driveB"))
    torch.manual_seed(0)
    model = create_model("pspnet_test_efficientnet", num_classes=2, head_channels=16, aux_channels=8, output_stride=8)
    plain = evaluate_model(model, "folder", tmp_path, device="cpu", precision="fp32", threshold=0.3, progress=False)
    split = evaluate_model(model, "folder", tmp_path, device="cpu", precision="fp32", threshold=0.3, progress=False,
                           by_sequence=True)
    assert split.pr_curve == plain.pr_curve and split.threshold == 0.3
    assert split.confusion_matrix == plain.confusion_matrix
    assert split.per_sequence.frames == {"driveA": 2, "driveB": 2}
    assert split.per_sequence.overall.confusion_matrix == plain.confusion_matrix
    assert set(split.to_dict()["sequences"]) == {"driveA", "driveB"} and "pr_curve" in split.to_dict()
