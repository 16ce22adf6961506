"""The Flower app that `fedtl coordinator` submits: a pyproject.toml naming our components.

Flower builds a FAB from this folder; the components live in the installed fedtl package.
"""

from importlib.resources import files
from pathlib import Path


def app_dir() -> Path:
    return Path(str(files(__name__)))
