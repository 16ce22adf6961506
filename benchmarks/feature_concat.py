"""Would a head on two encoders' features serve each site at least as well as its best local model?

A measurement for issue 9 before building anything: on the bundled sites no method lifts every
site to its best local-only model, because the encoder a site trains alone (or the pretrained one)
suits its task better than the federation's. A head fitted on the *concatenation* of two encoders'
features chooses, on the site's own training rows (the penalty by cross-validation), how much to
use of each. If it serves at least the better of the two, a site could keep its own encoder
beside the federation's (Ditto's personal model, or the pretrained one) and lose nothing by
joining.

Per seed and bundled site: local fine-tuning alone (``rounds x steps`` steps, as in
``learning.py``), the pretrained encoder, and the encoder each site serves after FedAvg
(``learning.py``'s arm). Converged heads (ridge by GCV, logistic regression by cross-validation,
as every site fits them) on each encoder's features alone and on pairs of them, scored on the
site's validation rows. Prints the table and the verdict last.

    python benchmarks/feature_concat.py [--seeds 0 1 2] [--rounds 4] [--steps 12] [--update last:2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from learning import METHODS, add_run_arguments, federated, fit, site_configs
from readme_block import write_block
from safetensors.numpy import load

from fedtl.client.ditto import set_tensors
from fedtl.client.local_training import load_site_data, prepare_tasks
from fedtl.client.trainer import LocalTrainer
from fedtl.shared.encoders import load_encoder
from fedtl.shared.examples import copy_examples

OUT = Path(__file__).resolve().parent / "results" / "feature-concat"
SINGLE = ("pretrained", "local", "fedavg")
# ("local", "local"): the control; the same features twice change only how the penalty acts
PAIRS = (("pretrained", "fedavg"), ("local", "fedavg"), ("pretrained", "local"), ("local", "local"))
COMBOS = [(n,) for n in SINGLE] + list(PAIRS)


def converged_score(task, train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, seed: int) -> float:
    """The task's primary validation metric for a converged head on these features."""
    spec = replace(task.spec, hidden_size=train_x.shape[1])
    weight, bias = spec.fit_converged(train_x, train_y, seed)
    outputs = val_x @ weight.T + bias
    return spec.metrics(spec.predict(outputs), task.data.val.targets)[spec.primary_metric]


def site_scores(cfg, encoders: dict[str, object], seed: int) -> dict[str, dict[str, float]]:
    """Per task: the score of a head on each encoder alone and on each pair."""
    tasks = prepare_tasks(load_site_data(cfg), encoders["pretrained"], None, cfg.training.max_length, seed)
    training = cfg.training.model_copy(update={"encoder_epochs": 0})
    feats = {}
    for name, encoder in encoders.items():
        trainer = LocalTrainer(encoder, tasks, training)
        feats[name] = {split: trainer.features(split) for split in ("train", "val")}
    targets = {t.name: torch.as_tensor(t.data.train.targets) for t in tasks}
    out = {}
    for task in tasks:
        scores = {}
        for combo in COMBOS:
            x = torch.cat([feats[n]["train"][task.name] for n in combo], 1)
            v = torch.cat([feats[n]["val"][task.name] for n in combo], 1)
            scores[" + ".join(combo)] = converged_score(task, x, targets[task.name], v, seed)
        out[task.name] = scores
    return out


def run_seed(paths: list[Path], seed: int, args, work: Path) -> dict[str, dict[str, dict[str, float]]]:
    steps = args.rounds * args.steps
    root = work / f"seed{seed}" / "fedavg"
    sites = site_configs(paths, seed, root / "sites")
    reported = federated(sites, args.encoder, args.update, args.rounds, args.steps, METHODS["fedavg"],
                         root).rounds[-1]["sites"]
    results = {}
    for cfg in site_configs(paths, seed, work / f"seed{seed}" / "local"):
        local = load_encoder(args.encoder)
        tasks = prepare_tasks(load_site_data(cfg), local, None, cfg.training.max_length, seed)
        fit(local, tasks, cfg, args.update, steps)  # trains ``local`` in place: the site alone
        served = load_encoder(args.encoder)
        set_tensors(served, load((root / "sites" / cfg.name / "federated" / "encoder.safetensors").read_bytes()))
        encoders = {"pretrained": load_encoder(args.encoder), "local": local, "fedavg": served}
        for encoder in encoders.values():
            encoder.eval()
        results[cfg.name] = site_scores(cfg, encoders, seed)
        for task, scores in results[cfg.name].items():  # what the site itself reported: a check on "fedavg"
            scores["fedavg (site's report)"] = reported[cfg.name][task]
    return results


def report(runs: list[dict], meta: dict, readme: Path | None) -> str:
    combos = [" + ".join(c) for c in COMBOS] + ["fedavg (site's report)"]
    head = "| site | task | " + " | ".join(combos) + " | local + fedavg - best local |"
    lines = [f"Seeds {meta['seeds']}, encoder `{meta['encoder']}`, update mode `{meta['update']}`, FedAvg "
             f"{meta['rounds']} rounds x {meta['steps']} steps, local fine-tuning {meta['rounds'] * meta['steps']} "
             f"steps, {meta['machine']}. Primary validation metric, mean ± sd over seeds; the last column pairs "
             "each seed's [local + fedavg] head with that seed's better of the pretrained and local heads.",
             "", head, "|" + "---|" * (len(combos) + 3)]
    gains = []
    for site, tasks in runs[0].items():
        for task in tasks:
            cells = []
            for combo in combos:
                values = [r[site][task][combo] for r in runs]
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.fmean(values):.3f} ± {sd:.3f}")
            gain = [r[site][task]["local + fedavg"] - max(r[site][task]["pretrained"], r[site][task]["local"])
                    for r in runs]
            gains.append(statistics.fmean(gain))
            lines.append(f"| {site} | {task} | " + " | ".join(cells) + f" | {statistics.fmean(gain):+.3f} |")
    verdict = (f"[local + fedavg] head against each site's best local-only head: every task >= 0: "
               f"{all(g >= 0 for g in gains)}, mean gain {statistics.fmean(gains):+.3f}")
    table = "\n".join(lines) + "\n\n" + verdict + "\n"
    if readme is not None:
        write_block("feature-concat", table, readme)
    return verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--readme", type=Path, default=Path(__file__).with_name("README.md"))
    parser.add_argument("--report-only", action="store_true", help="rebuild the table from results.json")
    args = parser.parse_args()
    if args.report_only:
        saved = json.loads((args.out / "results.json").read_text())
        print(report(saved["runs"], saved["meta"], args.readme))
        return
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="fedtl-concat-"))
    paths = list(copy_examples(work / "sites").values())
    runs = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        runs.append(run_seed(paths, seed, args, work))
        print(f"seed {seed} in {time.perf_counter() - t0:.0f}s: {json.dumps(runs[-1])}", flush=True)
    meta = {"seeds": args.seeds, "encoder": args.encoder, "update": args.update, "rounds": args.rounds,
            "steps": args.steps,
            "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    print(report(runs, meta, args.readme))


if __name__ == "__main__":
    main()
