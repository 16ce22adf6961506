"""The learning benchmark's test split reaches no choice: poisoned test labels change only the test scores.

``benchmarks/holdout.py`` cuts each site's test rows off before anything runs; every arm of
``benchmarks/learning.py`` (local probe and fine-tuning, centralized, scikit-learn, a federation
through fedtl's own round loop and site workers) then trains and chooses on the rest. Run
twice on the same cut, once with the test rows' labels scrambled, every validation number,
every round's record and every choice must come out identical, and the test scores must not.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from tests.conftest import make_site

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

from holdout import hold_out  # noqa: E402
from learning import RunPlan, run_seed  # noqa: E402


def poison(path: Path) -> None:
    """Scramble a test file's targets: labels swapped for another label, scores negated."""
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["label"] = "bad" if row["label"] == "good" else "good"
        row["score"] = f"{-float(row['score']) * 3:.3f}"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def choices(run: dict) -> dict:
    """Everything a run decided or saw, without the test scores and the clock."""
    rounds = {m: [{k: v for k, v in r.items() if k != "seconds"} for r in f["rounds"]]
              for m, f in run["federated"].items()}
    return {"local": run["local"], "central": run["central"], "rounds": rounds}


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("sites")
    return [make_site(root / name, name=name, types=("classification", "regression"), n=90, seed=i,
                      head_epochs=2) for i, name in enumerate(("alpha", "beta"))]


def test_hold_out_keeps_test_rows_out_of_the_sites_data(sites, tmp_path):
    held = hold_out(sites, tmp_path / "held", seed=3, share=0.3)
    for site, h in zip(sites, held):
        with (site.parent / "data.csv").open() as fh:
            every = list(csv.DictReader(fh))
        with (h.config.parent / "data.train.csv").open() as fh:
            train = {r["text"] + r["score"] for r in csv.DictReader(fh)}
        with h.tests["label"].open() as fh:
            test = {r["text"] + r["score"] for r in csv.DictReader(fh)}
        assert h.tests["label"] == h.tests["score"], "tasks of one file share one cut"
        assert not train & test and len(train) + len(test) == len({r["text"] + r["score"] for r in every})
        assert 0.25 < len(test) / len(every) < 0.35
    redrawn = hold_out(sites, tmp_path / "other", seed=4, share=0.3)
    assert redrawn[0].tests["label"].read_text() != held[0].tests["label"].read_text(), "seeds redraw the cut"


def test_poisoned_test_labels_change_no_choice(sites, tmp_path):
    plan = RunPlan(encoder="tiny", update="last:1", rounds=2, steps=2)
    methods = {"fedavg": {"strategy": {"name": "fedavg"}}}
    held = hold_out(sites, tmp_path / "held", seed=0, share=0.3)
    clean = run_seed(held, 0, plan, methods, tmp_path / "clean")
    for h in held:
        poison(h.tests["label"])
    poisoned = run_seed(held, 0, plan, methods, tmp_path / "poisoned")

    assert choices(clean) == choices(poisoned)
    assert clean["test"] != poisoned["test"]
    for site in ("alpha", "beta"):  # every arm was scored on the scrambled rows, and each one noticed
        assert clean["test"]["sklearn"][site]["label"] != poisoned["test"]["sklearn"][site]["label"]
        assert clean["test"]["federated"]["fedavg"][site]["score"] != poisoned["test"]["federated"]["fedavg"][site]["score"]
        assert clean["test"]["local"][site]["label"]["chosen"] != poisoned["test"]["local"][site]["label"]["chosen"]
        assert clean["test"]["central"][site]["score"] != poisoned["test"]["central"][site]["score"]
