"""Inputs and outputs named by URIs (``s3://``, ``gs://``, ``hdfs://``...): what ``pspnet predict`` reads and writes
beyond this machine's file system, through ``pyarrow.fs`` (the file system layer Ray Data itself uses).

``file://`` and Ray's ``local://`` name this machine's files: they become plain paths and keep every guarantee
of local predict (fsync, symlink checks). Any other scheme is resolved with
``pyarrow.fs.FileSystem.from_uri`` on each process that touches it (the driver lists and plans, every replica
reads and writes), so credentials and endpoints come from the standard places of each store, never from
pspnet: for S3 ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION``,
``AWS_ENDPOINT_URL`` (MinIO, Ceph, a local moto) or an instance role; for GCS the application default
credentials; options may also ride in the URI's query (``s3://b/in?endpoint_override=host:9000&scheme=http``).

Same plan as local predict
    Inputs are listed under a prefix (every image and video below it), a glob (``s3://b/in/**/*.png``, the
    root is the part before the first wildcard) or a ``.txt`` list file (entries relative to its folder, or
    URIs). Their paths relative to the root become the output names exactly as
    :mod:`pspnet.inference.outputs` names local files, and the same ``process_batch`` decodes (from the bytes
    read), segments and encodes, so label PNGs equal local predict's byte for byte.

Atomic writes
    Object stores (S3, GCS): each output is encoded completely in memory, then sent in one write and one close,
    i.e. one PUT (or one multipart upload completed at close). A PUT is atomic: readers see the old object or
    the whole new one, never part of it. Writing to a temporary key and copying would cost a second request
    and a server-side copy for no gain, as object stores have no rename. Other file systems (HDFS...): a
    temporary file beside the target, then ``move``, which is a rename there.

Manifest and resume
    Object stores cannot append, so each process keeps a rolling manifest part under ``OUT/.pspnet/`` that it
    rewrites (one PUT) twice per batch: first with a row per input of the batch naming the outputs about to be
    written (no ``finished``: so a kill mid-batch leaves outputs a rerun knows pspnet wrote, and replaces),
    then with the finished rows. A part holds at most ``PART_ROWS`` rows, then the process starts the next,
    which bounds both the bytes rewritten per batch and the number of parts to read on resume. A rerun skips
    an input whose size, modification time and options match its last finished row and whose outputs all
    exist; objects at output keys that no part names are refused unless ``--overwrite``, as locally.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Iterator, Sequence
from urllib.parse import urlsplit, urlunsplit

from pspnet.errors import PSPNetError
from pspnet.inference.outputs import FIELDS, MANIFEST, STATE_DIR, Planned, Source, intent_row, make_row

logger = logging.getLogger(__name__)

PART_ROWS = 256
OBJECT_STORES = {"s3", "gcs"}  # pyarrow type names of stores where a PUT is atomic and there is no rename
INSTALL = "URIs need pyarrow: pip install 'pspnet[ray]' (or pip install pyarrow)"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(text: object) -> bool:
    """``scheme://...``; plain paths (and Windows drive letters) are not."""
    return isinstance(text, str) and bool(_SCHEME.match(text))


def local_path(text: str) -> str | None:
    """The local path a ``file://`` or ``local://`` URI names; None for any other URI or a plain path."""
    if not is_uri(text):
        return None
    parts = urlsplit(text)
    if parts.scheme == "local":
        return text[len("local://"):] or "."
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise PSPNetError(f"{text}: a file:// URI names a file of this machine (file:///path), not of "
                              f"{parts.netloc}")
        return parts.path
    return None


@lru_cache(maxsize=64)
def _resolve(uri: str):
    try:
        import pyarrow
        import pyarrow.fs
    except ImportError as err:
        raise PSPNetError(INSTALL) from err
    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except (pyarrow.ArrowException, OSError, ValueError) as err:
        raise PSPNetError(f"{uri}: cannot open this URI ({err})") from err


def _display(base: str, path: str) -> str:
    """The URI of ``path`` on the file system ``base`` resolves to, without base's query (options)."""
    parts = urlsplit(base)
    if parts.scheme in ("s3", "gs", "gcs"):  # pyarrow paths of object stores start with the bucket
        return f"{parts.scheme}://{path}"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


@dataclass(frozen=True)
class Remote:
    """A folder or file on a file system named by a URI; ``uri`` (query included) re-resolves it on any node."""

    uri: str
    path: PurePosixPath

    @classmethod
    def parse(cls, uri: str) -> Remote:
        return cls(uri, PurePosixPath(_resolve(uri)[1]))

    @property
    def fs(self):
        return _resolve(self.uri)[0]

    def name(self, path: PurePosixPath | str) -> str:
        return _display(self.uri, str(path))

    def __str__(self) -> str:
        return self.name(self.path)


def destination(text: str) -> Path | Remote:
    """``--out``: a local folder (a plain path, ``file://``, ``local://``) or a :class:`Remote` one."""
    local = local_path(text)
    if local is not None or not is_uri(text):
        return Path(local if local is not None else text)
    return Remote.parse(text.rstrip("/") if urlsplit(text).path not in ("", "/") else text)


@dataclass(frozen=True)
class RemoteSource(Source):
    """An input on a remote file system: ``fs`` is the URI that resolves it; size and mtime come from the listing."""

    fs: str = ""
    size: int = -1
    mtime_ns: int = -1

    @property
    def on_disk(self) -> bool:
        return False

    @property
    def key(self) -> str:
        return _display(self.fs, str(self.path))

    @property
    def root_key(self) -> object:
        return _display(self.fs, str(self.root))

    def identity(self) -> tuple[int, int] | None:
        return self.size, self.mtime_ns


def _kind(name: str) -> str | None:
    from pspnet.data.io import IMAGE_SUFFIXES
    from pspnet.inference.video import VIDEO_SUFFIXES

    s = PurePosixPath(name).suffix.lower()
    return "image" if s in IMAGE_SUFFIXES else "video" if s in VIDEO_SUFFIXES else None


def _glob_regex(pattern: str) -> re.Pattern:
    """A path glob as a regex: ``**`` spans folders, ``*`` and ``?`` stay inside one, ``[...]`` a set."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif c == "*":
            out, i = out + "[^/]*", i + 1
        elif c == "?":
            out, i = out + "[^/]", i + 1
        elif c == "[" and "]" in pattern[i + 1:]:
            j = pattern.index("]", i + 1)
            body = pattern[i + 1:j]
            out += "[" + ("^" + body[1:] if body.startswith("!") else body) + "]"
            i = j + 1
        else:
            out, i = out + re.escape(c), i + 1
    return re.compile(out + r"\Z")


def _infos(remote: Remote, path: str, recursive: bool = True) -> list:
    import pyarrow.fs

    try:
        return remote.fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=recursive, allow_not_found=True))
    except OSError as err:
        raise PSPNetError(f"{remote.name(path)}: cannot list ({err})") from err


def read_bytes(remote: Remote | str, path: str | PurePosixPath) -> bytes:
    remote = Remote.parse(remote) if isinstance(remote, str) else remote
    try:
        with remote.fs.open_input_stream(str(path)) as f:
            return f.read()
    except (OSError, ValueError) as err:  # pyarrow: FileNotFoundError, PermissionError, OSError
        raise PSPNetError(f"{remote.name(path)}: cannot read ({err})") from err


def collect_remote(item: str) -> list[Source]:
    """Image and video files of one URI: a prefix (recursive), a glob, a ``.txt`` list file, or a single file."""
    import pyarrow.fs

    parts = urlsplit(item)
    magic = re.search(r"[*?\[]", parts.path)
    if magic:  # the fixed folders before the first wildcard are the root
        fixed = parts.path[:magic.start()].rsplit("/", 1)[0]
        remote = Remote.parse(urlunsplit((parts.scheme, parts.netloc, fixed or "/", parts.query, "")))
        root = str(remote.path)
        rest = parts.path[len(fixed):].lstrip("/")
        regex = _glob_regex(rest)
        found = [i for i in _infos(remote, root) if i.type == pyarrow.fs.FileType.File
                 and regex.match(PurePosixPath(i.path).relative_to(root).as_posix())]
        if not found:
            raise PSPNetError(f"{item}: pattern matches no files")
        return [_source(remote, i, root, True) for i in sorted(found, key=lambda i: i.path)]
    remote = Remote.parse(item)
    path = str(remote.path)
    try:
        info = remote.fs.get_file_info(path)
    except OSError as err:
        raise PSPNetError(f"{item}: cannot read ({err})") from err
    if info.type == pyarrow.fs.FileType.Directory:
        found = [i for i in _infos(remote, path) if i.type == pyarrow.fs.FileType.File and _kind(i.path)]
        if not found:
            raise PSPNetError(f"{item}: folder has no images or videos")
        return [_source(remote, i, path, False) for i in sorted(found, key=lambda i: i.path)]
    if info.type != pyarrow.fs.FileType.File:
        raise PSPNetError(f"{item}: no such file or folder")
    parent = str(PurePosixPath(path).parent)
    if path.lower().endswith(".txt"):
        lines = [ln.strip() for ln in read_bytes(remote, path).decode("utf-8").splitlines()]
        entries = [ln for ln in lines if ln and not ln.startswith("#")]
        if not entries:
            raise PSPNetError(f"{item}: list file names no inputs")
        sources: list[Source] = []
        for e in entries:
            if not is_uri(e):  # a path on the list's own file system, relative to its folder
                e = urlunsplit((parts.scheme, parts.netloc, _uri_path(parts, str(PurePosixPath(parent) / e)),
                                parts.query, ""))
            if local_path(e) is not None:
                from pspnet.inference.outputs import collect_inputs

                sources += collect_inputs([local_path(e)])
            else:
                sources += collect_remote(e)
        return sources
    return [_source(remote, info, parent, True)]


def _uri_path(parts, fs_path: str) -> str:
    """A pyarrow path back into a URI's path part (object stores put the bucket in the netloc)."""
    if parts.scheme in ("s3", "gs", "gcs"):
        return "/" + fs_path.split("/", 1)[1] if "/" in fs_path else "/"
    return fs_path


def _source(remote: Remote, info, root: str, explicit: bool) -> Source:
    kind = _kind(info.path) or ("image" if explicit else None)
    path = PurePosixPath(info.path)
    return RemoteSource(path, PurePosixPath(root), path.relative_to(root), kind or "image", fs=remote.uri,
                        size=int(info.size if info.size is not None else -1), mtime_ns=int(info.mtime_ns or 0))


# --- the destination -----------------------------------------------------------------------------------------

def write_bytes(out: Remote, path: PurePosixPath | str, data: bytes) -> None:
    """``data`` becomes ``path`` atomically: one PUT on an object store, else a temporary file then a rename."""
    fs, path = out.fs, str(path)
    try:
        if fs.type_name in OBJECT_STORES:
            with fs.open_output_stream(path) as f:
                f.write(data)
            return
        parent = str(PurePosixPath(path).parent)
        fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/.{PurePosixPath(path).name}.{uuid.uuid4().hex[:8]}.tmp"
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)
    except OSError as err:
        raise PSPNetError(f"{out.name(path)}: cannot write ({err})") from err


def check_remote_out(out: Remote) -> None:
    """``out`` is not a file, and a probe object can be written and deleted under it."""
    import pyarrow.fs

    try:
        if out.fs.get_file_info(str(out.path)).type == pyarrow.fs.FileType.File:
            raise PSPNetError(f"--out {out}: is a file, expected a folder")
        probe = out.path / STATE_DIR / f"probe-{uuid.uuid4().hex}"
        write_bytes(out, probe, b"")
        out.fs.delete_file(str(probe))
    except (OSError, PSPNetError) as err:
        if isinstance(err, PSPNetError) and "is a file" in str(err):
            raise
        raise PSPNetError(f"--out {out}: cannot write there ({err})") from err


def _part_rows(out: Remote) -> list[dict]:
    """Every row of every manifest part, intent rows (no ``finished``) included; parts read in parallel."""
    import pyarrow.fs

    parts = sorted(i.path for i in _infos(out, str(out.path / STATE_DIR), recursive=False)
                   if i.type == pyarrow.fs.FileType.File and PurePosixPath(i.path).name.startswith("manifest-"))
    with ThreadPoolExecutor(max_workers=16) as pool:
        texts = list(pool.map(lambda p: read_bytes(out, p).decode("utf-8"), parts))
    return [row for text in texts for row in csv.DictReader(io.StringIO(text))]


def _finished(rows: list[dict]) -> dict[str, dict]:
    last: dict[str, dict] = {}
    for row in sorted((r for r in rows if r.get("finished")), key=lambda r: float(r["finished"])):
        last[row["input"]] = row
    return last


def _existing(out: Remote) -> set[str]:
    import pyarrow.fs

    return {i.path for i in _infos(out, str(out.path)) if i.type == pyarrow.fs.FileType.File}


def check_remote_plan(plan: Sequence[Planned], out: Remote, overwrite: bool = False) -> tuple[set[str], list[dict]]:
    """Refuse an ``out`` inside or around an input root, an output that is an input, or objects pspnet did not
    write at output keys (unless ``overwrite``); returns the files now under ``out`` and the manifest rows."""
    where = str(out)
    for p in plan:
        root = str(p.source.root_key) if isinstance(p.source, RemoteSource) else ""
        if root and (where == root or where.startswith(root.rstrip("/") + "/")
                     or root.startswith(where.rstrip("/") + "/")):
            raise PSPNetError(f"--out {out}: {'is' if where == root else 'overlaps'} the input folder {root}; "
                              "choose an output folder apart from the inputs")
    inputs = {p.source.key for p in plan}
    existing = _existing(out)
    rows = _part_rows(out)
    owned = {str(out.path / rel) for row in rows for rel in row["outputs"].split(";") if rel}
    foreign = []
    for p in plan:
        for dst in p.outputs.values():
            if out.name(dst) in inputs:
                raise PSPNetError(f"{out.name(dst)}: planned output is the input file itself; choose another --out")
            if str(dst) in existing and str(dst) not in owned:
                foreign.append(out.name(dst))
    if foreign and not overwrite:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise PSPNetError(f"{', '.join(foreign[:3])}{more}: exist(s) in --out but pspnet did not write it; move it "
                          "away, choose another --out, or pass --overwrite to replace it")
    return existing, rows


def mark_done_remote(plan: Sequence[Planned], out: Remote, options: str, existing: set[str],
                     rows: list[dict]) -> int:
    """Set ``skip`` on inputs an earlier run finished with the same object and options; returns how many.

    ``existing`` and ``rows`` are what :func:`check_remote_plan` found, so ``out`` is listed and read once."""
    last = _finished(rows)
    n = 0
    for p in plan:
        row = last.get(p.source.key)
        if row is None or row["error"] or row["options"] != options:
            continue
        ident = p.source.identity()
        wanted = ";".join(sorted(str(d.relative_to(out.path)) for d in p.outputs.values()))
        if ident and (row["size"], row["mtime_ns"]) == tuple(map(str, ident)) and row["outputs"] == wanted \
                and all(str(d) in existing for d in p.outputs.values()):
            p.skip = True
            n += 1
    return n


@dataclass
class RemoteManifest:
    """The :class:`~pspnet.inference.outputs.Manifest` of a remote ``out``: a rolling part rewritten per batch."""

    out: Remote
    options: str
    rows: dict[str, dict] = field(default_factory=dict, init=False)
    part: PurePosixPath = field(init=False)

    def __post_init__(self) -> None:
        self._next_part()

    def _next_part(self) -> None:
        self.rows = {}
        self.part = (self.out.path / STATE_DIR /
                     f"manifest-{socket.gethostname()}-{os.getpid()}-{time.time_ns()}.csv")

    def _flush(self) -> None:
        text = io.StringIO()
        w = csv.DictWriter(text, FIELDS)
        w.writeheader()
        w.writerows(self.rows.values())
        write_bytes(self.out, self.part, text.getvalue().encode("utf-8"))

    @contextlib.contextmanager
    def batch(self, plans: Sequence[Planned]) -> Iterator[None]:
        """Name the batch's outputs before writing them, and its finished rows after (even after a failure)."""
        for p in plans:
            self.rows[p.source.key] = intent_row(p, self.out.path, self.options)
        self._flush()
        try:
            yield
        finally:
            self._flush()
            if len(self.rows) >= PART_ROWS:
                self._next_part()

    def write(self, dst: PurePosixPath, write: Callable[[BinaryIO], object]) -> None:
        buf = io.BytesIO()
        write(buf)
        write_bytes(self.out, dst, buf.getvalue())

    @contextlib.contextmanager
    def target(self, dst: PurePosixPath) -> Iterator[Path]:
        """A local temporary file the video writer fills, then sent to ``dst``."""
        with tempfile.TemporaryDirectory(prefix="pspnet-") as tmp:
            local = Path(tmp) / dst.name
            yield local
            if local.is_file():
                try:
                    if self.out.fs.type_name not in OBJECT_STORES:
                        self.out.fs.create_dir(str(dst.parent), recursive=True)
                    with open(local, "rb") as src, self.out.fs.open_output_stream(str(dst)) as f:
                        shutil.copyfileobj(src, f, 8 << 20)
                except OSError as err:
                    raise PSPNetError(f"{self.out.name(dst)}: cannot write ({err})") from err

    def record(self, planned: Planned, seconds: float, shares: dict[str, float] | None = None,
               error: str = "") -> dict:
        row = make_row(planned, self.out.path, self.options, seconds, shares, error)
        self.rows[row["input"]] = row
        return row


def merge_remote_manifest(out: Remote) -> str:
    """Write ``OUT/manifest.csv``: the latest finished row per input over every run so far."""
    last = _finished(_part_rows(out))
    text = io.StringIO()
    w = csv.DictWriter(text, FIELDS)
    w.writeheader()
    w.writerows(last[k] for k in sorted(last))
    write_bytes(out, out.path / MANIFEST, text.getvalue().encode("utf-8"))
    return out.name(out.path / MANIFEST)


@contextlib.contextmanager
def local_copy(source: Source) -> Iterator[Path]:
    """A local path holding the input: the file itself, or a streamed temporary copy of a remote one."""
    if not isinstance(source, RemoteSource):
        yield source.path
        return
    remote = Remote.parse(source.fs)
    with tempfile.TemporaryDirectory(prefix="pspnet-") as tmp:
        local = Path(tmp) / source.path.name
        try:
            with remote.fs.open_input_stream(str(source.path)) as f, open(local, "wb") as dst:
                shutil.copyfileobj(f, dst, 8 << 20)
        except OSError as err:
            raise PSPNetError(f"{source.key}: cannot read ({err})") from err
        yield local
