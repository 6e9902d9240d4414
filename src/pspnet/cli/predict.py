"""``pspnet predict``: images, folders, globs, videos or stdin -> label PNGs and overlays."""

from __future__ import annotations

import argparse
import glob
import io
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pspnet.cli.options import model_for_backend
from pspnet.errors import PSPNetError

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "camvid_0016E5_08059.jpg"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment images, folders, globs or videos",
                       description="Writes <stem>.png (palette label map, class indices) and <stem>_overlay.png per "
                                   "image, <stem>_overlay.mp4 per video, at the original resolution.")
    p.add_argument("inputs", nargs="*", help="image files, folders (recursive), glob patterns, videos, or - for stdin "
                   "(default: the bundled sample frame)")
    p.add_argument("--model", default="camvid", help="bundled name (camvid), .safetensors/.pth/.onnx file, folder or Hub id")
    p.add_argument("--out", type=Path, default=Path("predictions"), help="output folder (default: predictions)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--mode", default="whole", choices=["whole", "slide"], help="slide: sliding window for large images")
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="sliding-window crop size")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], help="multi-scale testing, e.g. 0.75 1 1.25")
    p.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    p.add_argument("--no-overlay", action="store_true")
    p.add_argument("--save-probs", action="store_true", help="also write <stem>_probs.npz (float16 class probabilities)")
    p.add_argument("--save-confidence", action="store_true", help="also write <stem>_confidence.png (max softmax)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[Path], bool]:
    """Split the inputs into image files and video files (and whether stdin was asked for)."""
    from pspnet.data.io import IMAGE_SUFFIXES, list_images
    from pspnet.inference.video import VIDEO_SUFFIXES

    images, videos, stdin = [], [], False
    for item in inputs:
        if item == "-":
            stdin = True
            continue
        path = Path(item)
        if path.is_dir():
            found = list_images(path) + sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
            if not found:
                raise PSPNetError(f"{path}: folder has no images or videos")
            images += [p for p in found if p.suffix.lower() in IMAGE_SUFFIXES]
            videos += [p for p in found if p.suffix.lower() in VIDEO_SUFFIXES]
        elif path.is_file():
            (videos if path.suffix.lower() in VIDEO_SUFFIXES else images).append(path)
        elif any(c in item for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file())
            if not matches:
                raise PSPNetError(f"{item}: pattern matches no files")
            images += [m for m in matches if m.suffix.lower() not in VIDEO_SUFFIXES]
            videos += [m for m in matches if m.suffix.lower() in VIDEO_SUFFIXES]
        else:
            raise PSPNetError(f"{path}: no such file or folder")
    return images, videos, stdin


def _unique_stems(paths: list[Path]) -> list[str]:
    """Output names: the file stem, or the relative path joined by '_' when stems collide."""
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return ["_".join(p.with_suffix("").parts[-3:]) for p in paths]


def run(args: argparse.Namespace) -> int:
    from pspnet.data.io import open_image, read_image, to_rgb
    from pspnet.inference.segmenter import Segmenter
    from pspnet.inference.video import open_video, segment_video
    from pspnet.inference.visualize import confidence_png, label_png

    images, videos, stdin = expand_inputs(args.inputs or [str(SAMPLE)])
    model = model_for_backend(args.model, args.backend)
    seg = Segmenter(model, device=args.device, precision=args.precision, backend=args.backend,
                    mode=args.mode, crop=args.crop, scales=args.scales, flip=args.flip, batch_size=args.batch_size)
    # Every input's header, before anything is written: a missing, empty, undecodable or too large
    # file among many fails now rather than after hours of work.
    for path in images:
        with open_image(path, decode=False) as header:
            try:
                seg.check_size(header)
            except PSPNetError as err:
                raise PSPNetError(f"{path}: {err}") from err
    for path in videos:
        open_video(path)[0].close()
    args.out.mkdir(parents=True, exist_ok=True)

    def write(stem: str, image, probs: np.ndarray) -> None:
        labels = probs.argmax(0).astype(np.uint8 if seg.num_classes <= 256 else np.int32)
        label_png(labels, seg.palette).save(args.out / f"{stem}.png")
        if not args.no_overlay:
            seg.overlay(image, labels, alpha=args.alpha).save(args.out / f"{stem}_overlay.png")
        if args.save_probs:
            np.savez_compressed(args.out / f"{stem}_probs.npz", probs=probs.astype(np.float16),
                                class_names=np.array(seg.class_names))
        if args.save_confidence:
            confidence_png(probs.max(0)).save(args.out / f"{stem}_confidence.png")

    if stdin:
        from PIL import Image, UnidentifiedImageError

        data = sys.stdin.buffer.read()
        if not data:
            raise PSPNetError("stdin: no image data")
        try:
            image = to_rgb(Image.open(io.BytesIO(data)))
        except (UnidentifiedImageError, OSError) as err:
            raise PSPNetError(f"stdin: not a decodable image ({err})") from err
        write("stdin", image, seg.probs(image))

    stems = _unique_stems(images)
    bar = tqdm(total=len(images), desc="predict", unit="img", disable=args.no_progress or not images)
    for start in range(0, len(images), args.batch_size):
        chunk = list(zip(images[start:start + args.batch_size], stems[start:start + args.batch_size]))
        pils = [read_image(p) for p, _ in chunk]
        for (path, stem), pil, probs in zip(chunk, pils, seg.probs_batch(pils)):
            write(stem, pil, probs)
        bar.update(len(chunk))
    bar.close()

    for video, stem in zip(videos, _unique_stems(videos)):
        info = segment_video(video, args.out / f"{stem}_overlay.mp4", seg, alpha=args.alpha,
                             progress=not args.no_progress)
        print(f"{video}: {info['frames']} frames {info['width']}x{info['height']} -> {info['output']}")
    print(f"wrote {len(images) + int(stdin)} image result(s) and {len(videos)} video(s) to {args.out}")
    return 0
