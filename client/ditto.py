"""Ditto (Li et al., ICML 2021): each site also keeps, trains and serves a personal model.

Every round the site first trains from the received global encoder as FedRep does; that
delta is what it sends, so the global model learns as before. Then it trains its personal
copy of the trainable encoder part, with its personal heads, on the same data, adding
``lambda/2 * ||w_personal - w_global||^2`` to the loss. The personal model is what the site
serves. ``lambda = 0`` is purely local training; ``lambda = inf`` serves the global encoder
itself (with heads fitted on it).

State lives in ``state_dir/federated/personal/``: ``encoder.safetensors`` (the personal
tensors of the update mode) and ``heads/``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load, save

from fedtl.client.head_store import HeadStore
from fedtl.client.trainer import LocalTrainer, PreparedTask, TrainResult
from fedtl.shared.atomic import write_bytes_atomic
from fedtl.shared.encoders import TextEncoder


def set_tensors(encoder: TextEncoder, arrays: dict[str, np.ndarray]) -> None:
    params = dict(encoder.named_parameters())
    with torch.no_grad():
        for name, value in arrays.items():
            params[name].copy_(torch.from_numpy(np.asarray(value, dtype=np.float32)))


class Ditto:
    def __init__(self, root: Path, encoder: TextEncoder, make_trainer: Callable[..., LocalTrainer]):
        self.root = root
        self.encoder = encoder
        self.make_trainer = make_trainer
        self.heads = HeadStore(root / "heads")
        self.encoder_file = root / "encoder.safetensors"
        self.optimizer_state: dict[str, dict[str, torch.Tensor]] = {}  # the personal model's AdamW moments

    def personal_tensors(self) -> dict[str, np.ndarray] | None:
        return load(self.encoder_file.read_bytes()) if self.encoder_file.exists() else None

    def round(self, tasks: list[PreparedTask], training, names: set[str], global_arrays: dict[str, np.ndarray],
              lam: float) -> TrainResult:
        """Train (or, for lambda = inf, refit the heads of) the personal model; save and return it."""
        personal = self.personal_tensors()
        if personal is None or sorted(personal) != sorted(names) or math.isinf(lam):
            personal = {n: np.array(global_arrays[n], dtype=np.float32) for n in names}  # start from the global
        personal_tasks = [replace(t, head=copy.deepcopy(t.head)) for t in tasks]
        for task in personal_tasks:
            stored = self.heads.load(task.name)
            if stored is not None and stored[0].compatible_with(task.spec):
                task.head.load_state_dict(stored[1])
        set_tensors(self.encoder, personal)
        if math.isinf(lam):  # the global encoder as it is, heads fitted on it
            trainer = self.make_trainer(personal_tasks, training.model_copy(update={"encoder_epochs": 0}))
        else:
            # keep-best would reset the personal model to the start of the round whenever one round's
            # validation dips, and it would never progress: the personal model always moves on
            anchor = {n: torch.from_numpy(np.asarray(global_arrays[n], dtype=np.float32)) for n in names}
            trainer = self.make_trainer(personal_tasks, training.model_copy(update={"keep_best": False}),
                                        encoder_trainable=names.__contains__, proximal_mu=lam, anchor=anchor,
                                        optimizer_state=self.optimizer_state)
        result = trainer.fit()
        params = dict(self.encoder.named_parameters())  # the personal model as trained (no keep-best)
        kept = {n: params[n].detach().float().cpu().numpy() for n in sorted(names)}
        write_bytes_atomic(self.encoder_file, save(kept))
        for task in personal_tasks:
            self.heads.save(task.spec, task.head.state_dict(), {"metrics": result.final[task.name], "mode": "ditto"})
        return result
