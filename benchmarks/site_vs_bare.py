"""A site's round inside a real federation against a bare PyTorch loop doing the same computation.

fedtl: ``fedtl demo`` with one bundled site (a real SuperLink, SuperNode, thin ClientApp and
warm site worker over gRPC on loopback), the whole encoder trained (``full``), so a round has
no cache to flatter it. A round at the site is what the worker reports as ``seconds/handled``:
from the warm worker holding the message to its reply, so decoding the encoder, loading it,
the training itself, the update, codecs and every state write count. Rounds after the first
are compared (round 1 also fits the site's local-only baseline).

Bare: the same computation written as a plain loop over ``transformers.AutoModel`` and
``torch``, nothing of fedtl's round machinery, in this process: the site's texts and splits,
tokens, batches (length-sorted embedding batches of 64; shuffled training batches from the
same seed), the same passes (train and validation features, evaluation before and after, the
head fit, the encoder steps with AdamW, clipping and the linear schedule, the refit on the
trained encoder's features, the final evaluation) and the same head solver
(``fedtl.shared.probes``, the arithmetic itself). Both ran on this machine with the same threads.

    python benchmarks/site_vs_bare.py [--site clinic] [--steps 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import yaml
from readme_block import write_block

from fedtl.client.batching import EMBED_BATCH, pad_batch
from fedtl.client.local_training import prepare_tasks
from fedtl.client.trainer import LocalTrainer, TrainerOptions, resolve_device, resolve_precision
from fedtl.server.history import read_rounds
from fedtl.shared.config import load_site_config
from fedtl.shared.data import load_site_tasks
from fedtl.shared.encoders import encoder_folder, load_encoder
from fedtl.shared.examples import copy_examples
from fedtl.shared.heads import HeadSpec
from fedtl.shared.processes import child_env, descendants, tool
from fedtl.shared.records import l2_norm

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "site-vs-bare"
PHASES = ("prefix_cache", "embed", "head", "encoder", "refit", "eval")


def site_config(workdir: Path, site: str, steps: int, device: str = "cpu", precision: str = "fp32") -> Path:
    """The bundled site's config, its encoder phase long enough for ``steps`` steps a round, on
    ``device`` in ``precision`` (the bare loop reads both from it too)."""
    path = copy_examples(workdir)[site]
    config = yaml.safe_load(path.read_text())
    config["device"], config["precision"] = device, precision
    config["training"]["encoder_epochs"] = 1000  # max_steps decides
    config["training"]["max_steps"] = steps
    config["training"]["lr_schedule"] = "linear"  # the bare loop's schedule
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def fedtl_rounds(site_yaml: Path, encoder: str, steps: int, rounds: int, workdir: Path) -> tuple[list[dict], dict]:
    federation = workdir / "federation-base.yaml"
    federation.write_text(yaml.safe_dump({"max_steps": steps, "final_evaluate": False}))
    cmd = [tool("fedtl"), "demo", "--site", str(site_yaml), "--federation", str(federation), "--encoder", encoder,
           "--update", "full", "--rounds", str(rounds), "--workdir", str(workdir / "demo")]
    demo = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env())
    cpu = CpuByProcess(demo.pid)
    started = time.perf_counter()
    while demo.poll() is None:
        cpu.sample()
        time.sleep(0.5)
    if demo.returncode != 0:
        raise SystemExit(f"fedtl demo failed ({demo.returncode}): {' '.join(cmd)}")
    usage = {"wall": time.perf_counter() - started, "cpu": cpu.seconds(), "rounds": {}}
    out = []
    for record in read_rounds(workdir / "demo" / "coordinator"):
        (name, entry), = record.sites.items()
        report = entry.report
        out.append({"round": record.round, "round_seconds": record.seconds,
                    "handled": float(report["seconds/handled"]), "trainer": float(report["seconds/total"]),
                    "baseline": float(report.get("seconds/baseline", 0.0)),
                    "phases": {p: float(report[f"seconds/{p}"]) for p in PHASES if f"seconds/{p}" in report}})
        # what each process used in the middle half of the round, while the site trains (the
        # messages' transport and the ClientApp's start come before, the reply after)
        start, quarter = record.started_at, record.seconds / 4
        middle = cpu.between(start + quarter, start + 3 * quarter)
        usage["rounds"][record.round] = {"seconds": 2 * quarter, "cpu": middle}
    return out, usage


class CpuByProcess:
    """CPU seconds of every process below ``root``, by kind (SuperLink, SuperExec, ClientApp, ...),
    sampled from /proc: what shares the cores with the site while it trains."""

    KINDS = (("flower-superlink", "SuperLink"), ("flower-supernode", "SuperNode"),
             ("flwr-serverapp", "ServerApp"), ("flwr-clientapp", "ClientApp"), ("superexec", "SuperExec"),
             ("mlflow", "MLflow"), (" site", "site (worker)"), (" coordinator", "coordinator"), (" demo", "demo"))

    def __init__(self, root: int) -> None:
        self.root, self.ticks = root, os.sysconf("SC_CLK_TCK")
        self.seen: dict[tuple[int, int], tuple[str, int]] = {}  # (pid, start) -> (kind, ticks)
        self.timeline: list[tuple[float, dict[str, float]]] = []  # (wall clock, CPU seconds by kind so far)

    def _kind(self, pid: int) -> str:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return "?"
        return next((kind for key, kind in self.KINDS if key in argv), Path(argv.split(" ")[0]).name or "?")

    def sample(self) -> None:
        for pid in descendants(self.root) | {self.root}:
            try:
                text = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()
            key, ticks = (pid, int(fields[19])), int(fields[11]) + int(fields[12])
            kind = self.seen[key][0] if key in self.seen else self._kind(pid)
            self.seen[key] = (kind, ticks)
        self.timeline.append((time.time(), self.seconds()))

    def seconds(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for kind, ticks in self.seen.values():
            out[kind] = out.get(kind, 0.0) + ticks / self.ticks
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def between(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds by kind from the first sample at or after ``start`` to the last at or before ``end``."""
        inside = [(t, totals) for t, totals in self.timeline if start <= t <= end]
        if len(inside) < 2:
            return {}
        (_, first), (_, last) = inside[0], inside[-1]
        return {k: v - first.get(k, 0.0) for k, v in last.items()}


# ----------------------------------------------------------------------------- the bare loop
class Amp:
    """Where the bare loop computes and in what precision: autocast as ``torch.amp`` documents it,
    a gradient scaler for fp16."""

    def __init__(self, device: torch.device, dtype: torch.dtype | None):
        self.device, self.dtype = device, dtype
        self.scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    def autocast(self):
        return nullcontext() if self.dtype is None else torch.autocast(self.device.type, dtype=self.dtype)

    def sync(self) -> None:
        """Wait for the device's queued work, so a clock read after it counts that work."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def pooled(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    states = model(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).to(states.dtype)
    return (states * m).sum(1) / m.sum(1).clamp(min=1e-6)


@torch.no_grad()
def embed(model, seqs: list[list[int]], pad_id: int, amp: Amp) -> torch.Tensor:
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = torch.empty((len(seqs), model.config.hidden_size), device=amp.device)
    for start in range(0, len(order), EMBED_BATCH):
        chunk = order[start : start + EMBED_BATCH]
        with amp.autocast():
            out[chunk] = pooled(model, *pad_batch([seqs[i] for i in chunk], pad_id, amp.device)).float()
    return out


def fit_head(spec: HeadSpec, head: torch.nn.Linear, feats: torch.Tensor, y: torch.Tensor, seed: int) -> None:
    weight, bias = spec.fit_converged(feats, y, seed)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)


def evaluate(spec: HeadSpec, head: torch.nn.Linear, feats: torch.Tensor, y: np.ndarray) -> dict[str, float]:
    with torch.no_grad():
        out = head(feats)
        metrics = spec.metrics(spec.predict(out), y)
        metrics["loss"] = float(spec.loss(out, torch.as_tensor(y).to(out.device)))
    return metrics


def bare_round(site_yaml: Path, encoder: str, steps: int, seed: int) -> dict:
    """One site round as a plain loop; returns its wall seconds and what it measured."""
    from transformers import AutoModel, AutoTokenizer

    config = load_site_config(site_yaml)
    cfg = config.training
    device = resolve_device(config.device)
    amp = Amp(device, resolve_precision(device, config.precision))
    (data,) = load_site_tasks(config.tasks, seed=cfg.seed)  # reading the CSV is not part of a round
    path = encoder_folder(encoder)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False).to(device)
    train_ids = tokenizer(data.train.texts, truncation=True, max_length=cfg.max_length)["input_ids"]
    val_ids = tokenizer(data.val.texts, truncation=True, max_length=cfg.max_length)["input_ids"]
    pad_id = int(tokenizer.pad_token_id or 0)
    spec = HeadSpec.for_data(data, model.config.hidden_size)
    head = torch.nn.Linear(model.config.hidden_size, spec.out_features).to(device)
    y_train = torch.as_tensor(data.train.targets).to(device)
    received = {n: p.detach().clone() for n, p in model.named_parameters()}  # what the message would bring

    amp.sync()
    started = time.perf_counter()
    phases, clock = {}, Clock(amp.sync)
    torch.manual_seed(seed)
    train_feats, val_feats = embed(model, train_ids, pad_id, amp), embed(model, val_ids, pad_id, amp)
    evaluate(spec, head, val_feats, data.val.targets)                        # before
    phases["embed"] = clock.lap()
    fit_head(spec, head, train_feats, y_train, seed)
    evaluate(spec, head, val_feats, data.val.targets)                        # probe
    phases["head"] = clock.lap()
    params = list(model.parameters())
    opt = torch.optim.AdamW([{"params": params, "lr": cfg.encoder_lr},
                             {"params": list(head.parameters()), "lr": cfg.finetune_head_lr}],
                            weight_decay=cfg.weight_decay)
    warmup = int(cfg.warmup_ratio * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (steps - s) / max(1, steps - warmup)))
    rng, order = random.Random(seed), []
    model.train()
    losses = []
    for _ in range(steps):
        if not order:
            order = list(range(len(train_ids)))
            rng.shuffle(order)
            order = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        idx = order.pop(0)
        ids, mask = pad_batch([train_ids[i] for i in idx], pad_id, device)
        # the AMP step is written out here on purpose, beside client/trainer.py's: this loop is the
        # independent baseline the site's training is timed against, so it shares no training code
        with amp.autocast():
            out = head(pooled(model, ids, mask))
        loss = spec.loss(out, y_train[idx])
        opt.zero_grad(set_to_none=True)
        if amp.scaler is not None:
            amp.scaler.scale(loss).backward()
            amp.scaler.unscale_(opt)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params + list(head.parameters()), cfg.max_grad_norm)
        if amp.scaler is not None:
            amp.scaler.step(opt)
            amp.scaler.update()
        else:
            opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    phases["encoder"] = clock.lap()
    fit_head(spec, head, embed(model, train_ids, pad_id, amp), y_train, seed)      # refit
    phases["refit"] = clock.lap()
    final = evaluate(spec, head, embed(model, val_ids, pad_id, amp), data.val.targets)
    phases["eval"] = clock.lap()
    update = {n: (p.detach() - received[n]).cpu().numpy() for n, p in model.named_parameters()}
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "phases": phases, "steps": steps, "final": final, "update_norm": l2_norm(update),
            "train_loss": statistics.fmean(losses)}


def trainer_round(site_yaml: Path, encoder: str, steps: int, seed: int) -> dict:
    """fedtl's own ``LocalTrainer.fit`` on the same round, in this process (no federation running
    beside it): separates what the trainer costs from what sharing the cores with the
    federation's processes costs."""
    config = load_site_config(site_yaml)
    training = config.training.model_copy(update={"max_steps": steps, "seed": seed})
    device = resolve_device(config.device)
    amp = Amp(device, resolve_precision(device, config.precision))
    datas = load_site_tasks(config.tasks, seed=config.training.seed)
    model = load_encoder(encoder, seed=config.training.seed)
    tasks = prepare_tasks(datas, model, None, training.max_length, training.seed)
    trainer = LocalTrainer(model, tasks, training, TrainerOptions(device, amp.dtype, optimizer_state={}))
    amp.sync()
    started = time.perf_counter()
    result = trainer.fit()
    amp.sync()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "phases": result.seconds, "steps": result.steps}


class Clock:
    """Seconds since the last lap (after ``sync``: a GPU's queued work counts in its lap)."""

    def __init__(self, sync=lambda: None) -> None:
        self.sync = sync
        self.last = time.perf_counter()

    def lap(self) -> float:
        self.sync()
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        return seconds


def cpu_table(usage: dict, compared: list[dict]) -> list[str]:
    """Cores each kind of process used while the site trained (the middle half of each compared round)."""
    rounds = [usage["rounds"][r["round"]] for r in compared if usage["rounds"].get(r["round"], {}).get("cpu")]
    wall = sum(r["seconds"] for r in rounds)
    kinds: dict[str, float] = {}
    for r in rounds:
        for kind, seconds in r["cpu"].items():
            kinds[kind] = kinds.get(kind, 0.0) + seconds
    lines = [f"Cores each of the federation's processes used while the site trained (the middle half of each "
             f"compared round, {wall:.0f} s in all, {os.cpu_count()} cores; CPU time from /proc every 0.5 s):", "",
             "| process | CPU s | cores on average |", "|---|---|---|"]
    lines += [f"| {k} | {v:.1f} | {v / wall:.3f} |" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])]
    others = sum(v for k, v in kinds.items() if k != "site (worker)")
    return lines + ["", f"Everything but the site: {others / max(wall, 1e-9):.3f} cores on average."]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default="clinic", help="a bundled site")
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--steps", type=int, default=100, help="encoder steps per round (>= 60 s of compute)")
    parser.add_argument("--rounds", type=int, default=3, help="federation rounds; rounds 2.. are compared")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--fedtl-only", action="store_true",
                        help="only the federation: what its processes use while the site trains")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        site_yaml = site_config(workdir, args.site, args.steps)
        fed, usage = fedtl_rounds(site_yaml, args.encoder, args.steps, args.rounds, workdir)
        if args.fedtl_only:
            print("\n".join(cpu_table(usage, fed[1:])))
            return 0
        alone, bare = [], []
        for r in fed[1:]:  # alternate, so drift in the machine's speed hits both alike
            alone.append(trainer_round(site_yaml, args.encoder, args.steps, seed=r["round"]))
            bare.append(bare_round(site_yaml, args.encoder, args.steps, seed=r["round"]))
    compared = fed[1:]
    site_s = statistics.fmean(r["handled"] for r in compared)
    alone_s = statistics.fmean(a["seconds"] for a in alone)
    bare_s = statistics.fmean(b["seconds"] for b in bare)
    lines = [f"Site `{args.site}`, encoder `{args.encoder}`, update mode `full`, {args.steps} encoder steps a round, "
             f"rounds 2-{args.rounds}, {platform.machine()} CPU, {torch.get_num_threads()} threads, "
             f"torch {torch.__version__}.", "",
             "| round | site round s (message in to reply out) | trainer s | trainer alone s | bare loop s | "
             "site / bare | trainer alone / bare | coordinator's round s |", "|---|---|---|---|---|---|---|---|"]
    for r, a, b in zip(compared, alone, bare):
        lines.append(f"| {r['round']} | {r['handled']:.1f} | {r['trainer']:.1f} | {a['seconds']:.1f} | "
                     f"{b['seconds']:.1f} | {r['handled'] / b['seconds']:.3f} | {a['seconds'] / b['seconds']:.3f} | "
                     f"{r['round_seconds']:.1f} |")
    lines += ["", "Seconds per phase, mean over the compared rounds (the trainer's own phase clocks; the bare "
              "loop's laps at the same points):", "",
              "| phase | site in the federation | trainer alone | bare loop |", "|---|---|---|---|"]
    for phase in PHASES:
        cells = [statistics.fmean(x["phases"].get(phase, 0.0) for x in xs) for xs in (compared, alone, bare)]
        if any(cells):
            lines.append(f"| {phase} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    lines += [""] + cpu_table(usage, compared)
    lines += ["", f"Trainer alone / bare loop: {alone_s / bare_s:.3f}; in the federation it took "
              f"{site_s / alone_s:.3f}x its time alone.", "",
              f"Site round / bare loop: {site_s / bare_s:.3f} (target <= 1.05)"]
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"fedtl": fed, "alone": alone, "bare": bare, "usage": usage}
    (args.out / "site_vs_bare.json").write_text(json.dumps(results, indent=1))
    (args.out / "site_vs_bare.md").write_text("\n".join(lines) + "\n")
    if args.out == OUT:
        write_block("site-vs-bare", "\n".join(lines))
    print("\n".join(lines[2:-2]))
    print(f"site round / bare loop: {site_s:.1f} s / {bare_s:.1f} s = {site_s / bare_s:.3f} (target <= 1.05)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
