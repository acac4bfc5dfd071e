# Compiled as rapidrpc.transport._client_c; directives come from setup.py.
"""Compiled client core: the twin of rapidrpc/transport/_client_py.py (same behaviour).

:class:`ConnectionCore` holds the per-call work of a blocking connection; the class
BlockingConnection builds on it (blocking.py) and supplies the rare paths the core calls by
name (``_where``, ``_write_rest``, ``_silence``, ``_lost``, ``_forget``, ``_expire_async``,
``_ensure_reader``).  What the compiled twin does differently, for speed only:

* sockets are driven with C ``send``/``recv``/``poll`` on the descriptor, the GIL released
  around each call, and the clock is ``clock_gettime(CLOCK_MONOTONIC)`` (time.monotonic's);
* received bytes land in one C buffer and are handed to the protocol a run of whole frames
  at a time; a frame with a large body (``ZERO_COPY_MIN_BODY`` or more) is read straight
  into a ``bytes`` object of its exact size, which the frame parser then hands out without
  copying.  Every byte still goes through the protocol's parser, in order, so limits and
  errors are the parser's own; a header the parser would refuse is fed to it at once.
"""

cimport cython
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.exc cimport PyErr_CheckSignals
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.errno cimport EINTR, errno
from libc.math cimport INFINITY, ceil
from libc.stdint cimport uint32_t
from libc.string cimport memcpy, memmove
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

import heapq
import os
from concurrent.futures import Future, InvalidStateError

from rapidrpc.errors import ConnectionLost, DeadlineExceeded, ProtocolError

from rapidrpc.transport._common import RECV_SIZE, SYNC, NotSent, copy_error, unwrap
from rapidrpc.wire import constants as _const

from client_io cimport (
    MSG_DONTWAIT,
    MSG_NOSIGNAL,
    POLLIN,
    PyBUF_READ,
    PyMemoryView_FromMemory,
    poll,
    pollfd,
    recv,
    send,
    would_block,
)

__all__ = ["CallFuture", "ConnectionCore"]

# --- numbers from constants.py, as C globals --------------------------------------------------
cdef enum:
    _HDR = 12
if _const.HEADER_SIZE != _HDR:
    raise ImportError("rapidrpc.transport._client_c implements a 12-byte header, constants say "
                      f"{_const.HEADER_SIZE}: rebuild the extension")

cdef int C_KIND_RESPONSE = _const.KIND_RESPONSE
cdef int C_KIND_ERROR = _const.KIND_ERROR
cdef int C_KIND_GOAWAY = _const.KIND_GOAWAY
cdef uint32_t C_MAX_KIND = _const.MAX_KIND
cdef uint32_t C_KNOWN_FLAGS = _const.KNOWN_FLAGS
cdef Py_ssize_t C_ZERO_COPY_MIN = _const.ZERO_COPY_MIN_BODY
cdef Py_ssize_t C_RECV_SIZE = RECV_SIZE
# Async deadlines: the reader wakes at least this often while any is pending (as in the twin).
cdef double C_ASYNC_SLICE = 0.02
# The reader thread, while a synchronous caller reads for everyone, checks deadlines this often.
cdef double C_FOLLOW_SLICE = 0.05

cdef object _heappush = heapq.heappush
cdef object _heapify = heapq.heapify
cdef object _SYNC = SYNC


# --- small C helpers --------------------------------------------------------------------------
cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef inline uint32_t _load_u32(const unsigned char* p) noexcept nogil:
    return ((<uint32_t>p[0]) << 24) | ((<uint32_t>p[1]) << 16) | ((<uint32_t>p[2]) << 8) | p[3]


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


# --- futures ----------------------------------------------------------------------------------
class CallFuture(Future):
    """The :class:`concurrent.futures.Future` of one ``call_async``.

    Cancelling it (before its reply arrived) also cancels the call on the server.
    """

    def __init__(self, conn):
        Future.__init__(self)
        self._conn = conn
        self._rid = 0

    def cancel(self):
        """Cancel the call; False when its outcome is already known."""
        if not Future.cancel(self):
            return False
        self._conn._forget(self._rid)
        return True


cdef inline void _settle(object future, int kind, object value) except *:
    try:
        if kind == C_KIND_RESPONSE:
            future.set_result(value)
        else:
            future.set_exception(value)
    except InvalidStateError:
        pass  # the caller cancelled it meanwhile


# --- the core ---------------------------------------------------------------------------------
cdef class ConnectionCore:
    """Per-call work of one blocking connection (see the module docstring)."""

    # Set by BlockingConnection.__init__ (Python), read and written by both sides.
    cdef public object sock, proto, keepalive, error
    cdef public bint draining, _closed
    cdef public object _state, _cond, _send_lock, _read_lock, _reader, _rpoll, _wpoll
    cdef public dict _results
    cdef public list _async_deadlines
    cdef public double _last_heard, _ping_sent, _busy_since, _recv_slice
    cdef public int _waiters

    # C-only state, set up by _core_init once the handshake is done.
    cdef int _fd
    cdef char* _buf               # reusable receive buffer
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _have         # bytes in _buf not fed yet (they start at a frame)
    cdef object _big              # bytes of one large frame being read into place, or None
    cdef Py_ssize_t _big_have
    cdef uint32_t _max_frame      # the parser's limit (proto.max_frame_size)
    # Bound methods called on every call, looked up once.
    cdef object _state_acquire, _state_release, _send_lock_acquire, _send_lock_release
    cdef object _send_request, _take_output, _receive_data

    def __cinit__(self, *args, **kwargs):
        self._buf = NULL
        self._fd = -1
        self._big = None

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
        self._state_acquire = self._state.acquire
        self._state_release = self._state.release
        self._send_lock_acquire = self._send_lock.acquire
        self._send_lock_release = self._send_lock.release
        self._send_request = self.proto.send_request
        self._take_output = self.proto.take_output
        self._receive_data = self.proto.receive_data
        self._busy_since = _now()

    # --- calls --------------------------------------------------------------------------------

    def call(self, method, args, kwargs, timeout):
        """Send a call and wait for its result (raises the remote error, or a local one)."""
        cdef double now = _now()
        cdef double deadline = INFINITY if timeout is None else now + <double>timeout
        self._state_acquire()
        try:
            if self.error is not None:
                raise NotSent(str(self.error))
            if not self.proto.pending:
                self._busy_since = now
            rid = self._send_request(method, args, kwargs, _SYNC, timeout)
        finally:
            self._state_release()
        try:
            self._flush(deadline, False)
        except DeadlineExceeded:
            self._state_acquire()
            try:
                self._results.pop(rid, None)
            finally:
                self._state_release()
            raise
        return self._wait(rid, deadline, method, timeout)

    def call_async(self, method, args, kwargs, timeout):
        """Send a call; return a Future completed by whichever thread reads its reply."""
        future = CallFuture(self)
        self._state_acquire()
        try:
            if self.error is not None:
                raise NotSent(str(self.error))
            if not self.proto.pending:
                self._busy_since = _now()
            rid = self._send_request(method, args, kwargs, future, timeout)
            future._rid = rid
            if timeout is not None:
                self._push_deadline(_now() + <double>timeout, rid)
        finally:
            self._state_release()
        self._flush(INFINITY, False)
        if self._reader is None:
            self._ensure_reader()
        return future

    def notify(self, method, args, kwargs):
        """Send a notification (no reply, no waiting)."""
        self._state_acquire()
        try:
            if self.error is not None:
                raise NotSent(str(self.error))
            self.proto.send_notification(method, args, kwargs)
        finally:
            self._state_release()
        self._flush(INFINITY, False)

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

    def _send_queued(self, deadline):
        """Send queued output (pongs, cancels) by *deadline*; a failure loses the connection."""
        self._flush(<double>deadline, True)

    cdef int _flush(self, double deadline, bint quiet) except -1:
        """Send every queued frame, unless another thread is sending (then it sends ours).

        A send that fails loses the connection (the pending calls fail with it).  When it
        stalls past *deadline* this raises DeadlineExceeded, unless *quiet*.
        """
        cdef list chunks
        while self._send_lock_acquire(False):
            try:
                while self.error is None:
                    self._state_acquire()
                    try:
                        chunks = self._take_output()
                    finally:
                        self._state_release()
                    if not chunks:
                        break
                    try:
                        self._write_all(chunks, deadline)
                    except OSError as exc:
                        # Part of a frame may be on the wire: the stream cannot be trusted.
                        if isinstance(exc, TimeoutError) and deadline != INFINITY and not quiet:
                            self._lost(
                                ConnectionLost(f"{self._where()}: a send outlived its deadline")
                            )
                            raise DeadlineExceeded(
                                "deadline passed while sending the request"
                            ) from exc
                        self._lost(ConnectionLost(f"{self._where()}: send failed: {exc}"))
                        return 0
            finally:
                self._send_lock_release()
            # Output queued after our last take, while we still held the lock, is ours.
            if not self.proto.output_size or self.error is not None:
                return 0
        return 0

    cdef int _write_all(self, list chunks, double deadline) except -1:
        """One non-blocking send; the slow path takes over when the kernel is full."""
        cdef object data
        cdef const char* p
        cdef Py_ssize_t n
        cdef ssize_t sent
        cdef int fd = self._fd
        cdef int err = 0
        if len(chunks) == 1 and PyBytes_CheckExact(chunks[0]):
            data = chunks[0]
            if self._closed:
                raise _os_error(9)  # EBADF, as the closed socket object would say
            p = PyBytes_AS_STRING(data)
            n = PyBytes_GET_SIZE(data)
            while True:
                with nogil:
                    sent = send(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL)
                    if sent < 0:
                        err = errno
                if sent >= 0 or err != EINTR:
                    break
                if PyErr_CheckSignals() < 0:
                    return -1
            if sent == n:
                return 0  # the common case: one syscall
            if sent < 0:
                if not would_block(err):
                    raise _os_error(err)
                sent = 0
            self._write_rest([memoryview(data)[sent:]], _opt(deadline))
        else:
            self._write_rest([memoryview(c) for c in chunks], _opt(deadline))
        return 0

    # --- waiting and reading ------------------------------------------------------------------

    cdef object _wait(self, object rid, double deadline, object method, object timeout):
        cdef dict results = self._results
        cdef object read_lock = self._read_lock
        cdef object outcome = None
        cdef double wait
        while True:
            if read_lock.acquire(False):
                # Leader: read (routing everyone's replies) until ours is in.
                try:
                    while rid not in results and self.error is None:
                        if deadline != INFINITY and _now() >= deadline:
                            break
                        self._read(deadline, INFINITY)
                finally:
                    read_lock.release()
                    if self._waiters:  # (read again under the lock below: no lost wakeup)
                        self._state_acquire()
                        try:
                            self._cond.notify_all()
                        finally:
                            self._state_release()
            self._state_acquire()
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
                if read_lock.locked():
                    # Follower: the leader routes our reply, or frees the lock, and wakes us.
                    self._waiters += 1
                    try:
                        self._cond.wait(None if deadline == INFINITY else wait)
                    finally:
                        self._waiters -= 1
            finally:
                self._state_release()
        if outcome is None:
            self._flush(_now() + 1.0, True)  # the cancel frame
            raise DeadlineExceeded(f"call {method!r} exceeded its deadline of {timeout}s")
        return unwrap(outcome)

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
        if self._big is not None:
            target = PyBytes_AS_STRING(self._big) + self._big_have
            room = PyBytes_GET_SIZE(self._big) - self._big_have
        else:
            target = self._buf + self._have
            room = self._cap - self._have
        if wait < self._recv_slice:
            # Shorter than one blocking recv may last: wait for the exact time first.
            pfd.fd = fd
            pfd.events = POLLIN
            pfd.revents = 0
            while True:
                with nogil:
                    ready = poll(&pfd, 1, <int>ceil(wait * 1000) if wait > 0 else 0)
                    if ready < 0:
                        err = errno
                if ready >= 0 or err != EINTR:
                    break
                if PyErr_CheckSignals() < 0:
                    return -1
            if ready == 0:
                return 0  # the caller's deadline (or slice) came first
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
        cdef object frame
        cdef const unsigned char* p
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t have, avail
        cdef uint32_t length
        cdef uint32_t limit = self._max_frame
        if self._big is not None:
            self._big_have += n
            if self._big_have < PyBytes_GET_SIZE(self._big):
                return 0
            frame = self._big
            self._big = None
            return self._feed(frame)
        self._have += n
        have = self._have
        p = <const unsigned char*>self._buf
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
            frame = PyMemoryView_FromMemory(self._buf, pos, PyBUF_READ)
            try:
                self._feed(frame)
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

    cdef int _feed(self, object data) except -1:
        """Hand whole frames to the protocol; route the replies they complete."""
        cdef list events
        cdef list futures = None
        cdef tuple event
        cdef object error = None
        cdef object token
        cdef int kind
        cdef bint idle_draining, has_output
        cdef dict results = self._results
        proto = self.proto
        self._state_acquire()
        try:
            try:
                events = self._receive_data(data)
            except ProtocolError as exc:
                error = ConnectionLost(f"{self._where()}: protocol error: {exc}")
                error.__cause__ = exc
                events = []
            for event in events:
                kind = event[0]
                if kind == C_KIND_RESPONSE or kind == C_KIND_ERROR:
                    token = event[2]
                    if token is _SYNC:
                        results[event[1]] = (kind, event[3])
                    else:
                        if futures is None:
                            futures = []
                        futures.append(event)
                elif kind == C_KIND_GOAWAY:
                    self.draining = True
            if results and self._waiters:
                self._cond.notify_all()
            idle_draining = (self.draining or proto.ids_exhausted) and proto.pending == 0
            has_output = proto.output_size > 0
        finally:
            self._state_release()
        if futures is not None:
            for event in futures:
                _settle(event[2], event[0], event[3])
        if error is not None:
            self._lost(error)
            return 0
        if has_output:
            self._flush(_now() + 1.0, True)
        if idle_draining:
            self._lost(ConnectionLost(f"{self._where()}: connection retired"))
        return 0

    # --- async reader thread ------------------------------------------------------------------

    def _reader_loop(self):
        """Body of the reader thread started by the first ``call_async``."""
        cdef list heap = self._async_deadlines
        cdef object read_lock = self._read_lock
        cdef double deadline
        while self.error is None:
            deadline = INFINITY
            if heap:
                deadline = heap[0][0]
                if deadline <= _now():
                    nxt = self._expire_async()
                    deadline = INFINITY if nxt is None else <double>nxt
            if not read_lock.acquire(False):
                # A synchronous caller is reading for everyone: wait like its followers.
                # (Never a blocking acquire of the read lock: a thread that got one would
                # hold it while its locked() flag still says False, until it runs again.)
                self._state_acquire()
                try:
                    if read_lock.locked():
                        self._waiters += 1
                        try:
                            self._cond.wait(C_FOLLOW_SLICE)
                        finally:
                            self._waiters -= 1
                finally:
                    self._state_release()
                continue
            try:
                # With async deadlines pending, wake often enough to expire a call that
                # was submitted (with an earlier deadline) while we were already waiting.
                self._read(deadline, INFINITY if deadline == INFINITY else C_ASYNC_SLICE)
            finally:
                read_lock.release()
                if self._waiters:
                    self._state_acquire()
                    try:
                        self._cond.notify_all()
                    finally:
                        self._state_release()
