"""The coordinator's public gRPC API (``protos/fedtl/v1/hub.proto``): status, rounds, encoder.

It serves what the coordinator already writes to ``state_dir`` (``rounds.jsonl``, the
checkpoints, ``mlflow_run.json``) plus the run's state as ``fedtl coordinator`` follows it,
so the hub holds no state of its own and cannot disagree with the files. It runs in the
coordinator's process on its own port, with the SuperLink's TLS material.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from fedtl.server.checkpoints import latest_checkpoint
from fedtl.server.history import RoundLog, RoundRecord
from fedtl.shared.checksums import file_sha256
from fedtl.shared.federation_config import redact_url
from fedtl.shared.grpc_listeners import start_server
from fedtl.shared.safe_paths import MARKER
from fedtl.v1 import hub_pb2, hub_pb2_grpc

log = logging.getLogger(__name__)
CHUNK = 1 << 20  # bytes per EncoderChunk: at most 1 MiB, far below gRPC's 4 MiB message limit
WATCH_POLL = 0.5  # seconds between looks at rounds.jsonl while a WatchRounds stream waits


@dataclass
class RunView:
    """What the coordinator knows of its run, updated as it follows it."""

    flower_status: str = ""  # "" until submitted; then Flower's pending|running|finished:<sub>
    details: str = ""

    @property
    def ended(self) -> bool:
        return self.flower_status.startswith("finished")


def round_message(record: RoundRecord) -> hub_pb2.RoundRecord:
    """hub.proto's RoundRecord: the typed record's numbers, and its whole JSON beside them."""
    def numbers(values: dict[str, Any]) -> dict[str, float]:
        return {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}

    sites = [hub_pb2.SiteResult(site=name, bytes_down=entry.bytes_down, bytes_up=entry.bytes_up,
                                update_norm=float(record.update_norms.get(name, 0.0)), metrics=numbers(entry.metrics))
             for name, entry in sorted(record.sites.items())]
    return hub_pb2.RoundRecord(
        round=record.round, started_at=record.started_at, seconds=record.seconds, sampled=record.sampled,
        answered=record.answered, accepted=record.accepted, aggregated=record.aggregated, sites=sites,
        failed=[hub_pb2.Problem(site=p.site, reason=p.reason) for p in record.failed],
        rejected=[hub_pb2.Problem(site=p.site, reason=p.reason) for p in record.rejected],
        bytes_down=record.bytes_down, bytes_up=record.bytes_up, metrics=numbers(record.metrics),
        global_digest=record.global_digest, epsilon_spent=float((record.privacy or {}).get("epsilon", 0.0)),
        record_json=json.dumps(record.to_json(), sort_keys=True, default=str))


def checkpoint_files(folder: Path) -> list[tuple[str, Path]]:
    """A checkpoint folder's files as (relative posix path, path), sorted: the order they stream in."""
    return sorted((p.relative_to(folder).as_posix(), p) for p in folder.rglob("*")
                  if p.is_file() and p.name != MARKER)


class HubServicer(hub_pb2_grpc.HubServicer):
    def __init__(self, state_dir: Path, federation: str, rounds_total: int, update_mode: str, encoder: str,
                 run: RunView, tracking_uri: str = "", connected: Callable[[], int] | None = None,
                 stopping: threading.Event | None = None):
        self.state_dir = Path(state_dir)
        self.round_log = RoundLog(self.state_dir)  # parsed once, then only what is appended
        self.federation, self.rounds_total = federation, rounds_total
        self.update_mode, self.encoder = update_mode, encoder
        self.run, self.tracking_uri = run, tracking_uri
        self.connected = connected or (lambda: 0)
        self.stopping = stopping or threading.Event()
        self._sha: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> digest

    # ------------------------------------------------------------ status and rounds
    def _state(self, rounds: list[dict[str, Any]]) -> int:
        status = self.run.flower_status
        if status == "finished:completed":
            return hub_pb2.Status.FINISHED
        if self.run.ended:
            return hub_pb2.Status.FAILED
        return hub_pb2.Status.RUNNING if rounds else hub_pb2.Status.WAITING

    def GetStatus(self, request, context):
        rounds = self.round_log.rounds()
        meta = self.state_dir / "mlflow_run.json"
        run_id = ""
        if meta.exists():
            try:
                run_id = str(json.loads(meta.read_text()).get("run_id", ""))
            except (json.JSONDecodeError, OSError):
                run_id = ""
        try:
            connected = self.connected()
        except Exception as exc:  # the SuperLink may be going away: status still answers
            log.debug("hub: connected sites unknown: %s", exc)
            connected = 0
        status = hub_pb2.Status(
            federation=self.federation, state=self._state(rounds), current_round=rounds[-1].round if rounds else 0,
            rounds_total=self.rounds_total, connected_sites=connected,
            sampled_sites=rounds[-1].sampled if rounds else 0, mlflow_run_id=run_id,
            mlflow_tracking_uri=redact_url(self.tracking_uri),
            details=self.run.details or self.run.flower_status,
            update_mode=self.update_mode, encoder=self.encoder)
        if rounds:
            status.last_round.CopyFrom(round_message(rounds[-1]))
        return status

    def ListRounds(self, request, context):
        return hub_pb2.ListRoundsResponse(rounds=[round_message(r) for r in self.round_log.rounds()])

    def WatchRounds(self, request, context) -> Iterator[hub_pb2.RoundRecord]:
        next_round = max(1, request.from_round)
        while context.is_active():
            ended = self.run.ended  # read before the rounds: a round written before the end is not missed
            for record in self.round_log.rounds():
                if record.round >= next_round:
                    yield round_message(record)
                    next_round = record.round + 1
            if ended or self.stopping.wait(WATCH_POLL):
                return

    # ------------------------------------------------------------ the encoder
    def _checkpoint(self, round_: int, context) -> tuple[int, Path]:
        if round_ == 0:
            latest = latest_checkpoint(self.state_dir)
            if latest is None:
                context.abort(grpc.StatusCode.NOT_FOUND,
                              "no checkpoint yet: the run has not started (round 0 is written when it does)")
            return latest
        folder = self.state_dir / "checkpoints" / f"round-{round_:04d}"
        if not folder.is_dir():
            kept = sorted(p.name for p in (self.state_dir / "checkpoints").glob("round-*"))
            context.abort(grpc.StatusCode.NOT_FOUND, f"no checkpoint of round {round_} (kept: {', '.join(kept) or 'none'})")
        return round_, folder

    def _digest(self, path: Path) -> str:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in self._sha:
            self._sha[key] = file_sha256(path)
        return self._sha[key]

    def PullEncoder(self, request, context) -> Iterator[hub_pb2.EncoderChunk]:
        round_, folder = self._checkpoint(request.round, context)
        try:
            files = [(rel, path, path.stat().st_size, self._digest(path)) for rel, path in checkpoint_files(folder)]
        except FileNotFoundError:
            context.abort(grpc.StatusCode.ABORTED, f"the checkpoint of round {round_} was just removed; pull again")
        names = [rel for rel, *_ in files]
        if request.start_file and request.start_file not in names:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"start_file {request.start_file!r} is not in the "
                                                            f"checkpoint of round {round_}")
        total = sum(size for _, _, size, _ in files)
        skipping = bool(request.start_file)
        for rel, path, size, sha in files:
            if skipping and rel != request.start_file:
                continue
            offset = request.start_offset if skipping else 0
            skipping = False
            if offset > size:
                context.abort(grpc.StatusCode.OUT_OF_RANGE, f"start_offset {offset} is past the end of {rel} ({size} bytes)")
            try:
                with path.open("rb") as fh:
                    fh.seek(offset)
                    while True:
                        data = fh.read(CHUNK)
                        if not data and offset < size:
                            context.abort(grpc.StatusCode.ABORTED, f"{rel} changed while it was sent; pull again")
                        yield hub_pb2.EncoderChunk(round=round_, path=rel, file_size=size, sha256=sha, offset=offset,
                                                   data=data, total_size=total, file_count=len(files))
                        offset += len(data)
                        if offset >= size:
                            break
            except FileNotFoundError:
                context.abort(grpc.StatusCode.ABORTED, f"the checkpoint of round {round_} was removed while it "
                                                       "was sent; pull again")


def serve_hub(servicer: HubServicer, address: str, tls: tuple[bytes, bytes] | None = None,
              token: str | None = None, workers: int = 8) -> tuple[grpc.Server, int]:
    """Start the hub on ``address``; ``tls`` is (certificate chain PEM, private key PEM). Returns (server, port)."""
    return start_server(lambda server: hub_pb2_grpc.add_HubServicer_to_server(servicer, server), address, tls, token,
                        workers, "hub")


def stop_hub(server: grpc.Server, servicer: HubServicer, linger: float = 0.0) -> None:
    """Keep answering for ``linger`` seconds (so status shows a finished run), then end streams and stop."""
    if linger > 0:
        servicer.stopping.wait(linger)  # nothing sets it meanwhile: an interruptible pause
    servicer.stopping.set()
    server.stop(grace=1.0).wait()
