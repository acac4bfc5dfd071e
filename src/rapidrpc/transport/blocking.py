"""The blocking client connection: one TCP socket shared by any number of threads.

Threads share one :class:`~rapidrpc.core.protocol.ClientConnection` under ``_state``.
Reading follows a leader/follower scheme: whoever takes ``_read_lock`` reads the socket and
routes every reply it finds (results of synchronous calls into ``_results``, asynchronous
ones into their futures); the others wait on a condition until their reply is routed or
the read lock frees up.  So a sequential call never hops threads: the calling thread sends
its request and reads its own reply.  ``call_async`` starts one reader thread lazily (never
at import or construction) so futures complete without anyone waiting.

Deadlines use one budget per call.  When it passes, the pending entry is dropped, a cancel
frame is sent, and DeadlineExceeded is raised at once, even if the server is silent.  A lost
connection fails every pending call promptly with ConnectionLost; nothing is ever re-sent.
"""

from __future__ import annotations

import heapq
import math
import os
import select
import socket
import struct
import threading
import time
from concurrent.futures import Future, InvalidStateError
from types import ModuleType
from typing import Any

from ..core.protocol import ClientConnection
from ..errors import ConnectionLost, DeadlineExceeded, ProtocolError, Unavailable
from ..wire import constants as C

__all__ = ["SYNC", "BlockingConnection", "NotSent"]

_RECV_SIZE = 256 * 1024
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_POLLIN = select.POLLIN | select.POLLERR | select.POLLHUP
_POLLOUT = select.POLLOUT | select.POLLERR | select.POLLHUP
_KIND_RESPONSE = C.KIND_RESPONSE
_KIND_ERROR = C.KIND_ERROR
_KIND_GOAWAY = C.KIND_GOAWAY
_REPLY_KINDS = frozenset((_KIND_RESPONSE, _KIND_ERROR))


class NotSent(ConnectionLost):
    """The connection was already lost before the call was queued: nothing was sent,
    so the caller may safely retry on a new connection."""


# Bumped in a forked child: connections (and their locks) from before the fork belong to
# the parent.  Cheaper than comparing os.getpid() (a syscall) on every call.
_fork_generation = 0


def _forked() -> None:
    global _fork_generation
    _fork_generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def fork_generation() -> int:
    """How many forks separate this process from the one that imported this module."""
    return _fork_generation


#: Token of a synchronous call: its reply is stored in ``_results`` for the caller.
SYNC = object()


class BlockingConnection:
    """One connection to a server, usable from many threads.

    Opening it connects with *connect_timeout*, sends the preface and settings and waits
    for the server's (the server's limits are known before the first call).  *keepalive*
    (seconds, or None) bounds how long a waiting reader tolerates silence: it then pings,
    and declares the connection lost when the next *keepalive* passes without a byte.
    """

    #: The last request id used before a fresh connection is opened (tests lower it).
    MAX_REQUEST_ID = C.MAX_REQUEST_ID

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float | None = 10.0,
        max_frame_size: int = C.DEFAULT_MAX_FRAME_SIZE,
        keepalive: float | None = 30.0,
        serializer: ModuleType | None = None,
        framing: ModuleType | None = None,
    ) -> None:
        self.address = (host, port)
        self.keepalive = keepalive
        self.proto = ClientConnection(
            serializer=serializer,
            framing=framing,
            max_frame_size=max_frame_size,
            max_request_id=self.MAX_REQUEST_ID,
        )
        self._state = threading.Lock()
        self._cond = threading.Condition(self._state)
        self._send_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._results: dict[int, tuple[int, Any]] = {}
        self._async_deadlines: list[tuple[float, int]] = []  # heap for the reader thread
        self._reader: threading.Thread | None = None
        self._last_heard = 0.0
        self._ping_sent = 0.0
        self._waiters = 0  # followers blocked in _cond.wait (notify only when > 0)
        self._generation = _fork_generation
        #: Set once the connection is unusable (the exception pending calls failed with).
        self.error: BaseException | None = None
        #: No new calls go here (goaway received or ids exhausted); it closes when idle.
        self.draining = False
        self._closed = False
        try:
            sock = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as exc:
            raise ConnectionLost(f"cannot connect to {host}:{port}: {exc}") from exc
        self.sock = sock
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            self._handshake(connect_timeout)
            # From here on the socket stays in blocking mode and waits are bounded with
            # poll(): one poll object per direction, since a reading and a sending thread
            # may wait at the same time (a shared socket timeout would race).
            sock.settimeout(None)
            if keepalive is not None:
                # Bound blocking reads by the keepalive period at the kernel level, so the
                # common wait is a single recv (no poll before it).
                sec = int(keepalive)
                usec = max(int((keepalive - sec) * 1e6), 0 if sec else 1)  # 0/0 means never
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", sec, usec))
            self._rpoll = select.poll()
            self._rpoll.register(sock, _POLLIN)
            self._wpoll = select.poll()
            self._wpoll.register(sock, _POLLOUT)
        except BaseException:
            sock.close()
            raise

    def _handshake(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        proto = self.proto
        proto.initiate()
        sock = self.sock
        sock.settimeout(timeout)
        try:
            sock.sendall(proto.data_to_send())
            while not proto.handshake_complete:
                if deadline is not None:
                    sock.settimeout(max(0.001, deadline - time.monotonic()))
                data = sock.recv(_RECV_SIZE)
                if not data:
                    raise ConnectionLost(f"{self._where()} closed during the handshake")
                proto.receive_data(data)
                if proto.goaway_received is not None:
                    _, code, message = proto.goaway_received
                    raise Unavailable(f"server refused the connection: {message}", code)
            self._last_heard = time.monotonic()
        except TimeoutError as exc:
            raise ConnectionLost(f"{self._where()}: handshake timed out after {timeout}s") from exc
        except ProtocolError as exc:
            raise ConnectionLost(f"{self._where()} is not a rapidrpc server: {exc}") from exc
        except OSError as exc:
            raise ConnectionLost(f"{self._where()}: {exc}") from exc

    def _where(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    # --- state ----------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """True when new calls may go on this connection."""
        return (
            self.error is None
            and not self.draining
            and not self.proto.ids_exhausted
            and self._generation == _fork_generation
        )

    def fresh(self, idle: float = 1.0) -> bool:
        """True when the connection is usable, checking first if it sat idle for *idle* s.

        A server may have sent a goaway or closed the connection while nobody was
        reading (idle timeout, shutdown, keepalive): read that now, without blocking, so
        the next call goes to a new connection instead of failing on a dead one.
        """
        if not self.usable:
            return False
        if time.monotonic() - self._last_heard < idle:
            return True
        if self._read_lock.acquire(blocking=False):
            try:
                self._read_once(time.monotonic())
            finally:
                self._read_lock.release()
                with self._state:
                    self._cond.notify_all()
        return self.usable

    def retire(self) -> None:
        """Take no new calls; close as soon as no call is pending (now, if none is)."""
        with self._state:
            self.draining = True
            idle = self.proto.pending == 0
        if idle:
            self.close()

    # --- sending --------------------------------------------------------------------------

    def _send(self, chunks: list[Any], deadline: float | None) -> None:
        """Write *chunks* fully by *deadline*; failing midway loses the connection."""
        if not chunks:
            return
        with self._send_lock:
            if self.error is not None:
                raise NotSent(str(self.error))
            try:
                self._write_all(chunks, deadline)
            except OSError as exc:
                # Part of a frame may be on the wire: the stream cannot be trusted anymore.
                if isinstance(exc, TimeoutError) and deadline is not None:
                    self._lost(ConnectionLost(f"{self._where()}: a send outlived its deadline"))
                    raise DeadlineExceeded("deadline passed while sending the request") from exc
                self._lost(ConnectionLost(f"{self._where()}: send failed: {exc}"))
                raise _copy(self.error) from exc

    def _write_all(self, chunks: list[Any], deadline: float | None) -> None:
        """Non-blocking sends; poll for writability only when the kernel buffer is full."""
        sock = self.sock
        if len(chunks) == 1:
            data = chunks[0]
            try:
                sent = sock.send(data, _DONTWAIT)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return  # the common case: one syscall
            views = [memoryview(data)[sent:]]
        else:
            views = [memoryview(c) for c in chunks]
        stalled_since = time.monotonic()
        while views:
            try:
                sent = sock.sendmsg(views[:1024], [], _DONTWAIT)
            except BlockingIOError:
                sent = 0
            if sent:
                stalled_since = time.monotonic()
            while sent:
                n = views[0].nbytes
                if n <= sent:
                    del views[0]
                    sent -= n
                else:
                    views[0] = views[0][sent:]
                    sent = 0
            if views:
                self._wait_writable(deadline, stalled_since)

    def _wait_writable(self, deadline: float | None, stalled_since: float) -> None:
        now = time.monotonic()
        if deadline is not None:
            wait = deadline - now
        elif self.keepalive is not None:
            # No deadline: give the peer two keepalive periods to take any byte.
            wait = stalled_since + 2 * self.keepalive - now
        else:
            wait = None
        if wait is not None and wait <= 0:
            raise TimeoutError("send made no progress")
        self._wpoll.poll(None if wait is None else math.ceil(wait * 1000))

    def _flush_quietly(self) -> None:
        """Send queued protocol output (pongs, cancels) if no other thread is sending."""
        if not self._send_lock.acquire(blocking=False):
            return  # the sending thread picks the output up with its own
        try:
            with self._state:
                chunks = self.proto.take_output()
            if chunks and self.error is None:
                try:
                    self._write_all(chunks, time.monotonic() + 1.0)
                except OSError as exc:
                    self._lost(ConnectionLost(f"{self._where()}: send failed: {exc}"))
        finally:
            self._send_lock.release()

    # --- calls ----------------------------------------------------------------------------

    def call(
        self,
        method: str,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any] | None,
        timeout: float | None,
    ) -> Any:
        """Send a call and wait for its result (raises the remote error, or a local one)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._state:
            if self.error is not None:
                raise NotSent(str(self.error))
            rid = self.proto.send_request(method, args, kwargs, SYNC, timeout)
            chunks = self.proto.take_output()
        self._send(chunks, deadline)
        return self._wait(rid, deadline, method, timeout)

    def call_async(
        self,
        method: str,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any] | None,
        timeout: float | None,
    ) -> Future[Any]:
        """Send a call; return a Future completed by whichever thread reads its reply."""
        future: Future[Any] = Future()
        with self._state:
            if self.error is not None:
                raise NotSent(str(self.error))
            rid = self.proto.send_request(method, args, kwargs, future, timeout)
            chunks = self.proto.take_output()
            if timeout is not None:
                heapq.heappush(self._async_deadlines, (time.monotonic() + timeout, rid))
        future.add_done_callback(lambda f: f.cancelled() and self._forget(rid))
        self._send(chunks, None)
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
            chunks = self.proto.take_output()
        self._send(chunks, None)

    def _forget(self, rid: int) -> None:
        """Cancel a pending call (deadline passed, or its future was cancelled)."""
        with self._state:
            if self.error is not None:
                return
            self.proto.cancel(rid)
        self._flush_quietly()

    # --- waiting and reading ----------------------------------------------------------------

    def _wait(self, rid: int, deadline: float | None, method: str, timeout: float | None) -> Any:
        results = self._results
        read_lock = self._read_lock
        outcome = None
        while True:
            if read_lock.acquire(blocking=False):
                # Leader: read (routing everyone's replies) until ours is in.
                try:
                    while rid not in results and self.error is None:
                        if deadline is not None and time.monotonic() >= deadline:
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
                    raise _copy(self.error)
                wait = None if deadline is None else deadline - time.monotonic()
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
            self._flush_quietly()  # the cancel frame
            raise DeadlineExceeded(f"call {method!r} exceeded its deadline of {timeout}s")
        return _unwrap(outcome)

    def _read_once(self, deadline: float | None, slice_: float | None = None) -> None:
        """Read the socket once (bounded by *deadline*, *slice_* and keepalive); route."""
        if self.error is not None:
            return
        keepalive = self.keepalive
        wait = None if deadline is None else deadline - time.monotonic()
        if slice_ is not None and (wait is None or wait > slice_):
            wait = slice_
        try:
            if wait is None or (keepalive is not None and wait >= keepalive):
                # The common case, one syscall: a blocking recv, bounded by SO_RCVTIMEO
                # (= keepalive) when keepalive is on.
                data = self.sock.recv(_RECV_SIZE)
            elif self._rpoll.poll(max(0, math.ceil(wait * 1000))):
                data = self.sock.recv(_RECV_SIZE)
            else:
                return  # the caller's deadline (or slice) came first
        except BlockingIOError:  # SO_RCVTIMEO: a keepalive period without a byte
            if deadline is None or time.monotonic() < deadline:
                self._silence()
            return
        except OSError as exc:
            self._lost(ConnectionLost(f"{self._where()}: connection lost: {exc}"))
            return
        if not data:
            self._lost(ConnectionLost(f"{self._where()} closed the connection"))
            return
        self._last_heard = time.monotonic()
        self._route(data)

    def _silence(self) -> None:
        """A keepalive period passed without a byte: ping, or give up after a second one."""
        now = time.monotonic()
        with self._state:
            if self.error is not None:
                return
            if self._ping_sent > self._last_heard:
                if now - self._ping_sent >= (self.keepalive or 0):
                    lost = True
                else:
                    return
            else:
                lost = False
                self.proto.send_ping()
                self._ping_sent = now
        if lost:
            self._lost(
                ConnectionLost(
                    f"{self._where()} sent nothing for {2 * (self.keepalive or 0):g}s "
                    "(no reply to a keepalive ping)"
                )
            )
        else:
            self._flush_quietly()

    def _route(self, data: bytes) -> None:
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
            idle_draining = (self.draining or self.proto.ids_exhausted) and self.proto.pending == 0
            has_output = self.proto.output_size > 0
        for future, kind, value in futures:
            _settle(future, kind, value)
        if error is not None:
            self._lost(error)
        elif has_output:
            self._flush_quietly()
        if idle_draining and error is None:
            self._lost(ConnectionLost(f"{self._where()}: connection retired"))

    def _lost(self, error: BaseException) -> None:
        """Fail every pending call with *error* and close the socket (idempotent)."""
        with self._state:
            if self.error is not None:
                return
            self.error = error
            pending = self.proto.pop_all_pending()
            futures = []
            for rid, token in pending.items():
                if token is SYNC:  # each caller raises its own instance (own traceback)
                    self._results[rid] = (_KIND_ERROR, _copy(error))
                else:
                    futures.append(token)
            self._cond.notify_all()
        for future in futures:
            _settle(future, _KIND_ERROR, _copy(error))
        self._close_socket()

    def _close_socket(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv
        except OSError:
            pass
        self.sock.close()

    # --- async reader thread ---------------------------------------------------------------

    def _ensure_reader(self) -> None:
        if self._reader is not None or self.error is not None:
            return
        with self._state:
            if self._reader is not None:
                return
            self._reader = threading.Thread(
                target=self._reader_loop, name="rapidrpc-client-reader", daemon=True
            )
        self._reader.start()

    def _reader_loop(self) -> None:
        while self.error is None:
            deadline = self._expire_async()
            if not self._read_lock.acquire(timeout=0.05):
                continue  # a synchronous caller is reading for everyone
            try:
                # With async deadlines pending, wake often enough to expire a call that
                # was submitted (with an earlier deadline) while we were already waiting.
                self._read_once(deadline, None if deadline is None else 0.02)
            finally:
                self._read_lock.release()
                if self._waiters:
                    with self._state:
                        self._cond.notify_all()

    def _expire_async(self) -> float | None:
        """Fail async calls whose deadline passed; return the next deadline (or None)."""
        heap = self._async_deadlines
        expired = []
        now = time.monotonic()
        with self._state:
            while heap and heap[0][0] <= now:
                _, rid = heapq.heappop(heap)
                token = self.proto.cancel(rid)
                if token is not None:
                    expired.append(token)
            next_deadline = heap[0][0] if heap else None
        for future in expired:
            _settle(future, _KIND_ERROR, DeadlineExceeded("call exceeded its deadline"))
        if expired:
            self._flush_quietly()
        return next_deadline

    # --- closing ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection; pending calls fail with ConnectionLost."""
        if self._generation != _fork_generation:
            # A forked child must not touch the parent's connection state or locks: just
            # drop this process's copy of the descriptor.
            self._closed = True
            self.sock.close()
            return
        self._lost(ConnectionLost(f"{self._where()}: connection closed by the client"))
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=5.0)


def _copy(error: BaseException) -> BaseException:
    """A fresh instance of a connection error, chained to the original."""
    fresh = type(error)(*error.args)
    fresh.__cause__ = error.__cause__ or error
    return fresh


def _unwrap(outcome: tuple[int, Any]) -> Any:
    kind, value = outcome
    if kind == _KIND_RESPONSE:
        return value
    raise value


def _settle(future: Future[Any], kind: int, value: Any) -> None:
    try:
        if kind == _KIND_RESPONSE:
            future.set_result(value)
        else:
            future.set_exception(value)
    except InvalidStateError:
        pass  # the caller cancelled it meanwhile
