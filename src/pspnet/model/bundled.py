"""Models that ship inside the package, addressable by name (``pspnet.load("camvid")``), and a sample frame."""

from __future__ import annotations

from pathlib import Path

from pspnet.errors import PSPNetError
from pspnet.model.pspnet import PSPNet

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "samples" / "camvid_0016E5_08059.jpg"  # a CamVid val frame
# name -> file under pspnet/weights (model cards sit beside them as NAME.md)
BUNDLED: dict[str, str] = {
    "camvid": "camvid.safetensors",
}


def load(model: str | Path = "camvid", eval_scale: float | None = None, **overrides) -> PSPNet:
    """A bundled model by name, or anything ``PSPNet.from_pretrained`` takes (file, folder, Hub id).

    ``eval_scale`` replaces the model's own reading factor; None keeps it."""
    if eval_scale is not None:
        overrides["eval_scale"] = eval_scale
    name = str(model)
    if name in BUNDLED:
        path = WEIGHTS_DIR / BUNDLED[name]
        if not path.is_file():
            raise PSPNetError(f"bundled model {name!r} is missing from the installation ({path})")
        return PSPNet.from_pretrained(path, **overrides)
    if not Path(name).exists() and name.count("/") != 1:
        raise PSPNetError(f"{name}: not a bundled model ({', '.join(BUNDLED)}), file, folder or Hub id 'org/name'")
    return PSPNet.from_pretrained(name, **overrides)
