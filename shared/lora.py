"""LoRA adapters on the shared encoder (update mode ``lora``), with Hugging Face PEFT (torch imported
where used: configs import this module to check their targets).

Low-rank adapters (Hu et al. 2022) go on the encoder's linear projections named in
``targets``; only their tensors train and travel, so a round moves a few hundred kilobytes
instead of the whole encoder. Coordinator and sites add the adapters with the same seed, so
the adapters every site starts from are the same tensors without sending them.

The coordinator keeps the plain encoder and the adapters' tensors; a checkpoint is written
twice: as a PEFT adapter folder (``PeftModel.from_pretrained(base, folder)`` loads it) and
merged into a plain Hugging Face encoder folder (``W + alpha/r * B @ A``), which is what
MLflow registers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedtl.shared.protocol import RoundConfig
from fedtl.shared.update_modes import UpdateMode

ADAPTER = "default"  # PEFT's adapter name inside the model
PREFIX = "backbone."  # TextEncoder's name for the Hugging Face model


@dataclass(frozen=True)
class LoraSettings:
    # defaults from benchmarks/communication.py: rank 4 on attention and feed-forward projections
    # ended closest to full fine-tuning at under 1/100 of its bytes (rank 8 on attention alone: 0.003 lower)
    rank: int = 4
    alpha: float = 8.0
    dropout: float = 0.05
    targets: tuple[str, ...] = ("query", "key", "value", "attention.output.dense", "intermediate.dense",
                                "output.dense")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def peft_config(self, base: str | None = None):
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.targets), bias="none", base_model_name_or_path=base)


def round_settings(config: RoundConfig) -> LoraSettings | None:
    """The adapters a round asks a site for (None unless its update mode is lora)."""
    if UpdateMode.parse(config.update_mode).kind != "lora":
        return None
    defaults = LoraSettings()
    return LoraSettings(config.lora_rank or defaults.rank, config.lora_alpha or defaults.alpha,
                        config.lora_dropout if config.lora_dropout is not None else defaults.dropout,
                        config.lora_targets or defaults.targets)


def linear_modules(model) -> list[str]:
    import torch

    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]


def check_targets(modules: Iterable[str], targets: Iterable[str]) -> None:
    """Every target must name (a suffix of) at least one linear module; else say which there are."""
    modules = list(modules)
    for target in targets:
        if not any(m == target or m.endswith("." + target) for m in modules):
            kinds = sorted({m.split(".", 3)[-1] if m.startswith("encoder.layer.") else m for m in modules})
            raise ValueError(f"lora target {target!r} matches no linear module of the encoder; it has: "
                             + ", ".join(kinds))


def encoder_linear_modules(spec: str) -> list[str]:
    """The linear modules of encoder ``spec``, built on the meta device (no weights loaded)."""
    import torch
    from transformers import AutoConfig, AutoModel, BertConfig, BertModel

    from fedtl.shared.encoder_specs import TinyConfig, encoder_folder

    folder = encoder_folder(spec)
    with torch.device("meta"):
        if folder is None:
            model = BertModel(BertConfig(vocab_size=8, **TinyConfig().__dict__), add_pooling_layer=False)
        else:
            model = AutoModel.from_config(AutoConfig.from_pretrained(folder, local_files_only=True))
    return linear_modules(model)


def add_adapters(encoder, settings: LoraSettings, seed: int = 0) -> None:
    """Put LoRA adapters on ``encoder`` in place; the same seed gives the same initial adapters."""
    import torch
    from peft import inject_adapter_in_model

    check_targets(linear_modules(encoder.backbone), settings.targets)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        inject_adapter_in_model(settings.peft_config(), encoder.backbone, adapter_name=ADAPTER)


def target_weight(name: str) -> str:
    """``backbone.<module>.lora_A.default.weight`` -> ``backbone.<module>.weight``."""
    return name.split(".lora_", 1)[0] + ".weight"


def merged(plain: Mapping[str, np.ndarray], adapters: Mapping[str, np.ndarray],
           settings: LoraSettings) -> dict[str, np.ndarray]:
    """The target weights with the adapters merged in: ``W + alpha/r * B @ A``."""
    out = {}
    for name, a in adapters.items():
        if ".lora_A." not in name:
            continue
        b = adapters[name.replace(".lora_A.", ".lora_B.")]
        target = target_weight(name)
        out[target] = (plain[target] + settings.scaling * (b @ a)).astype(np.float32)
    return out


def save_adapter_folder(folder: Path, adapters: Mapping[str, np.ndarray], settings: LoraSettings,
                        base: str) -> None:
    """A PEFT adapter folder: ``adapter_config.json`` and ``adapter_model.safetensors``."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {"base_model.model." + n[len(PREFIX):].replace(f".{ADAPTER}.", "."): np.ascontiguousarray(a)
             for n, a in adapters.items()}
    save_file(state, str(folder / "adapter_model.safetensors"))
    settings.peft_config(base).save_pretrained(str(folder))
