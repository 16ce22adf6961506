"""`fedtl predict --serve PORT`: the Predictor service (``protos/fedtl/v1/predict.proto``).

A site's own applications ask it for predictions; it answers with the model the site serves,
and picks up a new ``site_model.json`` (a federation still running, a new round) on the next
call after the file changes.
"""

from __future__ import annotations

import logging
import threading

import grpc

from fedtl.client.predict import SiteModel
from fedtl.shared.config import SiteConfig
from fedtl.shared.data import DataError
from fedtl.shared.grpc_listeners import exposure_problem, start_server
from fedtl.v1 import predict_pb2, predict_pb2_grpc

log = logging.getLogger(__name__)


class PredictorServicer(predict_pb2_grpc.PredictorServicer):
    def __init__(self, site: SiteConfig):
        self.site = site
        self.meta = site.state_dir / "federated" / "site_model.json"
        self._lock = threading.Lock()
        self._model: SiteModel | None = None
        self._version: bytes | None = None

    def model(self) -> SiteModel:
        """The served model, reloaded when site_model.json changed since the last call."""
        with self._lock:
            version = self.meta.read_bytes() if self.meta.exists() else None
            if self._model is None or version != self._version:
                self._model, self._version = SiteModel.load(self.site), version
                log.info("site %s: serving the %s model of round %s", self.site.name, self._model.info["model"],
                         self._model.info["round"])
            return self._model

    def Predict(self, request, context):
        model = self.model()
        rows = [(i + 1, dict(row.columns)) for i, row in enumerate(request.rows)]
        try:
            texts = model.texts(rows, "request")
        except DataError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        with self._lock:  # one forward pass at a time: torch already uses every core
            results = model.predict(texts)
        reply = predict_pb2.PredictResponse(model=predict_pb2.ModelInfo(
            site=self.site.name, model=model.info["model"], round=int(model.info["round"]),
            personalized=bool(model.info.get("personalized"))))
        for i in range(len(rows)):
            prediction = reply.rows.add()
            for task in model.tasks:
                result = results[task.config.name][i]
                prediction.tasks.add(task=task.config.name, label=result.get("label", ""),
                                     probability=result.get("probability", 0.0), labels=result.get("labels", []),
                                     value=result.get("value", 0.0))
        return reply


def serve_predictions(site: SiteConfig, address: str, tls: tuple[bytes, bytes] | None = None,
                      token: str | None = None) -> tuple[grpc.Server, int]:
    """Start the Predictor on ``address``. Off loopback it needs TLS (certificate chain and key PEM)
    and a token: it answers with the site's private heads, so whoever reaches it could use them."""
    host = address.rpartition(":")[0]
    if (problem := exposure_problem(host, tls is not None, token is not None)) is not None:
        raise RuntimeError(f"--host {host}: {problem}. Pass --tls-certificate and --tls-key and a token "
                           "($FEDTL_PREDICT_TOKEN or --token-file), or serve on 127.0.0.1")
    servicer = PredictorServicer(site)
    servicer.model()  # load now: a site with nothing to serve fails at start, not on the first call
    return start_server(lambda server: predict_pb2_grpc.add_PredictorServicer_to_server(servicer, server), address,
                        tls, token, 4, "predict")
