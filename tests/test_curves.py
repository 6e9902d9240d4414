"""The training-curve picture shows every record, however few."""

import numpy as np
from PIL import Image

from pspnet.engine.curves import plot_history

LOSS_BLUE = np.array([0x1F, 0x5F, 0xBF])


def loss_pixels(path) -> int:
    """Pixels drawn in the loss curve's colour above the legend (which sits below the axes and has a sample of
    every line)."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    rgb = rgb[: int(0.75 * len(rgb))]
    return int((np.abs(rgb - LOSS_BLUE).sum(-1) < 40).sum())


def test_a_run_shorter_than_log_every_still_shows_its_one_loss_record(tmp_path):
    # a 4-iteration run with log_every 10 keeps one record; a one-point line draws nothing, a marker does
    path = plot_history([{"iteration": 4, "loss": 1.3}], tmp_path / "one.png")
    assert loss_pixels(path) > 20


def test_long_histories_are_smoothed_and_short_ones_are_not(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    drawn = []
    original = Axes.plot

    def spy(self, *args, **kwargs):
        drawn.append(kwargs.get("label"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", spy)
    plot_history([{"iteration": i, "loss": 1 / i} for i in range(1, 200)], tmp_path / "long.png")
    assert drawn == ["train loss", "train loss (mean of 6)"]
    drawn.clear()
    plot_history([{"iteration": i, "loss": 1 / i} for i in range(1, 20)], tmp_path / "short.png")
    assert drawn == ["train loss"]  # a window of 1 would draw the raw line again under another name
