"""fedtl's own gRPC listeners (the coordinator's hub, a site's Predictor): TLS, a bearer token, and
the rule that decides when they are required.

A listener other hosts can reach hands out what it serves to whoever reaches it, so off
loopback both TLS and a token are required (``check_exposure``); on loopback they stay optional.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from concurrent import futures

import grpc

from fedtl.shared.federation_config import HUB_TOKEN_MIN_LENGTH as TOKEN_MIN_LENGTH
from fedtl.shared.federation_config import is_loopback


class TokenCheck(grpc.ServerInterceptor):
    """Every call must carry ``authorization: Bearer <token>`` (compared in constant time)."""

    def __init__(self, token: str, what: str = "token"):
        self.expected = f"Bearer {token}".encode()
        self.what = what

    def intercept_service(self, continuation, handler_call_details):
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = str(metadata.get("authorization", "")).encode()
        if hmac.compare_digest(given, self.expected):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"missing or wrong {self.what} (authorization: Bearer ...)")

        if handler is not None and handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny, request_deserializer=handler.request_deserializer)
        return grpc.unary_unary_rpc_method_handler(deny, request_deserializer=handler.request_deserializer
                                                   if handler is not None else None)


def token_problem(token: str, source: str) -> str | None:
    """Why ``token`` (from ``source``, for the message) is too weak to guard a listener (None: it is not)."""
    if len(token) < TOKEN_MIN_LENGTH:
        return (f"{source} is {len(token)} characters; a token needs at least {TOKEN_MIN_LENGTH} "
                "(e.g. `openssl rand -hex 24`)")
    return None


def exposure_problem(host: str, tls: bool, token: bool) -> str | None:
    """What a listener on ``host`` lacks to be safe there (None: nothing)."""
    if is_loopback(host):
        return None
    missing = [f"no {what}" for what, ok in (("TLS", tls), ("token", token)) if not ok]
    return f"{host} is reachable from other hosts, and the listener has {' and '.join(missing)}" if missing else None


def start_server(add_servicer: Callable[[grpc.Server], None], address: str, tls: tuple[bytes, bytes] | None,
                 token: str | None, workers: int, name: str) -> tuple[grpc.Server, int]:
    """Start a gRPC server on ``address``; ``tls`` is (certificate chain PEM, private key PEM). Returns (server, port)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"fedtl-{name}"),
                         interceptors=[TokenCheck(token, f"{name} token")] if token else None)
    add_servicer(server)
    if tls is not None:
        cert, key = tls
        port = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"{name}: cannot listen on {address}")
    server.start()
    return server, port
