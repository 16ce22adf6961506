"""Crash-safe file writes: temp file in the same folder, fsync, rename, fsync the folder.

A reader sees either the old file or the new one, never half of one, even if the process
dies mid-write. Every piece of state fedtl persists goes through here.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedtl.shared.safe_paths import check_replaceable, mark_folder
from fedtl.shared.safe_paths import made_by as marker_of


def write_bytes_atomic(path: Path | str, data: bytes, mode: int = 0o644) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def write_text_atomic(path: Path | str, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path | str, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_folder(final: Path, made_by: str, legacy: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Fill a folder under a temporary name, then rename it into place (replacing an older one).

    Readers see the old folder or the whole new one; a crash leaves only a hidden temp folder.
    An existing ``final`` is replaced only if fedtl made it (``shared/safe_paths.py``: empty, or
    marked by ``made_by``, or recognised by ``legacy``); anything else raises UnsafePath before
    a byte is written. The new folder carries ``made_by``'s marker.
    """
    check_replaceable(final, made_by, "folder", legacy)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        yield tmp
        mark_folder(tmp, made_by)
        _fsync_tree(tmp)
        if final.exists():
            check_replaceable(final, made_by, "folder", legacy)  # it may have appeared meanwhile
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_tree(folder: Path) -> None:
    """Flush every file and folder under ``folder`` to disk before it is renamed into place."""
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
        elif path.is_dir():
            _fsync_dir(path)
    _fsync_dir(folder)


def folder_number(path: Path) -> int:
    """The number in a folder's name (``round-0007`` -> 7; -1 without one): numeric order, where
    names past round-9999 would sort wrong."""
    digits = "".join(ch for ch in path.name if ch.isdigit())
    return int(digits) if digits else -1


def keep_newest(folder: Path, pattern: str, keep: int, made_by: str,
                legacy: Callable[[Path], bool] | None = None) -> None:
    """Delete all but the ``keep`` newest entries of ``folder`` matching ``pattern`` (names like
    ``round-0007``, newest = highest number) that ``made_by`` made; nothing else is touched."""
    ours = [p for p in folder.glob(pattern) if marker_of(p) == made_by or (legacy is not None and legacy(p))]
    for old in sorted(ours, key=lambda p: (folder_number(p), p.name))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
