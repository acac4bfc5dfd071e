"""The hot paths of a blocking client connection, in pure Python (twin of cext/client.pyx).

:class:`ConnectionCore` does the per-call work of
:class:`~rapidrpc.transport.blocking.BlockingConnection`: queue a request, send the queued
output (one thread sends for all: requests queued while another thread is sending leave
with its next write), wait for the reply as leader or follower, read the socket into one
reusable buffer and route every reply found there.  The rare paths -- connecting, waiting
for writability, keepalive pings, losing the connection, cancelling, expiring async
deadlines -- exist once, in BlockingConnection, and the core calls them by name
(``_where``, ``_write_rest``, ``_backlog_stalled``, ``_silence``, ``_lost``, ``_forget``,
``_expire_async``, ``_ensure_reader``).  BlockingConnection's ``__init__`` sets every
attribute the core reads, then calls :meth:`ConnectionCore._core_init`.

Sending never makes a thread that reads the socket wait on a full socket (the server
may be waiting for us to read): such a thread writes what the kernel takes and leaves the
rest in ``_backlog``, which reading threads keep writing as the socket drains.  After
completing futures, the routing thread briefly gives the GIL to the threads their
callbacks woke, holding the send lock: the calls those threads submit then queue up and
leave in one write.

The compiled twin (``rapidrpc.transport._client_c``) implements the same methods with the
same behaviour, fusing the steps in C; the client tests run on both.
"""

from __future__ import annotations

import heapq
import math
import os
import select
import socket
import threading
from concurrent.futures import Future
from time import monotonic
from typing import Any

from ..errors import ConnectionLost, DeadlineExceeded, ProtocolError
from ..wire import constants as C
from ._common import RECV_SIZE, SYNC, NotSent, copy_error, settle, unwrap

__all__ = ["CallFuture", "ConnectionCore", "Lock"]

#: The lock type of this core's connections (``_state``, ``_send_lock``, ``_read_lock``);
#: the compiled core has its own, which it takes without a Python call.
Lock = threading.Lock

_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_KIND_RESPONSE = C.KIND_RESPONSE
_KIND_ERROR = C.KIND_ERROR
_KIND_GOAWAY = C.KIND_GOAWAY
_REPLY_KINDS = frozenset((_KIND_RESPONSE, _KIND_ERROR))
_READABLE = select.POLLIN | select.POLLERR | select.POLLHUP
# Async deadlines: the reader wakes at least this often while any is pending, so a call
# submitted with an earlier deadline than the ones it is already waiting for expires on time.
_ASYNC_SLICE = 0.02
# The reader thread, while a synchronous caller reads for everyone, checks deadlines this often.
_FOLLOW_SLICE = 0.05


class CallFuture(Future):  # type: ignore[type-arg]
    """The :class:`concurrent.futures.Future` of one ``call_async``.

    Cancelling it (before its reply arrived) also cancels the call on the server.
    """

    def __init__(self, conn: Any) -> None:
        super().__init__()
        self._conn = conn
        self._rid = 0

    def cancel(self) -> bool:
        """Cancel the call; False when its outcome is already known."""
        if not super().cancel():
            return False
        self._conn._forget(self._rid)
        return True


class ConnectionCore:
    """Per-call work of one blocking connection (see the module docstring)."""

    # Attributes (set by BlockingConnection.__init__): sock, proto, keepalive, error,
    # draining, _state, _cond, _send_lock, _read_lock, _results, _async_deadlines,
    # _reader, _last_heard, _ping_sent, _waiters, _closed, _rpoll, _wpoll, _recv_slice.

    def _core_init(self) -> None:
        """Set up the receive buffer (called once the handshake is done)."""
        self._rbuf = bytearray(RECV_SIZE)
        self._rview = memoryview(self._rbuf)
        # Output a reading thread could not write without waiting (see _flush), and since
        # when it has waited for the socket to take a byte.
        self._backlog: list[memoryview] = []
        self._stalled_since = 0.0
        self._dpoll = select.poll()
        self._dpoll.register(self.sock, _READABLE | select.POLLOUT)
        # When the connection last went from no call pending to one: keepalive measures
        # the server's silence from the later of this and the last byte heard.
        self._busy_since = monotonic()

    # --- calls ----------------------------------------------------------------------------

    def call(
        self,
        method: str,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any] | None,
        timeout: float | None,
    ) -> Any:
        """Send a call and wait for its result (raises the remote error, or a local one)."""
        now = monotonic()
        deadline = None if timeout is None else now + timeout
        with self._state:
            if self.error is not None:
                raise NotSent(str(self.error))
            proto = self.proto
            if not proto.pending:
                self._busy_since = now
            rid = proto.send_request(method, args, kwargs, SYNC, timeout)
        try:
            self._flush(deadline)
        except DeadlineExceeded:
            with self._state:
                self._results.pop(rid, None)
            raise
        return self._wait(rid, deadline, method, timeout)

    def call_async(
        self,
        method: str,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any] | None,
        timeout: float | None,
    ) -> Future[Any]:
        """Send a call; return a Future completed by whichever thread reads its reply."""
        future = CallFuture(self)
        with self._state:
            if self.error is not None:
                raise NotSent(str(self.error))
            proto = self.proto
            if not proto.pending:
                self._busy_since = monotonic()
            future._rid = rid = proto.send_request(method, args, kwargs, future, timeout)
            if timeout is not None:
                self._push_deadline(monotonic() + timeout, rid)
        self._flush(None)
        if self._reader is None:
            self._ensure_reader()
        return future

    def notify(
        self, method: str, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any] | None
    ) -> None:
        """Send a notification (no reply, no waiting)."""
        with self._state:
            if self.error is not None:
                raise NotSent(str(self.error))
            self.proto.send_notification(method, args, kwargs)
        self._flush(None)

    def _push_deadline(self, deadline: float, rid: int) -> None:
        """Record an async call's deadline for the reader (under ``_state``)."""
        heap = self._async_deadlines
        heapq.heappush(heap, (deadline, rid))
        pending = self.proto.pending
        if len(heap) > 2 * pending + 64:
            # Entries of answered calls linger until their deadline; drop them now and
            # then, so the heap stays proportional to the calls actually pending.
            heap[:] = [entry for entry in heap if self.proto.is_pending(entry[1])]
            heapq.heapify(heap)

    # --- sending --------------------------------------------------------------------------

    def _flush(self, deadline: float | None, wait: bool = True) -> None:
        """Send the queued output, unless another thread is sending (it then sends ours).

        With *wait* (a thread sending its own request) this returns once the kernel took
        everything: a send that fails loses the connection, one that stalls past
        *deadline* raises DeadlineExceeded.  Without *wait* (a thread that reads the
        socket, which must never block on a write while the server may be waiting for
        us to read) whatever the kernel does not take at once stays in ``_backlog``, and
        threads reading the socket write it as the socket drains.
        """
        send_lock = self._send_lock
        while send_lock.acquire(False):
            try:
                self._send_locked(deadline, wait)
            finally:
                send_lock.release()
            # Output queued meanwhile by threads that found the lock taken is ours to send.
            if self.error is not None or not self.proto.output_size or self._backlog:
                return

    def _send_locked(self, deadline: float | None, wait: bool) -> None:
        """Write the backlog, then the queued output (the caller holds the send lock)."""
        while self.error is None:
            with self._state:
                out = self.proto.take_output()
            backlog = self._backlog
            chunks = backlog + out if backlog else out
            if not chunks:
                return
            self._backlog = []
            try:
                if wait:
                    self._write_all(chunks, deadline)
                else:
                    rest = self._write_some(chunks)
                    if rest:
                        if not backlog:
                            self._stalled_since = monotonic()
                        self._backlog = rest
                        return
            except OSError as exc:
                # Part of a frame may be on the wire: the stream cannot be trusted.
                if wait and isinstance(exc, TimeoutError) and deadline is not None:
                    self._lost(ConnectionLost(f"{self._where()}: a send outlived its deadline"))
                    raise DeadlineExceeded("deadline passed while sending the request") from exc
                self._lost(ConnectionLost(f"{self._where()}: send failed: {exc}"))
                return

    def submit(
        self,
        method: str,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any] | None,
        timeout: float | None,
    ) -> int:
        """Queue a call whose reply :meth:`collect` waits for; return its request id.

        Nothing is sent: the caller sends a batch with ``_send_queued``.
        """
        with self._state:
            if self.error is not None:
                raise NotSent(str(self.error))
            proto = self.proto
            if not proto.pending:
                self._busy_since = monotonic()
            return proto.send_request(method, args, kwargs, SYNC, timeout)

    def collect(self, rid: int, deadline: float | None, method: str, timeout: float | None) -> Any:
        """Wait for the reply of a call queued by :meth:`submit` (*deadline*: monotonic or None)."""
        return self._wait(rid, deadline, method, timeout)

    def _send_queued(self, deadline: float) -> None:
        """Send queued output (pongs, cancels) without waiting for a full socket to drain."""
        self._flush(deadline, wait=False)

    def _write_all(self, chunks: list[Any], deadline: float | None) -> None:
        """One non-blocking send; the slow path takes over when the kernel is full."""
        rest = self._write_some(chunks)
        if rest:
            self._write_rest(rest, deadline)

    def _write_some(self, chunks: list[Any]) -> list[memoryview]:
        """Write what the kernel takes now (one syscall per 1024 chunks); return the rest."""
        sock = self.sock
        while True:
            batch = chunks[:1024]
            try:
                if len(batch) == 1:
                    sent = sock.send(batch[0], _DONTWAIT)
                else:
                    sent = sock.sendmsg(batch, [], _DONTWAIT)
            except BlockingIOError:
                sent = 0
            i = 0
            for chunk in batch:
                size = memoryview(chunk).nbytes
                if sent < size:
                    break
                sent -= size
                i += 1
            if i < len(batch) or len(chunks) == i:
                break
            chunks = chunks[i:]  # a whole batch went out: on with the next
        if i == len(chunks):
            return []
        return [memoryview(chunks[i])[sent:]] + [memoryview(c) for c in chunks[i + 1 :]]

    # --- waiting and reading ----------------------------------------------------------------

    def _wait(self, rid: int, deadline: float | None, method: str, timeout: float | None) -> Any:
        results = self._results
        read_lock = self._read_lock
        outcome = None
        while True:
            if read_lock.acquire(False):
                # Leader: read (routing everyone's replies) until ours is in.
                try:
                    while rid not in results and self.error is None:
                        if deadline is not None and monotonic() >= deadline:
                            break
                        self._read_once(deadline)
                finally:
                    read_lock.release()
                    if self._waiters:  # (read again under the lock below: no lost wakeup)
                        with self._state:
                            self._cond.notify_all()
            with self._state:
                outcome = results.pop(rid, None)
                if outcome is not None:
                    break
                if self.error is not None:
                    raise copy_error(self.error)
                wait = None if deadline is None else deadline - monotonic()
                if wait is not None and wait <= 0:
                    self.proto.cancel(rid)  # a late reply is then dropped as unknown
                    break
                if read_lock.locked():
                    # Follower: the leader routes our reply, or frees the lock, and wakes us.
                    self._waiters += 1
                    try:
                        self._cond.wait(wait)
                    finally:
                        self._waiters -= 1
        if outcome is None:
            self._flush(None, wait=False)  # the cancel frame
            raise DeadlineExceeded(f"call {method!r} exceeded its deadline of {timeout}s")
        return unwrap(outcome)

    def _read_once(self, deadline: float | None, slice_: float | None = None) -> None:
        """Read the socket once (bounded by *deadline*, *slice_* and keepalive); route."""
        if self.error is not None:
            return
        wait = None if deadline is None else deadline - monotonic()
        if slice_ is not None and (wait is None or wait > slice_):
            wait = slice_
        try:
            if self._backlog and not self._send_lock.locked():
                # Our output waits for the socket to drain: write as it does, read meanwhile.
                if not self._pump(wait):
                    return
                n = self.sock.recv_into(self._rbuf)
            elif wait is None or wait >= self._recv_slice:
                # The common case, one syscall: a blocking recv, bounded by SO_RCVTIMEO.
                n = self.sock.recv_into(self._rbuf)
            elif self._rpoll.poll(max(0, math.ceil(wait * 1000))):
                n = self.sock.recv_into(self._rbuf)
            else:
                return  # the caller's deadline (or slice) came first
        except BlockingIOError:  # SO_RCVTIMEO passed without a byte
            self._quiet(deadline)
            return
        except OSError as exc:
            self._lost(ConnectionLost(f"{self._where()}: connection lost: {exc}"))
            return
        if not n:
            self._lost(ConnectionLost(f"{self._where()} closed the connection"))
            return
        self._last_heard = monotonic()
        self._route(self._rview[:n])

    def _pump(self, wait: float | None) -> bool:
        """Wait until the socket is readable or writable, writing the backlog when it is
        writable; True when there is something to read."""
        limit = self._recv_slice if wait is None else min(wait, self._recv_slice)
        ready = self._dpoll.poll(max(0, math.ceil(limit * 1000)))
        if not ready:
            self._backlog_stalled()
            return False
        mask = ready[0][1]
        if mask & select.POLLOUT:
            self._stalled_since = monotonic()
            self._flush(None, wait=False)
        return bool(mask & _READABLE)

    def _quiet(self, deadline: float | None) -> None:
        """A blocking recv timed out: ping (or give up) once keepalive's silence passed."""
        keepalive = self.keepalive
        now = monotonic()
        if (
            keepalive is not None
            and (deadline is None or now < deadline)
            and now - max(self._last_heard, self._busy_since) >= keepalive
        ):
            self._silence()

    def _route(self, data: Any) -> None:
        futures: list[tuple[Future[Any], int, Any]] = []
        with self._state:
            try:
                events = self.proto.receive_data(data)
            except ProtocolError as exc:
                error: BaseException | None = ConnectionLost(
                    f"{self._where()}: protocol error: {exc}"
                )
                error.__cause__ = exc
                events = []
            else:
                error = None
            results = self._results
            for event in events:
                kind = event[0]
                if kind in _REPLY_KINDS:
                    token = event[2]
                    if token is SYNC:
                        results[event[1]] = (kind, event[3])
                    else:
                        futures.append((token, kind, event[3]))
                elif kind == _KIND_GOAWAY:
                    self.draining = True
            if results and self._waiters:
                self._cond.notify_all()
            proto = self.proto
            idle_draining = (self.draining or proto.ids_exhausted) and proto.pending == 0
            has_output = proto.output_size > 0
        if futures:
            self._settle_all(futures)
        if error is not None:
            self._lost(error)
            return
        if has_output or self.proto.output_size:
            self._flush(None, wait=False)
        if idle_draining:
            self._lost(ConnectionLost(f"{self._where()}: connection retired"))

    def _settle_all(self, futures: list[tuple[Future[Any], int, Any]]) -> None:
        """Complete *futures*, holding the send lock if free, then send what they caused.

        Their callbacks often wake a thread that submits the next calls.  Giving it the
        GIL now, while we hold the send lock, makes its requests queue up instead of each
        taking its own send(); the write below sends them all at once.
        """
        owner = self._send_lock.acquire(False)
        try:
            for future, kind, value in futures:
                settle(future, kind, value)
            if owner:
                os.sched_yield()  # (releases the GIL)
                self._send_locked(None, wait=False)
        finally:
            if owner:
                self._send_lock.release()

    # --- async reader thread ---------------------------------------------------------------

    def _reader_loop(self) -> None:
        """Body of the reader thread started by the first ``call_async``."""
        heap = self._async_deadlines
        read_lock = self._read_lock
        while self.error is None:
            deadline = None
            if heap:
                deadline = heap[0][0]
                if deadline <= monotonic():
                    deadline = self._expire_async()
            if not read_lock.acquire(False):
                # A synchronous caller is reading for everyone: wait like its followers.
                # (Never a blocking acquire of the read lock: a thread that got one would
                # hold it while its locked() flag still says False, until it runs again.)
                with self._state:
                    if read_lock.locked():
                        self._waiters += 1
                        try:
                            self._cond.wait(_FOLLOW_SLICE)
                        finally:
                            self._waiters -= 1
                continue
            try:
                # With async deadlines pending, wake often enough to expire a call that
                # was submitted (with an earlier deadline) while we were already waiting.
                self._read_once(deadline, None if deadline is None else _ASYNC_SLICE)
            finally:
                read_lock.release()
                if self._waiters:
                    with self._state:
                        self._cond.notify_all()
