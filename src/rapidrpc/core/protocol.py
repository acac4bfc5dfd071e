"""The sans-IO connection state machine, one class per role (h11/h2 style).

Bytes in, events out; calls in, bytes out.  Neither class touches a socket, a thread or a
clock it was not given: a driver feeds received bytes to :meth:`receive_data`, acts on the
returned events, and drains :meth:`take_output` / :meth:`data_to_send` with one send per
loop turn.  Every driver (the epoll loops, the blocking client, asyncio) uses these classes
and none re-implements them.

Events are plain tuples whose first element is the frame kind they came from (the
``KIND_*`` numbers of :mod:`rapidrpc.wire.constants`): no per-call objects on the hot path.

Server events (:meth:`ServerConnection.receive_data`, an iterator: handle each event before
taking the next, so the in-flight limit sees inline handlers finish)::

    (KIND_REQUEST, request_id, method, args, kwargs, deadline, meta)
    (KIND_NOTIFICATION, 0, method, args, kwargs, deadline, meta)
    (KIND_CANCEL, request_id)             the call is still running; its reply is dropped
    (KIND_PONG, value)
    (KIND_GOAWAY, last_request_id, code, message)

Client events (:meth:`ClientConnection.receive_data`)::

    (KIND_RESPONSE, request_id, token, value)
    (KIND_ERROR, request_id, token, exception)   a RemoteError subclass instance
    (KIND_PONG, value)
    (KIND_GOAWAY, last_request_id, code, message)

``deadline`` is an absolute time on the connection's ``clock`` (or None).  Anything the
peer sends that breaks the protocol (a FrameError, an undecodable body, a malformed
connection-level frame, an unexpected kind) raises :class:`~rapidrpc.ProtocolError` from
``receive_data`` after queueing a goaway frame: the driver flushes the output and closes
that connection only.  A request whose envelope has the wrong shape is not a connection
error: it gets an ``INVALID_ARGUMENT`` error reply and the connection stays usable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from types import ModuleType
from typing import Any

from ..errors import (
    FrameError,
    ProtocolError,
    ResourceExhausted,
    SerializationError,
    StatusCode,
    Unavailable,
    remote_error_class,
)
from ..wire import constants as C
from .dispatch import error_info

__all__ = ["ClientConnection", "Connection", "NotProcessed", "ServerConnection"]

KIND_REQUEST = C.KIND_REQUEST
KIND_RESPONSE = C.KIND_RESPONSE
KIND_ERROR = C.KIND_ERROR
KIND_NOTIFICATION = C.KIND_NOTIFICATION
KIND_CANCEL = C.KIND_CANCEL
KIND_PING = C.KIND_PING
KIND_PONG = C.KIND_PONG
KIND_GOAWAY = C.KIND_GOAWAY
KIND_SETTINGS = C.KIND_SETTINGS
_ZERO_COPY = C.ZERO_COPY_MIN_BODY
_BIN32_PREFIX = bytes((C.BIN32_MARKER,))
_FIRST_HEADER_END = C.PREFACE_SIZE + C.HEADER_SIZE  # where the first frame's body begins
_CONNECTION_KINDS = frozenset((KIND_PING, KIND_PONG, KIND_SETTINGS, KIND_GOAWAY))
_CALL_KINDS = frozenset((KIND_REQUEST, KIND_NOTIFICATION))
_REPLY_KINDS = frozenset((KIND_RESPONSE, KIND_ERROR))

DEFAULT_MAX_INFLIGHT = 100
_MISSING = object()
_NIL = b"\xc0"  # MessagePack nil: the body of a cancel frame


class NotProcessed(Unavailable):
    """The server's goaway says this call was never processed: retrying it is safe."""


def _is_uint(value: object) -> bool:
    return type(value) is int and value >= 0


def _default_wire() -> tuple[ModuleType, ModuleType]:
    from ..wire import framing, serializer

    return serializer, framing


class Connection:
    """State shared by both roles: preface, settings, output buffer, ping, goaway.

    *serializer* / *framing* are wire implementation modules (default: the active faces),
    so tests can run the same protocol over each backend.  *max_frame_size*,
    *max_inflight* and *max_depth* are this side's limits, announced to the peer in the
    settings frame; frames above *max_frame_size* are refused from their header.
    """

    # The state every call reads and writes lives in slots: the compiled blocking client
    # (cext/client.pyx) reaches slots at their fixed offsets, without an attribute lookup.
    # Everything else stays in the instance __dict__.
    __slots__ = (
        "__dict__",
        "__weakref__",
        "_out",
        "_out_size",
        "error",
        "last_request_id",
        "peer_max_frame_size",
    )

    def __init__(
        self,
        *,
        serializer: ModuleType | None = None,
        framing: ModuleType | None = None,
        max_frame_size: int = C.DEFAULT_MAX_FRAME_SIZE,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        max_depth: int = C.DEFAULT_MAX_DEPTH,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if serializer is None or framing is None:
            default_ser, default_fr = _default_wire()
            serializer = serializer or default_ser
            framing = framing or default_fr
        if max_frame_size < 1 or max_inflight < 1 or max_depth < 1:
            raise ValueError("max_frame_size, max_inflight and max_depth must be positive")
        self._dumps = serializer.dumps
        self._loads = serializer.loads
        self._encode_frame = framing.encode_frame
        # Headers of bodies already checked against the peer's limit: the encoder's own
        # default limit (16 MiB) must not refuse what both sides agreed to carry.
        self._encode_header = partial(framing.encode_header, max_frame_size=C.MAX_BODY_LENGTH)
        self._parser = framing.FrameParser(max_frame_size=max_frame_size, expect_preface=True)
        self.clock = clock
        self.max_frame_size = max_frame_size
        self.max_inflight = max_inflight
        self.max_depth = max_depth
        self._loads_kw = {} if max_depth == C.DEFAULT_MAX_DEPTH else {"max_depth": max_depth}
        self._out: list[bytes] = []
        self._out_size = 0
        self.preface_sent = False
        #: The peer's settings once its settings frame arrived (None before).
        self.peer_settings: dict[str, int] | None = None
        # Until the peer announces its limit, assume the protocol default.
        self.peer_max_frame_size = C.DEFAULT_MAX_FRAME_SIZE
        #: Highest request id seen (server) or sent (client); goaway carries it.
        self.last_request_id = 0
        #: The goaway we received, as ``(last_request_id, code, message)``.
        self.goaway_received: tuple[int, int, str] | None = None
        self.goaway_sent = False
        #: The value of our unanswered ping, or None.
        self.ping_outstanding: int | None = None
        self._ping_counter = 0
        #: The ProtocolError that ended this connection, or None.
        self.error: ProtocolError | None = None
        # The stream's first bytes (preface + first frame header) until that header has been
        # checked against the handshake limit; None afterwards.
        self._first_head: bytearray | None = bytearray()
        self._in_place_at = 0  # stream offset of the next receive_in_place's first byte

    # --- output -------------------------------------------------------------------------

    def take_output(self) -> list[bytes]:
        """Every queued chunk (frames, or header + large body pairs), leaving none queued.

        Large bodies are separate chunks so a driver can hand the list to ``sendmsg``
        without copying them.
        """
        out = self._out
        self._out = []
        self._out_size = 0
        return out

    def data_to_send(self) -> bytes:
        """Every queued byte as one ``bytes`` (empty when nothing is queued)."""
        out = self._out
        if not out:
            return b""
        self._out = []
        self._out_size = 0
        return out[0] if len(out) == 1 else b"".join(out)

    @property
    def output_size(self) -> int:
        """Bytes queued and not yet taken by the driver."""
        return self._out_size

    def _frame(self, kind: int, request_id: int, body: bytes) -> None:
        n = len(body)
        if n >= _ZERO_COPY:
            self._out.append(self._encode_header(kind, request_id, n))
            self._out.append(body)
        else:
            self._out.append(self._encode_frame(kind, request_id, body))
        self._out_size += n + C.HEADER_SIZE

    # --- connection-level frames ----------------------------------------------------------

    def initiate(self) -> None:
        """Queue this side's preface and settings frame (once)."""
        if self.preface_sent:
            return
        self.preface_sent = True
        settings = {
            "max_frame_size": self.max_frame_size,
            "max_inflight": self.max_inflight,
            "max_depth": self.max_depth,
        }
        self._out.append(C.PREFACE)
        self._out_size += C.PREFACE_SIZE
        self._frame(KIND_SETTINGS, 0, self._dumps(settings))

    @property
    def handshake_complete(self) -> bool:
        """True once the peer's preface and settings frame have arrived."""
        return self.peer_settings is not None

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame (or preface) held by the parser."""
        return self._parser.buffered

    def send_ping(self) -> int:
        """Queue a ping and return its opaque value (echoed by the peer's pong)."""
        self._ping_counter = value = (self._ping_counter + 1) & 0xFFFFFFFF
        self.ping_outstanding = value
        self._frame(KIND_PING, 0, self._dumps(value))
        return value

    def send_goaway(self, code: int = StatusCode.OK, message: str = "") -> None:
        """Queue a goaway: no call above :attr:`last_request_id` will be processed."""
        if self.goaway_sent or not self.preface_sent:
            return
        self.goaway_sent = True
        self._frame(KIND_GOAWAY, 0, self._dumps([self.last_request_id, code, message]))

    def refuse(self, code: int, message: str) -> None:
        """Queue a preface and a goaway (no settings): turn a connection away at once."""
        self.preface_sent = True
        self._out.append(C.PREFACE)
        self._out_size += C.PREFACE_SIZE
        self.send_goaway(code, message)

    def _fail(self, message: str, cause: BaseException | None = None) -> ProtocolError:
        """Record a protocol violation, queue a goaway saying why, return the exception."""
        if self.error is None:
            self.error = ProtocolError(message)
            self.error.__cause__ = cause
            self.send_goaway(StatusCode.INTERNAL, message)
        return self.error

    def _decode(self, frame: Any) -> Any:
        try:
            return self._loads(frame.body, **self._loads_kw)
        except (SerializationError, ValueError, TypeError) as exc:
            kind = C.KIND_NAMES.get(frame.kind, frame.kind)
            raise self._fail(
                f"undecodable {kind} body (request id {frame.request_id}): {exc}", exc
            ) from exc

    def _feed(self, data: bytes | bytearray | memoryview) -> list[Any]:
        if self.error is not None:
            raise self.error
        if self._first_head is not None:
            self._check_first_header(data)
        try:
            return self._parser.feed(data)
        except FrameError as exc:
            raise self._fail(str(exc), exc) from exc

    def _feed_in_place(self, data: bytearray | memoryview) -> tuple[list[Any], int]:
        """``FrameParser.feed_in_place`` with the same checks as :meth:`_feed`."""
        if self.error is not None:
            raise self.error
        head = self._first_head
        if head is not None:
            seen = len(head) - self._in_place_at  # leading bytes of *data* checked already
            self._check_first_header(memoryview(data)[seen:] if seen else data)
        try:
            frames, used = self._parser.feed_in_place(data)
        except FrameError as exc:
            raise self._fail(str(exc), exc) from exc
        self._in_place_at += used
        return frames, used

    def _check_first_header(self, data: bytes | bytearray | memoryview) -> None:
        """Refuse a first frame above the handshake limit from its header (HOSTILE 10).

        Before the handshake nothing is known about the peer, so it may not make us buffer
        more than a settings frame needs.  Only a well-formed preface is checked here; the
        parser reports anything else in its own words.
        """
        head = self._first_head
        assert head is not None
        head += data[: _FIRST_HEADER_END - len(head)]
        if len(head) < _FIRST_HEADER_END:
            return
        self._first_head = None
        if head[: C.PREFACE_SIZE] != C.PREFACE:
            return
        length = int.from_bytes(head[C.PREFACE_SIZE : C.PREFACE_SIZE + 4], "big")
        if length > C.HANDSHAKE_MAX_FRAME_SIZE:
            message = (
                f"frame body of {length} bytes exceeds the limit of "
                f"{C.HANDSHAKE_MAX_FRAME_SIZE} bytes before the handshake completes "
                f"(at offset {C.PREFACE_SIZE})"
            )
            raise self._fail(message, FrameError(message))

    def _connection_frame(self, frame: Any, events: list[Any]) -> None:
        """Handle settings, ping, pong and goaway (request id must be 0)."""
        kind = frame.kind
        if frame.request_id != 0:
            raise self._fail(f"{C.KIND_NAMES[kind]} frame with request id {frame.request_id}")
        value = self._decode(frame)
        if kind == KIND_PING:
            if not _is_uint(value):
                raise self._fail(f"ping value must be an unsigned int, got {value!r:.40}")
            self._out.append(self._encode_frame(KIND_PONG, 0, frame.body))
            self._out_size += C.HEADER_SIZE + len(frame.body)
        elif kind == KIND_PONG:
            if not _is_uint(value):
                raise self._fail(f"pong value must be an unsigned int, got {value!r:.40}")
            if value == self.ping_outstanding:
                self.ping_outstanding = None
            events.append((KIND_PONG, value))
        elif kind == KIND_SETTINGS:
            self._apply_settings(value)
        elif kind == KIND_GOAWAY:
            if (
                type(value) is not list
                or len(value) != 3
                or not _is_uint(value[0])
                or type(value[1]) is not int
                or type(value[2]) is not str
            ):
                raise self._fail(f"malformed goaway body {value!r:.80}")
            self.goaway_received = (value[0], value[1], value[2])
            events.append((KIND_GOAWAY, value[0], value[1], value[2]))
            self._on_goaway(value[0], events)
        else:  # pragma: no cover - callers only route the kinds above here
            raise self._fail(f"unexpected {C.KIND_NAMES.get(kind, kind)} frame")

    def _apply_settings(self, value: Any) -> None:
        if type(value) is not dict:
            raise self._fail(f"settings body must be a map, got {type(value).__name__}")
        for key in ("max_frame_size", "max_inflight", "max_depth"):
            v = value.get(key)
            if v is not None and (type(v) is not int or v < 1):
                raise self._fail(f"settings {key} must be a positive int, got {v!r:.40}")
        self.peer_settings = value
        if value.get("max_frame_size") is not None:
            self.peer_max_frame_size = value["max_frame_size"]

    def _on_goaway(self, last_request_id: int, events: list[Any]) -> None:
        """Role-specific reaction to a goaway (the client fails unprocessed calls)."""

    def _check_handshake(self, frame: Any) -> None:
        # The first frame after the preface must be settings (or a goaway refusing us).
        if frame.kind not in (KIND_SETTINGS, KIND_GOAWAY):
            raise self._fail(
                f"expected a settings frame after the preface, got "
                f"{C.KIND_NAMES.get(frame.kind, frame.kind)}"
            )


class ServerConnection(Connection):
    """The server side of one connection.

    It answers pings, enforces the in-flight limit (a request past ``max_inflight`` gets a
    ``RESOURCE_EXHAUSTED`` error reply; a cancelled call keeps counting until the driver
    reports its end with :meth:`send_response`/:meth:`send_error`/:meth:`send_exception`),
    turns a request's ``timeout`` into an absolute ``deadline`` and answers
    ``DEADLINE_EXCEEDED`` at once when it is already past.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # request id -> cancelled flag, for every call whose handler has not ended.
        self._inflight: dict[int, bool] = {}
        self._notifications = 0
        self._in_place_rest: Iterator[Any] | None = None  # frames of receive_in_place
        #: Notifications dropped because the in-flight limit was reached.
        self.dropped_notifications = 0

    @property
    def inflight(self) -> int:
        """Calls and notifications whose handlers have not ended (cancelled ones too)."""
        return len(self._inflight) + self._notifications

    def is_cancelled(self, request_id: int) -> bool:
        """True when the client cancelled this still-running call."""
        return self._inflight.get(request_id, False)

    def begin_call(self, request_id: int) -> None:
        """Count *request_id* as in flight for a driver that admitted the request itself.

        A fused driver fast path (the Cython server loop) decodes, checks and answers the
        common request without going through :meth:`receive_data`; when it cannot answer
        directly (the handler raised, the result is unencodable or too large) it calls this,
        then ends the call with :meth:`send_response` / :meth:`send_exception` like any driver.
        """
        self._inflight[request_id] = False

    def receive_data(self, data: bytes | bytearray | memoryview) -> Iterator[tuple[Any, ...]]:
        """Feed received bytes; return an iterator over the events they complete.

        Events are produced lazily, one frame at a time: handle each event before taking
        the next.  A request is admitted against ``max_inflight`` only when it is reached,
        so pipelined calls whose handlers finish inline are never refused; only calls
        still running (or cancelled but still running) count.  Framing errors raise here;
        errors in a frame's content raise from the iterator.  Consume it fully.
        """
        frames = self._feed(data)
        if not self.preface_sent and self._parser.preface_received:
            self.initiate()  # answer a native client's preface with ours
        return self._events(frames)

    def receive_in_place(
        self, data: bytearray | memoryview
    ) -> tuple[Iterator[tuple[Any, ...]], int]:
        """:meth:`receive_data` for a driver that owns its receive buffer.

        Takes the whole frames at the start of *data* and returns ``(events, used)``:
        the events iterator (as :meth:`receive_data`'s) and how many bytes were consumed.
        The bytes from ``used`` on (an unfinished frame) stay with the driver, which
        passes them again, followed by what arrived since.  Large bodies are parsed in
        place: until the iterator is exhausted, *data* must not change.  A driver that
        stops early (backpressure) calls :meth:`detach_in_place` for the rest, after which
        *data* may be reused.
        """
        frames, used = self._feed_in_place(data)
        if not self.preface_sent and self._parser.preface_received:
            self.initiate()
        rest = self._in_place_rest = iter(frames)
        return self._events(rest), used

    def detach_in_place(self) -> Iterator[tuple[Any, ...]]:
        """The events of the last :meth:`receive_in_place` not taken yet, from copies
        of their frames: the driver's buffer is no longer referenced (close the old
        iterator and use this one)."""
        rest, self._in_place_rest = self._in_place_rest, None
        frames = []
        for frame in rest or ():
            body = frame.body
            if type(body) is not bytes:
                frame = type(frame)(frame.kind, frame.request_id, bytes(body), frame.flags)
            frames.append(frame)
        return self._events(frames)

    def _events(self, frames: Iterable[Any]) -> Iterator[tuple[Any, ...]]:
        events: list[tuple[Any, ...]] = []  # at most one event per frame on this side
        for frame in frames:
            kind = frame.kind
            if self.peer_settings is None:
                self._check_handshake(frame)
            if kind in _CALL_KINDS:
                self._on_request(frame, kind, events)
            elif kind == KIND_CANCEL:
                if self._decode(frame) is not None:
                    raise self._fail("cancel body must be nil")
                rid = frame.request_id
                if self._inflight.get(rid) is False:
                    self._inflight[rid] = True
                    events.append((KIND_CANCEL, rid))
            elif kind in _CONNECTION_KINDS:
                self._connection_frame(frame, events)
            else:
                raise self._fail(
                    f"a client may not send {C.KIND_NAMES.get(kind, kind)} frames "
                    f"(request id {frame.request_id})"
                )
            if events:
                yield events.pop()

    def _on_request(self, frame: Any, kind: int, events: list[tuple[Any, ...]]) -> None:
        rid = frame.request_id
        if kind == KIND_REQUEST:
            if rid == 0:
                raise self._fail("request id 0 is reserved for connection-level frames")
            if rid in self._inflight:
                raise self._fail(f"request id {rid} reused while its call is in flight")
        msg = self._decode(frame)
        # Envelope: [method, args, kwargs|nil, meta|nil], trailing nils may be omitted.
        if type(msg) is not list or not 2 <= len(msg) <= 4:
            return self._reject(rid, kind, StatusCode.INVALID_ARGUMENT, "malformed request")
        n = len(msg)
        method = msg[0]
        args = msg[1]
        kwargs = msg[2] if n > 2 else None
        meta = msg[3] if n > 3 else None
        if (
            type(method) is not str
            or type(args) is not list
            or (kwargs is not None and type(kwargs) is not dict)
            or (meta is not None and type(meta) is not dict)
        ):
            return self._reject(rid, kind, StatusCode.INVALID_ARGUMENT, "malformed request")
        if kind == KIND_REQUEST:
            if self.goaway_sent and rid > self.last_request_id:
                return self._reject(rid, kind, StatusCode.UNAVAILABLE, "server is shutting down")
            if rid > self.last_request_id:
                self.last_request_id = rid
        if len(self._inflight) + self._notifications >= self.max_inflight:
            return self._reject(
                rid,
                kind,
                StatusCode.RESOURCE_EXHAUSTED,
                f"too many calls in flight on this connection (max_inflight={self.max_inflight})",
            )
        deadline = None
        if meta:
            timeout = meta.get("timeout")
            if timeout is not None:
                if type(timeout) not in (int, float) or timeout != timeout:
                    return self._reject(
                        rid, kind, StatusCode.INVALID_ARGUMENT, "meta timeout must be a number"
                    )
                if timeout <= 0:
                    return self._reject(
                        rid, kind, StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before dispatch"
                    )
                deadline = self.clock() + timeout
        if kind == KIND_REQUEST:
            self._inflight[rid] = False
        else:
            self._notifications += 1
        events.append((kind, rid, method, args, kwargs, deadline, meta))

    def _reject(self, rid: int, kind: int, code: int, message: str) -> None:
        if kind == KIND_REQUEST:
            self._error_frame(rid, code, message, "", None)
        else:
            self.dropped_notifications += 1

    # --- replies ------------------------------------------------------------------------

    def send_response(self, request_id: int, result: Any) -> None:
        """The handler of *request_id* returned *result*: queue the reply, end the call.

        Nothing is sent for a cancelled call.  A result that cannot be serialized, or that
        is larger than the peer accepts, is answered with an error instead.
        """
        if self._inflight.pop(request_id, True):  # cancelled, or not in flight
            return
        n = len(result) if type(result) is bytes else 0
        if C.BIN32_MIN_LENGTH <= n <= self.peer_max_frame_size - 5:
            # A large bytes result: the header and its bin 32 prefix, then the object itself
            # (the bytes dumps would make, without copying the body; the compiled loop does
            # the same).
            self._out.append(
                self._encode_header(KIND_RESPONSE, request_id, n + 5)
                + _BIN32_PREFIX
                + n.to_bytes(4, "big")
            )
            self._out.append(result)
            self._out_size += C.HEADER_SIZE + 5 + n
            return
        try:
            body = self._dumps(result)
        except Exception as exc:  # the handler returned something we cannot encode
            self._error_frame(
                request_id,
                StatusCode.INTERNAL,
                f"cannot serialize the result: {exc}",
                type(exc).__name__,
                None,
            )
            return
        if len(body) > self.peer_max_frame_size:
            self._error_frame(
                request_id,
                StatusCode.RESOURCE_EXHAUSTED,
                f"reply of {len(body)} bytes exceeds the client's max_frame_size="
                f"{self.peer_max_frame_size}",
                "",
                None,
            )
            return
        self._frame(KIND_RESPONSE, request_id, body)

    def send_error(
        self,
        request_id: int,
        code: int,
        message: str,
        type_name: str = "",
        details: Any = None,
    ) -> None:
        """End the call *request_id* with an error reply (nothing sent if cancelled)."""
        if self._inflight.pop(request_id, True):
            return
        self._error_frame(request_id, code, message, type_name, details)

    def send_exception(self, request_id: int, exc: BaseException) -> None:
        """End the call *request_id* with the error reply describing *exc*."""
        self.send_error(request_id, *error_info(exc))

    def finish_notification(self) -> None:
        """A notification's handler ended (frees its in-flight slot)."""
        if self._notifications:
            self._notifications -= 1

    def _error_frame(self, rid: int, code: int, message: str, type_name: str, details: Any) -> None:
        if self.error is not None:
            return
        try:
            body = self._dumps([code, message, type_name, details])
        except Exception:  # details (or an odd message) not serializable: keep the triple
            body = self._dumps([code, str(message), str(type_name), None])
        if len(body) > self.peer_max_frame_size:
            body = self._dumps([code, str(message)[:1000], str(type_name)[:200], None])
        self._frame(KIND_ERROR, rid, body)


class ClientConnection(Connection):
    """The client side of one connection.

    :meth:`send_request` allocates request ids (1 up to *max_request_id*; a client opens a
    new connection once :attr:`ids_exhausted`, so ids are never reused) and records a
    caller-chosen *token* in the pending table; replies come back as events carrying that
    token.  Replies for unknown or already answered ids are dropped and counted in
    :attr:`dropped_replies`, never misrouted.  At most the server's announced
    ``max_inflight`` calls are sent at once; later ones wait here (bytes are queued only
    once the server's settings have arrived).
    """

    # The compiled blocking client (cext/client.pyx) queues requests and takes replies
    # itself, reading and updating _next_id, _max_request_id, last_request_id, _pending,
    # _sent, _held, _peer_inflight, dropped_replies and the output queue (_out, _out_size)
    # exactly as send_request / receive_data do, and calling the methods here for the rest.
    # Change those together (tests/transport/test_client_core.py compares both clients).
    __slots__ = ("_held", "_next_id", "_peer_inflight", "_pending", "_sent")

    def __init__(self, *, max_request_id: int = C.MAX_REQUEST_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 1 <= max_request_id <= C.MAX_REQUEST_ID:
            raise ValueError(f"max_request_id must be in 1..{C.MAX_REQUEST_ID}")
        self._max_request_id = max_request_id
        self._next_id = 1
        self._pending: dict[int, Any] = {}
        # Calls not yet sent because the server's in-flight limit was reached:
        # request id -> body, in submission order.
        self._held: dict[int, bytes] = {}
        self._sent = 0  # sent and unanswered (not cancelled) calls
        self._peer_inflight = 0  # 0 until the server's settings arrive: hold everything
        #: Replies dropped because their request id was unknown (late, duplicate, bogus).
        self.dropped_replies = 0

    @property
    def ids_exhausted(self) -> bool:
        """True when no request id is left: the caller must open a new connection."""
        return self._next_id > self._max_request_id

    @property
    def pending(self) -> int:
        """Calls awaiting a reply (held ones included)."""
        return len(self._pending)

    def is_pending(self, request_id: int) -> bool:
        """True while the call *request_id* awaits its reply (held ones included)."""
        return request_id in self._pending

    def send_request(
        self,
        method: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        token: Any = None,
        timeout: float | None = None,
        meta: dict[str, Any] | None = None,
    ) -> int:
        """Queue a call and return its request id.

        *timeout* (seconds) travels as ``meta["timeout"]``.  Raises TypeError /
        SerializationError for arguments that cannot be encoded, ResourceExhausted when the
        request is larger than the server's ``max_frame_size`` (nothing is queued then),
        and RuntimeError once :attr:`ids_exhausted`.
        """
        if self.error is not None:
            raise self.error
        rid = self._next_id
        if rid > self._max_request_id:
            raise RuntimeError("request ids exhausted: open a new connection")
        if timeout is not None:
            meta = {**meta, "timeout": timeout} if meta else {"timeout": timeout}
        if meta is not None:
            body = self._dumps((method, args, kwargs, meta))
        elif kwargs:
            body = self._dumps((method, args, kwargs))
        else:
            body = self._dumps((method, args))
        self._check_size(body)
        self._next_id = rid + 1
        self.last_request_id = rid
        self._pending[rid] = token
        if self._sent < self._peer_inflight and not self._held:
            self._sent += 1
            self._frame(KIND_REQUEST, rid, body)
        else:
            self._held[rid] = body
        return rid

    def send_notification(
        self,
        method: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Queue a notification (a call without reply; request id 0)."""
        if self.error is not None:
            raise self.error
        if meta:
            body = self._dumps((method, args, kwargs, meta))
        else:
            body = self._dumps((method, args, kwargs) if kwargs else (method, args))
        self._check_size(body)
        self._frame(C.KIND_NOTIFICATION, 0, body)

    def _check_size(self, body: bytes) -> None:
        if len(body) > self.peer_max_frame_size:
            raise ResourceExhausted(
                f"request of {len(body)} bytes exceeds the server's max_frame_size="
                f"{self.peer_max_frame_size}"
            )

    def cancel(self, request_id: int) -> Any:
        """Forget a pending call (e.g. its deadline passed); return its token or None.

        A cancel frame tells the server when the request was already sent; a late reply
        is then dropped as unknown.
        """
        token = self._pending.pop(request_id, _MISSING)
        if token is _MISSING:
            return None
        if self._held.pop(request_id, None) is None:
            self._sent -= 1
            if self.error is None:
                self._out.append(self._encode_frame(KIND_CANCEL, request_id, _NIL))
                self._out_size += C.HEADER_SIZE + 1
            self._release_held()
        return token

    def pop_all_pending(self) -> dict[int, Any]:
        """Forget every pending call and return ``{request_id: token}`` (to fail them).

        The pending table itself stays the same object (the compiled client keeps it).
        """
        pending = self._pending.copy()
        self._pending.clear()
        self._held.clear()
        self._sent = 0
        return pending

    def _release_held(self) -> None:
        held = self._held
        while held and self._sent < self._peer_inflight:
            rid = next(iter(held))
            self._frame(KIND_REQUEST, rid, held.pop(rid))
            self._sent += 1

    def _apply_settings(self, value: Any) -> None:
        super()._apply_settings(value)
        self._peer_inflight = value.get("max_inflight") or DEFAULT_MAX_INFLIGHT
        self._release_held()

    def _on_goaway(self, last_request_id: int, events: list[Any]) -> None:
        # Calls above last_request_id were never processed: fail them (safe to retry).
        for rid in [r for r in self._pending if r > last_request_id]:
            token = self._pending.pop(rid)
            if self._held.pop(rid, None) is None:
                self._sent -= 1
            events.append(
                (KIND_ERROR, rid, token, NotProcessed("server is going away; call not processed"))
            )

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[tuple[Any, ...]]:
        """Feed received bytes; return the events they complete (see the module doc)."""
        return self._reply_events(self._feed(data))

    def receive_in_place(self, data: bytearray | memoryview) -> tuple[list[tuple[Any, ...]], int]:
        """:meth:`receive_data` for a driver that owns its receive buffer: takes the whole
        frames at the start of *data* and returns ``(events, used)``.  The bytes from
        ``used`` on (an unfinished frame) stay with the driver, which passes them again,
        followed by what arrived since.  Every event is decoded on return: *data* may be
        reused at once."""
        frames, used = self._feed_in_place(data)
        return self._reply_events(frames), used

    def _reply_events(self, frames: list[Any]) -> list[tuple[Any, ...]]:
        events: list[tuple[Any, ...]] = []
        pending = self._pending
        try:
            for frame in frames:
                kind = frame.kind
                if self.peer_settings is None:
                    self._check_handshake(frame)
                if kind in _REPLY_KINDS:
                    rid = frame.request_id
                    token = pending.pop(rid, _MISSING)
                    if token is _MISSING:
                        self.dropped_replies += 1
                        continue
                    self._sent -= 1
                    try:
                        value = self._decode(frame)
                        if kind == KIND_ERROR:
                            value = self._remote_error(value)
                    except ProtocolError:
                        pending[rid] = token  # keep it so the driver fails it with the rest
                        raise
                    events.append((kind, rid, token, value))
                    if self._held:
                        self._release_held()
                elif kind in _CONNECTION_KINDS:
                    self._connection_frame(frame, events)
                else:
                    raise self.unexpected_frame(frame)
        except ProtocolError:
            # The events of this batch are lost with the exception: give the tokens of the
            # replies it already took back, so the driver fails those calls with the rest.
            for event in events:
                if event[0] in _REPLY_KINDS:
                    pending[event[1]] = event[2]
            raise
        return events

    def unexpected_frame(self, frame: Any) -> ProtocolError:
        """Fail the connection on a frame of a kind a server may not send; return the error."""
        return self._fail(
            f"a server may not send {C.KIND_NAMES.get(frame.kind, frame.kind)} frames "
            f"(request id {frame.request_id})"
        )

    def _remote_error(self, value: Any) -> Exception:
        if (
            type(value) is not list
            or not 3 <= len(value) <= 4
            or type(value[0]) is not int
            or type(value[1]) is not str
            or type(value[2]) is not str
        ):
            raise self._fail(f"malformed error body {value!r:.80}")
        code = value[0]
        details = value[3] if len(value) > 3 else None
        return remote_error_class(code)(value[1], code, value[2], details)
