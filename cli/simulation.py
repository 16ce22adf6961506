"""`fedtl simulate`'s body: check the settings, run the simulation, print what happened."""

from __future__ import annotations

import logging
from pathlib import Path

from rich.table import Table

from fedtl.cli.console import console, fail, write_json
from fedtl.cli.reports import rounds_table, site_results
from fedtl.server.history import RoundRecord
from fedtl.shared.protocol import Section

SITES_LISTED = 20  # more sites than this: a summary instead of a row per site


def gains_table(rounds: list[RoundRecord]) -> Table:
    """How the sites fared against their local-only baseline, summarised over all of them."""
    results = site_results(rounds)
    gains = []
    for res in results.values():
        for task, metric in res.train.primary():
            base = res.train.value(Section.BASELINE, task, metric)
            fed = res.train.value(Section.VAL, task, metric)
            if base is not None and fed is not None:
                gains.append(fed - base)
    table = Table(title=f"{len(results)} sites: federated vs local-only (primary metric)")
    for col in ("sites measured", "mean gain", "sites >= local", "worst", "best"):
        table.add_column(col, justify="right")
    if gains:
        table.add_row(str(len(gains)), f"{sum(gains) / len(gains):+.3f}",
                      f"{sum(g >= 0 for g in gains) / len(gains):.0%}", f"{min(gains):+.3f}", f"{max(gains):+.3f}")
    return table


def quiet_libraries() -> None:
    """Flower's own lines once (its logger has a console of its own) and from WARNING up, without
    the notice that its Python simulation API is deprecated; no database-migration chatter."""
    if logging.getLogger().level <= logging.DEBUG:  # fedtl -v: everything
        return
    flwr = logging.getLogger("flwr")
    flwr.setLevel(logging.WARNING)
    flwr.propagate = False
    flwr.addFilter(lambda record: "DEPRECATED FEATURE" not in str(record.msg))
    logging.getLogger("alembic").setLevel(logging.WARNING)


def run_simulate(config: Path, sites: int, rounds: int | None, task: str, alpha: float, seed: int,
                 cpus_per_site: float, sites_in_memory: int, workdir: Path, json_out: Path | None) -> int:
    from fedtl.harness.simulation import SimulationError, SimulationPlan, check_plan, simulate
    from fedtl.server.history import read_rounds
    from fedtl.server.tracking import default_tracking_uri
    from fedtl.shared.federation_config import load_federation_config
    from fedtl.shared.yamlconfig import ConfigError

    if alpha <= 0 or cpus_per_site <= 0:
        fail("--alpha and --cpus-per-site must be greater than 0")
    try:
        fed = load_federation_config(config)
    except ConfigError as exc:
        fail(str(exc))
    if rounds is not None:
        fed = fed.model_copy(update={"rounds": rounds})
    tracking_uri = (fed.mlflow.tracking_uri or default_tracking_uri(Path.cwd())) if fed.mlflow.enabled else ""
    plan = SimulationPlan(sites=sites, task=task, alpha=alpha, seed=seed, cpus_per_site=cpus_per_site,
                          workers_cached=sites_in_memory)
    try:
        check_plan(fed, plan, workdir.resolve())
    except SimulationError as exc:
        fail(str(exc))
    console.print(f"simulating {fed.name!r}: {sites} virtual sites ({task}, alpha {alpha:g}), "
                  f"{fed.rounds} rounds, encoder {fed.encoder}, update mode {fed.update_mode}")
    quiet_libraries()
    try:
        state_dir = simulate(fed, config.resolve(), plan, workdir, tracking_uri)
    except SimulationError as exc:
        fail(str(exc))
    history = read_rounds(state_dir)
    console.print(rounds_table(history, title=f"{fed.name} (simulated)"))
    if sites <= SITES_LISTED:
        from fedtl.cli.reports import sites_table

        console.print(sites_table(history))
    else:
        console.print(gains_table(history))
    if tracking_uri:
        console.print(f"MLflow: fedtl ui --tracking-uri {tracking_uri}")
    if json_out is not None:
        write_json(json_out, {"plan": plan.__dict__, "rounds": [r.to_json() for r in history]})
    return 0 if history and all(r.aggregated for r in history) else 1
