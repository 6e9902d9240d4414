"""PSPNet semantic segmentation: a paper-faithful model, training, evaluation and deployment.

The public names are imported on first use (module ``__getattr__``), so ``import pspnet`` and
``pspnet --help`` stay fast and do not load torch until a model is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pspnet.errors import PSPNetError
from pspnet.version import __version__

# public name -> module that defines it
_LAZY = {
    "PSPNet": "pspnet.model",
    "create_model": "pspnet.model",
    "replace_head": "pspnet.model",
    "Segmenter": "pspnet.inference.segmenter",
    "load": "pspnet.model.bundled",
}

if TYPE_CHECKING:
    from pspnet.inference.segmenter import Segmenter
    from pspnet.model import PSPNet, create_model, replace_head
    from pspnet.model.bundled import load


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pspnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["PSPNet", "PSPNetError", "Segmenter", "create_model", "load", "replace_head", "__version__"]
