"""Where fedtl may write, replace or clear: never over what the user made.

A mistyped flag must never cost a file. So every folder fedtl replaces or clears carries a
marker (``.fedtl-folder``, naming the command that made it), and a folder without one is
replaced only when it is empty. ``/``, the home folder, the current folder and any folder
that holds the current or the home folder are never replaced or cleared, marker or not.
Output files and state folders are checked before any work starts: a target of the wrong
kind (a folder where a file goes, a path under a file) is refused with the flag or field
at fault, instead of a traceback after the run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

MARKER = ".fedtl-folder"  # in every folder fedtl made and may replace: {"made_by": "<command>"}


class UnsafePath(ValueError):
    """A path fedtl refuses to write, replace or clear. The message names it and what to do."""


def protected_reason(path: Path) -> str | None:
    """Why fedtl may never replace or clear ``path`` whatever it holds, or None."""
    target = path.expanduser().resolve()
    cwd = Path.cwd().resolve()
    home = Path.home().resolve()
    if target == Path(target.anchor):
        return "it is the file system's root"
    if target == home:
        return "it is your home folder"
    if target == cwd:
        return "it is the current folder"
    if cwd.is_relative_to(target):
        return "it holds the current folder"
    if home.is_relative_to(target):
        return "it holds your home folder"
    return None


def mark_folder(folder: Path, made_by: str) -> None:
    """Say that fedtl (``made_by``: the command) made ``folder`` and may replace it later."""
    (folder / MARKER).write_text(json.dumps({"made_by": made_by}) + "\n")


def made_by(folder: Path) -> str | None:
    """The command whose marker ``folder`` carries, or None."""
    try:
        return str(json.loads((folder / MARKER).read_text())["made_by"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _sample(folder: Path, limit: int = 3) -> str:
    names = []
    for entry in folder.iterdir():
        names.append(repr(entry.name))
        if len(names) == limit:
            names.append("...")
            break
    return ", ".join(names)


def _under_a_file(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` that is not a folder (a file in the way), or None."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_folder(path: Path, what: str) -> None:
    """A folder fedtl will create or add to: it may not exist yet, but nothing on its way is a file.

    ``what`` names the flag or field in the message (``--workdir``, ``state_dir``).
    """
    if path.exists() and not path.is_dir():
        raise UnsafePath(f"{what} {path}: is a file, not a folder; give a folder (it is created if missing)")
    if (blocker := _under_a_file(path)) is not None:
        raise UnsafePath(f"{what} {path}: {blocker} is a file, so no folder can be made under it")


def check_replaceable(path: Path, made: str, what: str, legacy: Callable[[Path], bool] | None = None,
                      itself: bool = True) -> None:
    """``path`` may be replaced or cleared by ``made`` (a fedtl command): missing, empty, or marked.

    ``legacy`` recognises a folder an earlier fedtl made before markers existed. ``itself``
    False: the folder stays and only what fedtl made inside it is replaced (a workdir), so the
    current folder may be one. Raises UnsafePath naming ``what`` (the flag or field) and what
    to do instead.
    """
    check_folder(path, what)
    _check_writable(path, (path, *path.parents), what)
    if not path.exists():
        return
    if itself and (why := protected_reason(path)) is not None:
        raise UnsafePath(f"{what} {path}: {why}; fedtl never replaces or clears it. Give a new folder, "
                         f"e.g. {what} {path / _default_child(made)}")
    if not any(path.iterdir()):
        return
    owner = made_by(path)
    if owner == made or (owner is None and legacy is not None and legacy(path)):
        return
    if owner is not None:
        raise UnsafePath(f"{what} {path}: holds what `{owner}` made, not `{made}`; give another folder")
    raise UnsafePath(f"{what} {path}: is not empty ({_sample(path)}) and fedtl did not make it, so what it "
                     f"holds could be overwritten or deleted; give a new or empty folder")


def _default_child(made: str) -> str:
    return made.removeprefix("fedtl ").replace(" ", "-") + "-output"


def check_output_file(path: Path, what: str) -> None:
    """An output file a command writes at its end (``--json``, ``--output``): checked before any work.

    ``-`` means stdout. An existing file is replaced (atomically); a folder is refused.
    """
    if str(path) == "-":
        return
    if path.is_dir():
        raise UnsafePath(f"{what} {path}: is a folder; give a file name (e.g. {path / 'summary.json'})")
    if (blocker := _under_a_file(path)) is not None:
        raise UnsafePath(f"{what} {path}: {blocker} is a file, so {path.name!r} cannot be written under it")
    _check_writable(path, path.parents, what)


def _check_writable(path: Path, candidates, what: str) -> None:
    """The first of ``candidates`` that exists (where ``path`` would be made) must be writable."""
    existing = next((p for p in candidates if p.exists()), Path("."))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UnsafePath(f"{what} {path}: cannot write in {existing} (permission denied)")
