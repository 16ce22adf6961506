"""`fedtl demo`: a real federation on this machine, start to finish, in one command.

A SuperLink plus one site daemon (worker + SuperNode) per site, all as real processes on
127.0.0.1, then the rounds, then a per-site comparison with each site's local-only
baseline. Every process it starts is stopped before it returns.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from fedtl.cli.console import console, fail, handle_stop_signals, write_json
from fedtl.cli.federation import follow_run
from fedtl.cli.reports import site_results, sites_table
from fedtl.server.history import RoundRecord
from fedtl.shared.processes import become_subreaper, child_env, free_port, start, stop_many, tool
from fedtl.shared.protocol import Section

# Only what a demo needs otherwise; encoder, update mode, rounds and steps are federation.yaml's
# own defaults (shared/federation_config.py), so the demo runs what a copied federation.yaml runs.
DEMO_DEFAULTS: dict[str, Any] = {
    "name": "demo",
    "wait_for_sites": 300,
}


DEMO = "fedtl demo"  # the marker of a demo's workdir (shared/safe_paths.py)


def _earlier_workdir(folder: Path) -> bool:
    """A workdir an earlier fedtl demo made before workdirs were marked: its federation.yaml keeps
    state in the workdir's own coordinator/ folder, by absolute path, as only the demo writes it."""
    try:
        written = yaml.safe_load((folder / "federation.yaml").read_text())
        return isinstance(written, dict) and written.get("state_dir") == str((folder / "coordinator").resolve())
    except (OSError, yaml.YAMLError):
        return False


def demo_federation(workdir: Path, n_sites: int, base: dict[str, Any], overrides: dict[str, Any]) -> Path:
    """Write the demo's federation.yaml: loopback ports chosen now, state under workdir.

    MLflow goes where ``MLFLOW_TRACKING_URI`` says, as everywhere in MLflow; else a SQLite
    store in the workdir.
    """
    config = {**DEMO_DEFAULTS, **base, **{k: v for k, v in overrides.items() if v is not None}}
    config["min_sites"] = n_sites
    mlflow = dict(config.get("mlflow") or {})
    mlflow.setdefault("tracking_uri", os.environ.get("MLFLOW_TRACKING_URI")
                      or f"sqlite:///{(workdir / 'mlflow.db').resolve()}")
    mlflow.setdefault("experiment", "fedtl-demo")
    config["mlflow"] = mlflow
    config["state_dir"] = str((workdir / "coordinator").resolve())
    config["superlink"] = {"fleet_address": f"127.0.0.1:{free_port()}", "control_host": "127.0.0.1",
                           "control_port": free_port()}
    config["hub"] = {**dict(config.get("hub") or {}), "address": f"127.0.0.1:{free_port()}", "linger": 0}
    path = workdir / "federation.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def check_flags(base: dict[str, Any], source: str, encoder: str | None, update: str | None,
                codec: str | None = None) -> None:
    """Refuse bad --encoder / --update / --codec before anything starts, naming the flag (or the file) at fault."""
    from fedtl.shared.codecs import Codec
    from fedtl.shared.encoder_specs import EncoderError, encoder_folder, encoder_layers
    from fedtl.shared.federation_config import FederationConfig
    from fedtl.shared.update_modes import UpdateMode

    if codec is not None:
        try:
            Codec.parse(codec)
        except ValueError as exc:
            fail(f"--codec {codec!r}: {exc}")

    if update is not None:
        try:
            UpdateMode.parse(update)
        except ValueError as exc:
            fail(f"--update {update!r}: {exc}")
    if encoder is not None:
        try:
            encoder_folder(encoder)
        except EncoderError as exc:
            fail(f"--encoder: {exc}")
    defaults = FederationConfig.model_fields
    spec = encoder or base.get("encoder") or defaults["encoder"].default
    mode = UpdateMode.parse(update or base.get("update_mode") or defaults["update_mode"].default)
    if mode.kind == "last" and mode.layers > (layers := encoder_layers(spec)):
        where = "--update" if update else (f"update_mode in {source}" if "update_mode" in base else "the default")
        fail(f"{where} {mode} trains the last {mode.layers} layers, but encoder {spec!r} has {layers}; "
             f"use last:1 to last:{layers} or full")


def check_sites(paths: list[Path]) -> list[str]:
    """Every site config and its data are valid and the names are unique; returns the names."""
    from fedtl.shared.config import load_site_config
    from fedtl.shared.data import load_site_tasks

    configs = [load_site_config(p) for p in paths]
    names = [c.name for c in configs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        fail(f"two site configs use the name {dupes[0]!r}; every site needs its own name")
    for config in configs:  # data errors name file, row and column now, not in a site's log later
        load_site_tasks(config.tasks, seed=config.training.seed)
    return names


def summary_json(rounds: list[RoundRecord], run: dict[str, Any], seconds: float) -> dict[str, Any]:
    sites = {}
    for site, res in site_results(rounds).items():
        tasks = {}
        for task, metric in res.train.primary():
            tasks[task] = {
                "primary_metric": metric,
                "baseline": res.train.value(Section.BASELINE, task, metric),
                "federated": res.train.value(Section.VAL, task, metric),
                "global_encoder": res.evaluate.value(Section.VAL, task, metric),
            }
        sites[site] = {"tasks": tasks, "last_round": res.last_round or None, "site_keeps": res.train.site_model or None}
    fields = ("round", "seconds", "sampled", "accepted", "failed", "rejected", "bytes_down", "bytes_up", "metrics",
              "update_norms", "update_cosine")
    per_round = [r.model_dump(include=set(fields))
                 | {"sites": {s: e.metrics for s, e in r.sites.items()}} for r in rounds]
    return {"status": run.get("status"), "seconds": seconds, "sites": sites, "rounds": per_round}


def prepare_demo(workdir: Path, sites: list[Path], federation: Path | None, rounds: int | None, encoder: str | None,
                 update: str | None, codec: str | None) -> tuple[list[Path], list[str], Path, Any]:
    """Check everything cheap before a file is written or a process started, then lay out the
    workdir: the sites (the bundled examples unless given) and the demo's federation.yaml.
    Returns the sites' configs, their names, the federation.yaml and its loaded config."""
    from fedtl.shared.data import DataError
    from fedtl.shared.encoder_specs import EncoderError
    from fedtl.shared.examples import copy_examples, edited_copies
    from fedtl.shared.federation_config import load_federation_config
    from fedtl.shared.safe_paths import UnsafePath, check_replaceable, made_by, mark_folder
    from fedtl.shared.yamlconfig import ConfigError, read_mapping

    try:
        check_replaceable(workdir, DEMO, "--workdir", legacy=_earlier_workdir, itself=False)
        base = dict(read_mapping(federation)[0]) if federation else {}
        if federation:
            load_federation_config(federation)  # the user's file on its own: errors name its lines
        check_flags(base, str(federation), encoder, update, codec)
        names = check_sites(sites) if sites else []
        if not sites and (edited := edited_copies(workdir)):
            fail(f"{edited[0]}{f' and {len(edited) - 1} more' if len(edited) > 1 else ''}: edited since the demo "
                 f"copied the examples to {workdir}; they are kept. Run your edits with --site "
                 f"{workdir / 'sites' / 'clinic.yaml'} (one --site per site), or give another --workdir")
        workdir.mkdir(parents=True, exist_ok=True)
        if made_by(workdir) != DEMO:
            mark_folder(workdir, DEMO)
        if not sites:
            sites = list(copy_examples(workdir).values())
            names = check_sites(sites)
            console.print(f"bundled example sites copied to {workdir}")
        fed_path = demo_federation(workdir, len(sites), base,
                                   {"rounds": rounds, "encoder": encoder, "update_mode": update,
                                    "codec": {"up": codec, "down": codec} if codec else None})
        return sites, names, fed_path, load_federation_config(fed_path)
    except (ConfigError, DataError, EncoderError, UnsafePath) as exc:
        fail(str(exc))


def run_demo(workdir: Path, sites: list[Path], federation: Path | None, rounds: int | None,
             encoder: str | None, update: str | None, json_out: Path | None, codec: str | None = None) -> int:
    from fedtl.server.coordinator import Coordinator, CoordinatorError
    from fedtl.server.history import read_rounds

    started = time.monotonic()
    workdir = workdir.resolve()
    sites, names, fed_path, fed = prepare_demo(workdir, sites, federation, rounds, encoder, update, codec)

    threads = str(max(1, (os.cpu_count() or 1) // len(sites)))
    procs: dict[str, subprocess.Popen] = {}
    coord = Coordinator(fed, fed_path)
    info: dict[str, Any] = {}
    become_subreaper()
    handle_stop_signals()
    try:
        coord.start_superlink()
        if coord.start_hub() is not None:
            console.print(f"follow it from another shell: fedtl status --coordinator {fed.hub.address} --insecure --watch")
        for name, path in zip(names, sites):
            cmd = [tool("fedtl"), "site", "--config", str(path), "--coordinator", fed.superlink.fleet_address,
                   "--insecure", "--encoder", fed.encoder]
            env = child_env({"OMP_NUM_THREADS": threads, "FEDTL_THREADS": threads})
            procs[name] = start(cmd, workdir / "logs" / f"{name}.log", env=env, die_with_parent=True)
        console.print(f"started {len(procs)} sites ({', '.join(names)}) and a SuperLink on "
                      f"{fed.superlink.fleet_address}; logs in {workdir / 'logs'}")
        console.print("[yellow]insecure: the demo runs without TLS or site keys, on this machine only; a real "
                      "federation uses `fedtl certs` (see the README's security section)[/]")
        coord.submit()
        def sites_alive() -> None:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise CoordinatorError(f"site {name} exited with code {proc.returncode}; "
                                           f"see {workdir / 'logs' / (name + '.log')}")

        info = follow_run(coord, fed.name, check=sites_alive, rounds=fed.rounds)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping every process the demo started[/]")
        coord.stop_run()
        return 130
    except CoordinatorError as exc:
        coord.stop_run()
        fail(str(exc))
    finally:
        stop_many(procs.values())
        coord.shutdown()

    history = read_rounds(coord.state_dir)
    console.print(sites_table(history))
    seconds = time.monotonic() - started
    console.print(f"demo finished in {seconds:.0f}s: {info.get('status')}; state in {workdir}")
    if fed.mlflow.enabled:
        console.print(f"MLflow run in {coord.tracking_uri}: see it with  fedtl ui --tracking-uri {coord.tracking_uri}")
    if json_out is not None:
        write_json(json_out, summary_json(history, info, seconds))
    if info.get("status") != "finished:completed":
        fail(f"the federation ended as {info.get('status')}: {info.get('status-details')}")
    return 0
