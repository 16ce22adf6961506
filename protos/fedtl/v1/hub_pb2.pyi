from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Status(_message.Message):
    __slots__ = ("federation", "state", "current_round", "rounds_total", "connected_sites", "sampled_sites", "last_round", "mlflow_run_id", "mlflow_tracking_uri", "details", "update_mode", "encoder")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Status.State]
        WAITING: _ClassVar[Status.State]
        RUNNING: _ClassVar[Status.State]
        FINISHED: _ClassVar[Status.State]
        FAILED: _ClassVar[Status.State]
    STATE_UNSPECIFIED: Status.State
    WAITING: Status.State
    RUNNING: Status.State
    FINISHED: Status.State
    FAILED: Status.State
    FEDERATION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_ROUND_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_SITES_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_SITES_FIELD_NUMBER: _ClassVar[int]
    LAST_ROUND_FIELD_NUMBER: _ClassVar[int]
    MLFLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MLFLOW_TRACKING_URI_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MODE_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    federation: str
    state: Status.State
    current_round: int
    rounds_total: int
    connected_sites: int
    sampled_sites: int
    last_round: RoundRecord
    mlflow_run_id: str
    mlflow_tracking_uri: str
    details: str
    update_mode: str
    encoder: str
    def __init__(self, federation: _Optional[str] = ..., state: _Optional[_Union[Status.State, str]] = ..., current_round: _Optional[int] = ..., rounds_total: _Optional[int] = ..., connected_sites: _Optional[int] = ..., sampled_sites: _Optional[int] = ..., last_round: _Optional[_Union[RoundRecord, _Mapping]] = ..., mlflow_run_id: _Optional[str] = ..., mlflow_tracking_uri: _Optional[str] = ..., details: _Optional[str] = ..., update_mode: _Optional[str] = ..., encoder: _Optional[str] = ...) -> None: ...

class ListRoundsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRoundsResponse(_message.Message):
    __slots__ = ("rounds",)
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    rounds: _containers.RepeatedCompositeFieldContainer[RoundRecord]
    def __init__(self, rounds: _Optional[_Iterable[_Union[RoundRecord, _Mapping]]] = ...) -> None: ...

class WatchRoundsRequest(_message.Message):
    __slots__ = ("from_round",)
    FROM_ROUND_FIELD_NUMBER: _ClassVar[int]
    from_round: int
    def __init__(self, from_round: _Optional[int] = ...) -> None: ...

class RoundRecord(_message.Message):
    __slots__ = ("round", "started_at", "seconds", "sampled", "answered", "accepted", "aggregated", "sites", "failed", "rejected", "bytes_down", "bytes_up", "metrics", "global_digest", "epsilon_spent", "record_json")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    AGGREGATED_FIELD_NUMBER: _ClassVar[int]
    SITES_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    BYTES_DOWN_FIELD_NUMBER: _ClassVar[int]
    BYTES_UP_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    RECORD_JSON_FIELD_NUMBER: _ClassVar[int]
    round: int
    started_at: float
    seconds: float
    sampled: int
    answered: int
    accepted: int
    aggregated: bool
    sites: _containers.RepeatedCompositeFieldContainer[SiteResult]
    failed: _containers.RepeatedCompositeFieldContainer[Problem]
    rejected: _containers.RepeatedCompositeFieldContainer[Problem]
    bytes_down: int
    bytes_up: int
    metrics: _containers.ScalarMap[str, float]
    global_digest: str
    epsilon_spent: float
    record_json: str
    def __init__(self, round: _Optional[int] = ..., started_at: _Optional[float] = ..., seconds: _Optional[float] = ..., sampled: _Optional[int] = ..., answered: _Optional[int] = ..., accepted: _Optional[int] = ..., aggregated: _Optional[bool] = ..., sites: _Optional[_Iterable[_Union[SiteResult, _Mapping]]] = ..., failed: _Optional[_Iterable[_Union[Problem, _Mapping]]] = ..., rejected: _Optional[_Iterable[_Union[Problem, _Mapping]]] = ..., bytes_down: _Optional[int] = ..., bytes_up: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., global_digest: _Optional[str] = ..., epsilon_spent: _Optional[float] = ..., record_json: _Optional[str] = ...) -> None: ...

class SiteResult(_message.Message):
    __slots__ = ("site", "metrics", "bytes_down", "bytes_up", "update_norm")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SITE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    BYTES_DOWN_FIELD_NUMBER: _ClassVar[int]
    BYTES_UP_FIELD_NUMBER: _ClassVar[int]
    UPDATE_NORM_FIELD_NUMBER: _ClassVar[int]
    site: str
    metrics: _containers.ScalarMap[str, float]
    bytes_down: int
    bytes_up: int
    update_norm: float
    def __init__(self, site: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., bytes_down: _Optional[int] = ..., bytes_up: _Optional[int] = ..., update_norm: _Optional[float] = ...) -> None: ...

class Problem(_message.Message):
    __slots__ = ("site", "reason")
    SITE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    site: str
    reason: str
    def __init__(self, site: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class PullEncoderRequest(_message.Message):
    __slots__ = ("round", "start_file", "start_offset")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    START_FILE_FIELD_NUMBER: _ClassVar[int]
    START_OFFSET_FIELD_NUMBER: _ClassVar[int]
    round: int
    start_file: str
    start_offset: int
    def __init__(self, round: _Optional[int] = ..., start_file: _Optional[str] = ..., start_offset: _Optional[int] = ...) -> None: ...

class EncoderChunk(_message.Message):
    __slots__ = ("round", "path", "file_size", "sha256", "offset", "data", "total_size", "file_count")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    FILE_COUNT_FIELD_NUMBER: _ClassVar[int]
    round: int
    path: str
    file_size: int
    sha256: str
    offset: int
    data: bytes
    total_size: int
    file_count: int
    def __init__(self, round: _Optional[int] = ..., path: _Optional[str] = ..., file_size: _Optional[int] = ..., sha256: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_size: _Optional[int] = ..., file_count: _Optional[int] = ...) -> None: ...
