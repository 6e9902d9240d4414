"""PSPNet semantic segmentation: a paper-faithful model, training, evaluation and deployment."""

from pspnet.errors import PSPNetError
from pspnet.inference.segmenter import Segmenter
from pspnet.model import PSPNet, create_model, replace_head
from pspnet.model.bundled import load
from pspnet.version import __version__

__all__ = ["PSPNet", "PSPNetError", "Segmenter", "create_model", "load", "replace_head", "__version__"]
