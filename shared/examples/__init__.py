"""Bundled example sites: real text data that ships with fedtl, so the demo runs offline.

- clinic: UCI Drug Review sample, sentiment (classification). CC BY 4.0.
- pharmacy: UCI Drug Review sample, condition (classification) + log usefulness (regression). CC BY 4.0.
- lexicon: VADER lexicon, word valence (regression). MIT.
"""

from __future__ import annotations

import shutil
from importlib.resources import files
from pathlib import Path

SITES = ("clinic", "pharmacy", "lexicon")


def examples_root() -> Path:
    return Path(str(files(__name__)))


def copy_examples(dest: Path | str) -> dict[str, Path]:
    """Copy the example site configs and data to ``dest``; return each site's config path.

    Site configs keep their state under ``dest/state``, so nothing is written into the
    installed package.
    """
    dest = Path(dest)
    root = examples_root()
    for sub in ("data", "sites"):
        shutil.copytree(root / sub, dest / sub, dirs_exist_ok=True)
    return {name: dest / "sites" / f"{name}.yaml" for name in SITES}
