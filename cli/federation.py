"""The federation commands' bodies: `fedtl coordinator` and `fedtl site`."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from rich.live import Live

from fedtl.cli.console import console, fail, handle_stop_signals, write_json
from fedtl.cli.reports import round_line, rounds_table, sites_table

if TYPE_CHECKING:
    from fedtl.client.warm_start import WarmStartOptions

log = logging.getLogger(__name__)


def follow_run(coord, title: str, check=None, rounds: int | None = None) -> dict:
    """Wait for the run to finish; ``check()`` may raise. In a terminal the per-round table updates
    live; otherwise (a service's journal, a pipe, CI) one line is printed per round as it finishes,
    then the table once.

    Returns Flower's last view of the run (``status``, ``status-details``, bytes).
    """
    from fedtl.server.history import read_rounds

    if console.is_terminal:
        with Live(rounds_table([], title=title), console=console, refresh_per_second=2) as live:
            def refresh(state) -> None:
                if check is not None:
                    check()
                live.update(rounds_table(read_rounds(coord.state_dir), state.as_dict(), title=title))

            return coord.wait(on_poll=refresh).as_dict()

    printed = 0

    def print_new_rounds(state=None) -> None:
        nonlocal printed
        if check is not None and state is not None:
            check()
        done = read_rounds(coord.state_dir)
        for record in done[printed:]:
            console.print(round_line(record, rounds), soft_wrap=True, highlight=False)
        printed = max(printed, len(done))

    info = coord.wait(on_poll=print_new_rounds).as_dict()
    print_new_rounds()
    console.print(rounds_table(read_rounds(coord.state_dir), info, title=title))
    return info


def _reachable(address: str) -> str:
    """An address people can use for a listening one (0.0.0.0 means this host)."""
    host, _, port = address.rpartition(":")
    return f"{socket.gethostname() if host.strip('[]') in ('0.0.0.0', '::') else host}:{port}"


def run_coordinator(config: Path, resume: bool = False, tls=None, json_out: Path | None = None) -> int:
    from fedtl.server.coordinator import Coordinator, CoordinatorError
    from fedtl.server.history import read_rounds
    from fedtl.server.run_folders import check_state_dir
    from fedtl.shared.federation_config import load_federation_config
    from fedtl.shared.processes import become_subreaper
    from fedtl.shared.safe_paths import UnsafePath
    from fedtl.shared.yamlconfig import ConfigError

    try:
        fed = load_federation_config(config)
        check_state_dir(fed.state_dir.resolve())
    except (ConfigError, UnsafePath) as exc:
        fail(str(exc))
    coord = Coordinator(fed, config, tls=tls, resume=resume)
    info: dict = {}
    become_subreaper()
    handle_stop_signals()
    try:
        coord.start_superlink()
        if coord.start_hub() is not None:
            console.print(f"hub: fedtl status --coordinator {_reachable(fed.hub.address)}"
                          + (" --root-certificates CA" if tls else " --insecure"))
        coord.submit()
        info = follow_run(coord, fed.name, rounds=fed.rounds)
        coord.stop_hub(linger=fed.hub.linger)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping the run and the SuperLink[/]")
        coord.stop_run()
        return 130
    except CoordinatorError as exc:
        fail(str(exc))
    finally:
        coord.shutdown()
    rounds = read_rounds(coord.state_dir)
    console.print(sites_table(rounds))
    if json_out is not None:
        write_json(json_out, {"run": info, "rounds": [r.to_json() for r in rounds]})
    if info.get("status") != "finished:completed":
        fail(f"the federation ended as {info.get('status')}: {info.get('status-details')} "
             f"(logs: {coord.state_dir / 'serverapp.log'}, {coord.state_dir / 'superlink.log'})")
    return 0


def run_site(configs: list[Path], coordinator: str, insecure: bool, root_certificates: Path | None,
             encoder: str | None, keys: list[Path] | None = None, warm_start: WarmStartOptions | None = None) -> int:
    from fedtl.client.head_store import HeadStoreError
    from fedtl.client.site_daemon import SiteDaemon, SuperNodeSettings, run_sites
    from fedtl.client.warm_start import pull_warm_start
    from fedtl.shared.config import load_site_config
    from fedtl.shared.data import DataError
    from fedtl.shared.encoders import EncoderError
    from fedtl.shared.federation_config import split_address
    from fedtl.shared.hub_client import HubError
    from fedtl.shared.site_keys import SiteKeyError, check_key_is_sites
    from fedtl.shared.yamlconfig import ConfigError

    try:
        host, port = split_address(coordinator)
    except ValueError as exc:
        fail(f"--coordinator {coordinator!r}: {exc}")
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        fail(f"--coordinator {coordinator!r}: cannot resolve host {host!r} ({exc.strerror or exc}); "
             "check the name, or use the coordinator's IP address")
    try:
        site_cfgs = [load_site_config(config) for config in configs]
        for field in ("name", "state_dir"):
            seen: dict[object, Path] = {}
            for path, cfg in zip(configs, site_cfgs):
                value = getattr(cfg, field) if field == "name" else cfg.state_dir.resolve()
                if value in seen:
                    fail(f"{path} and {seen[value]} have the same {field} ({value}); each site needs its own")
                seen[value] = path
        keys = list(keys or [])
        if keys and len(keys) != len(configs):
            fail(f"{len(keys)} --key for {len(configs)} --config: give each site its own key, in the same order")
        prints = [check_key_is_sites(key, cfg.name) for key, cfg in zip(keys, site_cfgs)] or [None] * len(configs)
        stop_event = threading.Event()
        handle_stop_signals(on_stop=stop_event.set)
        daemons = []
        for i, cfg in enumerate(site_cfgs):
            key = keys[i] if keys else None
            settings = SuperNodeSettings(coordinator, insecure, root_certificates, key, key_fingerprint=prints[i])
            warm = None
            if warm_start is not None:
                warm = pull_warm_start(warm_start, cfg.state_dir, stop_event)
                if warm is None:  # stopped while waiting for the hub
                    return 0
                console.print(f"site {cfg.name}: warm start from the federation's encoder of round {warm.round}")
            daemons.append(SiteDaemon(cfg, settings, encoder, stop_event, warm))
        code = run_sites(daemons)
    except HubError as exc:
        fail(f"--warm-start: {exc}")
    except (ConfigError, DataError, EncoderError, HeadStoreError, SiteKeyError) as exc:
        fail(str(exc))
    # Stopped cleanly. A round may still be training in a worker thread: exit without joining it.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
