"""The global encoder of a checkpoint as an MLflow pyfunc model folder.

``save_encoder_model`` wraps a checkpoint (a Hugging Face folder) as a pyfunc model whose code
is ``encoder_pyfunc.py``: a text column in, mean-pooled float32 embeddings out, with a signature
and an input example. The Hugging Face folder sits inside it (``artifacts/<checkpoint folder>``), so
``transformers.AutoModel.from_pretrained`` loads it too.
"""

from __future__ import annotations

import json
from pathlib import Path

ENCODER_CODE = Path(__file__).with_name("encoder_pyfunc.py")
EXAMPLE_TEXTS = ["The new treatment worked well and the staff were kind.", "Delivery was late again."]
# the LoggedModel's name in the run; not "encoder": MLflow would read the run's encoder/ folder as this model
MODEL_NAME = "global-encoder"


def encoder_signature(hidden_size: int):
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    return ModelSignature(inputs=Schema([ColSpec("string", "text")]),
                          outputs=Schema([TensorSpec(np.dtype("float32"), (-1, hidden_size))]))


def save_encoder_model(checkpoint: Path, dest: Path, max_length: int = 128) -> Path:
    """Write the pyfunc model of ``checkpoint`` to ``dest`` (which must not exist yet)."""
    import pandas as pd

    from fedtl.shared.mlflow_models import save_pyfunc_from_code

    hidden = int(json.loads((checkpoint / "config.json").read_text())["hidden_size"])
    return save_pyfunc_from_code(ENCODER_CODE, dest, {"encoder": str(checkpoint)}, encoder_signature(hidden),
                                 pd.DataFrame({"text": EXAMPLE_TEXTS}),
                                 ("mlflow", "torch", "transformers", "pandas", "numpy"), {"max_length": max_length})
