"""A site's served model as an MLflow pyfunc model (MLflow "models from code").

MLflow copies this file into the logged model and runs it at load time. It rebuilds the model
``fedtl predict`` serves from the folder ``export_site_model`` wrote (``artifacts/site_model``)
and answers exactly what ``fedtl predict`` adds to each row: per task ``<task>`` (the label,
the labels joined by the task's separator, or the value) and, for classification,
``<task>_probability``. Input: a DataFrame with the tasks' text columns. Needs fedtl installed.
"""

from __future__ import annotations

from pathlib import Path

from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class SiteModelPyfunc(PythonModel):
    def load_context(self, context) -> None:
        from fedtl.client.predict import SiteModel

        self.model = SiteModel.from_folder(Path(context.artifacts["site_model"]))

    def predict(self, context, model_input, params=None):
        import pandas as pd

        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        rows = list(enumerate(model_input.to_dict(orient="records"), start=1))
        results = self.model.predict(self.model.texts(rows, "model input"))
        return pd.DataFrame([self.model.columns(results, i) for i in range(len(rows))])


set_model(SiteModelPyfunc())
