"""Tables for people and JSON for scripts, built from training results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from fedtl.client.local_training import LocalRunSummary
from fedtl.server.history import RoundRecord, SiteEntry
from fedtl.shared.protocol import Section, SiteMetric


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def local_metrics_table(summary: LocalRunSummary) -> Table:
    r = summary.result
    table = Table(title=f"site {summary.site}: local-only training ({summary.encoder}, {summary.device})")
    for col in ("task", "metric", "untrained head", "probe (frozen)", "fine-tuned", "kept", "gain"):
        table.add_column(col, justify="left" if col in ("task", "metric", "kept") else "right")
    for task in summary.tasks:
        name = task.name
        for metric in _metric_names(r, name):
            before = r.metrics["before"][name][metric]
            probe = r.metrics["probe"][name][metric]
            tuned = r.metrics.get("finetuned", {}).get(name, {}).get(metric)
            final = r.final[name][metric]
            primary = metric == task.spec.primary_metric
            label = f"[bold]{metric}[/]" if primary else metric
            gain = final - before if metric != "loss" else before - final
            table.add_row(name, label, _fmt(before), _fmt(probe), _fmt(tuned), r.kept if primary else "",
                          f"{gain:+.3f}")
    table.caption = (f"{r.num_examples} training examples; "
                     + ", ".join(f"{k} {v:.1f}s" for k, v in r.seconds.items()))
    return table


def _metric_names(result, task: str) -> list[str]:
    return list(result.metrics["before"][task].keys())


def local_summary_json(summary: LocalRunSummary) -> dict[str, Any]:
    r = summary.result
    return {
        "site": summary.site,
        "encoder": summary.encoder,
        "device": summary.device,
        "kept": r.kept,
        "num_examples": r.num_examples,
        "seconds": r.seconds,
        "steps": r.steps,
        "metrics": r.metrics,
        "primary_metric": {t.name: t.spec.primary_metric for t in summary.tasks},
        "train_loss": r.train_loss,
        "loss_weights": r.loss_weights,
    }


# ---------------------------------------------------------------- federation
def _mb(n: float) -> str:
    return f"{n / 1e6:.1f}"


def rounds_table(rounds: list[RoundRecord], info: dict[str, Any] | None = None, title: str = "federation") -> Table:
    """The coordinator's live per-round table."""
    status = (info or {}).get("status", "")
    table = Table(title=f"{title} {('· ' + status) if status else ''}".strip())
    private = any(r.privacy is not None for r in rounds)
    columns = ("round", "sites", "failed", "rejected", "train loss", "score", "update norm", "MB down", "MB up", "s")
    for col in columns + (("ε spent",) if private else ()):
        table.add_column(col, justify="right")
    for r in rounds:
        norms = list(r.update_norms.values())
        spent = (f"{r.privacy['epsilon']:.2f} / {r.privacy['epsilon_budget']:g}",) if r.privacy is not None else ("-",)
        table.add_row(
            str(r.round),
            f"{r.accepted}/{r.sampled}",
            str(len(r.failed)),
            str(len(r.rejected)),
            _fmt(r.metrics.get(SiteMetric.TRAIN_LOSS)),
            _fmt(r.metrics.get(SiteMetric.SCORE)),
            _fmt(sum(norms) / len(norms)) if norms else "-",
            _mb(r.bytes_down),
            _mb(r.bytes_up),
            f"{r.seconds:.1f}",
            *(spent if private else ()),
        )
    return table


def round_line(r: RoundRecord, rounds: int | None = None) -> str:
    """One finished round in one line, for logs and pipes: what the live table shows in a terminal."""
    of = f"/{rounds}" if rounds else ""
    parts = [f"round {r.round}{of} done: {r.accepted}/{r.sampled} sites accepted, {len(r.failed)} failed, "
             f"{len(r.rejected)} rejected"]
    score = r.metrics.get(SiteMetric.SCORE)
    if score is not None:
        parts.append(f"score {score:.3f}")
    if r.privacy is not None:
        parts.append(f"epsilon {r.privacy['epsilon']:.2f}/{r.privacy['epsilon_budget']:g}")
    parts.append(f"{_mb(r.bytes_down)} MB down, {_mb(r.bytes_up)} MB up, {r.seconds:.1f} s")
    return "; ".join(parts)


@dataclass
class SiteOutcome:
    """A site's last train report of a federation, and its final evaluation if any."""

    train: SiteEntry = field(default_factory=SiteEntry)
    last_round: int = 0
    evaluate: SiteEntry = field(default_factory=SiteEntry)


def site_results(rounds: list[RoundRecord]) -> dict[str, SiteOutcome]:
    """Per site: its last train report (and final evaluation, if any) with its baseline."""
    out: dict[str, SiteOutcome] = {}
    for r in rounds:
        for site, entry in r.sites.items():
            outcome = out.setdefault(site, SiteOutcome())
            outcome.train, outcome.last_round = entry, r.round
        for site, entry in (r.evaluate.sites if r.evaluate is not None else {}).items():
            out.setdefault(site, SiteOutcome()).evaluate = entry
    return out


def sites_table(rounds: list[RoundRecord]) -> Table:
    """Per site and task: local-only baseline vs. the federation (primary metric).

    "federated": the site's own validation metric after its last round (global encoder +
    its heads, trained locally); "global encoder": the final evaluation (heads refitted on
    the final global encoder); "site keeps": the model the site serves, never worse than
    its baseline.
    """
    table = Table(title="per site: local-only baseline vs federated")
    for col in ("site", "task", "metric", "local-only", "federated", "global encoder", "gain", "site keeps"):
        table.add_column(col, justify="left" if col in ("site", "task", "metric", "site keeps") else "right")
    for site, res in sorted(site_results(rounds).items()):
        for task, metric in res.train.primary():
            base = res.train.value(Section.BASELINE, task, metric)
            fed = res.train.value(Section.VAL, task, metric)
            glob = res.evaluate.value(Section.VAL, task, metric)
            gain = f"{fed - base:+.3f}" if fed is not None and base is not None else "-"
            table.add_row(site, task, metric, _fmt(base), _fmt(fed), _fmt(glob), gain, res.train.site_model)
    return table


def hub_status_table(status) -> Table:
    """`fedtl status`: a federation's state as its hub reports it (a ``fedtl.v1.Status``)."""
    from fedtl.v1 import hub_pb2

    table = Table(title=f"federation {status.federation}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    last = status.last_round if status.HasField("last_round") else None
    rows = [
        ("state", hub_pb2.Status.State.Name(status.state).lower()),
        ("round", f"{status.current_round} of {status.rounds_total}"),
        ("sites connected", str(status.connected_sites)),
        ("sites in the last round", f"{last.accepted} accepted of {status.sampled_sites}" if last else "-"),
        ("encoder", f"{status.encoder} ({status.update_mode})"),
        ("MLflow", f"run {status.mlflow_run_id} in {status.mlflow_tracking_uri}" if status.mlflow_run_id else "off"),
    ]
    if last is not None:
        rows.append(("last round", f"{last.seconds:.1f}s, score {_fmt(last.metrics.get(SiteMetric.SCORE))}, "
                                   f"{_mb(last.bytes_down)} MB down, {_mb(last.bytes_up)} MB up"))
        rows += [(f"failed: {p.site}", p.reason) for p in last.failed]
        rows += [(f"rejected: {p.site}", p.reason) for p in last.rejected]
    if status.details:
        rows.append(("details", status.details))
    for row in rows:
        table.add_row(*row)
    return table
