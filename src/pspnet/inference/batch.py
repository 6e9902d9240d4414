"""Files in, predictions out: plan, check, then segment batch by batch, recording every result.

The same :func:`process_batch` runs in local ``pspnet predict`` and in each Ray replica
(``pspnet.inference.distributed``), so both engines write byte-identical files under the same names.
A bad image is a failure row in the manifest and the run goes on; the caller reports failures at the end.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Sequence

import numpy as np

from pspnet.errors import PSPNetError
from pspnet.files import atomic_write
from pspnet.inference.outputs import (
    Manifest,
    Planned,
    Source,
    check_out_dir,
    check_plan,
    collect_inputs,
    mark_done,
    merge_manifest,
    options_fingerprint,
    plan_outputs,
)
from pspnet.inference.predict import check_mode

if TYPE_CHECKING:
    from pspnet.inference.remote import Remote, RemoteManifest

logger = logging.getLogger(__name__)


@dataclass
class OutputOptions:
    """Which files each image writes and how the overlay looks."""

    overlay: bool = True
    probs: bool = False
    confidence: bool = False
    alpha: float = 0.5

    def kinds(self) -> list[str]:
        return ["label"] + [k for k in ("overlay", "probs", "confidence") if getattr(self, k)]


@dataclass
class Summary:
    """What a run did: inputs done, skipped as unchanged, failed (path, message), frames and seconds."""

    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    frames: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        rate = self.frames / self.seconds if self.seconds > 0 else 0.0
        return (f"done {self.done}, skipped {self.skipped} (unchanged), failed {len(self.failed)}; "
                f"{self.frames} frame(s) in {self.seconds:.1f} s = {rate:.2f} frames/s")


def validate_numbers(scales: Sequence[float], alpha: float = 0.5, batch_size: int = 1,
                     crop: Sequence[int] | None = None) -> None:
    """Option values in range, one message naming the option, the value and what is allowed."""
    bad = [s for s in scales if not (math.isfinite(s) and s > 0)]
    if bad:
        raise PSPNetError(f"--scales {bad[0]:g}: every scale must be a finite number > 0 (e.g. 0.75 1 1.25)")
    if not 0 <= alpha <= 1:
        raise PSPNetError(f"--alpha {alpha:g}: must be between 0 (image only) and 1 (colours only)")
    if batch_size < 1:
        raise PSPNetError(f"--batch-size {batch_size}: must be at least 1")
    if crop is not None and any(c < 1 for c in crop):
        raise PSPNetError(f"--crop {' '.join(map(str, crop))}: height and width must be positive")
    if crop is not None:
        check_mode("slide", crop)


def prepare(items: Sequence[str], out: Path | Remote, outputs: OutputOptions, options: dict,
            overwrite: bool = False, stdin: bool = False) -> tuple[list[Planned], str]:
    """Inputs -> checked output plan and the options fingerprint; earlier finished inputs get ``skip``.

    Everything that can be refused (out folder, name clashes with inputs or a user's files) is refused here,
    before a model is loaded. Inputs and ``out`` may be URIs (:mod:`pspnet.inference.remote`).
    """
    from pspnet.inference.remote import Remote, is_uri, local_path

    check_mode(options.get("mode", "whole"), options.get("crop"))
    items = [i if local_path(i) is None else local_path(i) for i in items]
    if isinstance(out, Remote) or any(is_uri(i) for i in items):
        return _prepare_uris(items, out, outputs, options, overwrite, stdin)
    check_out_dir(out)
    sources = collect_inputs(items)
    if stdin:
        sources.append(Source(Path("stdin"), Path("."), Path("stdin"), "stdin"))
    plan = plan_outputs(sources, out, outputs.kinds())
    check_plan(plan, out, [Path(i) for i in items if Path(i).is_dir()], overwrite)
    fingerprint = options_fingerprint({**options, "outputs": outputs.kinds(), "alpha": outputs.alpha})
    if not overwrite:
        skipped = mark_done(plan, out, fingerprint)
        if skipped:
            logger.info("%d input(s) unchanged since an earlier run in %s: skipped", skipped, out)
    return plan, fingerprint


def _prepare_uris(items: Sequence[str], out: Path | Remote, outputs: OutputOptions, options: dict,
                  overwrite: bool, stdin: bool) -> tuple[list[Planned], str]:
    """``prepare`` when an input or ``out`` is a URI: the same plan, checked on each side's file system."""
    from pspnet.inference.remote import (
        Remote,
        check_remote_out,
        check_remote_plan,
        collect_remote,
        is_uri,
        mark_done_remote,
    )

    remote = isinstance(out, Remote)
    check_remote_out(out) if remote else check_out_dir(out)
    sources: list[Source] = []
    seen: set[str] = set()
    for item in items:  # argument order, the same file kept once, as collect_inputs does
        for s in collect_remote(item) if is_uri(item) else collect_inputs([item]):
            if s.key not in seen:
                seen.add(s.key)
                sources.append(s)
    if stdin:
        sources.append(Source(Path("stdin"), Path("."), Path("stdin"), "stdin"))
    plan = plan_outputs(sources, out.path if remote else out, outputs.kinds())
    if remote:
        existing, rows = check_remote_plan(plan, out, overwrite)
    else:
        check_plan(plan, out, [Path(i) for i in items if not is_uri(i) and Path(i).is_dir()], overwrite)
    fingerprint = options_fingerprint({**options, "outputs": outputs.kinds(), "alpha": outputs.alpha})
    if not overwrite:
        skipped = (mark_done_remote(plan, out, fingerprint, existing, rows) if remote
                   else mark_done(plan, out, fingerprint))
        if skipped:
            logger.info("%d input(s) unchanged since an earlier run in %s: skipped", skipped, out)
    return plan, fingerprint


def open_manifest(out: Path | Remote, fingerprint: str) -> Manifest | RemoteManifest:
    """This process's manifest part (and output writer) for a local or a remote ``out``."""
    from pspnet.inference.remote import Remote, RemoteManifest

    return RemoteManifest(out, fingerprint) if isinstance(out, Remote) else Manifest(out, fingerprint)


def merge_manifests(out: Path | Remote) -> str:
    """``OUT/manifest.csv`` from every part so far; returns where it is."""
    from pspnet.inference.remote import Remote, merge_remote_manifest

    return merge_remote_manifest(out) if isinstance(out, Remote) else str(merge_manifest(out))


def class_shares(labels: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    counts = np.bincount(labels.ravel(), minlength=len(class_names))[:len(class_names)]
    return {name: float(c) / labels.size for name, c in zip(class_names, counts)}


def write_image_outputs(seg, planned: Planned, image, labels: np.ndarray, probs: np.ndarray | None, alpha: float,
                        write: Callable[[Path, Callable[[BinaryIO], object]], None] = atomic_write) -> dict[str, float]:
    """Every planned file of one image, each written atomically by ``write``; returns the class shares.
    ``probs`` is needed only when probabilities or confidence are among the outputs."""
    from pspnet.inference.visualize import confidence_png, label_png, mask_png

    for kind, dst in planned.outputs.items():
        if kind == "label":
            if seg.mask_values is not None:  # the user's own values (e.g. 0/255), as a grey PNG
                write(dst, lambda f: mask_png(labels, seg.mask_values).save(f, format="PNG"))
            else:
                write(dst, lambda f: label_png(labels, seg.palette).save(f, format="PNG"))
        elif kind == "overlay":
            write(dst, lambda f: seg.overlay(image, labels, alpha=alpha).save(f, format="PNG"))
        elif kind == "probs":
            write(dst, lambda f: np.savez_compressed(f, probs=probs.astype(np.float16),
                                                            class_names=np.array(seg.class_names)))
        elif kind == "confidence":
            write(dst, lambda f: confidence_png(probs.max(0)).save(f, format="PNG"))
    return class_shares(labels, seg.class_names)


def _decode(source: Source, stdin_data: bytes | None):
    from pspnet.data.io import decode_rgb, read_image

    if source.kind != "stdin" and not source.on_disk:
        from pspnet.inference.remote import read_bytes

        return decode_rgb(read_bytes(source.fs, source.path), name=source.key)
    if source.kind != "stdin":
        return read_image(source.path)
    if not stdin_data:
        raise PSPNetError("stdin: no image data")
    return decode_rgb(stdin_data, name="stdin")  # the files' decoder: format allowlist, EXIF, bombs refused


def process_batch(seg, batch: Sequence[Planned], manifest: Manifest, alpha: float,
                  stdin_data: bytes | None = None) -> list[dict]:
    """Decode, segment and write a batch of images; one manifest row each, failures included."""
    rows: list[dict] = []
    start = time.perf_counter()
    good: list[tuple[Planned, object]] = []
    with manifest.batch(batch):
        for p in batch:
            try:
                image = _decode(p.source, stdin_data)
                seg.check_size(image)
                good.append((p, image))
            except PSPNetError as err:
                msg = str(err) if str(p.source.path) in str(err) else f"{p.source.path}: {err}"
                logger.debug("%s", msg)  # every failure is reported once, at the end of the run
                rows.append(manifest.record(p, time.perf_counter() - start, error=msg))
        if good:
            images = [im for _, im in good]
            # labels straight from the logits (Segmenter's fast path) unless probabilities are written
            if any({"probs", "confidence"} & p.outputs.keys() for p, _ in good):
                probs: list[np.ndarray | None] = list(seg.probs_batch(images))
                labels = [seg.labels(pr) for pr in probs]
            else:
                labels, probs = seg.predict_batch(images), [None] * len(good)
            per = (time.perf_counter() - start) / len(good)
            for (p, image), lab, pr in zip(good, labels, probs):
                t = time.perf_counter()
                shares = write_image_outputs(seg, p, image, lab, pr, alpha, manifest.write)
                rows.append(manifest.record(p, per + time.perf_counter() - t, shares))
    return rows


def process_video(seg, planned: Planned, manifest: Manifest, alpha: float, progress: bool = False) -> dict:
    """One video -> its overlay video (written to a temporary file, then moved into place); one manifest row.

    A remote video is copied to a local temporary file first, and a remote overlay sent from one after.
    """
    from pspnet.inference.remote import local_copy
    from pspnet.inference.video import segment_video

    start = time.perf_counter()
    shares = np.zeros(seg.num_classes)

    def count(_: int, labels: np.ndarray) -> None:
        shares[:] += np.bincount(labels.ravel(), minlength=seg.num_classes)[:seg.num_classes]

    with manifest.batch([planned]):
        try:
            with local_copy(planned.source) as src, manifest.target(planned.outputs["video"]) as dst:
                info = segment_video(src, dst, seg, alpha=alpha, progress=progress, on_labels=count)
        except PSPNetError as err:
            logger.debug("%s", err)
            return {**manifest.record(planned, time.perf_counter() - start, error=str(err)), "frames": 0}
        total = shares.sum() or 1.0
        row = manifest.record(planned, time.perf_counter() - start,
                              {n: float(c) / total for n, c in zip(seg.class_names, shares)})
    return {**row, "frames": info["frames"]}


def run_local(seg, plan: Sequence[Planned], out: Path | Remote, fingerprint: str, alpha: float, batch_size: int,
              stdin_data: bytes | None = None, progress: Callable[[int], None] | None = None) -> Summary:
    """Segment every planned input not marked ``skip`` in this process."""
    summary = Summary(skipped=sum(p.skip for p in plan))
    manifest = open_manifest(out, fingerprint)
    start = time.perf_counter()
    images = [p for p in plan if not p.skip and p.source.kind in ("image", "stdin")]
    videos = [p for p in plan if not p.skip and p.source.kind == "video"]
    for i in range(0, len(images), batch_size):
        rows = process_batch(seg, images[i:i + batch_size], manifest, alpha, stdin_data)
        tally(summary, rows)
        if progress:
            progress(len(rows))
    for p in videos:
        tally(summary, [process_video(seg, p, manifest, alpha, progress=progress is not None)])
    summary.seconds = time.perf_counter() - start
    return summary


def tally(summary: Summary, rows: Sequence[dict]) -> None:
    for row in rows:
        if row["error"]:
            summary.failed.append((row["input"], row["error"]))
        else:
            summary.done += 1
            summary.frames += int(row.get("frames", 1))
