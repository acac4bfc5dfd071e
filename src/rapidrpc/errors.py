"""The exception tree shared by every layer.

Everything rapidrpc raises on purpose derives from :class:`RapidRPCError`, and additionally
from the builtin class an experienced Python user would catch (``ValueError`` for bad bytes,
``TimeoutError`` for deadlines, ``ConnectionError`` for a lost peer).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Cancelled",
    "ConnectionLost",
    "DeadlineExceeded",
    "FrameError",
    "InvalidParams",
    "LimitExceeded",
    "MethodNotFound",
    "ProtocolError",
    "RapidRPCError",
    "RemoteError",
    "ResourceExhausted",
    "SerializationError",
    "StatusCode",
    "Unavailable",
    "remote_error_class",
]


class StatusCode:
    """Numeric error codes carried in error frames (the gRPC status codes, same numbers)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


class RapidRPCError(Exception):
    """Base class of every error rapidrpc raises on purpose."""


class SerializationError(RapidRPCError, ValueError):
    """Bytes that are not a valid message, or a value over a configured limit.

    ``offset`` is the byte position in the input where the problem was found (or None).
    """

    def __init__(self, message: str, offset: int | None = None) -> None:
        if offset is not None:
            message = f"{message} (at offset {offset})"
        super().__init__(message)
        self.offset = offset


class ProtocolError(RapidRPCError):
    """The peer broke the wire protocol; the connection it came from is closed."""


class FrameError(ProtocolError, ValueError):
    """A frame or connection preface that cannot be accepted (bad header, kind, size)."""


class LimitExceeded(ProtocolError):
    """A configured limit was exceeded (frame size, in-flight calls, buffer size)."""


class RemoteError(RapidRPCError):
    """The remote side answered a call with an error.

    ``code`` is a :class:`StatusCode` number, ``message`` the remote message,
    ``remote_type`` the name of the exception type raised remotely (may be empty) and
    ``details`` optional structured data.
    """

    code: int = StatusCode.UNKNOWN

    def __init__(
        self,
        message: str = "",
        code: int | None = None,
        remote_type: str = "",
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.remote_type = remote_type
        self.details = details

    def __str__(self) -> str:
        kind = f"{self.remote_type}: " if self.remote_type else ""
        return f"{kind}{self.message} [code {self.code}]"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.code, self.remote_type, self.details))


class MethodNotFound(RemoteError):
    """No method of that name is registered on the server."""

    code = StatusCode.UNIMPLEMENTED


class InvalidParams(RemoteError):
    """The arguments do not fit the method's signature."""

    code = StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(RemoteError, TimeoutError):
    """The call's deadline passed, locally or on the server."""

    code = StatusCode.DEADLINE_EXCEEDED


class Cancelled(RemoteError):
    """The call was cancelled."""

    code = StatusCode.CANCELLED


class ResourceExhausted(RemoteError):
    """A server limit refused the call (in-flight calls, message size)."""

    code = StatusCode.RESOURCE_EXHAUSTED


class Unavailable(RemoteError):
    """The server is shutting down or cannot take the call now."""

    code = StatusCode.UNAVAILABLE


class ConnectionLost(RapidRPCError, ConnectionError):
    """The connection broke before the reply arrived; the call's outcome is unknown."""


_BY_CODE: dict[int, type[RemoteError]] = {
    cls.code: cls
    for cls in (
        MethodNotFound,
        InvalidParams,
        DeadlineExceeded,
        Cancelled,
        ResourceExhausted,
        Unavailable,
    )
}


def remote_error_class(code: int) -> type[RemoteError]:
    """The RemoteError subclass for a status *code* (RemoteError itself when not special)."""
    return _BY_CODE.get(code, RemoteError)
