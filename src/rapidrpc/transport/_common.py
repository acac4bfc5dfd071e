"""Names shared by the blocking connection (blocking.py) and both of its client cores.

Kept apart so that ``_client_py`` and the compiled ``_client_c`` can import them without
importing blocking.py, which imports the cores.
"""

from __future__ import annotations

from concurrent.futures import Future, InvalidStateError
from typing import Any

from ..errors import ConnectionLost
from ..wire import constants as C

__all__ = [
    "CORE_API",
    "CORE_METHODS",
    "PROTOCOL_FIELDS",
    "RECV_SIZE",
    "RECV_SLICE",
    "SYNC",
    "NotSent",
    "copy_error",
    "settle",
    "unwrap",
]

#: What each client core module exports, and the methods its ConnectionCore defines
#: (BlockingConnection and the Client rely on exactly these; a test checks both cores).
CORE_API = ("CallFuture", "ConnectionCore", "Lock")
CORE_METHODS = (
    "_core_init",
    "_read_once",
    "_reader_loop",
    "_send_queued",
    "call",
    "call_async",
    "collect",
    "notify",
    "submit",
)

#: The ClientConnection attributes the compiled core reaches without attribute lookups:
#: _pending and _held once, when it connects (the same dicts for the protocol's life), the
#: rest on every call at their slot's offset in the protocol object.  Each must be a
#: writable ``__slots__`` entry of the protocol's class (the core checks the ones it reads
#: by offset when it connects; a test checks all of them).
PROTOCOL_FIELDS = (
    "_held",
    "_next_id",
    "_out",
    "_out_size",
    "_peer_inflight",
    "_pending",
    "_sent",
    "error",
    "last_request_id",
    "peer_max_frame_size",
)

#: Size of the reusable receive buffer (also the largest single recv).
RECV_SIZE = 256 * 1024

#: The longest one blocking recv lasts (seconds; SO_RCVTIMEO, capped by keepalive).  A wait
#: at least this long needs no poll() first; a shorter one polls for its exact deadline.
RECV_SLICE = 0.25

#: Token of a synchronous call: its reply is stored in ``_results`` for the caller.
SYNC = object()

_KIND_RESPONSE = C.KIND_RESPONSE


class NotSent(ConnectionLost):
    """The connection was already lost before the call was queued: nothing was sent,
    so the caller may safely retry on a new connection."""


def copy_error(error: BaseException) -> BaseException:
    """A fresh instance of a connection error, chained to the original."""
    fresh = type(error)(*error.args)
    fresh.__cause__ = error.__cause__ or error
    return fresh


def unwrap(outcome: tuple[int, Any]) -> Any:
    """The value of a ``(kind, value)`` reply, or raise its exception."""
    kind, value = outcome
    if kind == _KIND_RESPONSE:
        return value
    raise value


def settle(future: Future[Any], kind: int, value: Any) -> None:
    """Complete *future* with a reply (a no-op when it was cancelled meanwhile)."""
    try:
        if kind == _KIND_RESPONSE:
            future.set_result(value)
        else:
            future.set_exception(value)
    except InvalidStateError:
        pass  # the caller cancelled it meanwhile
