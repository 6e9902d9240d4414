"""The bundled CamVid model: a small safetensors file that rebuilds itself and really segments road scenes."""


import numpy as np

import pspnet
from pspnet.engine.evaluate import evaluate_model
from pspnet.model.bundled import BUNDLED, WEIGHTS_DIR
from pspnet.model.serialization import read_safetensors_config

from pspnet.model.bundled import SAMPLE_IMAGE as SAMPLE  # noqa: E402


def test_bundled_file_is_small_and_carries_its_config():
    path = WEIGHTS_DIR / BUNDLED["camvid"]
    assert path.stat().st_size <= 30e6
    config = read_safetensors_config(path)
    assert config["num_classes"] == 11 and config["class_names"][0] == "Sky" and len(config["palette"]) == 11
    assert config["aux"] is False  # the training-only head is stripped
    assert (WEIGHTS_DIR / "camvid.md").is_file()


def test_bundled_model_sees_road_and_sky_on_the_sample():
    labels = pspnet.Segmenter("camvid", precision="fp32")(SAMPLE)
    names = pspnet.load("camvid").class_names
    shares = np.bincount(labels.ravel(), minlength=11) / labels.size
    # the sample is a street scene: sky on top, road at the bottom, both large
    assert names[np.bincount(labels[:40].ravel()).argmax()] == "Sky"
    assert names[np.bincount(labels[-40:].ravel()).argmax()] == "Road"
    assert shares[names.index("Road")] > 0.15 and shares[names.index("Building")] > 0.05


def test_bundled_model_scores_on_camvid_val(camvid_root):
    metrics = evaluate_model("camvid", "camvid", camvid_root, "val", precision="fp32", limit=10, progress=False)
    assert metrics.aacc > 0.85 and metrics.miou > 0.5, metrics.table()
