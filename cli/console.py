"""Shared terminal helpers: one rich console, logging to it, errors people can act on."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

# In a terminal Rich measures the width; in logs and pipes it would assume 80 columns and
# truncate the summary tables, so give those 120 unless COLUMNS says otherwise.
console = Console(stderr=True, width=None if sys.stderr.isatty() else int(os.environ.get("COLUMNS", "120")))


QUIET_LIBRARIES = ("httpx", "httpcore")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=True)],
        force=True,
    )
    for chatty in QUIET_LIBRARIES:  # httpx logs every Control API poll of the coordinator at INFO
        logging.getLogger(chatty).setLevel(logging.DEBUG if verbose else logging.WARNING)


def fail(message: str, code: int = 1) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def output_file(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
    """Option callback for a file a command writes at its end (``--json``, ``--output``).

    Checked while the flags are parsed, before any work: a folder or a path under a file is
    refused then, not after a whole run whose results would be lost.
    """
    from fedtl.shared.safe_paths import UnsafePath, check_output_file

    if value is not None and not ctx.resilient_parsing:
        try:
            check_output_file(value, param.opts[0])
        except UnsafePath as exc:
            fail(str(exc))
    return value


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


STOP_GRACE = 8.0  # seconds a clean stop may take before everything is killed


def handle_stop_signals(on_stop: Callable[[], None] | None = None, grace: float = STOP_GRACE) -> None:
    """Ctrl-C and SIGTERM (systemd, kill, container stop) stop this command cleanly, and fast.

    The first signal calls ``on_stop`` (default: raise KeyboardInterrupt in the main thread,
    so the command's own shutdown runs) and arms a watchdog: whatever the shutdown is stuck
    on, after ``grace`` seconds every child process is killed and the command exits 130. A
    second signal does that at once.
    """
    import signal
    import threading

    from fedtl.shared import processes

    state = {"signals": 0}

    def kill_now() -> None:
        processes.kill_all()
        os._exit(130)

    def watchdog() -> None:
        time.sleep(grace)
        console.print(f"[red]still stopping after {grace:.0f}s: killing every process this command started[/]")
        kill_now()

    def handler(signum, frame):
        state["signals"] += 1
        if state["signals"] > 1:
            try:  # the first signal's message may be half-way through rich's imports: kill regardless
                console.print("[red]second interrupt: killing every process this command started[/]")
            finally:
                kill_now()
        console.print(f"[yellow]stopping (within {grace:.0f}s; press Ctrl-C again to kill at once)[/]")
        threading.Thread(target=watchdog, name="fedtl-stop-watchdog", daemon=True).start()
        if on_stop is None:
            raise KeyboardInterrupt
        on_stop()

    console.render_str("[yellow]ready[/]")  # import rich's markup modules now, not inside a handler
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
