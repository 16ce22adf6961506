"""The federation's encoder as an MLflow pyfunc model (MLflow "models from code").

MLflow copies this file into the logged model and runs it at load time, so it needs torch,
transformers, pandas and MLflow, not fedtl: anyone with the model URI can load or serve it.
Input: a DataFrame with a ``text`` column (a list of strings also works). Output: one
embedding per text, float32, mean-pooled over the tokens exactly as fedtl's sites pool
(``fedtl.shared.encoders.TextEncoder.pool``), texts truncated to ``max_length`` tokens.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

TEXT_COLUMN = "text"


def texts_of(model_input: Any) -> list[str]:
    """The texts of a DataFrame's ``text`` column (its only column may have any name), or of a list."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if TEXT_COLUMN in model_input.columns:
            column = model_input[TEXT_COLUMN]
        elif len(model_input.columns) == 1:
            column = model_input.iloc[:, 0]
        else:
            raise ValueError(f"input needs a '{TEXT_COLUMN}' column; got columns {list(model_input.columns)}")
        return ["" if v is None else str(v) for v in column.tolist()]
    if isinstance(model_input, (list, tuple)):
        return [str(v) for v in model_input]
    if isinstance(model_input, str):
        return [model_input]
    raise TypeError(f"input must be a DataFrame with a '{TEXT_COLUMN}' column or a list of strings, "
                    f"not {type(model_input).__name__}")


class EncoderModel(PythonModel):
    """Texts in, mean-pooled embeddings out."""

    def load_context(self, context) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        folder = context.artifacts["encoder"]
        config = context.model_config or {}
        self.max_length = int(config.get("max_length", 128))
        self.batch_size = int(config.get("batch_size", 64))
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
        self.torch = torch

    def predict(self, context, model_input, params=None) -> np.ndarray:
        torch = self.torch
        texts = texts_of(model_input)
        out = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[start:start + self.batch_size], truncation=True,
                                       max_length=self.max_length, padding=True, return_tensors="pt")
                states = self.model(input_ids=batch["input_ids"],
                                    attention_mask=batch["attention_mask"]).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
                out.append(((states * mask).sum(1) / mask.sum(1).clamp(min=1e-6)).float().numpy())
        hidden = int(self.model.config.hidden_size)
        return np.concatenate(out) if out else np.zeros((0, hidden), dtype=np.float32)


set_model(EncoderModel())
