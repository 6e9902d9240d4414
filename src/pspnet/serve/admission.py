"""Admission by cost: the bytes and pixels being handled, not the number of requests, are bounded.

A request's memory grows with its body while it uploads, then with its pixel count (decoded image,
label maps, PNG encoding), so two budgets bound the server's memory however the traffic mixes small
and large requests. A request that does not fit gets 503 with Retry-After at once and holds nothing.
"""

from __future__ import annotations


class OverBudget(Exception):
    """The request's cost does not fit in what is left of a budget."""


class Budget:
    """An amount in use out of ``capacity``; used from the event loop thread only, so no lock."""

    def __init__(self, capacity: int, what: str, unit: str, scale: float):
        if capacity < 1:
            raise ValueError(f"{what} budget must be at least 1, got {capacity}")
        self.capacity, self.what, self.unit, self.scale = capacity, what, unit, scale
        self.used = 0

    def acquire(self, amount: int) -> None:
        """Take ``amount`` or raise ``OverBudget``; pair with ``release``."""
        if self.used + amount > self.capacity:
            raise OverBudget(f"server busy: {self._fmt(self.used)} of {self._fmt(self.capacity)} of {self.what} "
                             f"in flight, this request needs {self._fmt(amount)} more")
        self.used += amount

    def release(self, amount: int) -> None:
        self.used -= amount

    def _fmt(self, amount: int) -> str:
        return f"{amount / self.scale:.1f} {self.unit}"


def pixel_budget(capacity: int) -> Budget:
    return Budget(capacity, "image pixels", "MP", 1e6)


def byte_budget(capacity: int) -> Budget:
    return Budget(capacity, "request bodies", "MiB", 2**20)
