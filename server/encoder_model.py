"""The global encoder of a checkpoint as an MLflow pyfunc model folder.

``save_encoder_model`` wraps a checkpoint (a Hugging Face folder) as a pyfunc model whose code
is ``encoder_pyfunc.py``: a text column in, mean-pooled float32 embeddings out, with a signature
and an input example. The Hugging Face folder sits inside it at ``artifacts/encoder``, so
``transformers.AutoModel.from_pretrained`` loads it too.
"""

from __future__ import annotations

import json
import warnings
from importlib.metadata import version
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


def requirements() -> list[str]:
    """What loading the model needs, pinned to what wrote it (MLflow would otherwise load the model
    in a subprocess to guess them, which costs as much as the logging itself)."""
    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "torch", "transformers", "pandas", "numpy")]


def save_encoder_model(checkpoint: Path, dest: Path, max_length: int = 128) -> Path:
    """Write the pyfunc model of ``checkpoint`` to ``dest`` (which must not exist yet)."""
    import mlflow.pyfunc
    import pandas as pd

    hidden = int(json.loads((checkpoint / "config.json").read_text())["hidden_size"])
    with warnings.catch_warnings():  # MLflow suggests type hints; the explicit signature says more
        warnings.filterwarnings("ignore", message=".*type hints.*")
        mlflow.pyfunc.save_model(
            path=str(dest), python_model=str(ENCODER_CODE), artifacts={"encoder": str(checkpoint)},
            signature=encoder_signature(hidden), input_example=pd.DataFrame({"text": EXAMPLE_TEXTS}),
            pip_requirements=requirements(), model_config={"max_length": max_length})
    return dest
