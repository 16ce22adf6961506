"""`fedtl simulate`: many virtual sites on Flower's simulation engine (Ray), on one machine.

The coordinator's side is the real one (the same round loop, strategies, validation, history
and MLflow run as `fedtl coordinator`); each virtual site runs fedtl's own site worker on rows
cut from a bundled data set with label skew (``fedtl.shared.partitions``). What is simulated is
only the transport: Flower's in-memory grid and Ray actors instead of SuperNodes and gRPC. Use it
to try a federation's settings at a scale a machine cannot host as real sites.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from fedtl.shared.federation_config import FederationConfig
from fedtl.shared.safe_paths import made_by, mark_folder


class SimulationError(RuntimeError):
    """A simulation that cannot start (bad settings, Ray missing) or that failed."""


@dataclass(frozen=True)
class SimulationPlan:
    """What `fedtl simulate` runs: the virtual sites and how Ray hosts them."""

    sites: int
    task: str = "polarity"
    alpha: float = 0.5
    seed: int = 0
    cpus_per_site: float = 1.0  # Ray resources per ClientApp: actors = cores / this
    workers_cached: int = 16  # site workers an actor keeps warm

    def sites_key(self, encoder: str) -> dict:
        return {"sites": self.sites, "task": self.task, "alpha": self.alpha, "seed": self.seed, "encoder": encoder}


def prepare_sites(plan: SimulationPlan, workdir: Path, encoder: str) -> Path:
    """The virtual sites' folders under ``workdir/sites``, cut afresh when the plan changed."""
    from fedtl.shared.partitions import write_virtual_sites

    sites_dir = workdir / "sites"
    marker = sites_dir / "partition.json"
    key = plan.sites_key(encoder)
    if marker.exists() and json.loads(marker.read_text()) == key:
        return sites_dir
    if sites_dir.exists():
        shutil.rmtree(sites_dir)
    sites_dir.mkdir(parents=True)
    try:
        write_virtual_sites(sites_dir, plan.task, plan.sites, plan.alpha, encoder, seed=plan.seed)
    except ValueError as exc:
        raise SimulationError(str(exc)) from None
    marker.write_text(json.dumps(key))
    return sites_dir


SIMULATED = "fedtl simulate"  # the marker of a simulation's workdir (shared/safe_paths.py)


def _earlier_workdir(folder: Path) -> bool:
    """A workdir an earlier fedtl simulate made before workdirs were marked."""
    return (folder / "coordinator" / "simulation.json").exists()


def check_plan(fed: FederationConfig, plan: SimulationPlan, workdir: Path) -> None:
    """Everything a simulation needs, checked before a file is written."""
    from fedtl.shared.partitions import BUNDLED_TASKS, most_sites
    from fedtl.shared.safe_paths import UnsafePath, check_replaceable

    if plan.task not in BUNDLED_TASKS:
        raise SimulationError(f"--task {plan.task!r}: choose one of {', '.join(BUNDLED_TASKS)}")
    if fed.min_sites > plan.sites:
        raise SimulationError(f"federation.yaml asks for min_sites: {fed.min_sites}, but only {plan.sites} "
                              f"virtual sites run; lower min_sites or raise --sites")
    if plan.sites > (most := most_sites(plan.task)):
        raise SimulationError(f"--sites {plan.sites}: the {plan.task} data set gives at most {most} sites enough "
                              f"rows each; use --sites {most} or fewer")
    try:  # it clears the coordinator's and the sites' state in it: only in a workdir it made
        check_replaceable(workdir, SIMULATED, "--workdir", legacy=_earlier_workdir, itself=False)
    except UnsafePath as exc:
        raise SimulationError(str(exc)) from None
    try:
        import ray  # noqa: F401
    except ImportError:
        raise SimulationError("Flower's simulation engine needs Ray: pip install 'fedtl[simulation]'") from None


def simulate(fed: FederationConfig, config_path: Path, plan: SimulationPlan, workdir: Path,
             tracking_uri: str = "") -> Path:
    """Run the federation over ``plan.sites`` virtual sites; returns the coordinator's state folder."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fedtl.client.sim_app import simulation_client_app
    from fedtl.server.server_app import run_federation

    workdir = workdir.resolve()
    check_plan(fed, plan, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if made_by(workdir) != SIMULATED:
        mark_folder(workdir, SIMULATED)
    sites_dir = prepare_sites(plan, workdir, fed.encoder)
    state_dir = workdir / "coordinator"
    # a simulation starts afresh, at the coordinator and at every site (heads, baselines, history)
    for old in [state_dir, *sites_dir.glob("site-*/state")]:
        shutil.rmtree(old, ignore_errors=True)
    state_dir.mkdir(parents=True)
    (state_dir / "simulation.json").write_text(json.dumps(asdict(plan)))
    fed = fed.model_copy(update={"state_dir": state_dir})
    failure: list[BaseException] = []

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            run_federation(grid, fed, config_path, state_dir, context.run_id, tracking_uri=tracking_uri,
                           mlflow_params={f"simulation.{k}": v for k, v in asdict(plan).items()})
        except BaseException as exc:  # Flower logs it and goes on; the command must fail
            failure.append(exc)
            raise

    cores = os.cpu_count() or 1
    threads = max(1, int(plan.cpus_per_site))
    backend_config = {
        "client_resources": {"num_cpus": plan.cpus_per_site, "num_gpus": 0.0},
        "init_args": {"num_cpus": cores, "num_gpus": 0, "include_dashboard": False, "log_to_driver": False},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # run_simulation's deprecation notice: the Python API is what we embed
        run_simulation(server_app, simulation_client_app(sites_dir, plan.workers_cached, threads),
                       num_supernodes=plan.sites, backend_config=backend_config)
    if failure:
        raise SimulationError(f"the federation failed: {failure[0]}") from failure[0]
    return state_dir
