"""``from pspnet.pspnet import PSPNet`` (the import users already write)."""

from pspnet.model.pspnet import PPM, PSPNet

__all__ = ["PPM", "PSPNet"]
