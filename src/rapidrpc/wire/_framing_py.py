"""Pure-Python framing: the twin of cext/framing.pyx (same API, same bytes, same errors).

The parser is a small state machine (preface -> header -> body -> header ...).  Whole frames
are cut straight out of the fed object with ``struct.unpack_from`` at an offset; only the
unfinished tail of a feed is kept: at most 11 header bytes, or the pieces of one body, which
are joined once when the body is complete.  Nothing is ever allocated in proportion to a
length the peer merely declared.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from operator import attrgetter, index
from typing import Any

from ..errors import FrameError
from . import _framing_text as _text
from .constants import (
    DEFAULT_MAX_FRAME_SIZE,
    FLAG_END_STREAM,
    HEADER_SIZE,
    KIND_CANCEL,
    KIND_ERROR,
    KIND_GOAWAY,
    KIND_NAMES,
    KIND_NOTIFICATION,
    KIND_PING,
    KIND_PONG,
    KIND_REQUEST,
    KIND_RESPONSE,
    KIND_SETTINGS,
    KIND_STREAM_END,
    KIND_STREAM_ITEM,
    KNOWN_FLAGS,
    MAX_BODY_LENGTH,
    MAX_KIND,
    MAX_REQUEST_ID,
    PREFACE,
    PREFACE_SIZE,
    PROTOCOL_VERSION,
    ZERO_COPY_MIN_BODY,
)

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "FLAG_END_STREAM",
    "HEADER_SIZE",
    "KIND_CANCEL",
    "KIND_ERROR",
    "KIND_GOAWAY",
    "KIND_NAMES",
    "KIND_NOTIFICATION",
    "KIND_PING",
    "KIND_PONG",
    "KIND_REQUEST",
    "KIND_RESPONSE",
    "KIND_SETTINGS",
    "KIND_STREAM_END",
    "KIND_STREAM_ITEM",
    "KNOWN_FLAGS",
    "MAX_KIND",
    "MAX_REQUEST_ID",
    "PREFACE",
    "PREFACE_SIZE",
    "PROTOCOL_VERSION",
    "ZERO_COPY_MIN_BODY",
    "Frame",
    "FrameParser",
    "encode_frame",
    "encode_frames",
    "encode_header",
    "encode_preface",
]

_HEADER = struct.Struct(">IBBHI")  # body_length, kind, flags, reserved, request_id
assert _HEADER.size == HEADER_SIZE, "constants.HEADER_SIZE no longer matches this layout"
_unpack_from = _HEADER.unpack_from
_pack = _HEADER.pack
_MAX_U32 = MAX_BODY_LENGTH
_VERSION_INDEX = _text.VERSION_INDEX

_ST_PREFACE, _ST_HEADER, _ST_BODY, _ST_FAILED = range(4)


def _check_fields(kind: Any, request_id: Any, flags: Any) -> tuple[int, int, int]:
    """Validate the header fields of a frame to encode; ints in range or an exception."""
    kind = index(kind)
    if not 1 <= kind <= MAX_KIND:
        raise FrameError(_text.bad_kind(kind))
    request_id = index(request_id)
    if not 0 <= request_id <= MAX_REQUEST_ID:
        raise FrameError(_text.bad_request_id(request_id))
    flags = index(flags)
    if flags & ~KNOWN_FLAGS:  # also catches negative values and anything above a u8
        raise FrameError(_text.bad_flags(flags))
    return kind, request_id, flags


def _body_size(body: Any) -> int:
    """Length in bytes of a bytes-like *body*; TypeError for anything else."""
    if type(body) is bytes:
        return len(body)
    with memoryview(body) as view:
        if not view.c_contiguous:
            raise TypeError(_text.body_not_contiguous())
        return view.nbytes


def _check_length(length: int, limit: int) -> None:
    if length <= 0:
        raise FrameError(_text.empty_body() if length == 0 else _text.negative_length(length))
    if length > limit:
        raise FrameError(_text.body_too_large(length, limit))


def _own_body(body: Any) -> Any:
    """*body* itself when it cannot reference other objects, else a bytes copy.

    Same rule as the compiled twin, whose Frame skips the cyclic GC: a Frame must never be
    able to sit in a reference cycle, and bytes, bytearray and memoryviews of them cannot.
    """
    kind = type(body)
    if kind is bytes or kind is bytearray:
        return body
    if kind is memoryview and type(body.obj) in (bytes, bytearray):
        return body
    return bytes(body)


class Frame:
    """One frame: ``kind``, ``flags``, ``request_id`` and ``body`` (read-only attributes).

    ``Frame(kind, request_id, body, flags=0)`` validates like :func:`encode_frame` (except
    the size limit); a body other than bytes, bytearray or a memoryview of those is stored
    as a bytes copy.  Frames compare equal by value (a ``memoryview`` body equals the same
    bytes); they are not hashable.  Parsed bodies are ``bytes``, or a read-only
    ``memoryview`` for the zero-copy case described in :class:`FrameParser`.
    """

    __slots__ = ("_body", "_flags", "_kind", "_request_id")

    def __init__(self, kind: int, request_id: int, body: Any, flags: int = 0) -> None:
        self._kind, self._request_id, self._flags = _check_fields(kind, request_id, flags)
        if _body_size(body) == 0:
            raise FrameError(_text.empty_body())
        self._body = _own_body(body)

    kind = property(attrgetter("_kind"), doc="Frame kind (one of the KIND_* constants).")
    flags = property(attrgetter("_flags"), doc="Flag bits (FLAG_* constants).")
    request_id = property(attrgetter("_request_id"), doc="Request id, 0 for connection frames.")
    body = property(attrgetter("_body"), doc="The body: bytes or a read-only memoryview.")

    __hash__ = None  # type: ignore[assignment]  # equal by value, and bodies may be views

    def __eq__(self, other: object) -> bool:
        if type(other) is not Frame:
            return NotImplemented
        return (
            self._kind == other._kind
            and self._request_id == other._request_id
            and self._flags == other._flags
            and self._body == other._body
        )

    def __repr__(self) -> str:
        return _text.frame_repr(self._kind, self._request_id, self._flags, self._body)


def _new_frame(kind: int, flags: int, request_id: int, body: Any) -> Frame:
    # Parsed fields are already valid: skip __init__'s checks.
    frame = object.__new__(Frame)
    frame._kind = kind
    frame._flags = flags
    frame._request_id = request_id
    frame._body = body
    return frame


class FrameParser:
    """Incremental parser: bytes in, complete :class:`Frame` objects out.

    ``feed(data)`` accepts any C-contiguous bytes-like object, split anywhere, and returns
    every frame it completes, in order.  With ``expect_preface`` the stream must start with
    the connection preface.  Any violation raises :class:`rapidrpc.FrameError` naming the
    stream offset; the parser then stays unusable (every later ``feed`` raises again) and
    frames completed earlier in that same call are dropped: the connection is to be closed.
    One parser per connection and direction; it is not meant to be shared between threads.

    Body types: a body lying entirely inside one fed ``bytes`` object and at least
    ``ZERO_COPY_MIN_BODY`` bytes long is a read-only ``memoryview`` slice of that object (no
    copy); every other body is ``bytes``.  ``bytearray``/``memoryview`` input is never
    referenced after ``feed`` returns, so the caller may reuse or mutate it.
    """

    __slots__ = (
        "_body_len",
        "_busy",
        "_consumed",
        "_error",
        "_flags",
        "_frame_at",
        "_have",
        "_hdr",
        "_kind",
        "_max",
        "_parts",
        "_pre_pos",
        "_request_id",
        "_state",
    )

    def __init__(
        self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, expect_preface: bool = True
    ) -> None:
        max_frame_size = index(max_frame_size)
        if not 1 <= max_frame_size <= _MAX_U32:
            raise ValueError(_text.bad_max_frame_size(max_frame_size))
        self._max = max_frame_size
        self._state = _ST_PREFACE if expect_preface else _ST_HEADER
        self._pre_pos = 0 if expect_preface else PREFACE_SIZE  # preface bytes matched so far
        self._hdr = bytearray()  # a header split across feeds
        self._frame_at = 0  # stream offset of the header being assembled
        self._parts: list[bytes] = []  # pieces of a body split across feeds
        self._have = 0  # body bytes held in _parts
        self._body_len = 0
        self._kind = self._flags = self._request_id = 0
        self._consumed = 0  # stream offset of the next feed's first byte
        self._error = ""
        self._busy = False

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned (part of a preface, header or body)."""
        if self._state == _ST_BODY:  # the decoded header counts until its frame is out
            return HEADER_SIZE + self._have
        if self._state == _ST_PREFACE:
            return self._pre_pos
        return len(self._hdr)

    @property
    def preface_received(self) -> bool:
        """True once the preface has arrived and was accepted (or none was expected)."""
        return self._state in (_ST_HEADER, _ST_BODY) or (
            self._state == _ST_FAILED and self._pre_pos == PREFACE_SIZE
        )

    @property
    def max_frame_size(self) -> int:
        """Largest body accepted, in bytes; larger ones are refused from the header."""
        return self._max

    def feed(self, data: Any) -> list[Frame]:
        """Consume *data*; return every frame completed by it, in stream order.

        Raises FrameError on a protocol violation (and on every call after one),
        TypeError for data that is not a C-contiguous bytes-like object, and RuntimeError
        when called while ``feed`` is already running on this parser.
        """
        if self._busy:
            raise RuntimeError(_text.reentered())
        if self._state == _ST_FAILED:
            raise FrameError(_text.poisoned(self._error))
        if isinstance(data, bytes):
            self._busy = True
            try:
                return self._parse(data, len(data), True)
            finally:
                self._busy = False
        with memoryview(data) as view:
            if not view.c_contiguous:
                raise TypeError(_text.body_not_contiguous())
            with view.cast("B") as octets:
                self._busy = True
                try:
                    return self._parse(octets, octets.nbytes, False)
                finally:
                    self._busy = False

    def skip(self, n: int) -> None:
        """Count *n* bytes of whole frames that the caller took out of the stream itself.

        For a driver that handles some frames without the parser (the compiled client
        routes a lone reply this way): the stream offsets named by later errors then still
        count every byte.  Only between frames: RuntimeError while a preface, header or
        body is partly fed (or ``feed`` runs); ValueError when *n* is negative; FrameError
        once the parser failed.
        """
        n = index(n)
        if self._busy or self._state != _ST_HEADER or self._hdr:
            if self._state == _ST_FAILED:
                raise FrameError(_text.poisoned(self._error))
            raise RuntimeError(_text.skip_mid_frame())
        if n < 0:
            raise ValueError(_text.negative_skip(n))
        self._consumed += n

    def feed_in_place(self, data: Any) -> tuple[list[Frame], int]:
        """Cut every whole frame out of *data*, keeping nothing: return ``(frames, used)``.

        For a driver that owns its receive buffer.  ``used`` bytes (preface bytes and whole
        frames) were consumed; the rest, an unfinished frame, stays with the caller, who
        passes it again, followed by what arrived since, at the start of the next call.
        The unfinished frame's header is checked as far as it arrived, so a length above
        the limit raises here, before the caller buffers any of its body.

        Bodies of at least ``ZERO_COPY_MIN_BODY`` bytes are read-only ``memoryview``
        slices of *data*, whatever its type (no copy): the caller must not change those
        bytes while such frames are alive.  Other bodies are ``bytes``.  Raises like
        :meth:`feed`, and RuntimeError when :meth:`feed` holds part of a frame.
        """
        if self._busy:
            raise RuntimeError(_text.reentered())
        if self._state == _ST_FAILED:
            raise FrameError(_text.poisoned(self._error))
        if self._state == _ST_BODY or self._hdr:
            raise RuntimeError(_text.mixed_in_place())
        view = memoryview(data)
        if not view.c_contiguous:
            raise TypeError(_text.body_not_contiguous())
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        self._busy = True
        try:
            return self._parse_in_place(view, view.nbytes)
        finally:
            self._busy = False

    def _parse_in_place(self, data: memoryview, end: int) -> tuple[list[Frame], int]:
        frames: list[Frame] = []
        pos = 0
        if self._state == _ST_PREFACE:
            pos = self._eat_preface(data, end)
        limit = self._max
        append = frames.append
        shared: memoryview | None = None  # read-only view for the large bodies
        while end - pos >= HEADER_SIZE:
            length, kind, flags, reserved, request_id = _unpack_from(data, pos)
            if (
                not 0 < length <= limit
                or not 0 < kind <= MAX_KIND
                or flags & ~KNOWN_FLAGS
                or reserved
            ):
                self._check_header(data[pos : pos + HEADER_SIZE], HEADER_SIZE, self._consumed + pos)
            start = pos + HEADER_SIZE
            stop = start + length
            if stop > end:
                break
            if length >= ZERO_COPY_MIN_BODY:
                if shared is None:
                    shared = data.toreadonly()
                body: Any = shared[start:stop]
            else:
                body = data[start:stop].tobytes()
            append(_new_frame(kind, flags, request_id, body))
            pos = stop
        else:
            if pos < end:  # the first bytes of a header: check what is there
                self._check_header(data[pos:end], end - pos, self._consumed + pos)
        self._consumed += pos
        return frames, pos

    def _fail(self, message: str) -> None:
        self._state = _ST_FAILED
        self._error = message
        self._hdr = bytearray()
        self._parts = []
        self._have = 0
        raise FrameError(message)

    def _check_header(self, header: Any, size: int, at: int) -> None:
        """Raise for the first bad field among the first *size* bytes of a header."""
        if size >= 4:
            length = int.from_bytes(header[0:4], "big")
            if length == 0:
                self._fail(_text.at_header(at, _text.empty_body()))
            if length > self._max:
                self._fail(_text.at_header(at, _text.body_too_large(length, self._max)))
        if size >= 5 and not 1 <= header[4] <= MAX_KIND:
            self._fail(_text.at_header(at, _text.bad_kind(header[4])))
        if size >= 6 and header[5] & ~KNOWN_FLAGS:
            self._fail(_text.at_header(at, _text.bad_flags(header[5])))
        if size >= 8:
            reserved = int.from_bytes(header[6:8], "big")
            if reserved:
                self._fail(_text.at_header(at, _text.bad_reserved(reserved)))

    def _eat_preface(self, data: Any, end: int) -> int:
        """Match preface bytes from the start of *data*; return how many were used."""
        i = self._pre_pos
        pos = 0
        while i < PREFACE_SIZE and pos < end:
            got = data[pos]
            if got != PREFACE[i]:
                if i == _VERSION_INDEX:
                    self._fail(_text.unsupported_version(got))
                self._fail(_text.bad_preface_byte(i, got))
            i += 1
            pos += 1
        self._pre_pos = i
        if i == PREFACE_SIZE:
            self._state = _ST_HEADER
        return pos

    def _parse(self, data: Any, end: int, zero_copy: bool) -> list[Frame]:
        frames: list[Frame] = []
        pos = 0
        if self._state == _ST_PREFACE:
            pos = self._eat_preface(data, end)
        while pos < end:
            if self._state == _ST_BODY:
                pos = self._fill_body(data, pos, end, zero_copy, frames)
            elif self._hdr:
                pos = self._fill_header(data, pos, end)
            else:
                pos = self._whole_frames(data, pos, end, zero_copy, frames)
        self._consumed += end
        return frames

    def _whole_frames(
        self, data: Any, pos: int, end: int, zero_copy: bool, frames: list[Frame]
    ) -> int:
        """The hot loop: cut whole frames out of *data*; set up state for a partial one."""
        limit = self._max
        append = frames.append
        while end - pos >= HEADER_SIZE:
            length, kind, flags, reserved, request_id = _unpack_from(data, pos)
            if (
                not 0 < length <= limit
                or not 0 < kind <= MAX_KIND
                or flags & ~KNOWN_FLAGS
                or reserved
            ):
                self._check_header(data[pos : pos + HEADER_SIZE], HEADER_SIZE, self._consumed + pos)
            start = pos + HEADER_SIZE
            stop = start + length
            if stop > end:
                self._kind, self._flags, self._request_id = kind, flags, request_id
                self._body_len = length
                self._state = _ST_BODY
                return start
            if zero_copy:
                body = (
                    memoryview(data)[start:stop]
                    if length >= ZERO_COPY_MIN_BODY
                    else data[start:stop]
                )
            else:
                body = data[start:stop].tobytes()
            append(_new_frame(kind, flags, request_id, body))
            pos = stop
        if pos < end:  # a header split across feeds: keep its first bytes, check them now
            self._frame_at = self._consumed + pos
            self._hdr += data[pos:end]
            self._check_header(self._hdr, end - pos, self._frame_at)
        return end

    def _fill_header(self, data: Any, pos: int, end: int) -> int:
        take = min(HEADER_SIZE - len(self._hdr), end - pos)
        self._hdr += data[pos : pos + take]
        hdr = self._hdr
        self._check_header(hdr, len(hdr), self._frame_at)
        if len(hdr) == HEADER_SIZE:
            length, kind, flags, _, request_id = _unpack_from(hdr)
            self._kind, self._flags, self._request_id = kind, flags, request_id
            self._body_len = length
            self._state = _ST_BODY
            self._hdr = bytearray()
        return pos + take

    def _fill_body(
        self, data: Any, pos: int, end: int, zero_copy: bool, frames: list[Frame]
    ) -> int:
        length = self._body_len
        avail = end - pos
        if self._have == 0 and avail >= length:  # the whole body is in this chunk
            stop = pos + length
            if zero_copy:
                body = (
                    memoryview(data)[pos:stop] if length >= ZERO_COPY_MIN_BODY else data[pos:stop]
                )
            else:
                body = data[pos:stop].tobytes()
        else:
            need = length - self._have
            if avail < need:  # keep the piece; a whole immutable chunk needs no copy
                if zero_copy and avail == end:
                    self._parts.append(data)
                else:
                    self._parts.append(bytes(data[pos:end]))
                self._have += avail
                return end
            stop = pos + need
            self._parts.append(memoryview(data)[pos:stop])  # joined right away: no copy
            body = b"".join(self._parts)  # the one copy of a body that arrived in pieces
            self._parts = []
            self._have = 0
        frames.append(_new_frame(self._kind, self._flags, self._request_id, body))
        self._state = _ST_HEADER
        return stop


def encode_header(
    kind: int,
    request_id: int,
    body_length: int,
    flags: int = 0,
    *,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
) -> bytes:
    """The 12-byte header for a body of *body_length* bytes (send the body after it).

    For scatter/gather writes of large bodies without copying them.  Raises FrameError for
    out-of-range fields or a length of 0 or above *max_frame_size*.
    """
    kind, request_id, flags = _check_fields(kind, request_id, flags)
    max_frame_size = index(max_frame_size)
    _check_length(index(body_length), min(max_frame_size, _MAX_U32))
    return _pack(body_length, kind, flags, 0, request_id)


def encode_frame(
    kind: int,
    request_id: int,
    body: Any,
    flags: int = 0,
    *,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
) -> bytes:
    """One frame (header + *body*) as bytes.

    *body* is any non-empty C-contiguous bytes-like object of at most *max_frame_size*
    bytes (pass the peer's announced limit).  Raises FrameError for bad fields or sizes and
    TypeError for a body that is not bytes-like.
    """
    kind, request_id, flags = _check_fields(kind, request_id, flags)
    max_frame_size = index(max_frame_size)
    size = _body_size(body)
    _check_length(size, min(max_frame_size, _MAX_U32))
    header = _pack(size, kind, flags, 0, request_id)
    if type(body) is bytes:
        return header + body
    return b"".join((header, body))


def _unpack_item(item: Any) -> tuple[Any, Any, Any, Any]:
    if isinstance(item, tuple):
        if len(item) == 3:
            return item[0], item[1], item[2], 0
        if len(item) == 4:
            return item[0], item[1], item[2], item[3]
        raise TypeError(
            f"encode_frames() items must be (kind, request_id, body[, flags]) tuples or "
            f"Frame objects, got a tuple of {len(item)} items"
        )
    try:
        return item.kind, item.request_id, item.body, item.flags
    except AttributeError:
        raise TypeError(
            "encode_frames() items must be (kind, request_id, body[, flags]) tuples or "
            f"Frame objects, not {type(item).__name__}"
        ) from None


def encode_frames(frames: Iterable[Any], *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """Many frames in one bytes object (one write for a batch).

    Items are ``(kind, request_id, body[, flags])`` tuples or Frame objects (of either
    backend); each is validated like :func:`encode_frame`.
    """
    max_frame_size = index(max_frame_size)
    limit = min(max_frame_size, _MAX_U32)
    parts: list[Any] = []
    append = parts.append
    for item in frames:
        kind, request_id, body, flags = _unpack_item(item)
        kind, request_id, flags = _check_fields(kind, request_id, flags)
        size = _body_size(body)
        _check_length(size, limit)
        append(_pack(size, kind, flags, 0, request_id))
        append(body)
    return b"".join(parts)


def encode_preface() -> bytes:
    """The connection preface this side sends first (``PREFACE``)."""
    return PREFACE
