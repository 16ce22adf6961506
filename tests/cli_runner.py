"""Running `fedtl` in-process for the bad-input tests, and what every refusal must show."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from typer.testing import CliRunner

from fedtl.cli.main import app

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    """Run `fedtl ARGS`; the exit code and everything it printed (plus an unexpected exception)."""
    result = runner.invoke(app, list(args))
    output = result.output + (str(result.exception) if result.exception and result.exit_code != 1 else "")
    return result.exit_code, output


def refused(code: int, output: str, *needles: str) -> None:
    """A refusal people can act on: non-zero, no traceback, and the culprit named."""
    assert code != 0, output
    assert "Traceback" not in output, output
    flat = " ".join(output.split())
    for needle in needles:
        assert needle in output or needle in flat, f"{needle!r} not in:\n{output}"


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder`` with its content's digest: equal before and after
    means nothing was written, changed or deleted."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "<dir>"
    return out


def child_pids() -> set[int]:
    """Processes whose parent is this test process (a refused command must leave none)."""
    me = os.getpid()
    kids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == me:
            kids.add(int(entry.name))
    return kids
