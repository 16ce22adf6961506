"""Tables for people and JSON for scripts, built from training results."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from fedtl.client.local_training import LocalRunSummary


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
