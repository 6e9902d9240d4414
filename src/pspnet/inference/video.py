"""Video in, overlay video out (PyAV), frame count, size and frame rate preserved."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from tqdm import tqdm

from pspnet.errors import PSPNetError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")


def _av():
    try:
        import av
    except ImportError as err:
        raise PSPNetError("video needs PyAV: pip install 'pspnet[video]'") from err
    return av


def open_video(path: str | Path) -> tuple[Any, Any]:
    """The opened container and its first video stream; any failure names the file."""
    av = _av()
    path = Path(path)
    if not path.is_file():
        raise PSPNetError(f"{path}: no such video file")
    if path.stat().st_size == 0:
        raise PSPNetError(f"{path}: file is empty (0 bytes)")
    try:
        src = av.open(str(path))
    except (av.error.FFmpegError, OSError) as err:
        raise PSPNetError(f"{path}: cannot decode this video ({err})") from err
    if not src.streams.video:
        src.close()
        raise PSPNetError(f"{path}: has no video stream")
    return src, src.streams.video[0]


def segment_video(path: str | Path, out_path: str | Path, segmenter, alpha: float = 0.5,
                  progress: bool = True, on_labels: Callable[[int, np.ndarray], None] | None = None) -> dict:
    """Write ``out_path`` (mp4) with the overlay of every frame; returns frame count, size and fps.

    The video is written to a temporary file that replaces ``out_path`` only when complete, so a
    damaged input never leaves half a video or touches an earlier result.
    """
    av = _av()
    path, out_path = Path(path), Path(out_path)
    src, stream = open_video(path)
    fps = stream.average_rate or stream.guessed_rate or Fraction(25)
    total = stream.frames or None
    width, height = stream.codec_context.width, stream.codec_context.height
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.stem}.tmp{out_path.suffix}")
    dst = av.open(str(tmp), "w")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    ostream = dst.add_stream(codec, rate=fps)
    ostream.width, ostream.height = width - width % 2, height - height % 2
    ostream.pix_fmt = "yuv420p"
    count, complete = 0, False

    def frames():
        try:
            for frame in src.decode(stream):
                yield frame.to_image()
        except av.error.FFmpegError as err:
            raise PSPNetError(f"{path}: video is damaged after frame {count} ({err})") from err

    try:
        bar = tqdm(total=total, desc=path.name, unit="frame", disable=not progress)
        pending: list[Image.Image] = []
        batch = max(1, segmenter.batch_size)

        def flush():
            nonlocal count
            for image, labels in zip(pending, segmenter.predict_batch(pending)):
                if on_labels is not None:
                    on_labels(count, labels)
                over = segmenter.overlay(image, labels, alpha=alpha, legend=False)
                if over.size != (ostream.width, ostream.height):
                    over = over.crop((0, 0, ostream.width, ostream.height))
                for packet in ostream.encode(av.VideoFrame.from_image(over)):
                    dst.mux(packet)
                count += 1
                bar.update(1)
            pending.clear()

        for image in frames():
            pending.append(image)
            if len(pending) == batch:
                flush()
        flush()
        for packet in ostream.encode():
            dst.mux(packet)
        bar.close()
        complete = count > 0
    finally:
        dst.close()
        src.close()
        if not complete:
            tmp.unlink(missing_ok=True)
    if count == 0:
        raise PSPNetError(f"{path}: no decodable frames")
    with open(tmp, "rb") as f:  # on disk before it takes the final name, so a crash never leaves a torn video
        os.fsync(f.fileno())
    os.replace(tmp, out_path)  # replaces a symlink named out_path, never writes through it
    return {"frames": count, "width": width, "height": height, "fps": float(fps), "output": str(out_path)}
