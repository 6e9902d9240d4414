"""``pspnet predict``: images, folders, globs, videos or stdin -> label PNGs and overlays."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from pspnet.cli.options import add_segmenter, segmenter_kwargs
from pspnet.errors import PSPNetError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment images, folders, globs or videos",
                       description="Writes <stem>.png (palette label map, class indices) and <stem>_overlay.png per "
                                   "image, <stem>_overlay.mp4 per video, at the original resolution, mirroring the "
                                   "input folders under --out; a name two inputs would share keeps its extension "
                                   "(good.jpg.png). Results are listed in OUT/manifest.csv; a bad image is reported "
                                   "at the end (exit 2) after every other one is written.")
    p.add_argument("inputs", nargs="*", help="image files, folders (recursive), glob patterns, .txt lists of paths, "
                   "videos, URIs of any of these (s3://, gs://, hdfs://, file://), or - for stdin (default: the "
                   "bundled sample frame)")
    add_segmenter(p)
    p.add_argument("--out", default="predictions", help="output folder, or a URI (s3://bucket/labels)")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    p.add_argument("--no-overlay", action="store_true")
    p.add_argument("--save-probs", action="store_true", help="also write <stem>_probs.npz (float16 class probabilities)")
    p.add_argument("--save-confidence", action="store_true", help="also write <stem>_confidence.png (max softmax)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo every input and replace files in --out that pspnet did not write (default: skip inputs "
                        "unchanged since an earlier run, refuse to replace files of yours)")
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="ray: distributed batch inference on Ray Data (pip install 'pspnet[ray]')")
    p.add_argument("--address", default=None,
                   help="--engine ray: cluster to join (auto, ray://host:10001); default starts Ray on this machine")
    p.add_argument("--workers", type=int, default=1, help="--engine ray: model replicas (each loads the model once)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pspnet.inference.batch import (OutputOptions, check_device, merge_manifests, prepare, run_local,
                                        validate_numbers)
    from pspnet.inference.remote import destination

    validate_numbers(args.scales, args.alpha, args.batch_size, args.crop)
    check_device(args.device)
    args.out = destination(args.out)
    if args.workers < 1:
        raise PSPNetError(f"--workers {args.workers}: must be at least 1")
    from pspnet.model.bundled import SAMPLE_IMAGE

    items = [i for i in (args.inputs or [str(SAMPLE_IMAGE)]) if i != "-"]
    stdin = "-" in (args.inputs or [])
    outputs = OutputOptions(overlay=not args.no_overlay, probs=args.save_probs, confidence=args.save_confidence,
                            alpha=args.alpha)
    options = {"model": _model_identity(args.model), "device": args.device, "precision": args.precision,
               "backend": args.backend, "mode": args.mode, "crop": args.crop, "scales": args.scales,
               "flip": args.flip}
    plan, fingerprint = prepare(items, args.out, outputs, options, overwrite=args.overwrite, stdin=stdin)
    if args.engine == "ray":
        if stdin:
            raise PSPNetError("--engine ray reads files, not stdin (-); save the image to a file first")
        from pspnet.inference.distributed import run_ray

        summary = run_ray(plan, args.out, fingerprint, seg_kwargs=segmenter_kwargs(args), alpha=args.alpha,
                          batch_size=args.batch_size, workers=args.workers, address=args.address,
                          progress=not args.no_progress)
    else:
        from pspnet.inference.segmenter import Segmenter

        stdin_data = sys.stdin.buffer.read() if stdin else None
        seg = Segmenter(**segmenter_kwargs(args))
        todo = sum(not p.skip and p.source.kind != "video" for p in plan)
        bar = tqdm(total=todo, desc="predict", unit="img", disable=args.no_progress or not todo)
        summary = run_local(seg, plan, args.out, fingerprint, args.alpha, args.batch_size, stdin_data,
                            progress=bar.update)
        bar.close()
    manifest = merge_manifests(args.out)
    print(f"{args.out}: {summary.line()}; manifest {manifest}")
    if len(summary.failed) == 1:
        raise PSPNetError(f"{summary.failed[0][1]} (every other input was written; see {manifest})")
    if summary.failed:
        for _, error in summary.failed:
            print(f"failed: {error}", file=sys.stderr)
        raise PSPNetError(f"{len(summary.failed)} of {len(plan)} input(s) failed (listed above, and in {manifest}); "
                          "every other input was written")
    return 0


def _model_identity(model: str) -> str:
    """The model name, or for a file its path, size and mtime: a changed weights file redoes the outputs."""
    path = Path(model)
    if path.is_file():
        st = path.stat()
        return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return model
