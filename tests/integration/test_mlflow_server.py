"""Against a real `mlflow server` on loopback, including an outage in the middle of a run."""

from __future__ import annotations

import json
import signal

import pytest

from fedtl.shared.processes import free_port, start, stop, tool, wait_for_port
from tests.integration.harness import Federation
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


class MlflowServer:
    def __init__(self, root, port):
        self.root, self.port, self.proc = root, port, None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [tool("mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
               "--default-artifact-root", str(self.root / "server-artifacts"), "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1"]
        self.proc = start(cmd, self.root / "mlflow-server.log", cwd=self.root)
        wait_for_port("127.0.0.1", self.port, 120, self.proc, "mlflow server", self.root / "mlflow-server.log")

    def stop(self) -> None:
        stop(self.proc)
        self.proc = None


def test_metrics_survive_a_tracking_server_outage(tmp_path):
    from mlflow import MlflowClient

    server = MlflowServer(tmp_path, free_port())
    fed = Federation(tmp_path)
    fed.add_site("solo", types=("classification",))
    fed.write_config(rounds=3, min_sites=1, final_evaluate=False,
                     mlflow={"tracking_uri": server.uri, "experiment": "outage", "registered_model": "outage-encoder"})
    journal = fed.state_dir / "mlflow_journal.jsonl"
    release = tmp_path / "release-round-2"  # the site holds round 2 until the server is down: no race
    try:
        server.start()
        fed.start_site("solo", env={"FEDTL_INJECT_FAULT": f"hold:2:{release}"})
        fed.start_coordinator()
        client = MlflowClient(server.uri)

        def round_1_logged() -> bool:
            exp = client.get_experiment_by_name("outage")
            runs = client.search_runs([exp.experiment_id]) if exp else []
            return bool(runs) and "federation/round_seconds" in runs[0].data.metrics

        wait_until(round_1_logged, 240, lambda: fed.log("coordinator"))
        server.stop()  # the tracking server goes down for round 2
        release.touch()

        fed.wait_for_round(2, timeout=240)
        wait_until(lambda: journal.exists() and journal.read_text().strip(), 30,
                   "round 2 should be buffered while the server is down")
        fed.wait_for_log(fed.state_dir / "serverapp.log", "unavailable", timeout=120)

        server.start()  # back again: everything buffered must arrive
        assert fed.wait_coordinator(300) == 0, fed.log("coordinator")
        run_id = json.loads((fed.state_dir / "mlflow_run.json").read_text())["run_id"]
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        for key in ("federation/round_seconds", "site/solo/label/val_accuracy", "federation/bytes_down"):
            assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2, 3], key
        assert not journal.read_text().strip()
        assert client.search_model_versions("name='outage-encoder'")
        assert "MLflow is back" in (fed.state_dir / "serverapp.log").read_text()
    finally:
        fed.stop_all()
        server.stop()


def test_ctrl_c_stops_fedtl_ui_with_mlflows_job_runners(tmp_path):
    """fedtl ui starts mlflow server, which starts uvicorn and huey job consumers: all go on Ctrl-C."""
    from mlflow import MlflowClient

    from fedtl.shared.processes import descendants, tree
    from tests.integration.harness import fedtl_cmd, interrupt_and_check_exit

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("ui")
    port = free_port()
    ui = start(fedtl_cmd("ui", "--tracking-uri", uri, "--port", str(port)), tmp_path / "ui.log", cwd=tmp_path)
    try:
        wait_for_port("127.0.0.1", port, 120, ui, "fedtl ui", tmp_path / "ui.log")
        wait_until(lambda: len(descendants(ui.pid)) >= 4, 60, "mlflow server started no job runners")
        assert len(tree(ui.pid)) >= 5
        assert interrupt_and_check_exit(ui, signal.SIGINT) == 0
    finally:
        stop(ui)
