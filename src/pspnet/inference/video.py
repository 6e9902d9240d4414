"""Video in, overlay video out (PyAV), frame count, size and frame rate preserved."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from tqdm import tqdm

from pspnet.errors import PSPNetError
from pspnet.files import atomic_path, require_file

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
    path = require_file(path, "a video file")
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
    """Write ``out_path`` (mp4) with the overlay of every frame; returns frame count, size and fps."""
    av = _av()
    path, out_path = Path(path), Path(out_path)
    src, stream = open_video(path)
    fps = stream.average_rate or stream.guessed_rate or Fraction(25)
    total = stream.frames or None
    width, height = stream.codec_context.width, stream.codec_context.height
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    count = 0

    def frames():
        try:
            for frame in src.decode(stream):
                yield frame.to_image()
        except av.error.FFmpegError as err:
            raise PSPNetError(f"{path}: video is damaged after frame {count} ({err})") from err

    # The video takes its name only when complete: a damaged input never leaves half a video or touches
    # an earlier result, and a symlink named out_path is replaced, never written through.
    with atomic_path(out_path) as tmp:
        dst = av.open(str(tmp), "w")
        try:
            ostream = dst.add_stream(codec, rate=fps)
            ostream.width, ostream.height = width - width % 2, height - height % 2
            ostream.pix_fmt = "yuv420p"
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
        finally:
            dst.close()
            src.close()
        if count == 0:
            raise PSPNetError(f"{path}: no decodable frames")
    return {"frames": count, "width": width, "height": height, "fps": float(fps), "output": str(out_path)}
