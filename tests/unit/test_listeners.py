"""Secure by default: fedtl's own listeners (the hub, a site's Predictor) refuse an address other
hosts can reach unless they have TLS and a token; on loopback both stay optional."""

from __future__ import annotations

from types import SimpleNamespace

import grpc
import pytest
from typer.testing import CliRunner

from fedtl.cli.main import app
from fedtl.server.coordinator import Coordinator, CoordinatorError
from fedtl.shared.federation_config import FederationConfig, is_loopback
from fedtl.shared.grpc_listeners import exposure_problem

TOKEN = "listener-token-0123456789"


def coordinator(tmp_path, tls: bool, **hub) -> Coordinator:
    fed = FederationConfig.model_validate({"encoder": "tiny", "state_dir": tmp_path / "state",
                                           "mlflow": {"enabled": False}, "hub": hub})
    return Coordinator(fed, tmp_path / "federation.yaml", tls=SimpleNamespace() if tls else None)


def test_loopback_is_what_only_this_machine_reaches():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.0.3", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.2", "coordinator", "example.org"))
    assert exposure_problem("127.0.0.1", tls=False, token=False) is None
    assert exposure_problem("0.0.0.0", tls=True, token=True) is None
    assert exposure_problem("0.0.0.0", tls=True, token=False).endswith("has no token")


def test_the_hub_listens_on_loopback_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("FEDTL_HUB_TOKEN", raising=False)
    assert FederationConfig().hub.address.startswith("127.0.0.1:")
    coordinator(tmp_path, tls=False).check_hub_exposure()  # no TLS, no token: fine on loopback


@pytest.mark.parametrize("tls,token", [(False, False), (False, True), (True, False)])
def test_a_hub_other_hosts_reach_needs_tls_and_a_token(tmp_path, monkeypatch, tls, token):
    monkeypatch.delenv("FEDTL_HUB_TOKEN", raising=False)
    hub = {"address": "0.0.0.0:9094", **({"token": TOKEN} if token else {})}
    with pytest.raises(CoordinatorError) as err:
        coordinator(tmp_path, tls, **hub).check_hub_exposure()
    message = str(err.value)
    assert "reachable from other hosts" in message and "127.0.0.1:9094" in message
    assert ("no TLS" in message) != tls and ("no token" in message) != token


def test_a_hub_with_tls_and_a_token_file_may_listen_anywhere(tmp_path, monkeypatch):
    monkeypatch.delenv("FEDTL_HUB_TOKEN", raising=False)
    (tmp_path / "hub_token").write_text(TOKEN + "\n")
    c = coordinator(tmp_path, True, address="0.0.0.0:9094", token_file=str(tmp_path / "hub_token"))
    c.check_hub_exposure()
    assert c.hub_token() == TOKEN
    (tmp_path / "hub_token").write_text("short")
    with pytest.raises(CoordinatorError, match="at least 16"):
        c.hub_token()


def test_the_predictor_needs_tls_and_a_token_off_loopback_and_checks_the_token(tmp_path):
    from fedtl.client.predict_server import serve_predictions
    from fedtl.shared.config import load_site_config
    from fedtl.v1 import predict_pb2, predict_pb2_grpc
    from tests.unit.test_codec_rounds import federation

    federation(tmp_path, {"up": "none", "down": "none"}, rounds=1, sites=1)
    config = tmp_path / "s0" / "site.yaml"
    refused = CliRunner().invoke(app, ["predict", "--config", str(config), "--serve", "1", "--host", "0.0.0.0"])
    assert refused.exit_code != 0 and "reachable from other hosts" in refused.output, refused.output

    certs = tmp_path / "certs"
    assert CliRunner().invoke(app, ["certs", "--out", str(certs), "--host", "localhost"]).exit_code == 0
    tls = ((certs / "server.pem").read_bytes(), (certs / "server.key").read_bytes())
    server, port = serve_predictions(load_site_config(config), "127.0.0.1:0", tls, TOKEN)
    try:
        credentials = grpc.ssl_channel_credentials((certs / "ca.crt").read_bytes())
        with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
            stub = predict_pb2_grpc.PredictorStub(channel)
            request = predict_pb2.PredictRequest(rows=[predict_pb2.Row(columns={"text": "a b c"})])
            with pytest.raises(grpc.RpcError) as err:
                stub.Predict(request, timeout=30)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            reply = stub.Predict(request, timeout=30, metadata=[("authorization", f"Bearer {TOKEN}")])
            assert len(reply.rows) == 1 and reply.model.site == "site0"
    finally:
        server.stop(0).wait()


def test_the_control_api_stays_on_loopback():
    from fedtl.shared.federation_config import SuperLinkConfig

    assert SuperLinkConfig(control_host="::1").control_host == "::1"
    with pytest.raises(ValueError, match="keep it on 127.0.0.1"):
        SuperLinkConfig(control_host="0.0.0.0")
