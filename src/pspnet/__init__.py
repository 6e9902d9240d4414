"""PSPNet semantic segmentation: a paper-faithful model, training, evaluation and deployment."""

from pspnet.errors import PSPNetError
from pspnet.model import PSPNet, create_model, replace_head

__version__ = "0.1.0"

__all__ = ["PSPNet", "PSPNetError", "create_model", "replace_head", "__version__"]
