from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Mount(_message.Message):
    __slots__ = ("source", "target", "read_only")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    source: str
    target: str
    read_only: bool
    def __init__(self, source: _Optional[str] = ..., target: _Optional[str] = ..., read_only: _Optional[bool] = ...) -> None: ...

class ExecuteRequest(_message.Message):
    __slots__ = ("execution_id", "sandbox", "code", "language", "timeout_seconds", "env", "home", "collect_home", "mounts")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    HOME_FIELD_NUMBER: _ClassVar[int]
    COLLECT_HOME_FIELD_NUMBER: _ClassVar[int]
    MOUNTS_FIELD_NUMBER: _ClassVar[int]
    execution_id: str
    sandbox: str
    code: str
    language: str
    timeout_seconds: float
    env: _containers.ScalarMap[str, str]
    home: bytes
    collect_home: bool
    mounts: _containers.RepeatedCompositeFieldContainer[Mount]
    def __init__(self, execution_id: _Optional[str] = ..., sandbox: _Optional[str] = ..., code: _Optional[str] = ..., language: _Optional[str] = ..., timeout_seconds: _Optional[float] = ..., env: _Optional[_Mapping[str, str]] = ..., home: _Optional[bytes] = ..., collect_home: _Optional[bool] = ..., mounts: _Optional[_Iterable[_Union[Mount, _Mapping]]] = ...) -> None: ...

class ExecuteEvent(_message.Message):
    __slots__ = ("started", "output", "finished")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    started: Started
    output: Output
    finished: Finished
    def __init__(self, started: _Optional[_Union[Started, _Mapping]] = ..., output: _Optional[_Union[Output, _Mapping]] = ..., finished: _Optional[_Union[Finished, _Mapping]] = ...) -> None: ...

class Started(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Output(_message.Message):
    __slots__ = ("stream", "data")
    class Stream(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STREAM_UNSPECIFIED: _ClassVar[Output.Stream]
        STDOUT: _ClassVar[Output.Stream]
        STDERR: _ClassVar[Output.Stream]
    STREAM_UNSPECIFIED: Output.Stream
    STDOUT: Output.Stream
    STDERR: Output.Stream
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    stream: Output.Stream
    data: bytes
    def __init__(self, stream: _Optional[_Union[Output.Stream, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Finished(_message.Message):
    __slots__ = ("exit_code", "duration_ms", "timed_out", "oom_killed", "signal", "stdout_truncated", "stderr_truncated", "stdout_bytes", "stderr_bytes", "cold_start", "home", "error")
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLED_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    STDOUT_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    STDERR_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    STDOUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    STDERR_BYTES_FIELD_NUMBER: _ClassVar[int]
    COLD_START_FIELD_NUMBER: _ClassVar[int]
    HOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    duration_ms: float
    timed_out: bool
    oom_killed: bool
    signal: int
    stdout_truncated: bool
    stderr_truncated: bool
    stdout_bytes: int
    stderr_bytes: int
    cold_start: bool
    home: bytes
    error: str
    def __init__(self, exit_code: _Optional[int] = ..., duration_ms: _Optional[float] = ..., timed_out: _Optional[bool] = ..., oom_killed: _Optional[bool] = ..., signal: _Optional[int] = ..., stdout_truncated: _Optional[bool] = ..., stderr_truncated: _Optional[bool] = ..., stdout_bytes: _Optional[int] = ..., stderr_bytes: _Optional[int] = ..., cold_start: _Optional[bool] = ..., home: _Optional[bytes] = ..., error: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PoolStatus(_message.Message):
    __slots__ = ("name", "language", "idle", "target", "claims", "misses")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    IDLE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    name: str
    language: str
    idle: int
    target: int
    claims: int
    misses: int
    def __init__(self, name: _Optional[str] = ..., language: _Optional[str] = ..., idle: _Optional[int] = ..., target: _Optional[int] = ..., claims: _Optional[int] = ..., misses: _Optional[int] = ...) -> None: ...

class AgentStatus(_message.Message):
    __slots__ = ("pools", "running", "load", "cgroup_version", "uptime_seconds")
    POOLS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    CGROUP_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedCompositeFieldContainer[PoolStatus]
    running: int
    load: float
    cgroup_version: int
    uptime_seconds: float
    def __init__(self, pools: _Optional[_Iterable[_Union[PoolStatus, _Mapping]]] = ..., running: _Optional[int] = ..., load: _Optional[float] = ..., cgroup_version: _Optional[int] = ..., uptime_seconds: _Optional[float] = ...) -> None: ...
