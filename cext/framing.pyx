# Compiled as rapidrpc.wire._framing_c; directives come from setup.py.
"""Compiled framing: the twin of rapidrpc/wire/_framing_py.py (same API, bytes and errors).

The parser reads headers with C byte operations straight out of the fed buffer and cuts
every whole frame in one pass (one PyBytes_FromStringAndSize per body, Frames from a
freelist).  Only the unfinished tail of a feed is kept: at most 11 header bytes in a C
array, or the pieces of one body, copied once into the final body when it is complete.
Nothing is allocated in proportion to a length the peer merely declared.

Numbers come from rapidrpc.wire.constants at import (into C globals); messages from
rapidrpc.wire._framing_text, so both backends raise identical errors.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_Check,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.long cimport PyLong_Check
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.number cimport PyNumber_Index
from cpython.object cimport PyObject
from cpython.tuple cimport PyTuple_Check, PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy

from rapidrpc.errors import FrameError

from rapidrpc.wire import _framing_text as _text
from rapidrpc.wire import constants as _const
from rapidrpc.wire.constants import (
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
    MAX_KIND,
    MAX_REQUEST_ID,
    PREFACE,
    PREFACE_SIZE,
    PROTOCOL_VERSION,
    ZERO_COPY_MIN_BODY,
)

cdef extern from *:
    """
    #ifndef RAPIDRPC_DEBUG
    #define RAPIDRPC_DEBUG 0
    #endif
    """
    # setup.py defines it (RAPIDRPC_DEBUG=1 builds): invariant checks, compiled out otherwise.
    const int RAPIDRPC_DEBUG

cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object obj, int* overflow) except? -1
    object PyMemoryView_FromObject(object obj)
    PyObject* PyList_GET_ITEM(object lst, Py_ssize_t i)

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE", "FLAG_END_STREAM", "HEADER_SIZE", "KIND_CANCEL", "KIND_ERROR",
    "KIND_GOAWAY", "KIND_NAMES", "KIND_NOTIFICATION", "KIND_PING", "KIND_PONG",
    "KIND_REQUEST", "KIND_RESPONSE", "KIND_SETTINGS", "KIND_STREAM_END", "KIND_STREAM_ITEM",
    "KNOWN_FLAGS", "MAX_KIND", "MAX_REQUEST_ID", "PREFACE", "PREFACE_SIZE",
    "PROTOCOL_VERSION", "ZERO_COPY_MIN_BODY", "Frame", "FrameParser", "encode_frame",
    "encode_frames", "encode_header", "encode_preface",
]

# --- numbers from constants.py, as C globals --------------------------------------------------
# The header layout (u32 length, u8 kind, u8 flags, u16 reserved, u32 id) is this code; refuse
# to load if constants.py describes another one.
cdef enum:
    _HDR = 12
if _const.HEADER_SIZE != _HDR:
    raise ImportError("rapidrpc.wire._framing_c implements a 12-byte header, constants say "
                      f"{_const.HEADER_SIZE}: rebuild the extension")

cdef uint32_t C_MAX_KIND = _const.MAX_KIND
cdef uint32_t C_KNOWN_FLAGS = _const.KNOWN_FLAGS
cdef long long C_MAX_REQUEST_ID = _const.MAX_REQUEST_ID
cdef Py_ssize_t C_ZERO_COPY_MIN = _const.ZERO_COPY_MIN_BODY
cdef Py_ssize_t C_PREFACE_SIZE = _const.PREFACE_SIZE
cdef Py_ssize_t C_VERSION_INDEX = _text.VERSION_INDEX
cdef bytes C_PREFACE = _const.PREFACE
cdef const unsigned char* C_PREFACE_PTR = <const unsigned char*>PyBytes_AS_STRING(C_PREFACE)
cdef long long C_MAX_U32 = _const.MAX_BODY_LENGTH

cdef enum:
    ST_PREFACE = 0
    ST_HEADER = 1
    ST_BODY = 2
    ST_FAILED = 3


# --- small C helpers --------------------------------------------------------------------------
cdef inline uint32_t _load_u32(const unsigned char* p) noexcept nogil:
    return ((<uint32_t>p[0]) << 24) | ((<uint32_t>p[1]) << 16) | ((<uint32_t>p[2]) << 8) | p[3]


cdef inline void _store_header(unsigned char* o, uint32_t length, uint32_t kind,
                               uint32_t flags, uint32_t request_id) noexcept nogil:
    o[0] = <unsigned char>(length >> 24)
    o[1] = <unsigned char>(length >> 16)
    o[2] = <unsigned char>(length >> 8)
    o[3] = <unsigned char>length
    o[4] = <unsigned char>kind
    o[5] = <unsigned char>flags
    o[6] = 0
    o[7] = 0
    o[8] = <unsigned char>(request_id >> 24)
    o[9] = <unsigned char>(request_id >> 16)
    o[10] = <unsigned char>(request_id >> 8)
    o[11] = <unsigned char>request_id


cdef long long _as_ll(object value) except? -1:
    """operator.index(value) as a C long long, saturated (no OverflowError) for huge ints."""
    cdef int overflow = 0
    cdef long long result
    if not PyLong_Check(value):
        value = PyNumber_Index(value)  # TypeError for non-integers, like operator.index
    result = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow > 0:
        return 0x7FFFFFFFFFFFFFFF
    if overflow < 0:
        return -0x7FFFFFFFFFFFFFFF
    return result


cdef int _check_fields(object kind, object request_id, object flags,
                       uint32_t* out) except -1:
    """Validate header fields to encode into out[0..2] = kind, request_id, flags."""
    cdef long long k = _as_ll(kind)
    if k < 1 or k > C_MAX_KIND:
        raise FrameError(_text.bad_kind(PyNumber_Index(kind)))
    cdef long long r = _as_ll(request_id)
    if r < 0 or r > C_MAX_REQUEST_ID:
        raise FrameError(_text.bad_request_id(PyNumber_Index(request_id)))
    cdef long long f = _as_ll(flags)
    if f & ~(<long long>C_KNOWN_FLAGS):
        raise FrameError(_text.bad_flags(PyNumber_Index(flags)))
    out[0] = <uint32_t>k
    out[1] = <uint32_t>r
    out[2] = <uint32_t>f
    return 0


cdef int _check_length(long long length, long long limit) except -1:
    if length <= 0:
        raise FrameError(_text.empty_body() if length == 0 else _text.negative_length(length))
    if length > limit:
        raise FrameError(_text.body_too_large(length, limit))
    return 0


cdef int _length_error(object length, long long limit) except -1:
    """Raise the error for a bad body length given as a Python int (any size)."""
    if length == 0:
        raise FrameError(_text.empty_body())
    if length < 0:
        raise FrameError(_text.negative_length(length))
    raise FrameError(_text.body_too_large(length, limit))


cdef long long _limit(object max_frame_size) except? -1:
    cdef long long limit = _as_ll(max_frame_size)
    return limit if limit < C_MAX_U32 else C_MAX_U32


cdef int _get_buffer(object obj, Py_buffer* view) except -1:
    """A simple (contiguous bytes) buffer of *obj*; TypeError like the pure twin."""
    try:
        PyObject_GetBuffer(obj, view, PyBUF_SIMPLE)
    except BufferError:
        raise TypeError(_text.body_not_contiguous()) from None
    return 0


cdef Py_ssize_t _body_size(object body) except -1:
    """Byte length of a bytes-like *body* (TypeError otherwise)."""
    cdef Py_buffer view
    if PyBytes_CheckExact(body):
        return PyBytes_GET_SIZE(body)
    _get_buffer(body, &view)
    cdef Py_ssize_t size = view.len
    PyBuffer_Release(&view)
    return size


cdef object _own_body(object body):
    """*body* itself when it cannot reference other objects, else a bytes copy.

    bytes, bytearray and memoryviews of them hold no references to arbitrary objects, so a
    Frame holding one can never be part of a reference cycle; that is what lets Frame skip
    the cyclic GC (thousands are created per feed).  Other exporters (array, mmap, bytes or
    bytearray subclasses with a __dict__) are copied.
    """
    cdef type kind = type(body)
    if kind is bytes or kind is bytearray:
        return body
    if kind is memoryview:
        kind = type(body.obj)
        if kind is bytes or kind is bytearray:
            return body
    return bytes(body)


# --- Frame ------------------------------------------------------------------------------------
# A batch of pipelined frames is usually dropped together after dispatch; a freelist of
# 1024 (about 40 KiB when full) serves the next batch without touching the allocator.
@cython.final
@cython.freelist(1024)
@cython.no_gc  # bodies are never containers (see _own_body): no cycles, so no GC tracking
cdef class Frame:
    """One frame: ``kind``, ``flags``, ``request_id`` and ``body`` (read-only attributes).

    ``Frame(kind, request_id, body, flags=0)`` validates like :func:`encode_frame` (except
    the size limit); a body other than bytes, bytearray or a memoryview of those is stored
    as a bytes copy.  Frames compare equal by value (a ``memoryview`` body equals the same
    bytes); they are not hashable.  Parsed bodies are ``bytes``, or a read-only
    ``memoryview`` for the zero-copy case described in :class:`FrameParser`.
    """

    cdef uint32_t _kind
    cdef uint32_t _flags
    cdef uint32_t _request_id
    cdef object _body

    def __init__(self, kind, request_id, body, flags=0):
        cdef uint32_t fields[3]
        _check_fields(kind, request_id, flags, fields)
        if _body_size(body) == 0:
            raise FrameError(_text.empty_body())
        self._kind = fields[0]
        self._request_id = fields[1]
        self._flags = fields[2]
        self._body = _own_body(body)

    @property
    def kind(self):
        """Frame kind (one of the KIND_* constants)."""
        return self._kind

    @property
    def flags(self):
        """Flag bits (FLAG_* constants)."""
        return self._flags

    @property
    def request_id(self):
        """Request id, 0 for connection frames."""
        return self._request_id

    @property
    def body(self):
        """The body: bytes or a read-only memoryview."""
        return self._body

    __hash__ = None  # equal by value, and bodies may be views

    def __eq__(self, other):
        if type(other) is not Frame:
            return NotImplemented
        cdef Frame o = <Frame>other
        return (self._kind == o._kind and self._request_id == o._request_id
                and self._flags == o._flags and self._body == o._body)

    def __ne__(self, other):
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __repr__(self):
        return _text.frame_repr(self._kind, self._request_id, self._flags, self._body)


cdef inline Frame _new_frame(uint32_t kind, uint32_t flags, uint32_t request_id, object body):
    # Parsed fields are already valid: skip __init__ (and its checks); freelist allocation.
    cdef Frame frame = Frame.__new__(Frame)
    frame._kind = kind
    frame._flags = flags
    frame._request_id = request_id
    frame._body = body
    return frame


# --- parser -----------------------------------------------------------------------------------
@cython.final
cdef class FrameParser:
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

    cdef uint32_t _max
    cdef int _state
    cdef bint _busy
    cdef Py_ssize_t _pre_pos      # preface bytes matched so far
    cdef unsigned char _hdr[_HDR]  # a header split across feeds
    cdef Py_ssize_t _hdr_len
    cdef uint64_t _frame_at       # stream offset of the header being assembled
    cdef uint64_t _consumed       # stream offset of the next feed's first byte
    cdef uint32_t _kind           # header of the frame whose body is awaited
    cdef uint32_t _flags
    cdef uint32_t _request_id
    cdef Py_ssize_t _body_len
    cdef list _parts              # pieces (bytes) of a body split across feeds
    cdef Py_ssize_t _have         # body bytes held in _parts
    cdef str _error

    def __init__(self, max_frame_size=DEFAULT_MAX_FRAME_SIZE, expect_preface=True):
        cdef long long limit = _as_ll(max_frame_size)
        if limit < 1 or limit > C_MAX_U32:
            raise ValueError(_text.bad_max_frame_size(PyNumber_Index(max_frame_size)))
        self._max = <uint32_t>limit
        self._state = ST_PREFACE if expect_preface else ST_HEADER
        self._pre_pos = 0 if expect_preface else C_PREFACE_SIZE
        self._hdr_len = 0
        self._frame_at = 0
        self._consumed = 0
        self._parts = []
        self._have = 0
        self._body_len = 0
        self._error = ""
        self._busy = False

    @property
    def buffered(self):
        """Bytes received but not yet returned (part of a preface, header or body)."""
        if self._state == ST_BODY:  # the decoded header counts until its frame is out
            return _HDR + self._have
        if self._state == ST_PREFACE:
            return self._pre_pos
        return self._hdr_len

    @property
    def preface_received(self):
        """True once the preface has arrived and was accepted (or none was expected)."""
        return self._state == ST_HEADER or self._state == ST_BODY or (
            self._state == ST_FAILED and self._pre_pos == C_PREFACE_SIZE)

    @property
    def max_frame_size(self):
        """Largest body accepted, in bytes; larger ones are refused from the header."""
        return self._max

    def feed(self, data):
        """Consume *data*; return every frame completed by it, in stream order.

        Raises FrameError on a protocol violation (and on every call after one),
        TypeError for data that is not a C-contiguous bytes-like object, and RuntimeError
        when called while ``feed`` is already running on this parser.
        """
        cdef Py_buffer view
        if self._busy:
            raise RuntimeError(_text.reentered())
        if self._state == ST_FAILED:
            raise FrameError(_text.poisoned(self._error))
        if PyBytes_Check(data):
            self._busy = True
            try:
                return self._parse(data, <const unsigned char*>PyBytes_AS_STRING(data),
                                   PyBytes_GET_SIZE(data), True)
            finally:
                self._busy = False
        _get_buffer(data, &view)
        self._busy = True
        try:
            return self._parse(data, <const unsigned char*>view.buf, view.len, False)
        finally:
            self._busy = False
            PyBuffer_Release(&view)

    def skip(self, n):
        """Count *n* bytes of whole frames that the caller took out of the stream itself.

        For a driver that handles some frames without the parser (the compiled client
        routes a lone reply this way): the stream offsets named by later errors then still
        count every byte.  Only between frames: RuntimeError while a preface, header or
        body is partly fed (or ``feed`` runs); ValueError when *n* is negative; FrameError
        once the parser failed.
        """
        cdef long long count = _as_ll(n)
        if self._busy or self._state != ST_HEADER or self._hdr_len:
            if self._state == ST_FAILED:
                raise FrameError(_text.poisoned(self._error))
            raise RuntimeError(_text.skip_mid_frame())
        if count < 0:
            raise ValueError(_text.negative_skip(PyNumber_Index(n)))
        self._consumed += <uint64_t>count

    def feed_in_place(self, data):
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
        cdef Py_buffer view
        if self._busy:
            raise RuntimeError(_text.reentered())
        if self._state == ST_FAILED:
            raise FrameError(_text.poisoned(self._error))
        if self._state == ST_BODY or self._hdr_len:
            raise RuntimeError(_text.mixed_in_place())
        _get_buffer(data, &view)
        self._busy = True
        try:
            return self._parse_in_place(data, <const unsigned char*>view.buf, view.len)
        finally:
            self._busy = False
            PyBuffer_Release(&view)

    cdef tuple _parse_in_place(self, object data, const unsigned char* p, Py_ssize_t n):
        cdef list frames = []
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t start
        cdef const unsigned char* h
        cdef uint32_t length, kind, flags
        cdef uint32_t limit = self._max
        cdef object shared = None  # read-only byte view of data, for the large bodies
        cdef object body
        if self._state == ST_PREFACE:
            pos = self._eat_preface(p, n)
        while n - pos >= _HDR:
            h = p + pos
            length = _load_u32(h)
            kind = h[4]
            flags = h[5]
            if ((length - 1u) >= limit) | ((kind - 1u) >= C_MAX_KIND) | (
                    (flags & ~C_KNOWN_FLAGS) != 0) | ((h[6] | h[7]) != 0):
                self._check_header(h, _HDR, self._consumed + <uint64_t>pos)
            start = pos + _HDR
            if n - start < <Py_ssize_t>length:
                break
            if length >= C_ZERO_COPY_MIN:
                if shared is None:
                    shared = PyMemoryView_FromObject(data).cast("B").toreadonly()
                body = shared[start:start + length]
            else:
                body = PyBytes_FromStringAndSize(<const char*>p + start, length)
            frames.append(_new_frame(kind, flags, _load_u32(h + 8), body))
            pos = start + length
        else:
            if pos < n:  # the first bytes of a header: check what is there
                self._check_header(p + pos, n - pos, self._consumed + <uint64_t>pos)
        self._consumed += <uint64_t>pos
        return frames, pos

    cdef int _fail(self, str message) except -1:
        self._state = ST_FAILED
        self._error = message
        self._hdr_len = 0
        self._parts = []
        self._have = 0
        raise FrameError(message)

    cdef int _check_header(self, const unsigned char* h, Py_ssize_t size,
                           uint64_t at) except -1:
        """Raise for the first bad field among the first *size* bytes of a header."""
        cdef uint32_t length, reserved
        if size >= 4:
            length = _load_u32(h)
            if length == 0:
                self._fail(_text.at_header(at, _text.empty_body()))
            if length > self._max:
                self._fail(_text.at_header(at, _text.body_too_large(length, self._max)))
        if size >= 5 and (h[4] < 1 or h[4] > C_MAX_KIND):
            self._fail(_text.at_header(at, _text.bad_kind(h[4])))
        if size >= 6 and (h[5] & ~C_KNOWN_FLAGS):
            self._fail(_text.at_header(at, _text.bad_flags(h[5])))
        if size >= 8:
            reserved = ((<uint32_t>h[6]) << 8) | h[7]
            if reserved:
                self._fail(_text.at_header(at, _text.bad_reserved(reserved)))
        return 0

    cdef Py_ssize_t _eat_preface(self, const unsigned char* p, Py_ssize_t n) except -1:
        """Match preface bytes from the start of the chunk; return how many were used."""
        cdef Py_ssize_t i = self._pre_pos
        cdef Py_ssize_t pos = 0
        while i < C_PREFACE_SIZE and pos < n:
            if p[pos] != C_PREFACE_PTR[i]:
                if i == C_VERSION_INDEX:
                    self._fail(_text.unsupported_version(p[pos]))
                self._fail(_text.bad_preface_byte(i, p[pos]))
            i += 1
            pos += 1
        self._pre_pos = i
        if i == C_PREFACE_SIZE:
            self._state = ST_HEADER
        return pos

    cdef list _parse(self, object data, const unsigned char* p, Py_ssize_t n, bint zero_copy):
        cdef list frames = []
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t take
        if self._state == ST_PREFACE:
            pos = self._eat_preface(p, n)
        while pos < n:
            if self._state == ST_BODY:
                pos = self._fill_body(data, p, pos, n, zero_copy, frames)
            elif self._hdr_len:
                take = min(_HDR - self._hdr_len, n - pos)
                memcpy(self._hdr + self._hdr_len, p + pos, take)
                self._hdr_len += take
                pos += take
                self._check_header(self._hdr, self._hdr_len, self._frame_at)
                if self._hdr_len == _HDR:
                    self._kind = self._hdr[4]
                    self._flags = self._hdr[5]
                    self._request_id = _load_u32(self._hdr + 8)
                    self._body_len = _load_u32(self._hdr)
                    self._hdr_len = 0
                    self._state = ST_BODY
            else:
                pos = self._whole_frames(data, p, pos, n, zero_copy, frames)
        self._consumed += <uint64_t>n
        return frames

    cdef Py_ssize_t _whole_frames(self, object data, const unsigned char* p, Py_ssize_t pos,
                                  Py_ssize_t n, bint zero_copy, list frames) except -1:
        """The hot loop: cut whole frames out of the chunk; set up state for a partial one."""
        cdef const unsigned char* h
        cdef uint32_t length, kind, flags
        cdef Py_ssize_t start
        cdef uint32_t limit = self._max
        cdef object body
        while n - pos >= _HDR:
            h = p + pos
            length = _load_u32(h)
            kind = h[4]
            flags = h[5]
            # One branch for every check; unsigned wrap turns length 0 / kind 0 into huge.
            if ((length - 1u) >= limit) | ((kind - 1u) >= C_MAX_KIND) | (
                    (flags & ~C_KNOWN_FLAGS) != 0) | ((h[6] | h[7]) != 0):
                self._check_header(h, _HDR, self._consumed + <uint64_t>pos)
            start = pos + _HDR
            if n - start < <Py_ssize_t>length:
                self._kind = kind
                self._flags = flags
                self._request_id = _load_u32(h + 8)
                self._body_len = length
                self._state = ST_BODY
                return start
            if zero_copy and length >= C_ZERO_COPY_MIN:
                body = PyMemoryView_FromObject(data)[start:start + length]
            else:
                body = PyBytes_FromStringAndSize(<const char*>p + start, length)
            frames.append(_new_frame(kind, flags, _load_u32(h + 8), body))
            pos = start + length
        if pos < n:  # a header split across feeds: keep its first bytes, check them now
            self._frame_at = self._consumed + <uint64_t>pos
            self._hdr_len = n - pos
            memcpy(self._hdr, p + pos, self._hdr_len)
            self._check_header(self._hdr, self._hdr_len, self._frame_at)
        return n

    cdef Py_ssize_t _fill_body(self, object data, const unsigned char* p, Py_ssize_t pos,
                               Py_ssize_t n, bint zero_copy, list frames) except -1:
        cdef Py_ssize_t length = self._body_len
        cdef Py_ssize_t avail = n - pos
        cdef Py_ssize_t need, stop, i
        cdef object body, piece
        cdef char* out
        if self._have == 0 and avail >= length:  # the whole body is in this chunk
            stop = pos + length
            if zero_copy and length >= C_ZERO_COPY_MIN:
                body = PyMemoryView_FromObject(data)[pos:stop]
            else:
                body = PyBytes_FromStringAndSize(<const char*>p + pos, length)
        else:
            need = length - self._have
            if avail < need:  # keep the piece; a whole immutable chunk needs no copy
                if zero_copy and avail == n:
                    self._parts.append(data)
                else:
                    self._parts.append(PyBytes_FromStringAndSize(<const char*>p + pos, avail))
                self._have += avail
                return n
            stop = pos + need
            # The one copy of a body that arrived in pieces, into its final bytes object.
            body = PyBytes_FromStringAndSize(NULL, length)
            out = PyBytes_AS_STRING(body)
            for piece in self._parts:
                memcpy(out, PyBytes_AS_STRING(piece), PyBytes_GET_SIZE(piece))
                out += PyBytes_GET_SIZE(piece)
            if RAPIDRPC_DEBUG and out + need != PyBytes_AS_STRING(body) + length:
                raise AssertionError("framing: body pieces do not add up to the body length")
            memcpy(out, p + pos, need)
            self._parts = []
            self._have = 0
        frames.append(_new_frame(self._kind, self._flags, self._request_id, body))
        self._state = ST_HEADER
        return stop


# --- encoders ---------------------------------------------------------------------------------
def encode_header(kind, request_id, body_length, flags=0, *,
                  max_frame_size=DEFAULT_MAX_FRAME_SIZE):
    """The 12-byte header for a body of *body_length* bytes (send the body after it).

    For scatter/gather writes of large bodies without copying them.  Raises FrameError for
    out-of-range fields or a length of 0 or above *max_frame_size*.
    """
    cdef uint32_t fields[3]
    _check_fields(kind, request_id, flags, fields)
    cdef long long limit = _limit(max_frame_size)
    cdef long long length = _as_ll(body_length)
    if length <= 0 or length > limit:
        _length_error(PyNumber_Index(body_length), limit)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, _HDR)
    _store_header(<unsigned char*>PyBytes_AS_STRING(out), <uint32_t>length,
                  fields[0], fields[2], fields[1])
    return out


def encode_frame(kind, request_id, body, flags=0, *, max_frame_size=DEFAULT_MAX_FRAME_SIZE):
    """One frame (header + *body*) as bytes.

    *body* is any non-empty C-contiguous bytes-like object of at most *max_frame_size*
    bytes (pass the peer's announced limit).  Raises FrameError for bad fields or sizes and
    TypeError for a body that is not bytes-like.
    """
    cdef uint32_t fields[3]
    cdef Py_buffer view
    cdef const char* src
    cdef Py_ssize_t size
    cdef bytes out
    cdef char* o
    _check_fields(kind, request_id, flags, fields)
    cdef long long limit = _limit(max_frame_size)
    if PyBytes_CheckExact(body):
        size = PyBytes_GET_SIZE(body)
        _check_length(size, limit)
        out = PyBytes_FromStringAndSize(NULL, _HDR + size)
        o = PyBytes_AS_STRING(out)
        _store_header(<unsigned char*>o, <uint32_t>size, fields[0], fields[2], fields[1])
        memcpy(o + _HDR, PyBytes_AS_STRING(body), size)
        return out
    _get_buffer(body, &view)
    try:
        _check_length(view.len, limit)
        out = PyBytes_FromStringAndSize(NULL, _HDR + view.len)
        o = PyBytes_AS_STRING(out)
        _store_header(<unsigned char*>o, <uint32_t>view.len, fields[0], fields[2], fields[1])
        memcpy(o + _HDR, view.buf, view.len)
        return out
    finally:
        PyBuffer_Release(&view)


cdef struct _Item:
    uint32_t kind
    uint32_t flags
    uint32_t request_id
    Py_ssize_t size
    const char* data
    bint has_view
    Py_buffer view


cdef str _BAD_ITEM = ("encode_frames() items must be (kind, request_id, body[, flags]) tuples "
                      "or Frame objects")


cdef tuple _item_attrs(object item):
    """(kind, request_id, body, flags) of a Frame-like object (e.g. the other backend's)."""
    try:
        return item.kind, item.request_id, item.body, item.flags
    except AttributeError:
        raise TypeError(f"{_BAD_ITEM}, not {type(item).__name__}") from None


def encode_frames(frames, *, max_frame_size=DEFAULT_MAX_FRAME_SIZE):
    """Many frames in one bytes object (one write for a batch).

    Items are ``(kind, request_id, body[, flags])`` tuples or Frame objects (of either
    backend); each is validated like :func:`encode_frame`.
    """
    cdef long long limit = _limit(max_frame_size)
    # Our own list: nothing else can drop an item while we hold borrowed references into it.
    cdef list seq = list(frames)
    cdef list keep = None  # owns bodies fetched from Frame-like objects until copied
    cdef Py_ssize_t count = len(seq)
    cdef Py_ssize_t i, n, done = 0, total = 0
    cdef uint32_t fields[3]
    cdef _Item* items
    cdef _Item* it
    cdef object item, body
    cdef tuple tup
    cdef Frame frame
    cdef bytes out
    cdef char* o
    if count == 0:
        return b""
    items = <_Item*>PyMem_Malloc(count * sizeof(_Item))
    if items == NULL:
        raise MemoryError()
    try:
        # Pass 1: validate, size, and pin every body (a bytearray body stays locked by its
        # buffer view, so no Python code run here can resize it before pass 2 copies it).
        for i in range(count):
            it = &items[i]
            it.has_view = False
            item = <object>PyList_GET_ITEM(seq, i)
            if type(item) is Frame:  # validated when built; its fields cannot change
                frame = <Frame>item
                fields[0] = frame._kind
                fields[1] = frame._request_id
                fields[2] = frame._flags
                body = frame._body
            elif PyTuple_Check(item):
                tup = <tuple>item
                n = PyTuple_GET_SIZE(tup)
                if n != 3 and n != 4:
                    raise TypeError(f"{_BAD_ITEM}, got a tuple of {n} items")
                _check_fields(<object>PyTuple_GET_ITEM(tup, 0), <object>PyTuple_GET_ITEM(tup, 1),
                              <object>PyTuple_GET_ITEM(tup, 3) if n == 4 else 0, fields)
                body = <object>PyTuple_GET_ITEM(tup, 2)
            else:
                kind, request_id, body, flags = _item_attrs(item)
                _check_fields(kind, request_id, flags, fields)
                if keep is None:
                    keep = []
                keep.append(body)
            if PyBytes_CheckExact(body):
                it.data = PyBytes_AS_STRING(body)
                it.size = PyBytes_GET_SIZE(body)
            else:
                _get_buffer(body, &it.view)
                it.has_view = True
                it.data = <const char*>it.view.buf
                it.size = it.view.len
            done = i + 1
            _check_length(it.size, limit)
            it.kind = fields[0]
            it.request_id = fields[1]
            it.flags = fields[2]
            total += _HDR + it.size
        # Pass 2: one allocation, then copy.
        out = PyBytes_FromStringAndSize(NULL, total)
        o = PyBytes_AS_STRING(out)
        for i in range(count):
            it = &items[i]
            _store_header(<unsigned char*>o, <uint32_t>it.size, it.kind, it.flags,
                          it.request_id)
            memcpy(o + _HDR, it.data, it.size)
            o += _HDR + it.size
        return out
    finally:
        for i in range(done):
            if items[i].has_view:
                PyBuffer_Release(&items[i].view)
        PyMem_Free(items)


def encode_preface():
    """The connection preface this side sends first (``PREFACE``)."""
    return PREFACE
