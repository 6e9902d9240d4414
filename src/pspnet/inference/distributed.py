"""``pspnet predict --engine ray``: the local predict plan, run by a pool of model replicas on Ray Data.

The driver plans outputs exactly as local predict does (:mod:`pspnet.inference.outputs`), drops inputs an
earlier run finished, and streams the rest through ``map_batches`` on an actor pool: each replica loads the
model once, sets its own thread count, decodes, segments and writes its files atomically with the same
:func:`pspnet.inference.batch.process_batch` as local predict (so label PNGs are byte-identical), and appends
a manifest row per input the moment its files are in place. Killing the driver (or losing a node) loses
at most the batches in flight; rerunning the same command skips every input with a manifest row.
Videos are one task each (batch size 1), their frames batched inside the task.
Inputs and ``out`` may be URIs (``s3://``, ``gs://``, ``hdfs://``): replicas then read and write through
``pyarrow.fs`` themselves (:mod:`pspnet.inference.remote`), resolving each URI from their own environment.

Ray is optional (``pip install 'pspnet[ray]'``) and imported only here, only when this engine runs.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Sequence

import numpy as np

from pspnet.errors import PSPNetError
from pspnet.inference.batch import Summary, tally
from pspnet.inference.outputs import Planned, Source

if TYPE_CHECKING:
    from pspnet.inference.remote import Remote

logger = logging.getLogger(__name__)

INSTALL = "--engine ray needs Ray Data: pip install 'pspnet[ray]' (or pip install 'ray[data]')"


def _import_ray():
    try:
        import ray
        import ray.data  # the extra installs both; ray without [data] lacks pandas/pyarrow
    except ImportError as err:
        raise PSPNetError(INSTALL) from err
    return ray


def _to_item(p: Planned, remote_out: bool) -> dict:
    from pspnet.inference.remote import RemoteSource

    s = p.source  # absolute local paths: a worker's current folder is not the driver's
    remote = isinstance(s, RemoteSource)
    where = str if remote else os.path.abspath
    return {"path": where(s.path), "root": where(s.root), "rel": str(s.rel), "kind": s.kind,
            "fs": s.fs if remote else "", "size": s.size if remote else -1, "mtime_ns": s.mtime_ns if remote else -1,
            "outputs": ";".join(f"{k}={v if remote_out else os.path.abspath(v)}" for k, v in p.outputs.items())}


def _from_item(item: dict, remote_out: bool) -> Planned:
    from pspnet.inference.remote import RemoteSource

    outputs = dict(kv.split("=", 1) for kv in str(item["outputs"]).split(";"))
    fs = str(item["fs"])
    if fs:
        source: Source = RemoteSource(PurePosixPath(str(item["path"])), PurePosixPath(str(item["root"])),
                                      PurePosixPath(str(item["rel"])), str(item["kind"]), fs=fs,
                                      size=int(item["size"]), mtime_ns=int(item["mtime_ns"]))
    else:
        source = Source(Path(str(item["path"])), Path(str(item["root"])), Path(str(item["rel"])), str(item["kind"]))
    kind = PurePosixPath if remote_out else Path
    return Planned(source, {k: kind(v) for k, v in outputs.items()})


class _Replica:
    """One model replica: loaded once per actor, then fed batches of planned inputs."""

    def __init__(self, seg_kwargs: dict, out: str, fingerprint: str, alpha: float, threads: int):
        import torch

        from pspnet.inference.batch import open_manifest
        from pspnet.inference.remote import destination, is_uri
        from pspnet.inference.segmenter import Segmenter

        torch.set_num_threads(threads)
        self.seg = Segmenter(**seg_kwargs)
        self.remote_out = is_uri(out)
        self.manifest = open_manifest(destination(out), fingerprint)
        self.alpha = alpha

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from pspnet.inference.batch import process_batch, process_video

        keys = list(batch)
        plans = [_from_item({k: batch[k][i] for k in keys}, self.remote_out) for i in range(len(batch["path"]))]
        images = [p for p in plans if p.source.kind != "video"]
        rows = process_batch(self.seg, images, self.manifest, self.alpha) if images else []
        rows += [process_video(self.seg, p, self.manifest, self.alpha) for p in plans if p.source.kind == "video"]
        return {"input": np.array([r["input"] for r in rows]), "error": np.array([r["error"] for r in rows]),
                "frames": np.array([int(r.get("frames", 1)) for r in rows])}


def run_ray(plan: Sequence[Planned], out: Path | Remote, fingerprint: str, seg_kwargs: dict, alpha: float,
            batch_size: int, workers: int, address: str | None = None, progress: bool = True) -> Summary:
    """Segment every planned input not marked ``skip`` on Ray; returns what was done, skipped and failed.

    ``address`` None starts Ray on this machine (unless the caller already called ``ray.init``); ``auto``
    or ``ray://host:10001`` joins a cluster, whose nodes need pspnet installed and ``out`` on a shared
    file system, or ``out`` (and the inputs) at URIs every node can reach with its own credentials.
    """
    from pspnet.inference.remote import is_uri

    ray = _import_ray()
    summary = Summary(skipped=sum(p.skip for p in plan))
    todo = [p for p in plan if not p.skip]
    if not todo:
        return summary
    model = seg_kwargs.get("model")
    if isinstance(model, (str, Path)) and Path(model).exists():
        seg_kwargs = {**seg_kwargs, "model": os.path.abspath(model)}
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=logger.isEnabledFor(logging.INFO))
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = progress
        gpu = str(seg_kwargs.get("device", "auto")).startswith("cuda")
        cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
        threads = max(1, cpus // workers)
        start = time.perf_counter()
        remote_out = is_uri(_out_text(out))
        images = [_to_item(p, remote_out) for p in todo if p.source.kind != "video"]
        videos = [_to_item(p, remote_out) for p in todo if p.source.kind == "video"]
        for items, size in ((images, batch_size), (videos, 1)):
            if not items:
                continue
            ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // size, 1000)))
            results = ds.map_batches(
                _Replica, batch_size=size, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=min(workers, len(items))),
                fn_constructor_kwargs={"seg_kwargs": seg_kwargs, "out": _out_text(out), "fingerprint": fingerprint,
                                       "alpha": alpha, "threads": threads},
                num_cpus=0 if gpu else min(threads, cpus), num_gpus=1 if gpu else 0)
            for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
                tally(summary, [{"input": str(i), "error": str(e), "frames": int(f)}
                                 for i, e, f in zip(batch["input"], batch["error"], batch["frames"])])
        summary.seconds = time.perf_counter() - start
    finally:
        if started:
            ray.shutdown()
    return summary


def _out_text(out: Path | Remote) -> str:
    """``out`` as the replicas get it: an absolute local path, or the URI (query options included)."""
    from pspnet.inference.remote import Remote

    return out.uri if isinstance(out, Remote) else os.path.abspath(out)
