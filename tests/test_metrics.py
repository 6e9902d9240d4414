"""Confusion-matrix metrics against hand-computed values, absent classes, ignore, and the report files."""

from __future__ import annotations

import json

import pytest
import torch

from pspnet.engine.evaluate import write_report
from pspnet.engine.metrics import ConfusionMatrix, Metrics


def test_metrics_match_a_hand_computed_confusion_matrix():
    # 4 classes; class 3 appears neither in the truth nor in the predictions.
    target = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 255, 255])
    pred = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 0, 3, 1])  # predictions on ignored pixels do not count
    cm = ConfusionMatrix(4)
    cm.update(pred[:5], target[:5])
    cm.update(pred[5:], target[5:])
    assert cm.matrix.tolist() == [[3, 1, 0, 0], [0, 2, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    m = cm.compute(["a", "b", "c", "d"])
    # IoU = tp / (gt + pred - tp): a 3/(4+4-3), b 2/(3+3-2), c 1/(2+2-1); d absent
    assert m.iou[:3] == pytest.approx([3 / 5, 2 / 4, 1 / 3]) and m.iou[3] is None
    assert m.acc[:3] == pytest.approx([3 / 4, 2 / 3, 1 / 2]) and m.acc[3] is None
    assert m.miou == pytest.approx((3 / 5 + 2 / 4 + 1 / 3) / 3)  # the absent class is left out of the mean
    assert m.macc == pytest.approx((3 / 4 + 2 / 3 + 1 / 2) / 3)
    assert m.aacc == pytest.approx(6 / 9)
    assert "absent" in m.table() and "mIoU 47.78" in m.table()


def test_class_only_predicted_has_zero_iou_not_absent():
    m = Metrics.from_matrix([[1, 1], [0, 0]])
    assert m.iou == [0.5, 0.0] and m.acc == [0.5, None] and m.miou == pytest.approx(0.25)


def test_labels_beyond_the_classes_are_an_error():
    with pytest.raises(ValueError, match="exceed 3 classes"):
        ConfusionMatrix(3).update(torch.tensor([0, 1]), torch.tensor([0, 5]))


def test_write_report_files(tmp_path):
    m = Metrics.from_matrix([[5, 1, 0], [2, 7, 0], [0, 0, 0]], ["road", "car", "boat"])
    files = write_report(m, tmp_path / "r")
    assert [f.name for f in files] == ["metrics.json", "per_class_iou.png", "confusion_matrix.png"]
    data = json.loads(files[0].read_text())
    assert data["per_class"]["boat"] == {"iou": None, "acc": None, "dice": None, "precision": None, "recall": None}
    assert data["confusion_matrix"] == [[5, 1, 0], [2, 7, 0], [0, 0, 0]]
    assert data["miou"] == pytest.approx((5 / 8 + 7 / 10) / 2)
    assert all(f.stat().st_size > 1000 for f in files[1:])
