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
    """Yields (epoch, index) pairs: a seeded permutation per epoch, split across ranks, resumable.

    With ``frame_weights`` each epoch is instead ``size`` seeded draws with replacement, frame i drawn with
    probability proportional to ``frame_weights[i]`` (see ``rare_class_frame_weights``).
    """

    def __init__(self, size: int, batch_size: int, seed: int, start_iteration: int = 0, rank: int = 0, world: int = 1,
                 frame_weights: np.ndarray | None = None):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start, self.rank, self.world = start_iteration, rank, world
        self.frame_weights = None if frame_weights is None else torch.as_tensor(frame_weights, dtype=torch.float64)
        if self.frame_weights is not None and (len(self.frame_weights) != size or not self.frame_weights.sum() > 0):
            raise PSPNetError(f"frame weights: need {size} weights >= 0 with a positive sum")
        self.iters_per_epoch = size // (batch_size * world)
        if self.iters_per_epoch == 0:
            raise PSPNetError(f"dataset has {size} samples, fewer than one batch of {batch_size} x {world} ranks; "
                              "lower --batch-size")

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip = divmod(self.start, self.iters_per_epoch)
        while True:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            if self.frame_weights is None:
                perm = torch.randperm(self.size, generator=generator).tolist()
            else:
                perm = torch.multinomial(self.frame_weights, self.size, replacement=True, generator=generator).tolist()
            mine = perm[self.rank::self.world][: self.iters_per_epoch * self.batch_size]
            for i in mine[skip * self.batch_size:]:
                yield epoch, i
            epoch, skip = epoch + 1, 0

    def __len__(self) -> int:  # endless; DataLoader never needs the length of an iterable-like sampler here
        return 2**62


def rare_class_frame_weights(frame_pixels: np.ndarray, temperature: float) -> np.ndarray:
    """Per-frame sampling weights that show rare classes more often (rare class sampling, after DAFormer).

    ``frame_pixels[i, c]`` is class c's labelled pixels in frame i. A class is drawn with probability
    softmax((1 - f_c) / temperature) (f_c: its share of all labelled pixels), then a frame in proportion to
    how many of that class's pixels it holds, so a frame with a large fence is a likelier fence example than
    one with a corner of it (in street scenes nearly every frame holds a few pole or sign pixels). Small
    temperatures favour the rarest classes; large ones tend to the uniform mix of classes.
    """
    if not temperature > 0:
        raise PSPNetError(f"rare_class_sampling: the temperature must be > 0, got {temperature}")
    totals = frame_pixels.sum(axis=0).astype(np.float64)
    seen = totals > 0
    if not seen.any():
        raise PSPNetError("rare_class_sampling: the training masks hold no labelled pixels")
    logits = (1.0 - totals[seen] / totals.sum()) / temperature
    class_p = np.exp(logits - logits.max())
    class_p /= class_p.sum()
    return (frame_pixels[:, seen] / totals[seen]) @ class_p


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation: a function of the run's seed and the sample's place alone."""
    return (seed * 1_000_003 + epoch) * 10_000_019 + index


def batch_seed(seed: int, iteration: int, rank: int) -> int:
    """The seed of one batch's own draws (``class_mix``): a function of the run's seed and the batch's place, on
    a stream apart from the samples' seeds."""
    return (sample_seed(seed, iteration, rank) * 31 + 17) % 2**63


class SampleKeys(Dataset):
    """The sampler's (epoch, index) keys themselves, for crops cut on the device (``device_augment``)."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, int]:
        return key


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
        seed = sample_seed(self.seed, epoch, index)
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed % 2**63)
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
