"""File helpers every layer uses: atomic writes and the checks before reading a file.

A reader, a crash or a kill must see the old file or the new one, never half of one: every file
pspnet writes goes through ``atomic_path`` (temp file in the same folder, fsync, rename), directly
or through ``atomic_write`` / ``atomic_write_text``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from pspnet.errors import PSPNetError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    The rename replaces a symlink at ``path`` rather than writing through it, and a failure leaves
    ``path`` as it was (the temporary file is removed). Temp names start with ``.`` and end in
    ``.tmp`` plus the target's suffix, so writers that infer a format from the suffix still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; outputs get the permissions of any new file
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # make the rename itself durable where the OS allows it
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(f)`` into a binary file that becomes ``path`` atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """A matplotlib figure as a PNG written atomically, then closed (figures hold memory until closed)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def require_file(path: str | Path, what: str = "file") -> Path:
    """``path`` as a Path if it is a non-empty regular file; otherwise one clear PSPNetError."""
    path = Path(path)
    if not path.exists():
        raise PSPNetError(f"{path}: no such file")
    if path.is_dir():
        raise PSPNetError(f"{path}: is a directory, expected {what}")
    if path.stat().st_size == 0:
        raise PSPNetError(f"{path}: file is empty (0 bytes)")
    return path
