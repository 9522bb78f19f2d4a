"""Files (and folders) written whole or not at all: written under a temporary name in the same
folder, then renamed over the final name (``os.replace`` is atomic within a file system), so a
reader never sees half a file and a failed write leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path, *, fixed: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed to ``path`` when the block ends
    without an exception, removed in every case.

    The temporary name keeps the suffix (``.model.1a2b3c4d.tmp.gpkg``), so that writers which
    pick a format by extension pick the right one. It is unique, unless ``fixed`` (for a file
    one writer at a time writes, under a lock): then it is always the same
    (``.model.tmp.gpkg``), and one that a killed run left is removed first. The block may make a
    folder there instead of a file; it replaces a folder of the final name.
    """
    path = Path(path)
    tag = "" if fixed else f".{uuid.uuid4().hex[:8]}"
    tmp = path.with_name(f".{path.stem}{tag}.tmp{path.suffix}")
    if fixed:
        _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: str | bytes, *, fixed: bool = False) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically (``fixed``: see
    :func:`atomic_path`); returns the path."""
    with atomic_path(path, fixed=fixed) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return Path(path)
