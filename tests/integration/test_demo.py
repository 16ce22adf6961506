"""`fedtl demo` with a user's own site configs: exits 0, writes its summary, leaves nothing running."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import make_site
from tests.integration.harness import fedtl_cmd

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def _processes_mentioning(marker: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmd:
                found.append(f"{entry.name}: {cmd[:120]}")
    return found


def test_demo_with_user_sites_runs_and_cleans_up(tmp_path):
    a = make_site(tmp_path / "a", name="alpha", types=("classification",))
    b = make_site(tmp_path / "b", name="beta", types=("regression", "multilabel"), seed=1)
    c = make_site(tmp_path / "c", name="gamma", types=("classification",), seed=2)
    workdir = tmp_path / "work"
    summary = tmp_path / "summary.json"
    proc = subprocess.run(
        fedtl_cmd("demo", "--encoder", "tiny", "--rounds", "2", "--site", str(a), "--site", str(b),
                  "--site", str(c), "--workdir", str(workdir), "--json", str(summary)),
        capture_output=True, text=True, timeout=500, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(summary.read_text())
    assert data["status"] == "finished:completed"
    assert set(data["sites"]) == {"alpha", "beta", "gamma"}
    assert set(data["sites"]["beta"]["tasks"]) == {"score", "tags"}
    task = data["sites"]["alpha"]["tasks"]["label"]
    assert task["primary_metric"] == "macro_f1" and task["baseline"] is not None and task["federated"] is not None
    assert data["sites"]["alpha"]["site_keeps"] in ("federated", "baseline")
    assert [r["round"] for r in data["rounds"]] == [1, 2]
    assert all(r["bytes_down"] > 0 and r["accepted"] == 3 for r in data["rounds"])
    assert (workdir / "mlflow.db").exists()
    assert not _processes_mentioning(str(workdir)), "the demo left processes running"


def test_demo_refuses_two_sites_with_one_name(tmp_path):
    a = make_site(tmp_path / "a", name="same")
    b = make_site(tmp_path / "b", name="same")
    proc = subprocess.run(fedtl_cmd("demo", "--encoder", "tiny", "--site", str(a), "--site", str(b),
                                    "--workdir", str(tmp_path / "w")), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "same" in (proc.stdout + proc.stderr)
