# Compiled as rapidrpc.transport._eventloop_c; directives come from setup.py.
"""Compiled server loop: the twin of rapidrpc/transport/eventloop.py (same API and behaviour).

One thread runs :meth:`EventLoop.run` over a level-triggered Linux epoll, calling the kernel
directly (``accept4``, ``recv``, ``send``/``sendmsg``) on raw file descriptors.  The GIL is
released around ``epoll_wait`` only, so ``stop()`` from another thread and ``blocking=True``
handlers in the thread pool keep running while the loop sleeps.

Per connection there is a C read buffer and a C output queue (bytes copied into one growing
buffer, large bodies referenced and written with ``sendmsg`` without a copy); every
connection with output gets one write per loop turn.

**Protocol.** Each connection has the same :class:`~rapidrpc.core.protocol.ServerConnection`
as in the pure loop, and the handshake goes through it.  Once the handshake is done and its
parser holds no partial frame, this module cuts frames itself and runs the **fast path** for
the common request (inline handler, nothing else in flight, no goaway, well-formed envelope):
decode, look the method up in the dispatcher's live table, call it, pack the result and append
header + body to the output queue, without building events.  Every other frame -- pings,
cancels, settings, notifications, blocking handlers, requests while others are in flight,
anything malformed -- is handed to ``ServerConnection.receive_data`` one frame at a time and
its events are handled exactly as the pure loop handles them.  When the fast path cannot answer
(the handler raised, the result is unencodable or too large) it registers the call with
``ServerConnection.begin_call`` and answers through ``send_exception``/``send_response``, so
error replies are built in one place.

Semantics kept from the pure loop, on purpose: a bad frame header anywhere in a received chunk
drops every frame of that chunk (the FrameParser raises for the whole feed); header errors name
the same stream offset; backpressure stops handling a chunk at the high-water mark and resumes
before reading more; all limits, timers, keepalive and graceful stop are ported one to one.
"""

cimport cython
from cpython.buffer cimport PyBUF_READ
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.exc cimport PyErr_CheckSignals
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.long cimport PyLong_AsDouble
from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.object cimport PyObject, PyObject_Call, PyObject_IsTrue
from cpython.tuple cimport PyTuple_GET_ITEM
from cpython.unicode cimport PyUnicode_DATA, PyUnicode_GET_LENGTH, PyUnicode_KIND
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.errno cimport (
    ECONNABORTED,
    EINTR,
    EMFILE,
    ENFILE,
    ENOBUFS,
    ENOMEM,
    EPERM,
    EPROTO,
    errno,
)
from libc.math cimport ceil
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcmp, memcpy, memmove, memset, strerror
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.uio cimport iovec
from posix.unistd cimport close, read, write

from netio cimport (
    EFD_CLOEXEC,
    EFD_NONBLOCK,
    EPOLL_CLOEXEC,
    EPOLL_CTL_ADD,
    EPOLL_CTL_DEL,
    EPOLL_CTL_MOD,
    EPOLLERR,
    EPOLLHUP,
    EPOLLIN,
    EPOLLOUT,
    IOV_MAX,
    IPPROTO_TCP,
    MSG_DONTWAIT,
    MSG_NOSIGNAL,
    SHUT_WR,
    SOCK_CLOEXEC,
    SOCK_NONBLOCK,
    TCP_NODELAY,
    accept4,
    epoll_create1,
    epoll_ctl,
    epoll_event,
    epoll_wait,
    eventfd,
    msghdr,
    recv,
    send,
    sendmsg,
    setsockopt,
    shutdown,
)
from serializer_api cimport SerializerAPI, import_serializer_api

import logging
import socket
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from rapidrpc.core.protocol import ServerConnection
from rapidrpc.errors import (
    DeadlineExceeded,
    FrameError,
    MethodNotFound,
    ProtocolError,
    StatusCode,
)
from rapidrpc.transport import signal_wakeup
from rapidrpc.transport.eventloop import ServerConfig
from rapidrpc.wire import _framing_text as _text
from rapidrpc.wire import _serializer_c
from rapidrpc.wire import constants as _const

__all__ = ["EventLoop", "ServerConfig", "serve"]

cdef extern from "Python.h":
    object PyObject_Vectorcall(object callable, PyObject** args, size_t nargsf,
                               PyObject* kwnames)
    PyObject** PySequence_Fast_ITEMS(object seq)
    bint PyUnicode_IS_COMPACT_ASCII(object o)

cdef extern from "serializer_endian.h":
    double rr_load_double(const unsigned char* p)  # a big-endian IEEE double, unaligned

cdef extern from *:
    """
    #include <errno.h>
    #define RR_WOULD_BLOCK(e) ((e) == EAGAIN || (e) == EWOULDBLOCK)
    """
    # EAGAIN and EWOULDBLOCK may be one number (a C switch over both would not compile).
    bint RR_WOULD_BLOCK(int err) nogil

cdef extern from *:
    """
    #ifndef RAPIDRPC_DEBUG
    #define RAPIDRPC_DEBUG 0
    #endif
    """
    # setup.py defines it (RAPIDRPC_DEBUG=1 builds): invariant checks, compiled out otherwise.
    const int RAPIDRPC_DEBUG

_log = logging.getLogger("rapidrpc.server")

# --- numbers from constants.py, as C globals ------------------------------------------------
cdef enum:
    _HDR = 12  # the header layout below is this code; refuse to load on another one
if _const.HEADER_SIZE != _HDR:
    raise ImportError("rapidrpc.transport._eventloop_c implements a 12-byte header, constants "
                      f"say {_const.HEADER_SIZE}: rebuild the extension")
cdef uint32_t K_REQUEST = _const.KIND_REQUEST
cdef uint32_t K_RESPONSE = _const.KIND_RESPONSE
cdef uint32_t K_NOTIFICATION = _const.KIND_NOTIFICATION
cdef uint32_t K_CANCEL = _const.KIND_CANCEL
cdef uint32_t C_MAX_KIND = _const.MAX_KIND
cdef uint32_t C_KNOWN_FLAGS = _const.KNOWN_FLAGS
cdef Py_ssize_t C_ZERO_COPY = _const.ZERO_COPY_MIN_BODY
cdef object _OK = StatusCode.OK
# The compiled serializer's C entry points (used when the server runs on that serializer).
cdef SerializerAPI* _ser = import_serializer_api()
cdef object _INTERNAL = StatusCode.INTERNAL
cdef object _CANCELLED = StatusCode.CANCELLED

cdef enum:
    RECV_SIZE = 256 * 1024       # one recv per ready connection per turn, like the pure loop
    MAX_EVENTS = 512
    ACCEPTS_PER_TURN = 64
    SMALL_BODY = 512             # request bodies below this are copied for decoding, not viewed
    KEEP_IN = 4 * 1024 * 1024    # read buffers above this are freed once empty
    KEEP_OUT = 1024 * 1024       # output buffers above this are freed once drained
    MIN_ROOM = 64 * 1024         # grow the read buffer when less room than this is left
    HS_PREFIX = 20               # preface (8) + the first frame header (12)
if _const.PREFACE_SIZE + _HDR != HS_PREFIX:
    raise ImportError("rapidrpc.transport._eventloop_c expects an 8-byte preface, constants "
                      f"say {_const.PREFACE_SIZE}: rebuild the extension")

# _plain_request's answer for a request it leaves to the general path (besides True/False).
cdef enum:
    _NOT_PLAIN = 2

# Results of handling a run of events.
cdef enum:
    DONE = 0
    PAUSED = 1
    FAILED = 2

cdef unsigned char BIN32 = _const.BIN32_MARKER
cdef Py_ssize_t BIN32_MIN = _const.BIN32_MIN_LENGTH  # shorter bytes are not bin 32
cdef Py_ssize_t BIN32_MAX = _const.MAX_BODY_LENGTH - 5  # longest bytes whose bin 32 body fits a frame
cdef double NO_TIME = -1.0    # "None" for the optional timestamps (monotonic time is >= 0)
cdef int _IOV_CAP = IOV_MAX if IOV_MAX < 1024 else 1024
cdef str _TIMEOUT_KEY = "timeout"


# --- small C helpers ------------------------------------------------------------------------
cdef inline double _now() noexcept nogil:
    """time.monotonic() (CLOCK_MONOTONIC), without a Python call."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef inline uint32_t _load_u32(const unsigned char* p) noexcept nogil:
    return ((<uint32_t>p[0]) << 24) | ((<uint32_t>p[1]) << 16) | ((<uint32_t>p[2]) << 8) | p[3]


cdef inline void _store_u32(unsigned char* p, uint32_t v) noexcept nogil:
    p[0] = <unsigned char>(v >> 24)
    p[1] = <unsigned char>(v >> 16)
    p[2] = <unsigned char>(v >> 8)
    p[3] = <unsigned char>v


cdef inline void _store_header(unsigned char* o, uint32_t length, uint32_t kind,
                               uint32_t request_id) noexcept nogil:
    _store_u32(o, length)
    o[4] = <unsigned char>kind
    o[5] = 0
    o[6] = 0
    o[7] = 0
    _store_u32(o + 8, request_id)


cdef inline bint _bad_header(const unsigned char* h, uint32_t limit) noexcept nogil:
    """One branch for every check of a whole header (unsigned wrap makes 0 huge)."""
    cdef uint32_t length = _load_u32(h)
    return (((length - 1u) >= limit) | ((h[4] - 1u) >= C_MAX_KIND)
            | ((h[5] & ~C_KNOWN_FLAGS) != 0) | ((h[6] | h[7]) != 0))


cdef str _header_error(const unsigned char* h, Py_ssize_t size, uint64_t at, uint32_t limit):
    """The FrameParser's message for the first bad field among *size* header bytes, or None.

    Same checks in the same order as the framing twins, same texts (_framing_text).
    """
    cdef uint32_t length, reserved
    if size >= 4:
        length = _load_u32(h)
        if length == 0:
            return _text.at_header(at, _text.empty_body())
        if length > limit:
            return _text.at_header(at, _text.body_too_large(length, limit))
    if size >= 5 and (h[4] < 1 or h[4] > C_MAX_KIND):
        return _text.at_header(at, _text.bad_kind(h[4]))
    if size >= 6 and (h[5] & ~C_KNOWN_FLAGS):
        return _text.at_header(at, _text.bad_flags(h[5]))
    if size >= 8:
        reserved = ((<uint32_t>h[6]) << 8) | h[7]
        if reserved:
            return _text.at_header(at, _text.bad_reserved(reserved))
    return None


cdef str _scan_headers(const unsigned char* p, Py_ssize_t n, uint64_t at, uint32_t limit,
                       Py_ssize_t* partial):
    """Check every frame header in p[0:n] (a chunk starting at a frame boundary).

    Returns the FrameParser's message for the first bad one (or None) and sets *partial to
    the bytes of the incomplete frame at the end.  Each header is checked as soon as its
    bytes are there, like the parser, which refuses the whole feed when one is bad.
    """
    cdef Py_ssize_t pos = 0
    cdef uint32_t length
    while n - pos >= _HDR:
        if _bad_header(p + pos, limit):
            return _header_error(p + pos, _HDR, at + <uint64_t>pos, limit)
        length = _load_u32(p + pos)
        if n - pos - _HDR < <Py_ssize_t>length:
            break
        pos += _HDR + length
    partial[0] = n - pos
    if 0 < n - pos < _HDR:
        return _header_error(p + pos, n - pos, at + <uint64_t>pos, limit)
    return None


cdef OSError _os_error(int err):
    return OSError(err, strerror(err).decode("utf-8", "replace"))


# --- read buffer ------------------------------------------------------------------------------
cdef struct InBuf:
    char* buf
    Py_ssize_t cap
    Py_ssize_t start     # first byte not handled yet
    Py_ssize_t end       # end of the received bytes


cdef int _in_make_room(InBuf* b, Py_ssize_t cap_limit) except -1:
    """Move pending bytes to the front and make room for a recv (geometric growth).

    Pending bytes are at most one partial frame when the loop reads, so growth follows
    received bytes (at most double them plus one recv), never a length a peer merely declared.
    """
    cdef Py_ssize_t cap
    cdef char* p
    if b.start:
        memmove(b.buf, b.buf + b.start, b.end - b.start)
        b.end -= b.start
        b.start = 0
    if b.cap - b.end >= MIN_ROOM:
        return 0
    cap = b.cap * 2
    if cap < b.end + RECV_SIZE:
        cap = b.end + RECV_SIZE
    if cap > cap_limit:
        cap = cap_limit
    if cap <= b.cap:
        if b.cap > b.end:
            return 0
        raise AssertionError("rapidrpc loop: read buffer full")  # cannot happen: see above
    p = <char*>realloc(b.buf, cap)
    if p == NULL:
        raise MemoryError()
    b.buf = p
    b.cap = cap
    return 0


cdef int _in_keep(InBuf* b, const char* data, Py_ssize_t n) except -1:
    """Store *n* bytes that arrived in the shared buffer as this connection's pending bytes."""
    cdef Py_ssize_t cap
    cdef char* p
    if RAPIDRPC_DEBUG and b.start != b.end:
        raise AssertionError("rapidrpc loop: keeping bytes over pending ones")
    if b.cap < n:
        cap = n if n > 16384 else 16384
        p = <char*>realloc(b.buf, cap)
        if p == NULL:
            raise MemoryError()
        b.buf = p
        b.cap = cap
    memcpy(b.buf, data, n)
    b.start = 0
    b.end = n
    return 0


cdef inline void _in_consumed(InBuf* b, Py_ssize_t pos) noexcept:
    b.start = pos
    if b.start == b.end:
        b.start = b.end = 0
        if b.cap > KEEP_IN:
            free(b.buf)
            b.buf = NULL
            b.cap = 0


cdef void _in_free(InBuf* b) noexcept:
    free(b.buf)
    b.buf = NULL
    b.cap = b.start = b.end = 0


cdef int _drain_socket(object sock) except -1:
    """Read a non-blocking socket until it is empty (signal wakeup bytes)."""
    try:
        while sock.recv(4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass
    return 0


# --- output queue -------------------------------------------------------------------------------
cdef struct Seg:
    PyObject* obj        # owned reference for an object segment; NULL: a range of OutQ.buf
    const char* ptr      # object segment: next byte to send
    Py_ssize_t start     # buffer segment: offset of the next byte to send in OutQ.buf
    Py_ssize_t size      # bytes left to send


cdef struct OutQ:
    char* buf            # small frames, copied in (asyncpg WriteBuffer style)
    Py_ssize_t cap
    Py_ssize_t used      # bytes written into buf
    Seg* segs            # what to send, in order: ranges of buf and referenced large bodies
    Py_ssize_t head
    Py_ssize_t count
    Py_ssize_t seg_cap
    Py_ssize_t size      # bytes queued in all segments


cdef Seg* _out_new_seg(OutQ* q) except NULL:
    cdef Py_ssize_t cap
    cdef Seg* p
    if q.head + q.count == q.seg_cap:
        if q.head:
            memmove(q.segs, q.segs + q.head, q.count * sizeof(Seg))
            q.head = 0
        else:
            cap = q.seg_cap * 2 if q.seg_cap else 8
            p = <Seg*>realloc(q.segs, cap * sizeof(Seg))
            if p == NULL:
                raise MemoryError()
            q.segs = p
            q.seg_cap = cap
    q.count += 1
    return &q.segs[q.head + q.count - 1]


cdef char* _out_reserve(OutQ* q, Py_ssize_t n) except NULL:
    """Room for *n* bytes at the end of the queue (the caller writes them all)."""
    cdef Py_ssize_t low, i, cap
    cdef Seg* s
    cdef char* p
    if q.cap - q.used < n:
        # Reclaim the sent prefix of the buffer: the first buffer segment starts lowest.
        low = q.used
        for i in range(q.head, q.head + q.count):
            if q.segs[i].obj == NULL:
                low = q.segs[i].start
                break
        if low and q.cap - q.used + low >= n:
            memmove(q.buf, q.buf + low, q.used - low)
            q.used -= low
            for i in range(q.head, q.head + q.count):
                if q.segs[i].obj == NULL:
                    q.segs[i].start -= low
        else:
            cap = q.cap * 2
            if cap < q.used + n:
                cap = q.used + n
            if cap < 4096:
                cap = 4096
            p = <char*>realloc(q.buf, cap)
            if p == NULL:
                raise MemoryError()
            q.buf = p
            q.cap = cap
    s = &q.segs[q.head + q.count - 1] if q.count else NULL
    if s == NULL or s.obj != NULL or s.start + s.size != q.used:
        s = _out_new_seg(q)
        s.obj = NULL
        s.ptr = NULL
        s.start = q.used
        s.size = 0
    s.size += n
    p = q.buf + q.used
    q.used += n
    q.size += n
    return p


cdef int _out_append(OutQ* q, const char* data, Py_ssize_t n) except -1:
    memcpy(_out_reserve(q, n), data, n)
    return 0


cdef int _out_append_object(OutQ* q, object obj, const char* data, Py_ssize_t n) except -1:
    """Queue *n* bytes at *data*, owned by *obj* (kept alive until sent): no copy."""
    cdef Seg* s = _out_new_seg(q)
    Py_INCREF(obj)
    s.obj = <PyObject*>obj
    s.ptr = data
    s.start = 0
    s.size = n
    q.size += n
    return 0


cdef int _out_iov(OutQ* q, iovec* iov) noexcept:
    cdef int n = 0
    cdef Py_ssize_t i
    cdef Seg* s
    for i in range(q.head, q.head + q.count):
        if n == _IOV_CAP:
            break
        s = &q.segs[i]
        iov[n].iov_base = <void*>(s.ptr if s.obj != NULL else q.buf + s.start)
        iov[n].iov_len = s.size
        n += 1
    return n


cdef void _out_consume(OutQ* q, Py_ssize_t n) noexcept:
    """Drop *n* sent bytes from the front of the queue."""
    cdef Seg* s
    q.size -= n
    while n and q.count:
        s = &q.segs[q.head]
        if s.size > n:
            s.size -= n
            if s.obj != NULL:
                s.ptr += n
            else:
                s.start += n
            return
        n -= s.size
        if s.obj != NULL:
            Py_DECREF(<object>s.obj)
        q.head += 1
        q.count -= 1
    if q.count == 0:
        q.head = 0
        q.used = 0
        if q.cap > KEEP_OUT:
            free(q.buf)
            q.buf = NULL
            q.cap = 0


cdef void _out_clear(OutQ* q) noexcept:
    cdef Py_ssize_t i
    for i in range(q.head, q.head + q.count):
        if q.segs[i].obj != NULL:
            Py_DECREF(<object>q.segs[i].obj)
    q.head = q.count = q.used = q.size = 0


cdef void _out_free(OutQ* q) noexcept:
    _out_clear(q)
    free(q.buf)
    free(q.segs)
    q.buf = NULL
    q.segs = NULL
    q.cap = q.seg_cap = 0


# --- connections ------------------------------------------------------------------------------
@cython.final
cdef class _Conn:
    """Per-connection driver state (the protocol state lives in ``proto``)."""

    cdef int fd
    cdef object proto            # ServerConnection
    cdef dict futures            # request id -> Future of a blocking handler
    cdef object backlog          # event iterator left unfinished by a pause, or None
    cdef bint fast               # frames are cut here (handshake done), not by proto's parser
    cdef bint fast_ok            # proto has no error and sent no goaway
    cdef bint held               # paused mid-chunk: events/frames wait before any new read
    cdef bint paused
    cdef bint closing
    cdef bint closed
    cdef bint shut_wr
    cdef bint dirty
    cdef bint resume_queued
    cdef int mask
    cdef Py_ssize_t nblocking    # blocking calls handed to the pool, not reported back yet
    cdef long long peer_max      # proto.peer_max_frame_size
    cdef long long last_rid      # proto.last_request_id (ahead of it while rid_dirty)
    cdef bint rid_dirty          # last_rid not written to proto yet
    cdef double created
    cdef double last_recv
    cdef double last_call
    cdef double close_at
    cdef double partial_since    # NO_TIME unless an incomplete frame is buffered
    cdef double write_stalled    # NO_TIME unless output waits for the peer
    cdef double ping_at          # NO_TIME unless a keepalive ping is unanswered
    cdef uint64_t stream_off     # stream offset of the first byte not handled yet
    cdef unsigned char hs[HS_PREFIX]  # the stream's first bytes: where the handshake ends
    cdef Py_ssize_t hs_len
    cdef InBuf inb
    cdef OutQ out

    def __cinit__(self):
        memset(&self.inb, 0, sizeof(InBuf))
        memset(&self.out, 0, sizeof(OutQ))

    def __dealloc__(self):
        _in_free(&self.inb)
        _out_free(&self.out)


cdef tuple _as_tuple(PyObject** items, Py_ssize_t n):
    """A tuple of the *n* objects at *items*."""
    return tuple([<object>items[i] for i in range(n)])


cdef inline bint _same_str(object a, object b) noexcept:
    """a == b for two exact str objects, without the rich-comparison machinery."""
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(a)
    return (n == PyUnicode_GET_LENGTH(b) and PyUnicode_KIND(a) == PyUnicode_KIND(b)
            and memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), n * PyUnicode_KIND(a)) == 0)


# --- the loop ---------------------------------------------------------------------------------
@cython.final
cdef class EventLoop:
    """Serve *dispatcher* on the listening socket *listener* until :meth:`stop`.

    The compiled twin of :class:`rapidrpc.transport.eventloop.EventLoop` (same constructor,
    methods and behaviour); it runs on epoll only, so *use_epoll* must be None or True and
    *selector_cls* None.  The loop owns *listener* from :meth:`run` on and closes it when it
    stops.
    """

    cdef readonly object config
    cdef readonly object dispatcher
    cdef readonly dict stats
    cdef object _listener
    cdef object _stop_event
    cdef double _stop_event_grace
    cdef dict _conns             # fd -> _Conn
    cdef list _by_fd             # fd -> _Conn or None (event lookup without hashing)
    cdef list _dirty
    cdef list _resume
    cdef object _pool
    cdef object _done            # deque of (conn, kind, request id, future) from pool threads
    cdef int _ep
    cdef int _wake_fd
    cdef bint _wake_pending
    cdef bint _stop_requested
    cdef double _stop_grace
    cdef double _stop_at
    cdef double _accept_paused_until
    cdef object _running
    cdef object _finished
    cdef dict _proto_kw
    cdef bytes _refusal
    cdef dict _table             # the dispatcher's live name -> Method table
    cdef object _last_entry      # the Method the last fast-path call found, or None
    cdef object _lookup
    cdef object _invoke
    cdef object _argument_error
    cdef object _loads
    cdef bint _default_depth
    cdef object _max_depth
    cdef object _dumps
    cdef bint _c_ser             # _loads/_dumps are the compiled serializer's: use _ser
    cdef Py_ssize_t _c_max_depth
    cdef Py_ssize_t _high_water
    cdef Py_ssize_t _max_output
    cdef Py_ssize_t _in_cap_limit
    cdef uint32_t _max_frame
    cdef double _sweep_every
    cdef double _idle_timeout
    cdef double _handshake_timeout
    cdef double _frame_timeout
    cdef double _keepalive
    cdef double _linger
    cdef char* _scratch

    def __cinit__(self):
        self._ep = -1
        self._wake_fd = -1
        self._scratch = NULL

    def __init__(self, listener, dispatcher, config=None, *, use_epoll=None,
                 selector_cls=None, stop_event=None, grace=0.0):
        if use_epoll is False or selector_cls is not None:
            raise ValueError("the compiled loop runs on epoll only; use "
                             "rapidrpc.transport.eventloop.EventLoop for selectors")
        self.config = cfg = config or ServerConfig()
        self.dispatcher = dispatcher
        self._stop_event = stop_event
        self._stop_event_grace = grace
        self._listener = listener
        listener.setblocking(False)
        self._conns = {}
        self._by_fd = []
        self._dirty = []
        self._resume = []
        self._pool = None
        self._done = deque()
        self._wake_pending = False
        self._stop_requested = False
        self._stop_grace = 0.0
        self._stop_at = NO_TIME
        self._accept_paused_until = NO_TIME
        self._running = threading.Event()
        self._finished = threading.Event()
        self._proto_kw = {
            "serializer": cfg.serializer,
            "framing": cfg.framing,
            "max_frame_size": cfg.max_frame_size,
            "max_inflight": cfg.max_inflight,
            "max_depth": cfg.max_depth,
        }
        # The same bytes the pure loop sends to a connection over the limit.
        refuser = ServerConnection(**self._proto_kw)
        refuser.refuse(StatusCode.RESOURCE_EXHAUSTED, "server has too many connections")
        self._refusal = refuser.data_to_send()
        if cfg.serializer is None:
            from rapidrpc.wire import serializer as wire_serializer
        else:
            wire_serializer = cfg.serializer
        self._loads = wire_serializer.loads
        self._dumps = wire_serializer.dumps
        # The protocol passes max_depth only when it is not the default: so do we.
        self._default_depth = cfg.max_depth == _const.DEFAULT_MAX_DEPTH
        self._max_depth = cfg.max_depth
        self._c_max_depth = cfg.max_depth
        self._c_ser = self._loads is _serializer_c.loads and self._dumps is _serializer_c.dumps
        self._table = dispatcher.table
        self._lookup = dispatcher.lookup
        self._invoke = dispatcher.invoke
        self._argument_error = dispatcher.argument_error
        self._max_frame = cfg.max_frame_size
        self._in_cap_limit = _HDR + <Py_ssize_t>cfg.max_frame_size + RECV_SIZE
        # Pause reading before the output cap can be reached (see the pure loop).
        self._high_water = min(cfg.high_water, cfg.max_frame_size)
        self._max_output = cfg.max_output
        self._idle_timeout = cfg.idle_timeout or 0.0
        self._handshake_timeout = cfg.handshake_timeout
        self._frame_timeout = cfg.frame_timeout
        self._keepalive = cfg.keepalive or 0.0
        self._linger = cfg.linger
        timeouts = [t for t in (cfg.idle_timeout, cfg.handshake_timeout, cfg.frame_timeout,
                                cfg.keepalive, cfg.linger) if t]
        self._sweep_every = max(0.01, min([1.0] + [t / 4 for t in timeouts]))
        self.stats = {"accepted": 0, "rejected": 0, "protocol_errors": 0, "accept_paused": 0}
        self._scratch = <char*>realloc(NULL, RECV_SIZE)
        if self._scratch == NULL:
            raise MemoryError()
        self._ep = epoll_create1(EPOLL_CLOEXEC)
        if self._ep < 0:
            raise _os_error(errno)
        self._wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self._wake_fd < 0:
            raise _os_error(errno)

    def __dealloc__(self):
        free(self._scratch)
        if self._ep >= 0:
            close(self._ep)
        if self._wake_fd >= 0:
            close(self._wake_fd)

    # --- public control -------------------------------------------------------------------

    @property
    def poller_kind(self):
        """``"epoll"`` (the compiled loop has no selectors mode)."""
        return "epoll"

    @property
    def connection_count(self):
        """Open connections (including ones closing)."""
        return len(self._conns)

    def wait_running(self, timeout=None):
        """Block until :meth:`run` is polling; False on timeout."""
        return self._running.wait(timeout)

    def stop(self, grace=0.0):
        """Ask the loop to stop (thread-safe, returns at once).

        Stop accepting, send every connection a goaway, let in-flight calls finish for up
        to *grace* seconds, then close everything and return from :meth:`run`.
        """
        self._stop_grace = max(0.0, grace)
        self._stop_requested = True
        self._wake()

    def join(self, timeout=None):
        """Wait until :meth:`run` has returned; False on timeout."""
        return self._finished.wait(timeout)

    # --- main loop ------------------------------------------------------------------------

    def run(self):
        """Run until stopped; always releases every socket, fd and thread it created."""
        cdef epoll_event events[MAX_EVENTS]
        cdef int lfd = self._listener.fileno()
        cdef int wfd = self._wake_fd
        cdef int ep = self._ep
        cdef int n, i, fd, ms
        cdef int sfd = -1
        cdef uint32_t mask
        cdef double next_sweep, wake_at, timeout, now
        cdef _Conn conn
        # In the main thread, signals write a byte to a socketpair we watch (signal_wakeup:
        # the eventfd above takes only 8-byte writes), so a signal that lands just before
        # epoll_wait still wakes it; PyErr_CheckSignals below then runs the handler.
        sig_r = sig_w = previous_wakeup = None
        if threading.current_thread() is threading.main_thread():
            sig_r, sig_w = socket.socketpair()
            sig_r.setblocking(False)
            sig_w.setblocking(False)
            previous_wakeup = signal_wakeup.install(sig_w.fileno())
            sfd = sig_r.fileno()
        try:
            self._ctl(EPOLL_CTL_ADD, lfd, EPOLLIN)
            self._ctl(EPOLL_CTL_ADD, wfd, EPOLLIN)
            if sfd >= 0:
                self._ctl(EPOLL_CTL_ADD, sfd, EPOLLIN)
            self._running.set()
            next_sweep = _now() + self._sweep_every
            while True:
                wake_at = next_sweep
                if self._stop_at != NO_TIME and self._stop_at < wake_at:
                    wake_at = self._stop_at  # the end of the grace period
                if self._accept_paused_until != NO_TIME:
                    if self._accept_paused_until <= _now():
                        self._resume_accept()
                    elif self._accept_paused_until < wake_at:
                        wake_at = self._accept_paused_until
                # Backlogs ready to resume are work to do now: don't sleep on them.
                if self._resume:
                    ms = 0
                else:
                    timeout = wake_at - _now()
                    ms = <int>ceil(timeout * 1000.0) if timeout > 0.0 else 0
                with nogil:
                    n = epoll_wait(ep, events, MAX_EVENTS, ms)
                if n < 0:
                    if errno != EINTR:
                        raise _os_error(errno)
                    n = 0
                # Run Python signal handlers now (they may raise KeyboardInterrupt): this C
                # loop executes no bytecode of its own, where Python would check for them.
                PyErr_CheckSignals()
                for i in range(n):
                    fd = events[i].data.fd
                    mask = events[i].events
                    if fd == lfd:
                        self._accept(lfd)
                    elif fd == wfd:
                        self._drain_wakeups()
                    elif fd == sfd:
                        _drain_socket(sig_r)
                    else:
                        if fd >= len(self._by_fd) or self._by_fd[fd] is None:
                            continue
                        conn = <_Conn>self._by_fd[fd]
                        try:
                            if mask & (EPOLLIN | EPOLLERR | EPOLLHUP):
                                self._read(conn)
                            if mask & (EPOLLOUT | EPOLLERR | EPOLLHUP) and not conn.closed:
                                self._write(conn)
                        except Exception:  # a bug must cost one connection, not the server
                            _log.exception("rapidrpc: closing a connection after an error")
                            self._close(conn)
                if self._dirty:
                    self._flush_dirty()
                if self._resume:
                    self._resume_backlogs()
                now = _now()
                if now >= next_sweep:
                    next_sweep = now + self._sweep_every
                    if self._stop_event is not None and self._stop_event.is_set():
                        self.stop(self._stop_event_grace)
                    self._sweep(now)
                    if self._dirty:
                        self._flush_dirty()
                if self._stop_requested and self._stopping():
                    break
        finally:
            if sig_r is not None:
                signal_wakeup.restore(previous_wakeup)
                epoll_ctl(ep, EPOLL_CTL_DEL, sfd, NULL)
                sig_r.close()
                sig_w.close()
            self._shutdown()

    cdef int _ctl(self, int op, int fd, uint32_t mask) except -1:
        cdef epoll_event ev
        ev.events = mask
        ev.data.u64 = 0
        ev.data.fd = fd
        if epoll_ctl(self._ep, op, fd, &ev) < 0:
            raise _os_error(errno)
        return 0

    # --- accept ---------------------------------------------------------------------------

    cdef int _accept(self, int lfd) except -1:
        cdef int i, fd, one = 1
        cdef _Conn conn
        for i in range(ACCEPTS_PER_TURN):
            fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if fd < 0:
                if errno == EINTR:
                    continue
                if RR_WOULD_BLOCK(errno):
                    return 0
                if errno == EMFILE or errno == ENFILE or errno == ENOBUFS or errno == ENOMEM:
                    # Out of fds: stop polling the listener for a while instead of spinning
                    # on a readiness we cannot consume (HOSTILE 9).
                    self._pause_accept(lfd)
                    return 0
                if errno == ECONNABORTED or errno == EPROTO or errno == EPERM:
                    continue
                raise _os_error(errno)
            if len(self._conns) >= self.config.max_connections or self._stop_at != NO_TIME:
                self._reject(fd)
                continue
            if setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0:
                close(fd)
                continue
            conn = _Conn.__new__(_Conn)
            conn.fd = fd
            conn.proto = ServerConnection(**self._proto_kw)
            conn.futures = {}
            conn.backlog = None
            conn.mask = EPOLLIN
            conn.created = conn.last_recv = conn.last_call = _now()
            conn.partial_since = conn.write_stalled = conn.ping_at = NO_TIME
            self._sync(conn)
            try:
                self._ctl(EPOLL_CTL_ADD, fd, EPOLLIN)
            except OSError:
                close(fd)
                raise
            self._conns[fd] = conn
            while len(self._by_fd) <= fd:
                self._by_fd.extend([None] * (fd + 64 - len(self._by_fd)))
            self._by_fd[fd] = conn
            self.stats["accepted"] += 1
        return 0

    cdef int _pause_accept(self, int lfd) except -1:
        self.stats["accept_paused"] += 1
        if self._accept_paused_until == NO_TIME:
            epoll_ctl(self._ep, EPOLL_CTL_DEL, lfd, NULL)
        self._accept_paused_until = _now() + 0.05
        return 0

    cdef int _resume_accept(self) except -1:
        self._accept_paused_until = NO_TIME
        if self._stop_at == NO_TIME:
            self._ctl(EPOLL_CTL_ADD, self._listener.fileno(), EPOLLIN)
        return 0

    cdef int _reject(self, int fd) except -1:
        """Refuse a connection over the limit with a preface + goaway, then close it."""
        self.stats["rejected"] += 1
        send(fd, PyBytes_AS_STRING(self._refusal), PyBytes_GET_SIZE(self._refusal),
             MSG_NOSIGNAL | MSG_DONTWAIT)
        shutdown(fd, SHUT_WR)
        close(fd)
        return 0

    # --- reading --------------------------------------------------------------------------

    cdef int _read(self, _Conn conn) except -1:
        cdef char* target
        cdef Py_ssize_t room, n
        cdef bint scratch
        cdef double now
        if conn.held:
            return 0  # finish the chunk already read first (reading is paused anyway)
        if conn.inb.start == conn.inb.end and conn.inb.cap < RECV_SIZE:
            # Nothing pending: read into the loop's buffer; only a tail is ever copied.
            target = self._scratch
            room = RECV_SIZE
            scratch = True
        else:
            _in_make_room(&conn.inb, self._in_cap_limit)
            target = conn.inb.buf + conn.inb.end
            room = conn.inb.cap - conn.inb.end
            scratch = False
        while True:
            n = recv(conn.fd, target, room, 0)
            if n >= 0 or errno != EINTR:
                break
        if n < 0:
            if not RR_WOULD_BLOCK(errno):
                self._close(conn)
            return 0
        if n == 0:  # peer closed: a partial frame is dropped with the connection
            self._close(conn)
            return 0
        now = _now()
        conn.last_recv = now
        if conn.closing:  # draining input until the peer's EOF; never parse it
            return 0
        if scratch:
            return self._consume(conn, target, 0, n, True, now)
        conn.inb.end += n
        return self._consume(conn, conn.inb.buf, conn.inb.start, conn.inb.end, False, now)

    cdef int _consume(self, _Conn conn, char* base, Py_ssize_t s, Py_ssize_t e, bint scratch,
                      double now) except -1:
        """Handle received bytes base[s:e] (the shared buffer, or the connection's own)."""
        if conn.fast:
            return self._consume_frames(conn, base, s, e, scratch, now)
        return self._consume_proto(conn, base, s, e, scratch, now)

    cdef int _consume_proto(self, _Conn conn, char* base, Py_ssize_t s, Py_ssize_t e,
                            bint scratch, double now) except -1:
        """Before the fast path: bytes go to the ServerConnection, as in the pure loop.

        The first frame after the preface (the client's settings) ends the handshake, so
        bytes are fed only up to its end: the parser is then at a frame boundary and the
        rest of the chunk can take the fast path.
        """
        cdef object proto = conn.proto
        cdef Py_ssize_t cut = e - s, take, partial = 0
        cdef uint32_t length
        cdef uint64_t boundary
        cdef int result
        if conn.hs_len < HS_PREFIX:
            take = min(HS_PREFIX - conn.hs_len, e - s)
            memcpy(conn.hs + conn.hs_len, base + s, take)
            conn.hs_len += take
            if conn.hs_len == HS_PREFIX:
                length = _load_u32(conn.hs + HS_PREFIX - _HDR)
                if 0 < length <= self._max_frame:
                    boundary = HS_PREFIX + length
                    if boundary - conn.stream_off < <uint64_t>cut:
                        cut = <Py_ssize_t>(boundary - conn.stream_off)
                        # A bad header further on fails the whole feed in the pure loop,
                        # handshake included: then feed it whole so the protocol says so.
                        if _scan_headers(<const unsigned char*>base + s + cut, e - s - cut,
                                         boundary, self._max_frame, &partial) is not None:
                            cut = e - s
        data = PyBytes_FromStringAndSize(base + s, cut)
        conn.stream_off += <uint64_t>cut
        # Keep the rest in the connection's buffer before any handler runs.
        if scratch:
            if cut < e - s:
                _in_keep(&conn.inb, base + s + cut, e - s - cut)
        else:
            _in_consumed(&conn.inb, s + cut)
        self._sync_rid(conn)
        try:
            events = proto.receive_data(data)
        except ProtocolError:
            self._take_output(conn)
            self._sync(conn)
            self.stats["protocol_errors"] += 1
            self._begin_close(conn, now, -1.0)
            return 0
        if proto.buffered:
            if conn.partial_since == NO_TIME:
                conn.partial_since = now
        else:
            conn.partial_since = NO_TIME
        self._take_output(conn)  # our preface and settings, once the client's preface came
        result = self._run_events(conn, events)
        if result != DONE or conn.closing or conn.closed:
            return 0
        if proto.handshake_complete and not proto.buffered and proto.error is None:
            conn.fast = True  # at a frame boundary after the handshake: cut frames here
        if conn.inb.start < conn.inb.end:
            return self._consume(conn, conn.inb.buf, conn.inb.start, conn.inb.end, False, now)
        return 0

    cdef int _consume_frames(self, _Conn conn, char* base, Py_ssize_t s, Py_ssize_t e,
                             bint scratch, double now) except -1:
        """The fast path's reader: check every header, then handle every whole frame."""
        cdef const unsigned char* h
        cdef Py_ssize_t pos = s, partial = 0, nxt
        cdef uint32_t length, kind, rid
        cdef str message
        # Pass 1: every header in the chunk, before any frame is handled (the FrameParser
        # raises for the whole feed, dropping the frames it completed in it).
        message = _scan_headers(<const unsigned char*>base + s, e - s, conn.stream_off,
                                self._max_frame, &partial)
        if message is not None:
            return self._frame_error(conn, message, now)
        if partial:
            if conn.partial_since == NO_TIME:
                conn.partial_since = now
        else:
            conn.partial_since = NO_TIME
        # Pass 2: handle the whole frames in order.
        pos = s
        while e - pos >= _HDR:
            h = <const unsigned char*>base + pos
            length = _load_u32(h)
            if e - pos - _HDR < <Py_ssize_t>length:
                break
            nxt = pos + _HDR + length
            conn.stream_off += _HDR + length
            kind = h[4]
            rid = _load_u32(h + 8)
            if not (kind == K_REQUEST
                    and self._fast_request(conn, <const char*>h + _HDR, length, rid)):
                self._delegate(conn, <const char*>h, _HDR + length)
            pos = nxt
            if conn.closed:
                return 0  # its buffers are gone
            if conn.closing:
                pos = e  # a protocol error: the rest is never handled
                break
            if conn.held or conn.out.size > self._high_water:
                # Backpressure inside one read: the rest waits until the peer reads.
                conn.held = True
                conn.paused = True
                break
        if scratch:
            if pos < e:
                _in_keep(&conn.inb, base + pos, e - pos)
        else:
            _in_consumed(&conn.inb, pos)
        if conn.out.size:
            self._mark_dirty(conn)
        return 0

    cdef int _frame_error(self, _Conn conn, str message, double now) except -1:
        """A bad header: what the ServerConnection does for a FrameError, then close."""
        cdef object proto = conn.proto
        self._sync_rid(conn)
        if proto.error is None:
            error = ProtocolError(message)
            error.__cause__ = FrameError(message)
            proto.error = error
            proto.send_goaway(_INTERNAL, message)
        self._take_output(conn)
        self._sync(conn)
        conn.inb.start = conn.inb.end = 0
        self.stats["protocol_errors"] += 1
        self._begin_close(conn, now, -1.0)
        return 0

    cdef int _delegate(self, _Conn conn, const char* frame, Py_ssize_t size) except -1:
        """Hand one whole frame to the ServerConnection and handle its events."""
        self._sync_rid(conn)
        try:
            events = conn.proto.receive_data(PyBytes_FromStringAndSize(frame, size))
        except ProtocolError:
            self._take_output(conn)
            self._sync(conn)
            self.stats["protocol_errors"] += 1
            self._begin_close(conn, _now(), -1.0)
            return 0
        self._take_output(conn)
        self._run_events(conn, events)
        return 0

    # --- the fast path --------------------------------------------------------------------

    cdef bint _fast_request(self, _Conn conn, const char* body, Py_ssize_t size,
                            uint32_t rid) except -1:
        """Answer a request frame here; False hands it to the ServerConnection instead.

        Everything that can make the protocol refuse or reject the request is checked
        before the call is counted; the conditions mirror ServerConnection._on_request.
        """
        cdef object msg, method, args, kwargs = None, meta, value
        cdef PyObject* item
        cdef Py_ssize_t n
        cdef double timeout = 0.0
        cdef bint has_deadline = False
        cdef int answered
        if not conn.fast_ok or conn.nblocking or rid == 0:
            return False  # others in flight (reuse, limit), a goaway or an error: slow path
        if RAPIDRPC_DEBUG and conn.proto.inflight:
            raise AssertionError("rapidrpc loop: calls in flight the loop did not count")
        if self._c_ser:
            answered = self._plain_request(conn, <const unsigned char*>body, size, rid)
            if answered != _NOT_PLAIN:
                return answered
        try:
            if self._c_ser:  # decoded where it lies
                msg = _ser.loads(<const unsigned char*>body, size, self._c_max_depth)
            else:
                msg = self._loads_python(body, size)
        except Exception:
            return False  # undecodable: the protocol reports it
        # Envelope: [method, args, kwargs|nil, meta|nil]; anything else is rejected there.
        if type(msg) is not list:
            return False
        n = PyList_GET_SIZE(msg)
        if n < 2 or n > 4:
            return False
        method = <object>PyList_GET_ITEM(msg, 0)
        args = <object>PyList_GET_ITEM(msg, 1)
        if type(method) is not str or type(args) is not list:
            return False
        if n > 2:
            kwargs = <object>PyList_GET_ITEM(msg, 2)
            if kwargs is not None and type(kwargs) is not dict:
                return False
            if n > 3:
                meta = <object>PyList_GET_ITEM(msg, 3)
                if meta is not None:
                    if type(meta) is not dict:
                        return False
                    item = PyDict_GetItem(meta, _TIMEOUT_KEY)
                    if item != NULL and <object>item is not None:
                        value = <object>item
                        if type(value) is float:
                            timeout = PyFloat_AS_DOUBLE(value)
                        elif type(value) is int:
                            try:
                                timeout = PyLong_AsDouble(value)
                            except OverflowError:
                                return False
                        else:
                            return False
                        if not timeout > 0.0:  # NaN, zero, negative: rejected there
                            return False
                        has_deadline = True
        return self._dispatch(conn, rid, method, PySequence_Fast_ITEMS(args),
                              PyList_GET_SIZE(args), args, kwargs, has_deadline, timeout)

    cdef int _plain_request(self, _Conn conn, const unsigned char* body, Py_ssize_t size,
                            uint32_t rid) except -1:
        """The common request, read straight from its bytes: ``[method, [args...]]`` with
        up to 15 arguments, then optionally nil or ``{}`` for kwargs and nil, ``{}`` or
        ``{"timeout": float | small int}`` for meta.  Returns what _fast_request returns, or
        _NOT_PLAIN for any other shape (and for anything undecodable), which the general
        path then takes from the start: nothing has happened yet.

        Only the arguments become objects: no envelope list, no args list, no meta dict,
        and no method name str when it is the one the last call named.
        """
        cdef PyObject* argv[15]
        cdef Py_ssize_t nargs = 0, i, pos, end_name, depth = self._c_max_depth
        cdef unsigned int n, b
        cdef double timeout = 0.0
        cdef bint has_deadline = False
        cdef object method, entry, name, value
        b = body[0] if size > 0 else 0
        if not 0x92 <= b <= 0x94 or depth < 2 or size < 3:
            return _NOT_PLAIN
        n = b & 0x0F
        b = body[1]
        if b & 0xE0 != 0xA0:  # fixstr method name
            return _NOT_PLAIN
        end_name = 2 + (b & 0x1F)
        if end_name >= size or not 0x90 <= body[end_name] <= 0x9F:  # fixarray args
            return _NOT_PLAIN
        pos = end_name + 1
        entry = self._last_entry
        method = None
        if entry is not None:
            name = <object>PyTuple_GET_ITEM(entry, 1)
            if (PyUnicode_IS_COMPACT_ASCII(name) and PyUnicode_GET_LENGTH(name) == end_name - 2
                    and memcmp(PyUnicode_DATA(name), body + 2, end_name - 2) == 0):
                method = name  # the table's own key (see _dispatch)
        try:
            if method is None:
                i = 1
                method = _ser.decode_one(body, size, &i, 0)
            for i in range(body[end_name] & 0x0F):
                value = _ser.decode_one(body, size, &pos, depth - 2)
                Py_INCREF(value)  # argv owns one reference (released below)
                argv[i] = <PyObject*>value
                nargs += 1
        except Exception:
            for i in range(nargs):
                Py_DECREF(<object>argv[i])
            return _NOT_PLAIN
        try:
            if n > 2:  # kwargs: nil or an empty map, else the general path
                if pos >= size or (body[pos] != 0xC0 and body[pos] != 0x80):
                    return _NOT_PLAIN
                pos += 1
            if n > 3:  # meta
                b = body[pos] if pos < size else 0xC1
                if b == 0xC0 or b == 0x80:
                    pos += 1
                elif (b == 0x81 and size - pos >= 10 and body[pos + 1] == 0xA7
                        and memcmp(body + pos + 2, b"timeout", 7) == 0):
                    pos += 9
                    b = body[pos]
                    if b == 0xC0:  # nil: no deadline
                        pos += 1
                    else:
                        if b == 0xCB and size - pos >= 9:  # float 64
                            timeout = rr_load_double(body + pos + 1)
                            pos += 9
                        elif b <= 0x7F:  # positive fixint
                            timeout = b
                            pos += 1
                        else:
                            return _NOT_PLAIN
                        if not timeout > 0.0:  # NaN, zero, negative: rejected there
                            return False
                        has_deadline = True
                else:
                    return _NOT_PLAIN
            if pos != size:
                return _NOT_PLAIN  # bytes after the envelope: the general path reports them
            return self._dispatch(conn, rid, method, argv, nargs, None, None, has_deadline,
                                  timeout)
        finally:
            for i in range(nargs):
                Py_DECREF(<object>argv[i])

    cdef bint _dispatch(self, _Conn conn, uint32_t rid, object method, PyObject** argv,
                        Py_ssize_t nargs, object args, object kwargs, bint has_deadline,
                        double timeout) except -1:
        """Call *method* with the *nargs* arguments at *argv* (*args*: their list, or None)
        and *kwargs*, and queue its reply; False when the protocol must answer instead."""
        cdef PyObject* item
        cdef object entry = self._last_entry, func, result
        if (entry is not None and method is not <object>PyTuple_GET_ITEM(entry, 1)
                and _same_str(<object>PyTuple_GET_ITEM(entry, 1), method)):
            # Calls repeat a method: look it up by the registered name's own str object
            # (its hash cached, found by identity), not the one just decoded.  Still a real
            # lookup, so a method registered again meanwhile is found as it is now.
            method = <object>PyTuple_GET_ITEM(entry, 1)  # Method.name: the table's key
        item = PyDict_GetItem(self._table, method)
        if item == NULL:
            return False  # MethodNotFound is answered there
        entry = <object>item
        self._last_entry = entry
        if PyObject_IsTrue(<object>PyTuple_GET_ITEM(entry, 2)):  # Method.blocking
            return False  # the thread pool
        # Admitted: from here on this call is answered on this path.
        if rid > conn.last_rid:
            conn.last_rid = rid
            conn.rid_dirty = True  # written to proto before it next needs it (_sync_rid)
        conn.last_call = conn.last_recv  # idle means no calls (pings don't count)
        func = <object>PyTuple_GET_ITEM(entry, 0)  # Method.func
        try:
            # The pure loop starts the deadline when it decodes the request and checks it
            # just before the call; here both happen at once, so only a timeout too small
            # for the clock to represent can have passed.
            if has_deadline and conn.last_recv + timeout <= conn.last_recv:
                raise DeadlineExceeded("deadline exceeded before dispatch")
            if kwargs:
                result = PyObject_Call(func, _as_tuple(argv, nargs), kwargs)
            else:  # the argument vector as it is: no tuple
                result = PyObject_Vectorcall(func, argv, nargs, NULL)
        except TypeError as exc:  # Dispatcher.invoke's rule: binding errors are InvalidParams
            if args is None:
                args = list(_as_tuple(argv, nargs))
            invalid = self._argument_error(entry, args, kwargs, exc)
            self._answer_error(conn, rid, exc if invalid is None else invalid)
            return True
        except Exception as exc:  # any handler failure becomes an error reply
            self._answer_error(conn, rid, exc)
            return True
        self._reply(conn, rid, result)
        return True

    cdef object _loads_python(self, const char* body, Py_ssize_t size):
        """The request body decoded by a serializer given as a Python module."""
        cdef object data
        if size < SMALL_BODY:
            data = PyBytes_FromStringAndSize(body, size)
        else:
            data = PyMemoryView_FromMemory(<char*>body, size, PyBUF_READ)
        try:
            if self._default_depth:
                return self._loads(data)
            return self._loads(data, max_depth=self._max_depth)
        finally:
            if size >= SMALL_BODY:
                data.release()  # the view points into our buffer: nothing may keep it

    cdef int _answer_error(self, _Conn conn, uint32_t rid, object exc) except -1:
        conn.proto.begin_call(rid)
        conn.proto.send_exception(rid, exc)
        self._take_output(conn)
        return 0

    cdef int _reply(self, _Conn conn, uint32_t rid, object result) except -1:
        """Queue the response frame for *result* (the bytes ServerConnection would send)."""
        cdef Py_ssize_t n
        cdef unsigned char* p
        cdef object body
        if type(result) is bytes:
            n = PyBytes_GET_SIZE(result)
            if BIN32_MIN <= n <= BIN32_MAX and n + 5 <= conn.peer_max:
                # A large bytes result: header + bin 32 prefix here, the body by reference.
                p = <unsigned char*>_out_reserve(&conn.out, _HDR + 5)
                _store_header(p, <uint32_t>(n + 5), K_RESPONSE, rid)
                p[_HDR] = BIN32
                _store_u32(p + _HDR + 1, <uint32_t>n)
                _out_append_object(&conn.out, result, PyBytes_AS_STRING(result), n)
                return 0
        try:
            body = _ser.dumps(result) if self._c_ser else self._dumps(result)
        except Exception:
            return self._reply_slowly(conn, rid, result)
        n = PyBytes_GET_SIZE(body)
        if n > conn.peer_max:
            return self._reply_slowly(conn, rid, result)
        if n >= C_ZERO_COPY:
            p = <unsigned char*>_out_reserve(&conn.out, _HDR)
            _store_header(p, <uint32_t>n, K_RESPONSE, rid)
            _out_append_object(&conn.out, body, PyBytes_AS_STRING(body), n)
        else:
            p = <unsigned char*>_out_reserve(&conn.out, _HDR + n)
            _store_header(p, <uint32_t>n, K_RESPONSE, rid)
            memcpy(p + _HDR, PyBytes_AS_STRING(body), n)
        return 0

    cdef int _reply_slowly(self, _Conn conn, uint32_t rid, object result) except -1:
        # Unencodable or too large for the peer: the protocol builds that error reply.
        conn.proto.begin_call(rid)
        conn.proto.send_response(rid, result)
        self._take_output(conn)
        return 0

    # --- events (the pure loop's handling, for everything off the fast path) --------------

    cdef int _run_events(self, _Conn conn, object events) except -1:
        """Handle *events* in order; stop at the high-water mark, keeping the rest."""
        try:
            for event in events:
                self._handle(conn, <tuple>event)
                self._take_output(conn)
                if conn.out.size > self._high_water:
                    # Backpressure inside one read: the rest waits until the peer reads.
                    conn.backlog = events
                    conn.held = True
                    conn.paused = True
                    self._mark_dirty(conn)
                    self._sync(conn)
                    return PAUSED
        except ProtocolError:
            self._take_output(conn)
            self._sync(conn)
            self.stats["protocol_errors"] += 1
            conn.backlog = None
            conn.held = False
            self._begin_close(conn, _now(), -1.0)
            return FAILED
        conn.backlog = None
        self._take_output(conn)
        self._sync(conn)
        if conn.out.size:
            self._mark_dirty(conn)
        return DONE

    cdef int _handle(self, _Conn conn, tuple event) except -1:
        cdef object kind = event[0]
        cdef object proto = conn.proto
        if kind == K_REQUEST or kind == K_NOTIFICATION:
            rid = event[1]
            conn.last_call = conn.last_recv  # idle means no calls (pings don't count)
            try:
                method = self._lookup(event[2])
            except MethodNotFound as exc:
                if kind == K_REQUEST:
                    proto.send_exception(rid, exc)
                else:
                    proto.finish_notification()
                return 0
            if method.blocking:
                self._submit(conn, event, method)
                return 0
            deadline = event[5]
            try:
                if deadline is not None and _now() >= deadline:
                    raise DeadlineExceeded("deadline exceeded before dispatch")
                result = self._invoke(method, event[3], event[4])
            except Exception as exc:  # any handler failure becomes an error reply
                if kind == K_REQUEST:
                    proto.send_exception(rid, exc)
                else:
                    proto.finish_notification()
                return 0
            if kind == K_REQUEST:
                proto.send_response(rid, result)
            else:
                proto.finish_notification()
        elif kind == K_CANCEL:
            future = conn.futures.get(event[1])
            if future is not None:
                future.cancel()  # only succeeds if the handler has not started yet
        return 0

    cdef int _resume_backlogs(self) except -1:
        cdef list resume = self._resume
        cdef _Conn conn
        self._resume = []
        for conn in resume:
            conn.resume_queued = False
            if conn.closed or not conn.held:
                continue
            try:
                conn.held = False
                if conn.backlog is not None and self._run_events(conn, conn.backlog) != DONE:
                    continue
                if conn.inb.start < conn.inb.end:
                    self._consume(conn, conn.inb.buf, conn.inb.start, conn.inb.end, False,
                                  _now())
            except Exception:
                _log.exception("rapidrpc: closing a connection after an error")
                self._close(conn)
                continue
            self._mark_dirty(conn)  # the flush below unpauses it once drained
        if self._dirty:
            self._flush_dirty()
        return 0

    cdef int _take_output(self, _Conn conn) except -1:
        """Move what the ServerConnection queued into our output queue, in order."""
        cdef object chunk
        cdef Py_ssize_t n
        if not conn.proto.output_size:
            return 0
        for chunk in conn.proto.take_output():
            if type(chunk) is not bytes:
                chunk = bytes(chunk)
            n = PyBytes_GET_SIZE(chunk)
            if n >= C_ZERO_COPY:
                _out_append_object(&conn.out, chunk, PyBytes_AS_STRING(chunk), n)
            else:
                _out_append(&conn.out, PyBytes_AS_STRING(chunk), n)
        return 0

    cdef inline int _sync_rid(self, _Conn conn) except -1:
        """Write the fast path's last request id to proto (before anything reads it)."""
        if conn.rid_dirty:
            conn.rid_dirty = False
            conn.proto.last_request_id = conn.last_rid
        return 0

    cdef int _sync(self, _Conn conn) except -1:
        """Refresh the copies of protocol state the fast path reads."""
        cdef object proto = conn.proto
        self._sync_rid(conn)
        conn.fast_ok = proto.error is None and not proto.goaway_sent
        conn.peer_max = proto.peer_max_frame_size
        conn.last_rid = proto.last_request_id
        return 0

    cdef inline int _mark_dirty(self, _Conn conn) except -1:
        if not conn.dirty:
            conn.dirty = True
            self._dirty.append(conn)
        return 0

    # --- blocking handlers ----------------------------------------------------------------

    cdef int _submit(self, _Conn conn, tuple event, object method) except -1:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self.config.pool_size, thread_name_prefix="rapidrpc-worker"
            )
        kind, rid = event[0], event[1]
        future = self._pool.submit(self._run_blocking, method, event[3], event[4], event[5])
        if kind == K_REQUEST:
            conn.futures[rid] = future
        conn.nblocking += 1
        future.add_done_callback(partial(self._completed, conn, kind, rid))
        return 0

    def _run_blocking(self, method, args, kwargs, deadline):
        # Runs in a pool thread.  A call that waited in the queue past its deadline is
        # answered without running the handler.
        if deadline is not None and _now() >= deadline:
            raise DeadlineExceeded("deadline exceeded before the handler started")
        return self.dispatcher.invoke(method, args, kwargs)

    def _completed(self, conn, kind, rid, future):
        # Runs in the pool thread (or the loop thread for a cancelled future).
        self._done.append((conn, kind, rid, future))
        self._wake()

    cdef void _wake(self) noexcept:
        # Holding the GIL from the check to the write: the loop cannot close the fd between.
        cdef uint64_t one = 1
        if not self._wake_pending and self._wake_fd >= 0:
            self._wake_pending = True
            write(self._wake_fd, &one, sizeof(one))  # a full counter already means "wake"

    cdef int _drain_wakeups(self) except -1:
        cdef uint64_t count
        cdef _Conn conn
        read(self._wake_fd, &count, sizeof(count))
        # Clear the flag before draining: a completion racing us re-signals.
        self._wake_pending = False
        done = self._done
        while done:
            conn, kind, rid, future = done.popleft()
            if conn.closed:
                continue
            conn.nblocking -= 1
            proto = conn.proto
            if kind == K_REQUEST:
                conn.futures.pop(rid, None)
                if future.cancelled():
                    proto.send_error(rid, _CANCELLED, "call cancelled")
                else:
                    exc = future.exception()
                    if exc is None:
                        proto.send_response(rid, future.result())
                    else:
                        proto.send_exception(rid, exc)
            else:
                proto.finish_notification()
            conn.last_call = _now()
            self._take_output(conn)
            if conn.out.size:
                self._mark_dirty(conn)
        return 0

    # --- writing --------------------------------------------------------------------------

    cdef int _flush_dirty(self) except -1:
        cdef list dirty = self._dirty
        cdef _Conn conn
        self._dirty = []
        for conn in dirty:
            conn.dirty = False
            if not conn.closed:
                self._write(conn)
        return 0

    cdef int _write(self, _Conn conn) except -1:
        cdef iovec iov[1024]
        cdef msghdr msg
        cdef OutQ* q = &conn.out
        cdef Py_ssize_t sent, want
        cdef int count, i, mask
        while q.count:
            if q.count == 1:
                want = q.segs[q.head].size
                iov[0].iov_base = <void*>(q.segs[q.head].ptr if q.segs[q.head].obj != NULL
                                          else q.buf + q.segs[q.head].start)
                sent = send(conn.fd, iov[0].iov_base, want, MSG_NOSIGNAL)
            else:
                count = _out_iov(q, iov)
                want = 0
                for i in range(count):
                    want += iov[i].iov_len
                memset(&msg, 0, sizeof(msg))
                msg.msg_iov = iov
                msg.msg_iovlen = count
                sent = sendmsg(conn.fd, &msg, MSG_NOSIGNAL)
            if sent < 0:
                if errno == EINTR:
                    continue
                if RR_WOULD_BLOCK(errno):
                    break
                self._close(conn)
                return 0
            _out_consume(q, sent)
            conn.write_stalled = NO_TIME
            if sent < want:
                break  # the kernel buffer is full: wait for writability
        if q.size > self._max_output:
            # A peer that does not read its replies: cap the memory it can pin (HOSTILE 8).
            self._close(conn)
            return 0
        if q.count:
            if conn.write_stalled == NO_TIME:
                conn.write_stalled = _now()
            # Backpressure: stop reading requests until the peer reads its replies.
            if q.size > self._high_water and not conn.closing:
                conn.paused = True
        else:
            conn.write_stalled = NO_TIME
            if conn.closing and not conn.shut_wr:
                conn.shut_wr = True
                if shutdown(conn.fd, SHUT_WR) < 0:
                    self._close(conn)
                    return 0
        if conn.paused and q.size <= self._high_water // 2:
            if conn.held:
                if not conn.resume_queued:  # handle the rest of the chunk before reading more
                    conn.resume_queued = True
                    self._resume.append(conn)
            else:
                conn.paused = False
        mask = (0 if conn.paused else EPOLLIN) | (EPOLLOUT if q.count else 0)
        if mask != conn.mask:
            conn.mask = mask
            self._ctl(EPOLL_CTL_MOD, conn.fd, mask)
        return 0

    # --- closing --------------------------------------------------------------------------

    cdef int _begin_close(self, _Conn conn, double now, double linger) except -1:
        """Flush what is queued (a goaway), half-close, read until EOF or the linger time."""
        if conn.closing or conn.closed:
            return 0
        conn.closing = True
        conn.paused = False
        conn.inb.start = conn.inb.end = 0  # input is never handled again, only drained
        conn.close_at = now + (self._linger if linger < 0.0 else linger)
        if not conn.proto.preface_sent and not conn.out.count:
            self._close(conn)  # not a native peer: nothing to say, close at once
            return 0
        self._mark_dirty(conn)
        return 0

    cdef int _close(self, _Conn conn) except -1:
        if conn.closed:
            return 0
        conn.closed = True
        self._conns.pop(conn.fd, None)
        self._by_fd[conn.fd] = None
        epoll_ctl(self._ep, EPOLL_CTL_DEL, conn.fd, NULL)
        close(conn.fd)
        _out_clear(&conn.out)
        _in_free(&conn.inb)
        conn.held = False
        conn.backlog = None
        futures = list(conn.futures.values())
        conn.futures.clear()
        for future in futures:
            future.cancel()
        return 0

    # --- timers ---------------------------------------------------------------------------

    cdef int _sweep(self, double now) except -1:
        cdef _Conn conn
        for conn in list(self._conns.values()):
            if conn.closing:
                if now >= conn.close_at:
                    self._close(conn)
                continue
            proto = conn.proto
            handshake_complete = proto.handshake_complete
            if not handshake_complete and now - conn.created > self._handshake_timeout:
                self._begin_close(conn, now, 0.0)
                continue
            if conn.partial_since != NO_TIME and now - conn.partial_since > self._frame_timeout:
                # Slowloris: a frame started and never finished (HOSTILE 7).
                self._close(conn)
                continue
            if conn.write_stalled != NO_TIME and now - conn.write_stalled > self._frame_timeout:
                self._close(conn)  # the peer stopped reading its replies (HOSTILE 8)
                continue
            if self._keepalive and handshake_complete:
                if conn.ping_at != NO_TIME and conn.last_recv >= conn.ping_at:
                    conn.ping_at = NO_TIME  # heard from the peer since the ping: alive
                if conn.ping_at != NO_TIME:
                    if now - conn.ping_at > self._keepalive:
                        self._close(conn)  # half-open: the peer vanished (HOSTILE 31)
                        continue
                elif now - conn.last_recv > self._keepalive:
                    proto.send_ping()
                    conn.ping_at = now
                    self._take_output(conn)
                    self._mark_dirty(conn)
            if (self._idle_timeout and now - conn.last_call > self._idle_timeout
                    and proto.inflight == 0):
                self._sync_rid(conn)
                proto.send_goaway(_OK, "idle timeout")
                self._take_output(conn)
                self._sync(conn)
                self._begin_close(conn, now, -1.0)
        return 0

    # --- stopping -------------------------------------------------------------------------

    cdef int _begin_stop(self) except -1:
        cdef _Conn conn
        cdef double now = _now()
        self._stop_at = now + self._stop_grace
        if self._accept_paused_until == NO_TIME:
            epoll_ctl(self._ep, EPOLL_CTL_DEL, self._listener.fileno(), NULL)
        self._accept_paused_until = NO_TIME
        self._listener.close()
        for conn in list(self._conns.values()):
            if not conn.proto.handshake_complete:
                self._close(conn)
                continue
            self._sync_rid(conn)
            conn.proto.send_goaway(_OK, "server shutting down")
            self._take_output(conn)
            self._sync(conn)
            self._mark_dirty(conn)
        return 0

    cdef bint _stopping(self) except -1:
        """Advance a requested stop; True when the loop may exit."""
        cdef _Conn conn
        cdef double now
        if self._stop_at == NO_TIME:
            self._begin_stop()
            if self._dirty:
                self._flush_dirty()
        now = _now()
        for conn in list(self._conns.values()):
            if (not conn.closing and not conn.out.count and not conn.held
                    and conn.proto.inflight == 0):
                self._begin_close(conn, now, max(0.0, self._stop_at - now))
        if self._dirty:
            self._flush_dirty()
        return not self._conns or now >= self._stop_at

    cdef int _shutdown(self) except -1:
        cdef _Conn conn
        for conn in list(self._conns.values()):
            self._close(conn)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        try:
            self._listener.close()
        except OSError:
            pass
        if self._ep >= 0:
            close(self._ep)
            self._ep = -1
        if self._wake_fd >= 0:
            close(self._wake_fd)
            self._wake_fd = -1
        self._running.set()  # never leave wait_running() hanging
        self._finished.set()
        return 0


def serve(listener, dispatcher, config=None, stop_event=None, grace=0.0):
    """Serve in this thread until *stop_event* is set (checked once per timer sweep).

    The entry point every loop implementation offers, so a server can plug in another.
    """
    EventLoop(listener, dispatcher, config, stop_event=stop_event, grace=grace).run()
