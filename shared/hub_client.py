"""A client of the coordinator's hub (``protos/fedtl/v1/hub.proto``): `fedtl status` and `fedtl pull`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from fedtl.shared.atomic import atomic_folder
from fedtl.shared.checksums import file_sha256
from fedtl.v1 import hub_pb2, hub_pb2_grpc

RETRIES = 5  # a pull cut off (UNAVAILABLE, DEADLINE_EXCEEDED) resumes from where it stopped, this often


class HubError(RuntimeError):
    """The hub refused or did not answer; the message says what to do, ``code`` what gRPC said."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.code = code


class HubClient:
    def __init__(self, address: str, root_certificates: Path | None = None, token: str | None = None,
                 timeout: float = 30.0):
        if root_certificates is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=Path(root_certificates).read_bytes())
            self.channel = grpc.secure_channel(address, creds)
        else:
            self.channel = grpc.insecure_channel(address)
        self.stub = hub_pb2_grpc.HubStub(self.channel)
        self.address, self.timeout = address, timeout
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def close(self) -> None:
        self.channel.close()

    def _error(self, exc: grpc.RpcError) -> HubError:
        code, detail = exc.code(), exc.details()
        hint = {
            grpc.StatusCode.UNAVAILABLE: "is the coordinator running, and is this its hub address (hub.address)? "
                                         "TLS needs --root-certificates",
            grpc.StatusCode.UNAUTHENTICATED: "pass the hub's token with --token (federation.yaml hub.token)",
        }.get(code, "")
        return HubError(f"hub at {self.address}: {code.name}: {detail}" + (f"; {hint}" if hint else ""), code)

    def status(self) -> hub_pb2.Status:
        try:
            return self.stub.GetStatus(hub_pb2.GetStatusRequest(), timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def rounds(self) -> list[hub_pb2.RoundRecord]:
        try:
            reply = self.stub.ListRounds(hub_pb2.ListRoundsRequest(), timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        return list(reply.rounds)

    def watch(self, from_round: int = 1) -> Iterator[hub_pb2.RoundRecord]:
        try:
            yield from self.stub.WatchRounds(hub_pb2.WatchRoundsRequest(from_round=from_round), metadata=self.metadata)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def chunks(self, round_: int = 0, start_file: str = "", start_offset: int = 0) -> Iterator[hub_pb2.EncoderChunk]:
        request = hub_pb2.PullEncoderRequest(round=round_, start_file=start_file, start_offset=start_offset)
        return self.stub.PullEncoder(request, metadata=self.metadata)

    def pull(self, out: Path, round_: int = 0, progress: Callable[[int, int], None] | None = None) -> int:
        """Write the round's encoder folder to ``out`` (atomically); returns the round pulled.

        Each file is checked against its SHA-256; a stream that breaks resumes from the byte
        it stopped at (``RETRIES`` times), pinned to the round the first chunk named.
        """
        out = Path(out)
        done = 0
        position = ("", 0)
        pinned = round_
        with atomic_folder(out) as tmp:
            for attempt in range(RETRIES + 1):
                try:
                    for chunk in self.chunks(pinned, *position):
                        pinned = chunk.round
                        path = tmp / chunk.path
                        path.parent.mkdir(parents=True, exist_ok=True)
                        with path.open("r+b" if chunk.offset else "wb") as fh:
                            fh.seek(chunk.offset)
                            fh.write(chunk.data)
                        end = chunk.offset + len(chunk.data)
                        done += len(chunk.data)
                        position = (chunk.path, end)
                        if progress is not None:
                            progress(done, chunk.total_size)
                        if end == chunk.file_size:
                            _verify(path, chunk)
                    break
                except grpc.RpcError as exc:
                    retry = exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                    if not retry or attempt == RETRIES:
                        raise self._error(exc) from None
        return pinned


def _verify(path: Path, chunk: hub_pb2.EncoderChunk) -> None:
    if (got := file_sha256(path)) != chunk.sha256:
        raise HubError(f"{chunk.path}: SHA-256 {got} does not match the hub's {chunk.sha256}; pull again")

