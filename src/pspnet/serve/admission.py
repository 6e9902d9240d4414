"""Admission by cost: the pixels of the images being handled, not the number of requests, are bounded.

A request's memory (decoded image, label maps, PNG encoding) grows with its pixel count, so a
budget of pixels in flight bounds the server's memory however the traffic mixes small and large
images. A request that does not fit gets 503 with Retry-After at once; it holds nothing meanwhile.
"""

from __future__ import annotations


class OverBudget(Exception):
    """The request's pixels do not fit in what is left of the budget."""


class PixelBudget:
    """Pixels admitted and not yet released; used from the event loop thread only, so no lock."""

    def __init__(self, budget: int):
        if budget < 1:
            raise ValueError(f"pixel budget must be at least 1, got {budget}")
        self.budget = budget
        self.used = 0

    def acquire(self, pixels: int) -> None:
        """Take ``pixels`` from the budget or raise ``OverBudget``; pair with ``release``."""
        if self.used + pixels > self.budget:
            raise OverBudget(f"server busy: {self.used / 1e6:.1f} of {self.budget / 1e6:.1f} MP in flight, "
                             f"this image needs {pixels / 1e6:.1f} MP")
        self.used += pixels

    def release(self, pixels: int) -> None:
        self.used -= pixels
