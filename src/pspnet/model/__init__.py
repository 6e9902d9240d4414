"""PSPNet and its backbones."""

from pspnet.model.factory import create_model
from pspnet.model.pspnet import PSPNet, replace_head

__all__ = ["PSPNet", "create_model", "replace_head"]
