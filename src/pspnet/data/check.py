"""Validate a dataset before a long run: every problem of every split in one report.

A training run that dies after three hours on one corrupt PNG wastes the three hours; so this reads
every image and mask once (in threads: decoding releases the GIL) and reports missing masks or
images, size mismatches, label values outside the class set, unreadable, corrupt and empty files,
and empty folders, each naming the file. For your own data (``folder``, ``list``, ``medical``) a class
with no pixel in the training split is a problem too: the model cannot learn it, and it usually means
the class options do not match the masks.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from pspnet.data import TAKES_OPTIONS, build_dataset
from pspnet.data.datasets import IGNORE, Problem, SegmentationDataset, collect_problems
from pspnet.errors import PSPNetError

KIND_TITLES = {
    "layout": "layout problems",
    "empty": "empty folders or lists",
    "missing_mask": "images without a mask",
    "missing_image": "masks without an image",
    "unreadable": "unreadable, corrupt or empty files",
    "size_mismatch": "masks whose size differs from their image",
    "bad_labels": "masks with label values outside the class set",
    "empty_class": "classes with no pixels in the training split",
}
TRAIN_SPLITS = ("train", "all", "trainval", "train_aug")


@dataclass
class CheckReport:
    """What ``check_dataset`` found: sample counts per split, problems, and pixels per class."""

    dataset: str
    root: str
    samples: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    class_pixels: dict[str, list[int]] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    mask_values: list[int] | None = None
    ignored_pixels: dict[str, int] = field(default_factory=dict)
    label_fixes: list[str] = field(default_factory=list)  # unclaimed mask values: counts and the fix

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "root": self.root, "ok": self.ok, "samples": self.samples,
                "problems": [{"kind": p.kind, "path": p.path, "message": p.message} for p in self.problems],
                "class_pixels": self.class_pixels, "class_names": self.class_names, "mask_values": self.mask_values,
                "ignored_pixels": self.ignored_pixels, "label_fixes": self.label_fixes}

    def text(self) -> str:
        """A report grouped by kind of problem, every file listed."""
        lines = [f"{self.dataset} at {self.root}: " + ", ".join(f"{s} {n} samples" for s, n in self.samples.items())]
        if self.mask_values is not None and self.class_names:
            lines.append(f"  {len(self.class_names)} classes, stored in the masks as: "
                         + ", ".join(f"{n} = {v}" for n, v in zip(self.class_names, self.mask_values)))
        for split, counts in self.class_pixels.items():
            ignored = self.ignored_pixels.get(split, 0)
            total = max(sum(counts) + ignored, 1)
            if len(counts) <= 20:
                lines.append(f"  {split} pixels: " + ", ".join(f"{n} {100 * c / total:.1f}%"
                                                             for n, c in zip(self.class_names, counts))
                             + (f", ignored {100 * ignored / total:.1f}%" if ignored else ""))
            absent = [name for name, c in zip(self.class_names, counts) if c == 0]
            if absent and not any(p.kind == "empty_class" and p.path.endswith(f"[{split}]") for p in self.problems):
                lines.append(f"  {split}: classes with no pixels: {', '.join(absent)}")
        if self.ok:
            lines.append("no problems found")
            return "\n".join(lines)
        by_kind = Counter(p.kind for p in self.problems)
        counts = ", ".join(f"{n} {KIND_TITLES.get(k, k)}" for k, n in by_kind.items())
        lines.append(f"{len(self.problems)} problem{'s' if len(self.problems) > 1 else ''}: {counts}")
        for kind in by_kind:
            lines.append(f"{KIND_TITLES.get(kind, kind)}:")
            lines += [f"  {p}" for p in self.problems if p.kind == kind]
            if kind == "bad_labels":
                lines += [f"  in all: {fix}" for fix in self.label_fixes]
        return "\n".join(lines)


def _check_pair(ds: SegmentationDataset, index: int) -> tuple[list[Problem], np.ndarray | None]:
    """Problems of one pair and its class histogram (None when the mask could not be read)."""
    image_path, mask_path = ds.pairs[index]
    problems: list[Problem] = []
    size = None
    try:
        size = ds.image_size(index)
    except PSPNetError as err:
        problems.append(Problem("unreadable", str(image_path), str(err).removeprefix(f"{image_path}: ")))
    try:
        raw = ds.read_raw_mask(index)
    except PSPNetError as err:
        problems.append(Problem("unreadable", str(mask_path), str(err).removeprefix(f"{mask_path}: ")))
        return problems, None
    if size is not None and raw.shape[:2] != (size[1], size[0]):
        problems.append(Problem("size_mismatch", str(mask_path), f"mask is {raw.shape[1]}x{raw.shape[0]} but its "
                                f"image {Path(image_path).name} is {size[0]}x{size[1]}"))
    try:
        ids = ds.mask_to_ids(raw, mask_path)
    except PSPNetError as err:
        problems.append(Problem("bad_labels", str(mask_path), str(err).removeprefix(f"{mask_path}: ")))
        return problems, None
    return problems, np.bincount(ids.ravel(), minlength=256)


def check_dataset(name: str, root: str | Path, splits: Sequence[str] = ("train", "val"), workers: int = 4,
                  progress: bool = True, **options: Any) -> CheckReport:
    """Read every file of ``splits`` and collect every problem; never raises for a problem in the data."""
    report = CheckReport(name, str(root))
    for split in splits:
        with collect_problems() as problems:
            try:
                ds = build_dataset(name, root, split, **options)
            except PSPNetError as err:
                problems.append(Problem("layout", str(root), f"split {split!r}: {err}"))
                ds = None
        if len(problems) > 1:  # an empty dataset is a consequence of the problems already listed
            problems = [p for p in problems if p.message != "no image/mask pairs found"]
        # the builder's summary of unclaimed values (counts, fix) goes beside the per-file problems found below
        report.label_fixes += [f"{split}: {p.message}" for p in problems if p.kind == "unclaimed_values"]
        problems = [p for p in problems if p.kind != "unclaimed_values"]
        report.problems += problems
        if ds is None:
            continue
        report.samples[split] = len(ds)
        report.class_names = ds.class_names
        report.mask_values = ds.mask_values
        pixels = np.zeros(ds.num_classes, dtype=np.int64)
        uncounted = ignored = 0
        with ThreadPoolExecutor(max(1, workers)) as pool:
            results = pool.map(lambda i: _check_pair(ds, i), range(len(ds)))
            for found, hist in tqdm(results, total=len(ds), desc=f"check {split}", disable=not progress,
                                    leave=False):
                report.problems += found
                if hist is not None:
                    pixels += hist[: ds.num_classes]
                    ignored += int(hist[IGNORE])
                else:
                    uncounted += 1
        if len(ds):
            report.class_pixels[split] = pixels.tolist()
            report.ignored_pixels[split] = ignored
            absent = [n for n, c in zip(ds.class_names, pixels.tolist()) if c == 0]
            if absent and not uncounted and name in TAKES_OPTIONS and split in TRAIN_SPLITS:
                report.problems.append(Problem(
                    "empty_class", f"{root} [{split}]",
                    f"classes {absent} (mask values {_stored(ds, absent)}) have no pixels in split {split!r}: the "
                    "model cannot learn them; check the class options (mask_values, num_classes, classes) against "
                    "the values the masks hold"))
    return report


def _stored(ds: SegmentationDataset, names: list[str]) -> str:
    values = ds.mask_values or list(range(ds.num_classes))
    return ", ".join(str(values[ds.class_names.index(n)]) for n in names)
