"""Where predictions go: one planned output path per input, never two inputs on one file, nothing clobbered.

Shared by local ``pspnet predict`` and the Ray engine (``pspnet.inference.distributed``) so both write the
same files under the same names.
Inputs and outputs at URIs (``s3://``...) use the same plan: ``pspnet.inference.remote`` supplies their
``Source`` and ``Manifest`` variants.

Naming rule
    An input ``ROOT/sub/dir/name.ext`` writes ``OUT/sub/dir/name.png`` (label map) and
    ``name_overlay.png``, ``name_probs.npz``, ``name_confidence.png`` beside it; a video writes
    ``name_overlay.mp4``. ROOT is the folder given, the fixed part of a glob (``data/**/*.jpg`` -> ``data``)
    or, for a file given by itself, its own folder. When inputs come from more than one root, each root's
    outputs go into ``OUT/<root folder name>/`` (``-2``, ``-3`` appended in argument order when two roots have
    the same name), so ``dirA/x/frame.jpg`` and ``dirB/x/frame.jpg`` stay apart.
    When two inputs would still share an output file (``good.jpg`` + ``good.png``; ``road.jpg`` +
    ``road_overlay.jpg``, whose label map would be road's overlay), each input involved keeps its whole
    file name as the stem: ``good.jpg.png``, ``good.png.png``, ``road_overlay.jpg.png``. Whole names of
    distinct files never collide with each other or with another's derived outputs, since every derived name
    ends in ``_overlay``/``_probs``/``_confidence`` and no input name does.

Refusals, all before any inference
    ``OUT`` is a file, cannot be created or written; ``OUT`` equals or contains an input, or lies inside a
    folder given as input (the next run would read the predictions as inputs); a planned output would be an
    input file, would leave ``OUT`` through a symlinked folder, or exists without having been written by
    pspnet (a file of the user's, or a symlink) unless ``overwrite``.

Earlier runs
    Every result is a row of the manifest (``OUT/.pspnet/manifest-*.csv``, one append-only part per process,
    merged into ``OUT/manifest.csv`` at the end of a run); each batch names its outputs in its part before
    writing them, so a run killed between an output and its row leaves a file the next run knows as its own
    and redoes. An input whose file (size, mtime) and options are
    unchanged since its last successful row, with every output still present, is skipped; outputs pspnet
    wrote earlier are overwritten when the input or options changed. A file pspnet did not write is never
    replaced without ``overwrite``.

Writes are atomic: a temporary file in the destination folder, flushed and fsynced, then ``os.replace``,
which replaces a symlink at the destination rather than writing through it.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import BinaryIO, Callable, Iterable, Sequence

from pspnet.errors import PSPNetError
from pspnet.files import atomic_write

logger = logging.getLogger(__name__)

IMAGE_OUTPUTS = {"label": ".png", "overlay": "_overlay.png", "probs": "_probs.npz", "confidence": "_confidence.png"}
VIDEO_OUTPUTS = {"video": "_overlay.mp4"}
STATE_DIR = ".pspnet"
MANIFEST = "manifest.csv"
FIELDS = ["input", "output", "outputs", "size", "mtime_ns", "options", "seconds", "shares", "error", "finished"]


@dataclass(frozen=True)
class Source:
    """One input file: where it is, the root it was found under and its path relative to that root."""

    path: Path
    root: Path
    rel: Path
    kind: str  # "image", "video" or "stdin"

    @property
    def on_disk(self) -> bool:
        """A file of this machine's file system (not stdin, not a URI: see ``pspnet.inference.remote``)."""
        return self.kind != "stdin"

    @property
    def key(self) -> str:
        """What the manifest calls this input: its absolute path, ``-`` for stdin."""
        return str(self.path.resolve()) if self.kind != "stdin" else "-"

    @property
    def root_key(self) -> object:
        """Identifies the root: inputs under one root share an output folder."""
        return self.root.resolve()

    def identity(self) -> tuple[int, int] | None:
        """(size, mtime_ns) of the input now; None for stdin or a file that is gone."""
        if self.kind == "stdin" or not self.path.exists():
            return None
        st = self.path.stat()
        return st.st_size, st.st_mtime_ns


@dataclass
class Planned:
    """One input and the files it will write (kind -> path); ``skip`` when an earlier run already did it."""

    source: Source
    outputs: dict[str, Path]
    skip: bool = False

    @property
    def label(self) -> Path:
        return self.outputs.get("label") or self.outputs["video"]


def _glob_root(pattern: str) -> Path:
    """The part of a glob before its first wildcard: the root the matches are relative to."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def collect_inputs(items: Sequence[str]) -> list[Source]:
    """Image and video files from files, folders (recursive), globs and ``.txt`` list files (one path a line).

    The same file reached twice (a folder and a glob inside it) is kept once, at its first appearance.
    """
    from pspnet.data.io import IMAGE_SUFFIXES
    from pspnet.inference.video import VIDEO_SUFFIXES

    def kind(p: Path) -> str | None:
        s = p.suffix.lower()
        return "image" if s in IMAGE_SUFFIXES else "video" if s in VIDEO_SUFFIXES else None

    found: list[Source] = []
    seen: set[Path] = set()

    def add(path: Path, root: Path, explicit: bool) -> None:
        k = kind(path) or ("image" if explicit else None)  # a file named on its own is tried whatever its suffix
        key = path.resolve()
        if k and key not in seen:
            seen.add(key)
            found.append(Source(path, root, path.relative_to(root), k))

    for item in items:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and kind(p))
            if not files:
                raise PSPNetError(f"{path}: folder has no images or videos")
            for f in files:
                add(f, path, False)
        elif path.is_file() and path.suffix.lower() == ".txt":
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
            entries = [ln for ln in lines if ln and not ln.startswith("#")]
            if not entries:
                raise PSPNetError(f"{path}: list file names no inputs")
            base = path.parent
            for src in collect_inputs([e if Path(e).is_absolute() else str(base / e) for e in entries]):
                add(src.path, src.root, True)
        elif path.is_file():
            add(path, path.parent, True)
        elif glob.has_magic(item):
            root = _glob_root(item)
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file())
            if not matches:
                raise PSPNetError(f"{item}: pattern matches no files")
            for m in matches:
                add(m, root, True)
        else:
            raise PSPNetError(f"{path}: no such file or folder")
    return found


def _root_dirs(sources: Sequence[Source]) -> dict[Path, Path]:
    """Each root's output sub-folder: none for a single root, else its name (made unique) for each."""
    roots: dict[object, Source] = {}
    for s in sources:
        if s.kind != "stdin":
            roots.setdefault(s.root_key, s)
    if len(roots) <= 1:
        return {k: Path() for k in roots}
    dirs: dict[object, Path] = {}
    used: set[str] = set()
    for key, s in roots.items():
        name = (s.root.resolve() if isinstance(s.root, Path) else s.root).name or "root"
        label, n = name, 1
        while label in used:
            n += 1
            label = f"{name}-{n}"
        used.add(label)
        dirs[key] = Path(label)
    return dirs


def plan_outputs(sources: Sequence[Source], out: Path, kinds: Iterable[str]) -> list[Planned]:
    """Output paths for every input following the naming rule of this module; ``kinds`` selects image outputs."""
    kinds = [k for k in IMAGE_OUTPUTS if k in set(kinds) | {"label"}]
    dirs = _root_dirs(sources)
    whole: set[int] = set()

    def paths(i: int, s: Source) -> dict[str, Path]:
        folder = out / dirs.get(s.root_key, Path()) / s.rel.parent
        stem = s.rel.name if i in whole else s.rel.stem
        suffixes = VIDEO_OUTPUTS if s.kind == "video" else {k: IMAGE_OUTPUTS[k] for k in kinds}
        return {k: folder / f"{stem}{suf}" for k, suf in suffixes.items()}

    while True:
        owner: dict[str, int] = {}
        clash: set[int] = set()
        for i, s in enumerate(sources):
            for p in paths(i, s).values():
                key = os.path.normcase(str(p))
                j = owner.setdefault(key, i)
                if j != i:
                    clash |= {i, j}
        clash -= whole
        if not clash:
            return [Planned(s, paths(i, s)) for i, s in enumerate(sources)]
        whole |= clash


def options_fingerprint(options: dict) -> str:
    """A short digest of everything that changes the outputs (model, precision, mode, scales, alpha...)."""
    return hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_out_dir(out: Path) -> Path:
    """Create ``out`` and prove it is writable (a file is made and removed); a clear error otherwise."""
    if out.exists() and not out.is_dir():
        raise PSPNetError(f"--out {out}: is a file, expected a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".pspnet-probe-"):
            pass
    except OSError as err:
        raise PSPNetError(f"--out {out}: cannot write there ({err.strerror or err})") from err
    return out


def check_plan(plan: Sequence[Planned], out: Path, folder_inputs: Sequence[Path], overwrite: bool = False) -> None:
    """Refuse, before inference, any plan that could overwrite an input, escape ``out`` or clobber a user's file."""
    out_r = out.resolve()
    for folder in folder_inputs:
        f = folder.resolve()
        if _inside(out_r, f) or _inside(f, out_r):
            rel = "is" if f == out_r else "contains" if _inside(f, out_r) else "is inside"
            raise PSPNetError(f"--out {out}: {rel} the input folder {folder}; choose an output folder apart from "
                              "the inputs (outputs would overwrite inputs or be read as inputs next time)")
    inputs = {p.source.path.resolve() for p in plan if p.source.on_disk}
    for p in plan:
        if p.source.on_disk and _inside(p.source.path.resolve(), out_r):
            raise PSPNetError(f"--out {out}: contains the input {p.source.path}; choose an output folder apart "
                              "from the inputs")
    owned = owned_outputs(out)
    foreign: list[Path] = []
    for p in plan:
        for dst in p.outputs.values():
            if dst.resolve() in inputs:
                raise PSPNetError(f"{dst}: planned output is the input file itself; choose another --out")
            parent = dst.parent
            while not parent.exists() and parent != out:
                parent = parent.parent
            if not _inside(parent.resolve(), out_r):
                raise PSPNetError(f"{dst}: its folder leads outside --out {out} (a symlinked folder); refusing")
            if os.path.lexists(dst) and (dst.is_symlink() or not dst.is_file() or dst.resolve() not in owned):
                foreign.append(dst)
    if foreign and not overwrite:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise PSPNetError(f"{', '.join(map(str, foreign[:3]))}{more}: exist(s) in --out but pspnet did not write "
                          "it (a file of yours or a symlink); move it away, choose another --out, or pass "
                          "--overwrite to replace it")


def _rows(out: Path, finished: bool = True) -> list[dict]:
    """The complete manifest rows of every part (a row cut short by a kill has no final field); ``finished``
    keeps only results, in the order they finished, not the intents written before the outputs."""
    rows: list[dict] = []
    for part in sorted((out / STATE_DIR).glob("manifest-*.csv")):
        with open(part, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if row.get("finished") or (not finished and row.get("finished") == ""):
                    rows.append(row)
    if finished:
        rows.sort(key=lambda r: float(r["finished"]))
    return rows


def owned_outputs(out: Path) -> set[Path]:
    """Every file an earlier run wrote, or named before writing it, under ``out``.

    The intents count: a run killed between an output's rename and its result row leaves a file of its own,
    which the next run redoes, not a file of the user's that it must refuse to replace.
    """
    owned: set[Path] = set()
    for row in _rows(out, finished=False):
        if not row.get("error"):
            owned |= {(out / rel).resolve() for rel in (row.get("outputs") or "").split(";") if rel}
    return owned


def mark_done(plan: Sequence[Planned], out: Path, options: str) -> int:
    """Set ``skip`` on inputs an earlier run finished with the same file and options; returns how many."""
    last: dict[str, dict] = {}
    for row in _rows(out):
        last[row["input"]] = row
    n = 0
    for p in plan:
        if p.source.kind == "stdin":
            continue
        row = last.get(p.source.key)
        if row is None or row["error"] or row["options"] != options:
            continue
        ident = p.source.identity()
        wanted = outputs_field(p, out)
        if ident and (row["size"], row["mtime_ns"]) == tuple(map(str, ident)) and row["outputs"] == wanted \
                and all(d.is_file() and not d.is_symlink() for d in p.outputs.values()):
            p.skip = True
            n += 1
    return n


def outputs_field(planned: Planned, out: PurePath) -> str:
    """The manifest's ``outputs``: the planned files relative to ``out``, sorted, ``;``-separated."""
    return ";".join(sorted(str(d.relative_to(out)) for d in planned.outputs.values()))


def intent_row(planned: Planned, out: PurePath, options: str) -> dict:
    """The row a batch writes before its outputs: which files it is about to write (no ``finished``)."""
    return {"input": planned.source.key, "options": options, "outputs": outputs_field(planned, out)}


def make_row(planned: Planned, out: PurePath, options: str, seconds: float, shares: dict[str, float] | None,
             error: str) -> dict:
    """One manifest row: the input as it is now, its outputs relative to ``out``, timing, class shares, error."""
    ident = planned.source.identity()
    return {
        "input": planned.source.key,
        "output": "" if error else str(planned.label.relative_to(out)),
        "outputs": "" if error else outputs_field(planned, out),
        "size": ident[0] if ident else "",
        "mtime_ns": ident[1] if ident else "",
        "options": options,
        "seconds": f"{seconds:.4f}",
        "shares": ";".join(f"{k}:{v:.4f}" for k, v in (shares or {}).items() if v > 0),
        "error": error,
        "finished": f"{time.time():.6f}",
    }


@dataclass
class Manifest:
    """Append-only CSV of results for this process; each row is flushed and fsynced as it is written."""

    out: Path
    options: str
    path: Path = field(init=False)

    def __post_init__(self) -> None:
        (self.out / STATE_DIR).mkdir(parents=True, exist_ok=True)
        self.path = self.out / STATE_DIR / f"manifest-{socket.gethostname()}-{os.getpid()}-{time.time_ns()}.csv"

    def batch(self, plans: Sequence[Planned]) -> contextlib.AbstractContextManager:
        """Name the batch's outputs before writing them (rows without ``finished``; see ``owned_outputs``)."""
        self._append([intent_row(p, self.out, self.options) for p in plans])
        return contextlib.nullcontext()

    def write(self, dst: Path, write: Callable[[BinaryIO], object]) -> None:
        """Write one output file atomically (temporary file, fsync, rename)."""
        atomic_write(dst, write)

    def target(self, dst: Path) -> contextlib.AbstractContextManager[Path]:
        """A local path a writer that makes its own file atomically (the video writer) writes ``dst`` through."""
        return contextlib.nullcontext(dst)

    def record(self, planned: Planned, seconds: float, shares: dict[str, float] | None = None,
               error: str = "") -> dict:
        row = make_row(planned, self.out, self.options, seconds, shares, error)
        self._append([row])
        return row

    def _append(self, rows: Sequence[dict]) -> None:
        """Rows on disk (flushed and fsynced) before the caller goes on."""
        new = not self.path.exists()
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, FIELDS)
            if new:
                w.writeheader()
            w.writerows(rows)
            f.flush()
            os.fsync(f.fileno())


def merge_manifest(out: Path) -> Path:
    """Write ``OUT/manifest.csv``: the latest row per input over every run so far."""
    last: dict[str, dict] = {}
    for row in _rows(out):
        last[row["input"]] = row

    def write(f) -> None:
        import io

        text = io.StringIO()
        w = csv.DictWriter(text, FIELDS)
        w.writeheader()
        w.writerows(last[k] for k in sorted(last))
        f.write(text.getvalue().encode("utf-8"))

    atomic_write(out / MANIFEST, write)
    return out / MANIFEST
