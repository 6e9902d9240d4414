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
    p.add_argument("--threshold", type=float, metavar="P",
                   help="two-class models: label --positive where its probability >= P (default: argmax, i.e. "
                        "0.5); pick P from `pspnet eval --out`'s pr_curve.png")
    p.add_argument("--positive", type=int, default=1, choices=[0, 1], help="the foreground class of --threshold")
    p.add_argument("--mask-values", nargs="+", metavar="V",
                   help="write <stem>.png as a grey mask with value V for class i (e.g. 0 255); default: the "
                        "model's own (what its training masks used), else the palette label map; 'ids' forces the "
                        "palette label map")
    p.add_argument("--window", metavar="C,W|pLO,pHI|minmax",
                   help="DICOM/NIfTI inputs: intensity window (default: the DICOM's own, else the full range)")
    p.add_argument("--axis", type=int, default=2, choices=[0, 1, 2],
                   help="DICOM/NIfTI inputs: slice along this axis")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pspnet.device import resolve_device
    from pspnet.inference.batch import (OutputOptions, merge_manifests, prepare, run_local,
                                        validate_numbers)
    from pspnet.inference.remote import destination

    validate_numbers(args.scales, args.alpha, args.batch_size, args.crop)
    resolve_device(args.device)  # a bad --device is one line, before any model loads
    args.out = destination(args.out)
    if args.workers < 1:
        raise PSPNetError(f"--workers {args.workers}: must be at least 1")
    from pspnet.model.bundled import SAMPLE_IMAGE

    items = [i for i in (args.inputs or [str(SAMPLE_IMAGE)]) if i != "-"]
    stdin = "-" in (args.inputs or [])
    seg_kwargs = {**segmenter_kwargs(args), **_label_options(args)}
    from pspnet.inference.volumes import find_volumes

    volumes, items = find_volumes(items)
    if volumes:
        if args.engine == "ray":
            raise PSPNetError("--engine ray reads images and videos; predict DICOM/NIfTI scans with --engine local")
        _predict_volumes(volumes, seg_kwargs, args)
        if not items and not stdin:
            return 0
    outputs = OutputOptions(overlay=not args.no_overlay, probs=args.save_probs, confidence=args.save_confidence,
                            alpha=args.alpha)
    options = {"model": _model_identity(args.model), "device": args.device, "precision": args.precision,
               "backend": args.backend, "mode": args.mode, "crop": args.crop, "scales": args.scales,
               "flip": args.flip, "eval_scale": args.eval_scale,
               **{k: v for k, v in _label_options(args).items() if v is not None}}
    plan, fingerprint = prepare(items, args.out, outputs, options, overwrite=args.overwrite, stdin=stdin)
    if args.engine == "ray":
        if stdin:
            raise PSPNetError("--engine ray reads files, not stdin (-); save the image to a file first")
        from pspnet.inference.distributed import run_ray

        summary = run_ray(plan, args.out, fingerprint, seg_kwargs=seg_kwargs, alpha=args.alpha,
                          batch_size=args.batch_size, workers=args.workers, address=args.address,
                          progress=not args.no_progress)
    else:
        from pspnet.inference.segmenter import Segmenter

        stdin_data = sys.stdin.buffer.read() if stdin else None
        seg = Segmenter(**seg_kwargs)
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


def _label_options(args: argparse.Namespace) -> dict:
    """Segmenter keywords of --threshold, --positive and --mask-values ('ids': class ids, the palette PNG)."""
    values = "ids" if args.mask_values == ["ids"] else args.mask_values
    if values is not None and values != "ids":
        try:
            values = [int(v) for v in values]
        except ValueError:
            raise PSPNetError(f"--mask-values {' '.join(values)}: integers, one per class (e.g. 0 255), or "
                              "'ids'") from None
    options = {"threshold": args.threshold, "mask_values": values}
    if args.threshold is not None:
        options["positive"] = args.positive
    return {k: v for k, v in options.items() if v is not None}


def _predict_volumes(volumes: list[Path], seg_kwargs: dict, args: argparse.Namespace) -> None:
    """Each scan slice by slice; its mask in the scan's geometry (NIfTI) or as PNG slices (DICOM)."""
    from pspnet.inference.segmenter import Segmenter
    from pspnet.inference.volumes import predict_volume

    seg = Segmenter(**seg_kwargs)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in tqdm(volumes, desc="scans", unit="scan", disable=args.no_progress):
        files = predict_volume(seg, path, args.out, args.axis, args.window, args.overwrite)
        print(f"{path}: wrote {files[0]}" + (f" and {len(files) - 1} more" if len(files) > 1 else ""))


def _model_identity(model: str) -> str:
    """For a file (a bundled model's too) its path, size and mtime: changed weights redo the outputs; else the name."""
    from pspnet.model.bundled import BUNDLED, WEIGHTS_DIR

    path = WEIGHTS_DIR / BUNDLED[model] if model in BUNDLED else Path(model)
    if path.is_dir() and not (path / "model.safetensors").is_file():  # a training run: the weights it serves
        from pspnet.model.hub import run_weights

        path = run_weights(path)
    if path.is_file():
        st = path.stat()
        return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return model
