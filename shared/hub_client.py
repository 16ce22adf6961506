"""A client of the coordinator's hub (``protos/fedtl/v1/hub.proto``): `fedtl status` and `fedtl pull`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import grpc

from fedtl.shared.atomic import atomic_folder
from fedtl.shared.checksums import file_sha256
from fedtl.v1 import hub_pb2, hub_pb2_grpc

PULLED = "fedtl pull"  # the marker of a pulled folder: a later pull may replace it
RETRIES = 5  # a pull cut off (UNAVAILABLE, DEADLINE_EXCEEDED) resumes from where it stopped, this often


class HubError(RuntimeError):
    """The hub refused or did not answer; the message says what to do, ``code`` what gRPC said."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.code = code


HINTS = {  # what to do, by what gRPC (or the connect wait) said
    grpc.StatusCode.UNAVAILABLE: "is the coordinator running, and is this its hub address (hub.address, port 9094 "
                                 "by default)? TLS needs --root-certificates",
    grpc.StatusCode.UNAUTHENTICATED: "pass the hub's token with --token (federation.yaml hub.token)",
    grpc.StatusCode.UNIMPLEMENTED: "this port answers gRPC but is not fedtl's hub: the hub listens on "
                                   "hub.address (port 9094 by default), not on the Fleet API (9092)",
}


class HubClient:
    """Calls the hub with bounded waits: ``connect_timeout`` to reach it, ``timeout`` for each
    answer (and, while pulling, for each next chunk), so no command hangs on a silent host."""

    def __init__(self, address: str, root_certificates: Path | None = None, token: str | None = None,
                 timeout: float = 30.0, connect_timeout: float = 10.0):
        if root_certificates is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=Path(root_certificates).read_bytes())
            self.channel = grpc.secure_channel(address, creds)
        else:
            self.channel = grpc.insecure_channel(address)
        self.stub = hub_pb2_grpc.HubStub(self.channel)
        self.address, self.timeout, self.connect_timeout = address, timeout, connect_timeout
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._connected = False

    def connect(self) -> None:
        """Wait at most ``connect_timeout`` seconds for the hub's port to answer (TCP and TLS)."""
        if self._connected:
            return
        try:
            grpc.channel_ready_future(self.channel).result(timeout=self.connect_timeout)
        except grpc.FutureTimeoutError:
            raise HubError(f"hub at {self.address}: UNAVAILABLE: no answer within {self.connect_timeout:g}s; "
                           f"{HINTS[grpc.StatusCode.UNAVAILABLE]}", grpc.StatusCode.UNAVAILABLE) from None
        self._connected = True

    def close(self) -> None:
        self.channel.close()

    def _error(self, exc: grpc.RpcError) -> HubError:
        code, detail = exc.code(), exc.details()
        hint = HINTS.get(code, "")
        return HubError(f"hub at {self.address}: {code.name}: {detail}" + (f"; {hint}" if hint else ""), code)

    def status(self) -> hub_pb2.Status:
        self.connect()
        try:
            return self.stub.GetStatus(hub_pb2.GetStatusRequest(), timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def rounds(self) -> list[hub_pb2.RoundRecord]:
        self.connect()
        try:
            reply = self.stub.ListRounds(hub_pb2.ListRoundsRequest(), timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        return list(reply.rounds)

    def watch(self, from_round: int = 1) -> Iterator[hub_pb2.RoundRecord]:
        self.connect()
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
        self.connect()
        done = 0
        position = ("", 0)
        pinned = round_
        with atomic_folder(out, PULLED) as tmp:
            for attempt in range(RETRIES + 1):
                try:
                    for chunk in self._each_within_timeout(self.chunks(pinned, *position)):
                        pinned = chunk.round
                        path = _member(tmp, chunk)
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

    def _each_within_timeout(self, call) -> Iterator[hub_pb2.EncoderChunk]:
        """The stream's chunks; a chunk that takes longer than ``timeout`` cancels the call."""
        stalled = threading.Event()

        def give_up() -> None:
            stalled.set()
            call.cancel()

        while True:
            timer = threading.Timer(self.timeout, give_up)
            timer.daemon = True
            timer.start()
            try:
                chunk = next(call)
            except StopIteration:
                return
            except grpc.RpcError:
                if stalled.is_set():
                    raise HubError(f"hub at {self.address}: no data for {self.timeout:g}s while pulling; "
                                   "pull again", grpc.StatusCode.DEADLINE_EXCEEDED) from None
                raise
            finally:
                timer.cancel()
            yield chunk


MAX_FILE_BYTES = 64 << 30  # no encoder file is larger; a hub that says so is wrong or hostile


def _member(folder: Path, chunk: hub_pb2.EncoderChunk) -> Path:
    """Where a chunk goes inside ``folder``: a relative path that stays inside, at a sane offset.

    The hub names the files; a path that is absolute or climbs out with ``..`` would let it
    write anywhere the user can, so it is refused, as are offsets past the file's size.
    """
    rel = PurePosixPath(chunk.path)
    if not chunk.path or rel.is_absolute() or "\\" in chunk.path or any(p in ("..", "") for p in rel.parts):
        raise HubError(f"the hub sent a file named {chunk.path!r}, outside the encoder folder; refused")
    path = folder.joinpath(*rel.parts)
    have = path.stat().st_size if path.exists() else 0
    end = chunk.offset + len(chunk.data)
    if chunk.offset < 0 or chunk.offset > have or end > chunk.file_size or chunk.file_size > MAX_FILE_BYTES:
        raise HubError(f"the hub sent {chunk.path!r} bytes {chunk.offset}-{end} of {chunk.file_size} with "
                       f"{have} written; refused")
    return path


def _verify(path: Path, chunk: hub_pb2.EncoderChunk) -> None:
    if (got := file_sha256(path)) != chunk.sha256:
        raise HubError(f"{chunk.path}: SHA-256 {got} does not match the hub's {chunk.sha256}; pull again")

