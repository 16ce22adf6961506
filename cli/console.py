"""Shared terminal helpers: one rich console, logging to it, errors people can act on."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

# In a terminal Rich measures the width; in logs and pipes it would assume 80 columns and
# truncate the summary tables, so give those 120 unless COLUMNS says otherwise.
console = Console(stderr=True, width=None if sys.stderr.isatty() else int(os.environ.get("COLUMNS", "120")))


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=True)],
        force=True,
    )


def fail(message: str, code: int = 1) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def progress(disable: bool = False) -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=disable,
    )


def write_json(target: Path, payload: Any) -> None:
    """Write a machine-readable summary to a file, or to stdout for ``-``."""
    text = json.dumps(payload, indent=2, sort_keys=True)
    if str(target) == "-":
        sys.stdout.write(text + "\n")
    else:
        from fedtl.shared.atomic import write_text_atomic

        write_text_atomic(target, text + "\n")


def sigterm_as_interrupt() -> None:
    """Let SIGTERM (systemd, kill, container stop) run the same clean shutdown as Ctrl-C."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
