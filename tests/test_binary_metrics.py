"""Dice, precision, recall beside IoU; the two-class threshold and precision-recall curve; the report files."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from pspnet.engine.evaluate import evaluate, threshold_prediction, write_report
from pspnet.engine.metrics import ConfusionMatrix, Metrics, PRCurve
from pspnet.errors import PSPNetError


def test_dice_precision_recall_by_hand():
    # rows truth, columns prediction: class a tp 3 of gt 4, pred 4; b tp 2 of gt 3, pred 3; c tp 1, gt 2, pred 2
    m = Metrics.from_matrix([[3, 1, 0, 0], [0, 2, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0]], ["a", "b", "c", "d"])
    assert m.dice[:3] == pytest.approx([6 / 8, 4 / 6, 2 / 4]) and m.dice[3] is None
    assert m.precision[:3] == pytest.approx([3 / 4, 2 / 3, 1 / 2]) and m.precision[3] is None
    assert m.recall == m.acc
    assert m.mdice == pytest.approx((6 / 8 + 4 / 6 + 2 / 4) / 3)
    table = m.table()
    assert "Dice" in table and "Prec" in table and "mDice 63.89" in table
    # predicted but never true: precision 0, recall undefined; true but never predicted: precision 0
    m = Metrics.from_matrix([[1, 1], [0, 0]])
    assert m.precision == [1.0, 0.0] and m.recall == [0.5, None] and m.dice == [pytest.approx(2 / 3), 0.0]


def test_pr_curve_by_hand():
    curve = PRCurve(positive=1, bins=10)
    prob = torch.tensor([0.95, 0.75, 0.55, 0.35, 0.15, 0.6])
    target = torch.tensor([1, 1, 0, 1, 0, 255])  # the last pixel is ignored
    curve.update(prob, target)
    c = curve.compute(points=11)
    t = c["thresholds"]
    at = lambda x: t.index(pytest.approx(x))  # noqa: E731
    assert c["recall"][at(0.5)] == pytest.approx(2 / 3) and c["precision"][at(0.5)] == pytest.approx(2 / 3)
    assert c["recall"][at(0.3)] == 1.0 and c["precision"][at(0.3)] == pytest.approx(3 / 4)
    assert c["recall"][at(0.7)] == pytest.approx(2 / 3) and c["precision"][at(0.7)] == 1.0
    # best F1: thresholds 0.2..0.35 give 2*0.75*1/1.75 = 0.857; the first (lowest) is reported
    assert c["best_f1"] == pytest.approx(6 / 7) and c["best_threshold"] == pytest.approx(0.2)
    # AP: steps at recall 1/3 (p 1), 2/3 (p 1), 1 (p 3/4)
    assert c["average_precision"] == pytest.approx(1 / 3 + 1 / 3 + 1 / 3 * 3 / 4)


def test_threshold_prediction_and_errors():
    probs = torch.tensor([[0.7, 0.4], [0.3, 0.6]]).reshape(1, 2, 1, 2)  # p(class 1) = 0.3, 0.6
    assert threshold_prediction(probs, 0.5).tolist() == [[[0, 1]]]
    assert threshold_prediction(probs, 0.25).tolist() == [[[1, 1]]]
    assert threshold_prediction(probs, 0.65, positive=0).tolist() == [[[0, 1]]]  # p(class 0) = 0.7, 0.4
    with pytest.raises(PSPNetError, match="two-class"):
        threshold_prediction(torch.rand(1, 3, 2, 2), 0.5)
    with pytest.raises(PSPNetError, match=r"\[0, 1\]"):
        threshold_prediction(probs, 1.5)


class Ramp(nn.Module):
    """Two-class logits whose foreground probability is the image's first channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = x[:, :1].clamp(1e-4, 1 - 1e-4)
        return torch.cat([torch.zeros_like(p), torch.log(p / (1 - p))], 1)


def test_evaluate_with_a_threshold_writes_dice_and_the_pr_curve(tmp_path):
    image = torch.tensor([0.9, 0.7, 0.45, 0.3, 0.1, 0.05]).reshape(1, 1, 6).expand(3, 1, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0]])
    data = [(image, mask)]
    plain = evaluate(Ramp(), data, 2, progress=False, class_names=["cell", "membrane"])
    assert plain.recall == pytest.approx([1.0, 2 / 3]) and plain.threshold is None
    low = evaluate(Ramp(), data, 2, progress=False, class_names=["cell", "membrane"], threshold=0.4)
    assert low.confusion_matrix == [[3, 0], [0, 3]] and low.dice == [1.0, 1.0] and low.threshold == 0.4
    assert low.pr_curve["best_f1"] == 1.0
    files = write_report(low, tmp_path)
    assert [f.name for f in files] == ["metrics.json", "per_class_iou.png", "confusion_matrix.png", "pr_curve.png"]
    data_json = json.loads(files[0].read_text())
    assert data_json["threshold"] == 0.4 and data_json["per_class"]["membrane"]["dice"] == 1.0
    assert len(data_json["pr_curve"]["recall"]) == 101 and files[3].stat().st_size > 10_000
    with pytest.raises(PSPNetError, match="two classes"):
        evaluate(Ramp(), data, 3, progress=False, threshold=0.5)


def test_confusion_matrix_and_curve_agree_at_the_argmax():
    torch.manual_seed(0)
    probs = torch.rand(4000)
    target = (torch.rand(4000) < probs).long()
    cm, curve = ConfusionMatrix(2), PRCurve(bins=1000)
    cm.update((probs >= 0.5).long(), target)
    curve.update(probs, target)
    m, c = cm.compute(), curve.compute()
    k = c["thresholds"].index(0.5)
    assert c["precision"][k] == pytest.approx(m.precision[1]) and c["recall"][k] == pytest.approx(m.recall[1])
