"""HTTP serving (``pspnet serve``): ``create_app(segmenter) -> FastAPI``; needs ``pip install 'pspnet[serve]'``."""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Lazy, so ``import pspnet.serve`` works without FastAPI and the error names the missing extra.
    if name == "create_app":
        from pspnet.serve.app import create_app

        return create_app
    raise AttributeError(name)
