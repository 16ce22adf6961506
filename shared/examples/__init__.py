"""Bundled example sites: real text data that ships with fedtl, so the demo runs offline.

- clinic: UCI Drug Review sample, sentiment (classification). CC BY 4.0.
- pharmacy: UCI Drug Review sample, condition (classification) + log usefulness (regression). CC BY 4.0.
- lexicon: VADER lexicon, word valence (regression). MIT.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

SITES = ("clinic", "pharmacy", "lexicon")


def examples_root() -> Path:
    return Path(str(files(__name__)))


class ExamplesError(ValueError):
    """The examples cannot be copied without losing the user's work; the message says what to do."""


def bundled_files() -> list[tuple[Path, str]]:
    """Every file the examples ship, as (path, path relative to the copy's root)."""
    root = examples_root()
    return [(path, path.relative_to(root).as_posix()) for sub in ("data", "sites")
            for path in sorted((root / sub).rglob("*")) if path.is_file()]


def edited_copies(dest: Path) -> list[Path]:
    """Files in ``dest`` that would be overwritten and differ from the bundled ones (the user's edits)."""
    edited = []
    for source, rel in bundled_files():
        target = dest / rel
        if target.is_dir() or (target.exists() and target.read_bytes() != source.read_bytes()):
            edited.append(target)
    return edited


def copy_examples(dest: Path | str, force: bool = False) -> dict[str, Path]:
    """Copy the example site configs and data to ``dest``; return each site's config path.

    Site configs keep their state under ``dest/state``, so nothing is written into the
    installed package. A copy the user edited is never overwritten unless ``force``: the
    edited files are listed in the error before anything is written.
    """
    from fedtl.shared.atomic import write_bytes_atomic
    from fedtl.shared.safe_paths import check_folder

    dest = Path(dest)
    try:
        check_folder(dest, "examples folder")
    except ValueError as exc:
        raise ExamplesError(str(exc)) from None
    edited = edited_copies(dest)
    if edited and not force:
        shown = ", ".join(str(p) for p in edited[:3]) + (f" and {len(edited) - 3} more" if len(edited) > 3 else "")
        raise ExamplesError(f"{shown}: edited since fedtl copied the examples there; they are kept. Copy to "
                            "another folder, or pass --force to overwrite them with the bundled ones")
    for source, rel in bundled_files():
        target = dest / rel
        if target.is_dir():  # only with force: a folder in a file's place is the user's; leave it
            raise ExamplesError(f"{target}: is a folder where an example file goes; move it away")
        if not target.exists() or target.read_bytes() != source.read_bytes():
            write_bytes_atomic(target, source.read_bytes())
    return {name: dest / "sites" / f"{name}.yaml" for name in SITES}
