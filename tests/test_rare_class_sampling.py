"""Rare class sampling: frames holding rare classes are drawn more often, seeded and resumable."""

from __future__ import annotations

import numpy as np
import pytest

from pspnet.engine.config import TrainConfig
from pspnet.engine.sampling import EpochSampler, rare_class_frame_weights
from pspnet.errors import PSPNetError
from test_engine import assert_option_resumes_alike_and_matters, data  # noqa: F401  (data is a fixture)

# 4 frames x 3 classes: class 2 is rare, frame 3 holds most of it, frame 0 none
FRAMES = np.array([[900, 100, 0], [800, 190, 10], [850, 140, 10], [600, 200, 200]])


def test_frames_with_more_of_a_rare_class_weigh_more():
    w = rare_class_frame_weights(FRAMES, 0.01)
    assert w[3] > max(w[1], w[2]) >= min(w[1], w[2]) > w[0] >= 0
    # a high temperature draws the classes almost uniformly, so the rare class's frames lose their lead
    hot = rare_class_frame_weights(FRAMES, 100.0)
    assert w[3] / w.sum() > hot[3] / hot.sum() and hot[0] > 0


def test_class_missing_from_every_frame_and_bad_temperatures():
    w = rare_class_frame_weights(np.c_[FRAMES, np.zeros(4)], 0.05)  # a class with no pixels takes no share
    assert np.isfinite(w).all() and w.sum() == pytest.approx(rare_class_frame_weights(FRAMES, 0.05).sum())
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(PSPNetError, match="temperature must be > 0"):
            rare_class_frame_weights(FRAMES, bad)
    with pytest.raises(PSPNetError, match="no labelled pixels"):
        rare_class_frame_weights(np.zeros((3, 2)), 0.1)
    with pytest.raises(PSPNetError, match="rare_class_sampling"):
        TrainConfig.from_dict({"rare_class_sampling": 0})


def test_weighted_epochs_follow_the_weights_and_resume_where_they_stopped():
    weights = np.array([1.0, 1.0, 1.0, 7.0])
    draws = [i for _, (_, i) in zip(range(4000), iter(EpochSampler(4, 2, seed=5, frame_weights=weights)))]
    assert abs(draws.count(3) / len(draws) - 0.7) < 0.03  # drawn with replacement, in proportion
    later = EpochSampler(4, 2, seed=5, start_iteration=7, frame_weights=weights)  # 2 batches per epoch
    assert [i for _, (_, i) in zip(range(20), iter(later))] == draws[14:34]
    with pytest.raises(PSPNetError, match="need 4 weights"):
        EpochSampler(4, 2, seed=5, frame_weights=np.zeros(4))


def test_a_run_with_rare_class_sampling_resumes_bit_identically(data, tmp_path):  # noqa: F811
    assert_option_resumes_alike_and_matters(data, tmp_path, rare_class_sampling=0.05)  # and changes what is drawn
