# Compiled as rapidrpc.transport._client_c; directives come from setup.py.
"""Compiled client core: the twin of rapidrpc/transport/_client_py.py (same behaviour).

:class:`ConnectionCore` holds the per-call work of a blocking connection; the class
BlockingConnection builds on it (blocking.py) and supplies the rare paths the core calls by
name (``_where``, ``_write_rest``, ``_backlog_stalled``, ``_silence``, ``_lost``,
``_forget``, ``_expire_async``, ``_ensure_reader``).  The protocol state machine
(core/protocol.py) encodes requests and decodes replies, as for the pure twin.  What the
compiled twin does differently, for speed only:

* sockets are driven with C ``sendmsg``/``recv``/``poll`` on the descriptor, the GIL
  released around each call (all queued frames leave in one ``sendmsg``), and the clock
  is ``clock_gettime(CLOCK_MONOTONIC)``, the clock of ``time.monotonic``;
* received bytes land in one C buffer and are handed to the protocol a run of whole frames
  at a time; a frame with a large body (``ZERO_COPY_MIN_BODY`` or more) is read straight
  into a ``bytes`` object of its exact size, which the frame parser then slices without
  copying.  Every byte still goes through the protocol's parser, in order, so limits and
  errors are the parser's own; a header the parser would refuse is fed to it at once;
* :class:`CallFuture` creates its Condition only when a thread actually waits on it (or
  uses ``concurrent.futures.wait``): completing a future nobody waits on, adding a
  callback and reading a result take no lock.  This relies on the GIL: those steps run as
  C code that never lets another thread in between its check and its update.  They work
  on the instance ``__dict__``, which ``__init__`` creates while no other thread can see
  the future: CPython (3.11+) keeps instance attributes in a compact "values" array and
  builds the dict from it on first ``__dict__`` access; if two threads did that at once
  (the dict's allocation can run the GC, and the GC can run Python code that lets the
  other thread in), both dicts would share one values array, and whichever dict died
  first would free it under the other -- a use-after-free found as a crash in the GC.
"""

cimport cython
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.dict cimport PyDict_Contains
from cpython.exc cimport PyErr_CheckSignals
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject, PyObject_GenericGetAttr
from cpython.pythread cimport (
    NOWAIT_LOCK,
    PY_LOCK_ACQUIRED,
    PY_LOCK_INTR,
    PyLockStatus,
    PyThread_acquire_lock,
    PyThread_allocate_lock,
    PyThread_free_lock,
    PyThread_release_lock,
    PyThread_type_lock,
)
from libc.errno cimport EINTR, errno
from libc.math cimport INFINITY, ceil
from libc.stdint cimport uint32_t
from libc.string cimport memcpy, memmove, memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.uio cimport iovec

from client_io cimport (
    MSG_DONTWAIT,
    MSG_NOSIGNAL,
    POLLERR,
    POLLHUP,
    POLLIN,
    POLLOUT,
    PyBUF_READ,
    PyMemoryView_FromMemory,
    msghdr,
    poll,
    pollfd,
    recv,
    sched_yield,
    sendmsg,
    slot_get,
    slot_offset,
    slot_set,
    would_block,
)
from serializer_api cimport SerializerAPI, import_serializer_api

import heapq
import os
import threading
from types import SimpleNamespace as _FrameFields  # a reply's fields, for its error path
from concurrent.futures import Future, InvalidStateError
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING

from rapidrpc.core.protocol import NotProcessed
from rapidrpc.errors import ConnectionLost, DeadlineExceeded, ProtocolError

from rapidrpc.transport._common import RECV_SIZE, SYNC, NotSent, copy_error
from rapidrpc.wire import _serializer_c
from rapidrpc.wire import constants as _const

__all__ = ["CallFuture", "ConnectionCore", "Lock"]  # (+ MethodCall: compiled only, client.py)

cdef extern from *:
    """
    #ifndef RAPIDRPC_DEBUG
    #define RAPIDRPC_DEBUG 0
    #endif
    """
    # setup.py defines it (RAPIDRPC_DEBUG=1 builds): invariant checks, compiled out otherwise.
    const int RAPIDRPC_DEBUG

# --- numbers from constants.py, as C globals --------------------------------------------------
cdef enum:
    _HDR = 12
    _IOV_BATCH = 256  # frames per sendmsg (well under IOV_MAX)
if _const.HEADER_SIZE != _HDR:
    raise ImportError("rapidrpc.transport._client_c implements a 12-byte header, constants say "
                      f"{_const.HEADER_SIZE}: rebuild the extension")

cdef int C_KIND_REQUEST = _const.KIND_REQUEST
cdef int C_KIND_RESPONSE = _const.KIND_RESPONSE
cdef int C_KIND_ERROR = _const.KIND_ERROR
cdef int C_KIND_GOAWAY = _const.KIND_GOAWAY
cdef frozenset C_CONNECTION_KINDS = frozenset((
    _const.KIND_PING, _const.KIND_PONG, _const.KIND_SETTINGS, _const.KIND_GOAWAY))
cdef uint32_t C_MAX_KIND = _const.MAX_KIND
cdef uint32_t C_KNOWN_FLAGS = _const.KNOWN_FLAGS
cdef Py_ssize_t C_ZERO_COPY_MIN = _const.ZERO_COPY_MIN_BODY
cdef Py_ssize_t C_RECV_SIZE = RECV_SIZE
# As in the pure twin: while async deadlines are pending the reader wakes this often, and
# while a synchronous caller reads for everyone it checks deadlines this often.
cdef double C_FRESH_IDLE = 1.0  # BlockingConnection.fresh's default *idle*
cdef double C_ASYNC_SLICE = 0.02
cdef double C_FOLLOW_SLICE = 0.05

cdef object _MISSING = object()
# The compiled serializer's C entry points (a protocol built on it is served through them).
cdef SerializerAPI* _ser = import_serializer_api()
cdef object _HUGE = 1 << 62  # a peer limit at least this large is never reached
# Forks this process is away from the one that imported this module: the C twin of
# blocking._fork_generation (both are bumped in the child), compared on every call.
cdef unsigned long _forks = 0
cdef object _heappush = heapq.heappush
cdef object _heapify = heapq.heapify
cdef object _SYNC = SYNC
cdef object _Condition = threading.Condition
cdef object _PENDING = PENDING
cdef object _FINISHED = FINISHED
cdef object _CANCELLED = CANCELLED
cdef object _CANCELLED_AND_NOTIFIED = CANCELLED_AND_NOTIFIED
# CallFuture sets Future.__init__'s attributes itself, all but _condition; should another
# Python add one, it calls Future.__init__ instead (and so always takes the locked path).
cdef bint _LAZY_CONDITION = set(vars(Future())) == {
    "_condition", "_state", "_result", "_exception", "_waiters", "_done_callbacks"}


def _forked_child():
    global _forks
    _forks += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked_child)


# --- small C helpers --------------------------------------------------------------------------
cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef inline uint32_t _load_u32(const unsigned char* p) noexcept nogil:
    return ((<uint32_t>p[0]) << 24) | ((<uint32_t>p[1]) << 16) | ((<uint32_t>p[2]) << 8) | p[3]


cdef inline void _store_header(unsigned char* o, uint32_t length, uint32_t kind,
                               uint32_t request_id) noexcept nogil:
    """A frame header (flags and reserved bits 0), as framing.encode_header writes it."""
    o[0] = <unsigned char>(length >> 24)
    o[1] = <unsigned char>(length >> 16)
    o[2] = <unsigned char>(length >> 8)
    o[3] = <unsigned char>length
    o[4] = <unsigned char>kind
    o[5] = 0
    o[6] = 0
    o[7] = 0
    o[8] = <unsigned char>(request_id >> 24)
    o[9] = <unsigned char>(request_id >> 16)
    o[10] = <unsigned char>(request_id >> 8)
    o[11] = <unsigned char>request_id


cdef inline bint _header_ok(const unsigned char* h, Py_ssize_t size,
                            uint32_t max_frame) noexcept nogil:
    """False when the first *size* header bytes hold a field the frame parser refuses."""
    cdef uint32_t length
    if size >= 4:
        length = _load_u32(h)
        if length == 0 or length > max_frame:
            return False
    if size >= 5 and (h[4] < 1 or h[4] > C_MAX_KIND):
        return False
    if size >= 6 and (h[5] & ~C_KNOWN_FLAGS):
        return False
    if size >= 8 and (h[6] | h[7]):
        return False
    return True


cdef inline object _opt(double t):
    """A C time (INFINITY: none) as the float-or-None the Python side takes."""
    return None if t == INFINITY else t


cdef object _os_error(int err):
    return OSError(err, os.strerror(err))


cdef extern from "pythread.h":
    PyLockStatus PyThread_acquire_lock_timed(PyThread_type_lock lock, long long microseconds,
                                             int intr_flag) nogil


cdef int _run_signal_handlers() except -1:
    """Run pending Python signal handlers; propagate what one raises."""
    if PyErr_CheckSignals() < 0:
        return -1
    return 0


# --- the lock ---------------------------------------------------------------------------------
@cython.final
cdef class Lock:
    """A non-reentrant lock, ``threading.Lock``'s equal (``acquire(blocking=True,
    timeout=-1)``, ``release()``, ``locked()``, context manager; ``threading.Condition``
    takes it), which this core also takes and releases without a Python call.

    Its connections' ``_state``, ``_send_lock`` and ``_read_lock`` are these: a sequential
    call takes four of them, and a call to ``threading.Lock.acquire`` costs more than
    routing the reply.  Waiting releases the GIL and lets signal handlers run, as
    ``threading.Lock`` does.
    """

    cdef PyThread_type_lock _lock
    cdef bint _held

    def __cinit__(self):
        self._lock = PyThread_allocate_lock()
        if self._lock == NULL:
            raise MemoryError("cannot allocate a lock")
        self._held = False

    def __dealloc__(self):
        if self._lock != NULL:
            if self._held:
                PyThread_release_lock(self._lock)
            PyThread_free_lock(self._lock)

    cdef inline bint take(self) noexcept:
        """Acquire without waiting (True when acquired); the GIL makes it atomic."""
        if PyThread_acquire_lock(self._lock, NOWAIT_LOCK):
            self._held = True
            return True
        return False

    cdef inline void give(self) noexcept:
        """Release (the caller holds it)."""
        self._held = False
        PyThread_release_lock(self._lock)

    cdef int wait_take(self) except -1:
        """Acquire, waiting as long as it takes (GIL released, signal handlers run)."""
        cdef PyLockStatus status
        if self.take():
            return 0
        while True:
            with nogil:
                status = PyThread_acquire_lock_timed(self._lock, -1, 1)
            if status == PY_LOCK_ACQUIRED:
                self._held = True
                return 0
            if PyErr_CheckSignals() < 0:  # (PY_LOCK_INTR: a signal arrived)
                return -1

    def acquire(self, blocking=True, timeout=-1):
        """Acquire the lock; False when *blocking* is false or *timeout* (s) passed first."""
        cdef PyLockStatus status
        cdef double limit = timeout
        cdef double end = 0.0
        cdef long long micros
        if not blocking:
            if limit != -1:
                raise ValueError("can't specify a timeout for a non-blocking call")
            return self.take()
        if limit < 0 and limit != -1:
            raise ValueError("timeout value must be a non-negative number")
        if self.take():
            return True
        if limit == -1:
            self.wait_take()
            return True
        end = _now() + limit
        while True:
            micros = <long long>(limit * 1e6)
            with nogil:
                status = PyThread_acquire_lock_timed(self._lock, micros, 1)
            if status == PY_LOCK_ACQUIRED:
                self._held = True
                return True
            if status != PY_LOCK_INTR:
                return False
            _run_signal_handlers()  # (raises what a handler raised)
            limit = end - _now()
            if limit <= 0:
                return self.take()

    def release(self):
        """Release the lock (RuntimeError when it is not held)."""
        if not self._held:
            raise RuntimeError("release unlocked lock")
        self.give()

    def locked(self):
        """True while the lock is held."""
        return self._held

    def __enter__(self):
        self.wait_take()
        return True

    def __exit__(self, exc_type, exc, tb):
        self.give()

    def __repr__(self):
        return f"<{'locked' if self._held else 'unlocked'} rapidrpc client core Lock>"


# --- futures ----------------------------------------------------------------------------------
class CallFuture(Future):
    """The :class:`concurrent.futures.Future` of one ``call_async``.

    Cancelling it (before its reply arrived) also cancels the call on the server.  Its
    Condition is created on first use (see the module docstring).
    """

    def __init__(self, conn):
        # The instance dict, created by this first access while no other thread can see
        # the future (see the module docstring: it must never be created concurrently).
        cdef dict d = self.__dict__
        if not _LAZY_CONDITION:
            Future.__init__(self)
            d["_conn"] = conn
            d["_rid"] = 0
            return
        # Future.__init__'s attributes, but for _condition (see __getattr__).
        d["_state"] = _PENDING
        d["_result"] = None
        d["_exception"] = None
        d["_waiters"] = []
        d["_done_callbacks"] = []
        d["_conn"] = conn
        d["_rid"] = 0

    def __getattr__(self, name):
        if name == "_condition":
            # (setdefault: of two threads creating it at once, both use the first one)
            return self.__dict__.setdefault("_condition", _Condition())
        raise AttributeError(name)

    def cancel(self):
        """Cancel the call; False when its outcome is already known."""
        if not Future.cancel(self):
            return False
        self._conn._forget(self._rid)
        return True

    def cancelled(self):
        """True when the future was cancelled."""
        state = self._state
        return state is _CANCELLED or state is _CANCELLED_AND_NOTIFIED

    def done(self):
        """True when the future was cancelled or has its outcome."""
        state = self._state
        return state is _FINISHED or state is _CANCELLED or state is _CANCELLED_AND_NOTIFIED

    def result(self, timeout=None):
        """The call's result; raises its exception (waits up to *timeout* seconds)."""
        if self._state is _FINISHED:
            exc = self._exception
            if exc is None:
                return self._result
            try:
                raise exc
            finally:
                exc = None  # (no reference cycle through the traceback)
        return Future.result(self, timeout)

    def add_done_callback(self, fn):
        """Call *fn(future)* once the future is done (at once when it already is)."""
        d = self.__dict__
        if not PyDict_Contains(d, "_condition"):
            if d["_state"] is _PENDING:  # (no other thread runs between check and append)
                d["_done_callbacks"].append(fn)
                return
            _call_back(fn, self)
            return
        Future.add_done_callback(self, fn)

    def set_result(self, result):
        """Complete the future with *result* (raises InvalidStateError when done)."""
        if not _complete(self, result, None):
            Future.set_result(self, result)

    def set_exception(self, exception):
        """Complete the future with *exception* (raises InvalidStateError when done)."""
        if not _complete(self, None, exception):
            Future.set_exception(self, exception)


cdef object _call_back(object fn, object future):
    try:
        fn(future)
    except Exception:
        import concurrent.futures._base as base
        base.LOGGER.exception("exception calling callback for %r", future)


cdef bint _complete(object future, object result, object exception) except -1:
    """The lock-free completion of a CallFuture nobody waits on; False: take the full path.

    Nobody can be waiting without the Condition existing, and no other thread runs between
    the check and the update below, so a waiter that creates the Condition afterwards sees
    the outcome before it would wait.
    """
    cdef dict d = future.__dict__
    if PyDict_Contains(d, "_condition") or d["_state"] is not _PENDING:
        return False
    d["_result"] = result
    d["_exception"] = exception
    d["_state"] = _FINISHED
    if d["_done_callbacks"]:
        future._invoke_callbacks()
    return True


cdef int _settle(object future, int kind, object value) except -1:
    """Complete *future* with a reply (a no-op when it was cancelled meanwhile)."""
    if type(future) is CallFuture:
        if kind == C_KIND_RESPONSE:
            if _complete(future, value, None):
                return 0
        elif _complete(future, None, value):
            return 0
    try:
        if kind == C_KIND_RESPONSE:
            future.set_result(value)
        else:
            future.set_exception(value)
    except InvalidStateError:
        pass  # the caller cancelled it meanwhile
    return 0


# --- the core ---------------------------------------------------------------------------------
cdef class ConnectionCore:
    """Per-call work of one blocking connection (see the module docstring)."""

    # Set by BlockingConnection.__init__ (Python), read and written by both sides.
    cdef public object sock, proto, keepalive, error
    cdef public bint draining, _closed
    cdef public Lock _state, _send_lock, _read_lock  # (the Lock above: see its docstring)
    cdef public object _cond, _reader, _rpoll, _wpoll
    cdef public dict _results
    cdef public list _async_deadlines
    cdef public double _last_heard, _ping_sent, _busy_since, _recv_slice
    cdef public int _waiters
    # Frames a reading thread could not write without waiting (whole bytes objects; the
    # first one already sent up to _backlog_off), and since when they wait for the socket.
    cdef public list _backlog
    cdef public double _stalled_since

    # C-only state, set up by _core_init once the handshake is done.
    cdef int _fd
    cdef char* _buf               # reusable receive buffer
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _have         # bytes in _buf not fed yet (they start at a frame)
    cdef object _big              # bytes of one large frame being read into place, or None
    cdef Py_ssize_t _big_have
    cdef uint32_t _max_frame      # the parser's limit (proto.max_frame_size)
    cdef Py_ssize_t _backlog_off
    cdef Py_ssize_t _part         # set by _write_some: bytes of its next chunk already sent
    # Bound methods and protocol parts used on every call, looked up once.
    cdef object _proto_feed, _dumps, _loads, _parser_skip
    cdef Py_ssize_t _skipped      # bytes of replies _received routed past the frame parser
    cdef dict _loads_kw
    cdef bint _c_ser              # proto._dumps/_loads are the compiled serializer's: use _ser
    cdef Py_ssize_t _max_depth    # proto.max_depth
    cdef object _meta_timeout, _meta  # the last request meta built, and the timeout in it
    cdef long long _max_rid
    # Where the protocol attributes every call reads and writes (_common.PROTOCOL_FIELDS)
    # live in the protocol object: they are __slots__ entries, reached at these offsets
    # without attribute lookups.  The offsets hold for objects of _slots_type only, which
    # _p() checks before every use.
    cdef object _slots_type
    cdef Py_ssize_t _o_next_id, _o_out, _o_out_size, _o_sent, _o_error, _o_last_rid
    cdef Py_ssize_t _o_peer_max, _o_peer_inflight
    # proto._pending and proto._held: the same objects for the protocol's life.
    cdef dict _pending, _held
    # proto.peer_max_frame_size and proto._peer_inflight, copied (see _settings_changed).
    cdef long long _peer_max, _peer_inflight
    cdef object _direct           # a request frame _queue_request left for its caller
    cdef unsigned long _forks_seen  # _forks when the connection was made
    # The reading leader's own call (-1: none) and its outcome, which _feed hands over
    # directly instead of through _results (see _wait).
    cdef long long _lead
    cdef object _lead_outcome

    def __cinit__(self, *args, **kwargs):
        self._buf = NULL
        self._fd = -1
        self._big = None
        self._backlog = []
        self._lead = -1
        self._forks_seen = _forks

    def __dealloc__(self):
        PyMem_Free(self._buf)
        self._buf = NULL

    def _core_init(self):
        """Set up the receive buffer (called once the handshake is done)."""
        if self._buf == NULL:
            self._buf = <char*>PyMem_Malloc(C_RECV_SIZE)
            if self._buf == NULL:
                raise MemoryError()
        self._cap = C_RECV_SIZE
        self._have = 0
        self._fd = self.sock.fileno()
        self._max_frame = self.proto.max_frame_size
        proto = self.proto
        kind = type(proto)
        self._o_next_id = slot_offset(kind, "_next_id")
        self._o_out = slot_offset(kind, "_out")
        self._o_out_size = slot_offset(kind, "_out_size")
        self._o_sent = slot_offset(kind, "_sent")
        self._o_error = slot_offset(kind, "error")
        self._o_last_rid = slot_offset(kind, "last_request_id")
        self._o_peer_max = slot_offset(kind, "peer_max_frame_size")
        self._o_peer_inflight = slot_offset(kind, "_peer_inflight")
        self._slots_type = kind
        self._pending = proto._pending
        self._held = proto._held
        self._settings_changed()
        self._direct = None
        self._proto_feed = proto._feed
        self._parser_skip = proto._parser.skip
        self._skipped = 0
        self._dumps = proto._dumps
        self._loads = proto._loads
        self._loads_kw = proto._loads_kw
        self._c_ser = self._dumps is _serializer_c.dumps and self._loads is _serializer_c.loads
        self._max_depth = proto.max_depth
        self._max_rid = proto._max_request_id
        self._busy_since = _now()

    # --- calls --------------------------------------------------------------------------------

    def fresh(self, double idle=C_FRESH_IDLE):
        """BlockingConnection.fresh, its fast half compiled (this runs before every call)."""
        if not self._usable():
            return False
        if _now() - self._last_heard < idle:
            return True
        return self._refresh()

    cdef inline bint _usable(self) except -1:
        """BlockingConnection.usable (compiled)."""
        return (self.error is None and not self.draining and self._forks_seen == _forks
                and not self._next_rid() > self._max_rid)

    # --- the protocol's slots (see _core_init) --------------------------------------------

    cdef inline object _p(self):
        """The protocol, checked to be of the type whose slot offsets _core_init took."""
        cdef object proto = self.proto
        if type(proto) is not self._slots_type:
            raise TypeError("the client core's protocol object was replaced")
        return proto

    cdef inline long long _next_rid(self) except? -1:
        """proto._next_id"""
        return slot_get(self._p(), self._o_next_id)

    cdef inline bint _output_queued(self) except -1:
        """proto._out_size != 0"""
        return slot_get(self._p(), self._o_out_size) != 0

    cdef inline list _take_output(self):
        """proto.take_output(), inlined (under ``_state``); None when nothing is queued."""
        cdef object proto = self._p()
        cdef list out = slot_get(proto, self._o_out)
        if not out:
            return None
        slot_set(proto, self._o_out, [])
        slot_set(proto, self._o_out_size, 0)
        return out

    def call(self, method, args, kwargs, timeout):
        """Send a call and wait for its result (raises the remote error, or a local one)."""
        return self._call(method, args, kwargs, timeout)

    cdef object _call(self, object method, object args, object kwargs, object timeout):
        cdef double now = _now()
        cdef double deadline = INFINITY if timeout is None else now + <double>timeout
        cdef list out = None
        cdef bint sender = False
        cdef object frame
        self._state.wait_take()
        try:
            if self.error is not None:
                raise NotSent(str(self.error))
            # The common case, no other thread sending: take the send lock, and with it
            # our frame (not queued: see _queue_request) and any queued output, in this
            # same hold of _state (what _flush would take two more holds for).
            sender = not self._backlog and self._send_lock.take()
            try:
                rid = self._queue_request(method, args, kwargs, _SYNC, timeout, now, sender)
            except BaseException:
                if sender:
                    self._send_lock.give()
                raise
            if sender:
                out = self._take_output()
                frame = self._direct
                if frame is not None:
                    self._direct = None
                    if out:
                        out.append(frame)
                    else:
                        out = [frame]
        finally:
            self._state.give()
        try:
            if sender:
                try:
                    self._send_locked(deadline, True, out)
                finally:
                    self._send_lock.give()
                if self.error is None and self._output_queued():
                    self._flush(deadline, True)  # queued by threads that found us sending
            else:
                self._flush(deadline, True)
        except DeadlineExceeded:
            self._state.wait_take()
            try:
                self._results.pop(rid, None)
            finally:
                self._state.give()
            raise
        return self._wait(rid, deadline, method, timeout)

    def call_async(self, method, args, kwargs, timeout):
        """Send a call; return a Future completed by whichever thread reads its reply."""
        future = CallFuture(self)
        self._state.wait_take()
        try:
            if self.error is not None:
                raise NotSent(str(self.error))
            rid = self._queue_request(method, args, kwargs, future, timeout, 0.0)
            future._rid = rid
            if timeout is not None:
                self._push_deadline(_now() + <double>timeout, rid)
        finally:
            self._state.give()
        self._flush(INFINITY, True)
        if self._reader is None:
            self._ensure_reader()
        return future

    def submit(self, method, args, kwargs, timeout):
        """Queue a call whose reply ``collect`` waits for; return its request id.

        Nothing is sent: the caller sends a batch with ``_send_queued``.
        """
        self._state.wait_take()
        try:
            if self.error is not None:
                raise NotSent(str(self.error))
            return self._queue_request(method, args, kwargs, _SYNC, timeout, 0.0)
        finally:
            self._state.give()

    def collect(self, rid, deadline, method, timeout):
        """Wait for the reply of a ``submit``ted call (*deadline*: monotonic time or None)."""
        return self._wait(rid, INFINITY if deadline is None else <double>deadline, method,
                          timeout)

    def notify(self, method, args, kwargs):
        """Send a notification (no reply, no waiting)."""
        self._state.wait_take()
        try:
            if self.error is not None:
                raise NotSent(str(self.error))
            self.proto.send_notification(method, args, kwargs)
        finally:
            self._state.give()
        self._flush(INFINITY, True)

    cdef object _queue_request(self, object method, object args, object kwargs, object token,
                               object timeout, double now, bint direct=False):
        """``proto.send_request(method, args, kwargs, token, timeout)``, fused: the frame is
        built in one piece (under ``_state``; *now*: the clock if already read, else 0).

        *direct*: the caller holds the send lock and sends the frame itself: a frame built
        here is left in ``_direct`` instead of the protocol's output queue.
        """
        cdef object proto = self._p()
        cdef object body, frame, rid
        cdef Py_ssize_t n
        cdef long long c_rid, sent
        cdef dict pending = self._pending
        cdef PyObject* envelope[4]
        cdef Py_ssize_t size
        cdef object meta = None
        rid = slot_get(proto, self._o_next_id)
        c_rid = rid
        if slot_get(proto, self._o_error) is not None or c_rid > self._max_rid:
            return proto.send_request(method, args, kwargs, token, timeout)  # (it raises)
        # The envelope (method, args[, kwargs[, meta]]), as ClientConnection.send_request
        # builds it; on the compiled serializer packed from a C array, without the tuple.
        envelope[0] = <PyObject*>method
        envelope[1] = <PyObject*>args
        envelope[2] = <PyObject*>kwargs
        size = 2
        if timeout is not None:
            if timeout is not self._meta_timeout:  # (a client's timeout: the same object)
                self._meta = {"timeout": timeout}  # only ever read: shared by calls
                self._meta_timeout = timeout
            meta = self._meta
            envelope[3] = <PyObject*>meta
            size = 4
        elif kwargs:
            size = 3
        if self._c_ser:
            body = _ser.dumps_array(envelope, size)
        elif size == 4:
            body = self._dumps((method, args, kwargs, meta))
        else:
            body = self._dumps((method, args, kwargs) if size == 3 else (method, args))
        n = PyBytes_GET_SIZE(body)
        if n > self._peer_max:
            proto._check_size(body)  # (it raises)
        if not pending:
            # Keepalive measures the server's silence from when a call became pending.
            self._busy_since = now if now else _now()
        slot_set(proto, self._o_next_id, c_rid + 1)
        slot_set(proto, self._o_last_rid, rid)
        pending[rid] = token
        sent = slot_get(proto, self._o_sent)
        if sent < self._peer_inflight and not self._held:
            slot_set(proto, self._o_sent, sent + 1)
            if n >= C_ZERO_COPY_MIN:
                proto._frame(C_KIND_REQUEST, rid, body)  # (header and body apart)
            else:
                frame = PyBytes_FromStringAndSize(NULL, _HDR + n)
                _store_header(<unsigned char*>PyBytes_AS_STRING(frame), <uint32_t>n,
                              C_KIND_REQUEST, <uint32_t>rid)
                memcpy(PyBytes_AS_STRING(frame) + _HDR, PyBytes_AS_STRING(body), n)
                if direct:
                    self._direct = frame
                else:
                    (<list>slot_get(proto, self._o_out)).append(frame)
                    slot_set(proto, self._o_out_size,
                             <long long>slot_get(proto, self._o_out_size) + (_HDR + n))
        else:
            self._held[rid] = body
        return rid

    cdef int _push_deadline(self, double deadline, object rid) except -1:
        """Record an async call's deadline for the reader (under ``_state``)."""
        cdef list heap = self._async_deadlines
        _heappush(heap, (deadline, rid))
        if len(heap) > 2 * self.proto.pending + 64:
            # Entries of answered calls linger until their deadline; drop them now and
            # then, so the heap stays proportional to the calls actually pending.
            is_pending = self.proto.is_pending
            heap[:] = [entry for entry in heap if is_pending(entry[1])]
            _heapify(heap)
        return 0

    # --- sending ------------------------------------------------------------------------------

    cdef int _flush(self, double deadline, bint wait) except -1:
        """Send the queued output, unless another thread is sending (it then sends ours).

        With *wait* this returns once the kernel took everything (a failed send loses the
        connection; one that stalls past *deadline* raises DeadlineExceeded); without, the
        rest stays in ``_backlog`` for the reading threads (see the pure twin).
        """
        while self._send_lock.take():
            try:
                self._send_locked(deadline, wait)
            finally:
                self._send_lock.give()
            # Output queued meanwhile by threads that found the lock taken is ours to send.
            if self.error is not None or not self._output_queued() or self._backlog:
                return 0
        return 0

    cdef int _send_locked(self, double deadline, bint wait, list out=None) except -1:
        """Write the backlog, then the queued output (the caller holds the send lock).

        *out*: output the caller already took from the protocol, to write first.
        """
        cdef list chunks, backlog
        cdef Py_ssize_t off, done
        while self.error is None:
            if out is None:
                if not self._output_queued() and not self._backlog:
                    # Nothing to send (read without _state: a thread queueing output now
                    # finds the send lock taken, and _flush looks again once it is free).
                    return 0
                self._state.wait_take()
                try:
                    out = self._take_output()
                finally:
                    self._state.give()
            backlog = self._backlog
            if backlog:
                chunks = backlog + out if out else backlog
                off = self._backlog_off
                self._backlog = []
                self._backlog_off = 0
            elif out:
                chunks = out
                off = 0
            else:
                return 0
            try:
                done = self._write_some(chunks, off)
                if done < len(chunks):
                    if not wait:
                        if not backlog:
                            self._stalled_since = _now()
                        self._backlog = chunks[done:]
                        self._backlog_off = self._part
                        return 0
                    rest = [memoryview(chunks[done])[self._part:]]
                    rest.extend([memoryview(c) for c in chunks[done + 1:]])
                    self._write_rest(rest, _opt(deadline))
            except OSError as exc:
                # Part of a frame may be on the wire: the stream cannot be trusted.
                if wait and isinstance(exc, TimeoutError) and deadline != INFINITY:
                    self._lost(ConnectionLost(f"{self._where()}: a send outlived its deadline"))
                    raise DeadlineExceeded("deadline passed while sending the request") from exc
                self._lost(ConnectionLost(f"{self._where()}: send failed: {exc}"))
                return 0
            out = None
        return 0

    cdef Py_ssize_t _write_some(self, list chunks, Py_ssize_t off) except -1:
        """Write what the kernel takes now, one sendmsg per _IOV_BATCH chunks.

        *chunks* are bytes; the first is already sent up to *off*.  Returns how many went
        out whole; ``_part`` says how much of the next one did.
        """
        cdef iovec iov[_IOV_BATCH]
        cdef msghdr msg
        cdef Py_ssize_t n = len(chunks)
        cdef Py_ssize_t i = 0
        cdef Py_ssize_t j, count
        cdef ssize_t sent
        cdef int err = 0
        cdef int fd = self._fd
        cdef object chunk
        memset(&msg, 0, sizeof(msg))
        for j in range(n):
            if not PyBytes_CheckExact(chunks[j]):  # (the protocol queues bytes; be safe)
                chunks[j] = bytes(chunks[j])
        if self._closed:
            raise _os_error(9)  # EBADF, as the closed socket object would say
        while i < n:
            count = min(n - i, <Py_ssize_t>_IOV_BATCH)
            for j in range(count):
                chunk = chunks[i + j]
                iov[j].iov_base = PyBytes_AS_STRING(chunk)
                iov[j].iov_len = PyBytes_GET_SIZE(chunk)
            iov[0].iov_base = <char*>iov[0].iov_base + off
            iov[0].iov_len -= off
            msg.msg_iov = iov
            msg.msg_iovlen = count
            while True:
                with nogil:
                    sent = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL)
                    if sent < 0:
                        err = errno
                if sent >= 0 or err != EINTR:
                    break
                if PyErr_CheckSignals() < 0:
                    return -1
            if sent < 0:
                if not would_block(err):
                    raise _os_error(err)
                sent = 0
            j = 0
            while j < count and <size_t>sent >= iov[j].iov_len:
                sent -= iov[j].iov_len
                j += 1
            if j < count:
                self._part = (off if j == 0 else 0) + sent
                return i + j
            i += count
            off = 0
        self._part = 0
        return n

    def _send_queued(self, deadline):
        """Send queued output (pongs, cancels) without waiting for a full socket to drain."""
        self._flush(<double>deadline, False)

    # --- waiting and reading ------------------------------------------------------------------

    cdef object _wait(self, object rid, double deadline, object method, object timeout):
        cdef dict results = self._results
        cdef Lock read_lock = self._read_lock
        cdef object outcome = None
        cdef double wait
        while True:
            if read_lock.take():
                # Leader: read (routing everyone's replies) until ours is in.  _feed hands
                # our own reply over in _lead_outcome, without _results and its lock.
                self._lead = <long long>rid
                try:
                    while rid not in results and self.error is None:
                        if deadline != INFINITY and _now() >= deadline:
                            break
                        self._read(deadline, INFINITY)
                        if self._lead_outcome is not None:
                            break
                finally:
                    outcome = self._lead_outcome
                    self._lead_outcome = None
                    self._lead = -1
                    read_lock.give()
                    if self._waiters:  # (read again under the lock below: no lost wakeup)
                        self._state.wait_take()
                        try:
                            self._cond.notify_all()
                        finally:
                            self._state.give()
                if outcome is not None:
                    break
            self._state.wait_take()
            try:
                outcome = results.pop(rid, None)
                if outcome is not None:
                    break
                if self.error is not None:
                    raise copy_error(self.error)
                wait = deadline - _now()
                if wait <= 0:
                    self.proto.cancel(rid)  # a late reply is then dropped as unknown
                    break
                if read_lock._held:
                    # Follower: the leader routes our reply, or frees the lock, and wakes us.
                    self._waiters += 1
                    try:
                        self._cond.wait(None if deadline == INFINITY else wait)
                    finally:
                        self._waiters -= 1
            finally:
                self._state.give()
        if outcome is None:
            self._flush(INFINITY, False)  # the cancel frame
            raise DeadlineExceeded(f"call {method!r} exceeded its deadline of {timeout}s")
        if (<tuple>outcome)[0] == C_KIND_RESPONSE:
            return (<tuple>outcome)[1]
        raise (<tuple>outcome)[1]

    def _read_once(self, deadline, slice_=None):
        """Read the socket once (bounded by *deadline*, *slice_* and keepalive); route."""
        self._read(INFINITY if deadline is None else <double>deadline,
                   INFINITY if slice_ is None else <double>slice_)

    cdef int _read(self, double deadline, double slice_) except -1:
        cdef double wait
        cdef ssize_t n
        cdef int err = 0
        cdef int ready
        cdef int fd = self._fd
        cdef pollfd pfd
        cdef char* target
        cdef Py_ssize_t room
        if self.error is not None:
            return 0
        wait = deadline - _now() if deadline != INFINITY else INFINITY
        if slice_ < wait:
            wait = slice_
        if self._closed:
            self._lost(ConnectionLost(f"{self._where()}: connection lost: {_os_error(9)}"))
            return 0
        pfd.fd = fd
        pfd.revents = 0
        if self._backlog and not self._send_lock._held:
            # Our output waits for the socket to drain: write as it does, read meanwhile.
            pfd.events = POLLIN | POLLOUT
            if self._poll(&pfd, wait if wait < self._recv_slice else self._recv_slice) < 0:
                return -1
            if pfd.revents == 0:
                self._backlog_stalled()
                return 0
            if pfd.revents & POLLOUT:
                self._stalled_since = _now()
                self._flush(INFINITY, False)
            if not (pfd.revents & (POLLIN | POLLERR | POLLHUP)):
                return 0
        elif wait < self._recv_slice:
            # Shorter than one blocking recv may last: wait for the exact time first.
            pfd.events = POLLIN
            if self._poll(&pfd, wait) < 0:
                return -1
            if pfd.revents == 0:
                return 0  # the caller's deadline (or slice) came first
        if self._big is not None:
            target = PyBytes_AS_STRING(self._big) + self._big_have
            room = PyBytes_GET_SIZE(self._big) - self._big_have
        else:
            target = self._buf + self._have
            room = self._cap - self._have
        # A blocking recv, bounded by SO_RCVTIMEO: the common case is this one syscall.
        while True:
            with nogil:
                n = recv(fd, target, room, 0)
                if n < 0:
                    err = errno
            if n >= 0 or err != EINTR:
                break
            if PyErr_CheckSignals() < 0:
                return -1
        if n < 0:
            if would_block(err):  # SO_RCVTIMEO passed without a byte
                return self._quiet(deadline)
            self._lost(ConnectionLost(f"{self._where()}: connection lost: {_os_error(err)}"))
            return 0
        if n == 0:
            self._lost(ConnectionLost(f"{self._where()} closed the connection"))
            return 0
        self._last_heard = _now()
        return self._received(n)

    cdef int _poll(self, pollfd* pfd, double wait) except -1:
        """poll() one descriptor for up to *wait* seconds (GIL released); revents 0: none."""
        cdef int ready
        cdef int err = 0
        cdef int ms = <int>ceil(wait * 1000) if wait > 0 else 0
        while True:
            with nogil:
                ready = poll(pfd, 1, ms)
                if ready < 0:
                    err = errno
            if ready >= 0:
                if ready == 0:
                    pfd.revents = 0
                return 0
            if err != EINTR:
                raise _os_error(err)
            if PyErr_CheckSignals() < 0:
                return -1

    cdef int _quiet(self, double deadline) except -1:
        """A blocking recv timed out: ping (or give up) once keepalive's silence passed."""
        cdef double now = _now()
        cdef double since = self._last_heard
        if self.keepalive is None or (deadline != INFINITY and now >= deadline):
            return 0
        if self._busy_since > since:
            since = self._busy_since
        if now - since >= <double>self.keepalive:
            self._silence()
        return 0

    cdef int _received(self, Py_ssize_t n) except -1:
        """*n* bytes arrived: feed the protocol every whole frame now complete."""
        cdef object frame, rid
        cdef int kind
        cdef const unsigned char* p = <const unsigned char*>self._buf
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t have, avail
        cdef uint32_t length
        cdef uint32_t limit = self._max_frame
        if self._big is not None:
            self._big_have += n
            if RAPIDRPC_DEBUG and self._big_have > PyBytes_GET_SIZE(self._big):
                raise AssertionError("client: read past the end of a large frame")
            if self._big_have < PyBytes_GET_SIZE(self._big):
                return 0
            frame = self._big
            self._big = None
            return self._feed(frame)
        self._have += n
        have = self._have
        if RAPIDRPC_DEBUG and not 0 < have <= self._cap:
            raise AssertionError(f"client: {have} buffered bytes in a {self._cap}-byte buffer")
        while True:
            avail = have - pos
            if avail < _HDR:
                if avail and not _header_ok(p + pos, avail, limit):
                    pos = have  # the parser raises on it at once
                break
            if not _header_ok(p + pos, _HDR, limit):
                pos = have
                break
            length = _load_u32(p + pos)
            if avail - _HDR < <Py_ssize_t>length:
                break
            pos += _HDR + length
        if pos:
            length = _load_u32(p)
            if (pos == _HDR + <Py_ssize_t>length and p[5] == 0
                    and (p[4] == C_KIND_RESPONSE or p[4] == C_KIND_ERROR)
                    and _header_ok(p, _HDR, limit)):
                # One reply, the sequential caller's case: routed without the frame
                # parser and its Frame object.  Its header passed _header_ok, the parser's
                # checks; the parser is told the bytes went by (_skipped), so the stream
                # offsets its later errors name stay exact.
                self._skipped += pos
                frame = None  # (its body is decoded where it lies)
                kind = p[4]
                rid = _load_u32(p + 8)
            else:
                frame = PyMemoryView_FromMemory(self._buf, pos, PyBUF_READ)
                kind = 0
                rid = None
            try:
                self._feed(frame, kind, rid, self._buf + _HDR, length)
            finally:
                frame = None  # (the view points into _buf, which moves now)
                memmove(self._buf, self._buf + pos, have - pos)
                self._have = have = have - pos
        if have >= _HDR and _load_u32(p) >= C_ZERO_COPY_MIN and self.error is None:
            # The rest starts a frame worth not copying (or too large for the buffer): read
            # it into a bytes object of its exact size, which the parser then slices.
            self._big = PyBytes_FromStringAndSize(NULL, _HDR + <Py_ssize_t>_load_u32(p))
            memcpy(PyBytes_AS_STRING(self._big), self._buf, have)
            self._big_have = have
            self._have = 0
        return 0

    cdef int _feed(self, object data, int kind=0, object rid=None, const char* at=NULL,
                   Py_ssize_t size=0) except -1:
        """Hand whole frames to the protocol; route the replies they complete.

        With *kind*, *data* is the body of one reply frame (*kind* response or error, for
        request *rid*) that _received cut out and checked itself; None when that body is
        the *size* bytes at *at* (read before this returns).
        """
        cdef list replies = []
        cdef list futures = None
        cdef tuple reply
        cdef object error = None
        cdef bint idle_draining
        cdef dict results = self._results
        cdef dict pending
        proto = self.proto
        self._state.wait_take()
        try:
            try:
                if kind:
                    self._take_reply(kind, rid, data, replies, at, size)
                else:
                    self._take_replies(data, replies)
            except ProtocolError as exc:
                # As the protocol does: those calls fail with the rest of the connection.
                pending = proto._pending
                for reply in replies:
                    pending[reply[1]] = reply[2]
                replies = []
                error = ConnectionLost(f"{self._where()}: protocol error: {exc}")
                error.__cause__ = exc
            for reply in replies:
                if reply[2] is _SYNC:
                    if self._lead >= 0 and <long long>reply[1] == self._lead:
                        self._lead_outcome = (reply[0], reply[3])
                    else:
                        results[reply[1]] = (reply[0], reply[3])
                else:
                    if futures is None:
                        futures = []
                    futures.append(reply)
            if results and self._waiters:
                self._cond.notify_all()
            idle_draining = (
                (self.draining or self._next_rid() > self._max_rid) and not self._pending)
        finally:
            self._state.give()
        if futures is not None:
            self._settle_all(futures)
        if error is not None:
            self._lost(error)
            return 0
        if self._output_queued():
            self._flush(INFINITY, False)
        if idle_draining:
            self._lost(ConnectionLost(f"{self._where()}: connection retired"))
        return 0

    cdef int _take_replies(self, object data, list replies) except -1:
        """``proto.receive_data(data)``, fused: append ``(kind, rid, token, value)`` for
        each reply (under ``_state``).  Frames other than replies go to the protocol."""
        cdef object proto = self.proto
        cdef list frames
        cdef list events
        cdef tuple event
        cdef object frame
        cdef int kind
        if self._skipped:  # (see _received: bytes of replies taken without the parser)
            self._parser_skip(self._skipped)
            self._skipped = 0
        frames = self._proto_feed(data)
        for frame in frames:
            kind = frame.kind
            if kind == C_KIND_RESPONSE or kind == C_KIND_ERROR:
                self._take_reply(kind, frame.request_id, frame.body, replies)
            elif kind in C_CONNECTION_KINDS:
                events = []
                proto._connection_frame(frame, events)
                self._settings_changed()
                for event in events:
                    kind = event[0]
                    if kind == C_KIND_ERROR:  # a goaway fails the calls it did not process
                        replies.append(event)
                    elif kind == C_KIND_GOAWAY:
                        self.draining = True
            else:
                raise proto.unexpected_frame(frame)
        return 0

    cdef int _settings_changed(self) except -1:
        """Copy the peer's settings the per-call path reads (a settings frame may change
        them; one can only arrive through _take_replies)."""
        cdef object proto = self._p()
        # (A peer may announce any uint64: held as C integers, capped at _HUGE.)
        self._peer_max = min(slot_get(proto, self._o_peer_max), _HUGE)
        self._peer_inflight = min(slot_get(proto, self._o_peer_inflight), _HUGE)
        return 0

    cdef int _take_reply(self, int kind, object rid, object body, list replies,
                         const char* at=NULL, Py_ssize_t size=0) except -1:
        """One response or error frame: append ``(kind, rid, token, value)`` to *replies*
        (or count it dropped when *rid* is not pending).  Under ``_state``.

        *body*: the frame's body, or None when it is the *size* bytes at *at*.
        """
        cdef object proto = self._p()
        cdef object token = self._pending.pop(rid, _MISSING)
        if token is _MISSING:
            proto.dropped_replies += 1
            return 0
        slot_set(proto, self._o_sent, <long long>slot_get(proto, self._o_sent) - 1)
        try:
            if self._c_ser and (body is None or type(body) is bytes):
                if body is not None:
                    at = PyBytes_AS_STRING(body)
                    size = PyBytes_GET_SIZE(body)
                value = _ser.loads(<const unsigned char*>at, size, self._max_depth)
            else:
                if body is None:
                    body = PyBytes_FromStringAndSize(at, size)
                if self._loads_kw:
                    value = self._loads(body, **self._loads_kw)
                else:
                    value = self._loads(body)
            if kind == C_KIND_ERROR:
                value = proto._remote_error(value)
        except (ValueError, TypeError, ProtocolError):
            self._pending[rid] = token  # (the protocol's own decode fails it, and raises)
            if body is None:
                body = PyBytes_FromStringAndSize(at, size)
            frame = _FrameFields(kind=kind, request_id=rid, body=body)
            value = proto._decode(frame)
            if kind == C_KIND_ERROR:
                proto._remote_error(value)
            raise
        replies.append((kind, rid, token, value))
        if self._held:
            proto._release_held()
        return 0

    cdef int _settle_all(self, list events) except -1:
        """Complete the futures of reply *events*, then send what their callbacks queued.

        Holding the send lock meanwhile (when free) and giving the GIL away for a moment
        lets the threads those callbacks woke queue their next calls: they leave together
        in the write below (see the pure twin).
        """
        cdef tuple event
        cdef bint owner = self._send_lock.take()
        try:
            for event in events:
                _settle(event[2], event[0], event[3])
            if owner:
                with nogil:
                    sched_yield()
                self._send_locked(INFINITY, False)
        finally:
            if owner:
                self._send_lock.give()
        return 0

    # --- async reader thread ------------------------------------------------------------------

    def _reader_loop(self):
        """Body of the reader thread started by the first ``call_async``."""
        cdef list heap = self._async_deadlines
        cdef Lock read_lock = self._read_lock
        cdef double deadline
        while self.error is None:
            deadline = INFINITY
            if heap:
                deadline = heap[0][0]
                if deadline <= _now():
                    nxt = self._expire_async()
                    deadline = INFINITY if nxt is None else <double>nxt
            if not read_lock.take():
                # A synchronous caller is reading for everyone: wait like its followers.
                # (Never a blocking acquire of the read lock: a thread that got one would
                # hold it while its locked() flag still says False, until it runs again.)
                self._state.wait_take()
                try:
                    if read_lock._held:
                        self._waiters += 1
                        try:
                            self._cond.wait(C_FOLLOW_SLICE)
                        finally:
                            self._waiters -= 1
                finally:
                    self._state.give()
                continue
            try:
                # With async deadlines pending, wake often enough to expire a call that
                # was submitted (with an earlier deadline) while we were already waiting.
                self._read(deadline, INFINITY if deadline == INFINITY else C_ASYNC_SLICE)
            finally:
                read_lock.give()
                if self._waiters:
                    self._state.wait_take()
                    try:
                        self._cond.notify_all()
                    finally:
                        self._state.give()


# --- the method proxy's call ------------------------------------------------------------------
cdef class MethodCall:
    """``client.name(...)`` of the blocking Client, compiled (the base of the method proxy
    client.py builds for this core).

    A call on a connection that is usable and was heard from within the last second goes
    straight to the core; every other case (no connection yet, an idle or unusable one, a
    method named in ``idempotent_methods``, which may be retried) takes ``Client._invoke``,
    as the Python proxy always does.  A call that never ran (NotSent, NotProcessed) goes
    once more through ``Client._resend``, as from ``_invoke``.
    """

    cdef public object _client
    cdef public object _name

    def __call__(self, *args, **kwargs):
        cdef object client = self._client
        cdef object name = self._name
        # (PyObject_GenericGetAttr: Client's own attributes, without the detour through
        # the class's __getattr__ hook that a plain lookup takes on a class defining one.)
        cdef object conn = PyObject_GenericGetAttr(client, "_conn")
        cdef ConnectionCore core
        if isinstance(conn, ConnectionCore):
            core = <ConnectionCore>conn
            if (core._usable() and _now() - core._last_heard < C_FRESH_IDLE
                    and name not in PyObject_GenericGetAttr(client, "idempotent_methods")):
                timeout = PyObject_GenericGetAttr(client, "timeout")
                try:
                    return core._call(name, args, kwargs or None, timeout)
                except (NotSent, NotProcessed):
                    return client._resend(name, args, kwargs, timeout)
        return client._invoke(name, args, kwargs, None)
