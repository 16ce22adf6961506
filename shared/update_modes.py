"""Which encoder tensors a site trains and sends: the federation's update mode.

- ``full``: every encoder parameter.
- ``last:N``: the last N transformer layers (the rest stay pretrained at every site).
- ``bias``: only bias terms (BitFit, Ben Zaken et al. 2022): tiny updates, cheap rounds.
- ``lora``: LoRA adapters on the encoder's projections (``shared/lora.py``); only they train
  and travel, the pretrained weights stay as they are.

Tensors outside the mode never change anywhere, so a late joiner that loads the same
pretrained encoder and receives the mode's tensors holds exactly the global encoder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

LAYER_INDEX = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")


@dataclass(frozen=True)
class UpdateMode:
    kind: Literal["full", "last", "bias", "lora"]
    layers: int = 0

    @classmethod
    def parse(cls, text: str) -> UpdateMode:
        text = text.strip().lower()
        if text in ("full", "bias", "lora"):
            return cls(text)  # type: ignore[arg-type]
        if text.startswith("last:"):
            try:
                n = int(text.split(":", 1)[1])
            except ValueError:
                n = 0
            if n >= 1:
                return cls("last", n)
        raise ValueError(f"unknown update mode {text!r}; use full, last:N (N >= 1), bias or lora")

    def __str__(self) -> str:
        return f"last:{self.layers}" if self.kind == "last" else self.kind

    def selects(self, name: str, num_layers: int) -> bool:
        """Does parameter ``name`` (of an encoder with ``num_layers`` layers) train and travel?"""
        if self.kind == "full":
            return True
        if self.kind == "bias":
            return name.endswith(".bias")
        if self.kind == "lora":
            return is_adapter(name)
        match = LAYER_INDEX.search(name)
        return match is not None and int(match.group(1)) >= num_layers - self.layers


def is_adapter(name: str) -> bool:
    """A LoRA adapter tensor (PEFT's ``<module>.lora_A.<adapter>.weight``, ``lora_B``)."""
    return ".lora_A." in name or ".lora_B." in name


def num_layers(param_names: list[str]) -> int:
    indices = [int(m.group(1)) for n in param_names if (m := LAYER_INDEX.search(n))]
    return max(indices) + 1 if indices else 0


def exchanged_names(param_names: list[str], mode: UpdateMode) -> list[str]:
    """The parameter names (sorted) that the mode trains and sends."""
    layers = num_layers(param_names)
    if mode.kind == "last" and mode.layers > layers:
        raise ValueError(f"update mode {mode} asks for {mode.layers} layers; the encoder has {layers}")
    names = sorted(n for n in param_names if mode.selects(n, layers))
    if not names:
        hint = " (add the adapters first: shared/lora.py)" if mode.kind == "lora" else ""
        raise ValueError(f"update mode {mode} selects no encoder parameters{hint}")
    return names
