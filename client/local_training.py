"""Local-only training at one site: the baseline a site compares the federation against.

State lives under ``<state_dir>/local/``: the heads (HeadStore) and the locally fine-tuned
encoder, so a second run continues where the first stopped (``fresh=True`` starts over).
Federated training keeps its own heads elsewhere, so the two never overwrite each other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import Progress
from safetensors.torch import load_file, save

from fedtl.client.head_store import HeadStore, HeadStoreError
from fedtl.client.trainer import (
    LocalTrainer,
    PreparedTask,
    TrainerOptions,
    TrainResult,
    prepare_task,
    resolve_device,
    resolve_precision,
)
from fedtl.shared.atomic import write_bytes_atomic, write_json_atomic
from fedtl.shared.config import SiteConfig
from fedtl.shared.data import TaskData, load_site_tasks
from fedtl.shared.encoders import TextEncoder, load_encoder

log = logging.getLogger(__name__)


def load_site_data(config: SiteConfig) -> list[TaskData]:
    return load_site_tasks(config.tasks, seed=config.training.seed)


def prepare_tasks(datas: list[TaskData], encoder: TextEncoder, store: HeadStore | None, max_length: int,
                  seed: int = 0) -> list[PreparedTask]:
    """Tokenise each task and attach its head: the stored one when compatible, else a new one.

    New heads start from ``seed`` (not from wherever the global random state happens to be),
    so a run is reproducible.
    """
    tasks = []
    for i, data in enumerate(datas):
        with torch.random.fork_rng():
            torch.manual_seed(seed * 1000 + i)
            task = prepare_task(data, encoder, max_length)
        stored = store.load(data.task.name) if store is not None else None
        if stored is not None:
            spec, state, _ = stored
            if not spec.compatible_with(task.spec):
                raise HeadStoreError(
                    f"the stored head for task '{data.task.name}' in {store.root} was trained for "
                    f"{spec.type.value} with {spec.hidden_size}-d features and labels {spec.labels}; the "
                    f"task now has {task.spec.hidden_size}-d features and labels {task.spec.labels}. "
                    "Start afresh (--fresh) or restore the old config."
                )
            task.head.load_state_dict(state)
        tasks.append(task)
    return tasks


def _refuse_state_inside_package(config: SiteConfig) -> None:
    from fedtl.shared.examples import examples_root

    package = examples_root().resolve()
    if package in config.state_dir.resolve().parents:
        raise RuntimeError(
            f"site '{config.name}' would keep its state inside the installed fedtl package ({config.state_dir}); "
            "copy the examples first: fedtl examples ./my-sites"
        )


@dataclass
class LocalRunSummary:
    site: str
    encoder: str
    device: str
    result: TrainResult
    tasks: list[PreparedTask]
    state_dir: Path


def train_local(
    config: SiteConfig,
    encoder_spec: str | None = None,
    fresh: bool = False,
    progress: Progress | None = None,
) -> LocalRunSummary:
    encoder_spec = encoder_spec or config.encoder
    _refuse_state_inside_package(config)
    root = config.state_dir / "local"
    store = HeadStore(root / "heads")
    device = resolve_device(config.device)
    datas = load_site_data(config)  # data errors surface before the slow model load

    encoder = load_encoder(encoder_spec, seed=config.training.seed)
    encoder_file, encoder_meta = root / "encoder.safetensors", root / "encoder.json"
    resumed = not fresh and encoder_file.exists()
    if resumed:
        encoder.backbone.load_state_dict(load_file(encoder_file))
        log.info("continuing from the locally fine-tuned encoder in %s", encoder_file)
    tasks = prepare_tasks(datas, encoder, None if fresh else store, config.training.max_length,
                          config.training.seed)

    trainer = LocalTrainer(encoder, tasks, config.training,
                           TrainerOptions(device, resolve_precision(device, config.precision), progress))
    result = trainer.fit()

    for task in tasks:
        store.save(task.spec, task.head.state_dict(), {"metrics": result.final[task.name], "mode": "local"})
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.backbone.state_dict().items()}
    write_bytes_atomic(encoder_file, save(state))
    write_json_atomic(encoder_meta, {"encoder": encoder_spec, "resumed": resumed})
    return LocalRunSummary(config.name, encoder_spec, str(device), result, tasks, config.state_dir)
