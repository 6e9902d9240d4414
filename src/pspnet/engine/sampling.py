"""Sampling and randomness: what makes a run resume exactly.

The sampling order and every augmentation are functions of (seed, epoch, position), never of the
process's RNG history, so a resumed run draws the same batches as an uninterrupted one. The main
process's RNGs (dropout, the loader's base seed) are saved in each checkpoint and restored.
"""

from __future__ import annotations

import random
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from pspnet.errors import PSPNetError


class EpochSampler(Sampler):
    """Yields (epoch, index) pairs: a seeded permutation per epoch, split across ranks, resumable."""

    def __init__(self, size: int, batch_size: int, seed: int, start_iteration: int = 0, rank: int = 0, world: int = 1):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start, self.rank, self.world = start_iteration, rank, world
        self.iters_per_epoch = size // (batch_size * world)
        if self.iters_per_epoch == 0:
            raise PSPNetError(f"dataset has {size} samples, fewer than one batch of {batch_size} x {world} ranks; "
                              "lower --batch-size")

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip = divmod(self.start, self.iters_per_epoch)
        while True:
            perm = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
            mine = perm[self.rank::self.world][: self.iters_per_epoch * self.batch_size]
            for i in mine[skip * self.batch_size:]:
                yield epoch, i
            epoch, skip = epoch + 1, 0

    def __len__(self) -> int:  # endless; DataLoader never needs the length of an iterable-like sampler here
        return 2**62


class SeededSamples(Dataset):
    """Each sample's augmentation draws from RNGs seeded by (seed, epoch, index), inside a fork.

    The fork (``torch.random.fork_rng`` plus saved Python/NumPy states) leaves the caller's RNGs as
    they were, so with ``workers=0`` loading a sample does not reseed the main process (its dropout).
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        sample_seed = (self.seed * 1_000_003 + epoch) * 10_000_019 + index
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(sample_seed)
            np.random.seed(sample_seed % 2**32)
            torch.manual_seed(sample_seed % 2**63)
            try:
                return self.dataset[index]
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG the run touches, as tensors and ints only, so ``torch.load(weights_only=True)`` reads it back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    numpy_state = state.get("numpy")
    if isinstance(numpy_state, (list, tuple)) and isinstance(numpy_state[1], torch.Tensor):
        kind, keys, pos, has_gauss, gauss = numpy_state
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    # (older checkpoints pickled a numpy array, which the safe loader cannot rebuild; nothing here draws from numpy)
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
