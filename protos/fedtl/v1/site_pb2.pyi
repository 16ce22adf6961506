from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class HandleRequest(_message.Message):
    __slots__ = ("message_type", "run_id", "content", "received_at", "process_started_at")
    MESSAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    PROCESS_STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    message_type: str
    run_id: int
    content: bytes
    received_at: float
    process_started_at: float
    def __init__(self, message_type: _Optional[str] = ..., run_id: _Optional[int] = ..., content: _Optional[bytes] = ..., received_at: _Optional[float] = ..., process_started_at: _Optional[float] = ...) -> None: ...

class HandleReply(_message.Message):
    __slots__ = ("content",)
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    content: bytes
    def __init__(self, content: _Optional[bytes] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("site", "tasks", "encoder", "device", "rounds_done", "ready")
    SITE_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_DONE_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    site: str
    tasks: _containers.RepeatedScalarFieldContainer[str]
    encoder: str
    device: str
    rounds_done: int
    ready: bool
    def __init__(self, site: _Optional[str] = ..., tasks: _Optional[_Iterable[str]] = ..., encoder: _Optional[str] = ..., device: _Optional[str] = ..., rounds_done: _Optional[int] = ..., ready: _Optional[bool] = ...) -> None: ...
