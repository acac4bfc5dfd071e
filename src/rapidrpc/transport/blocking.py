"""The blocking client connection: one TCP socket shared by any number of threads.

Threads share one :class:`~rapidrpc.core.protocol.ClientConnection` under ``_state``.
Reading follows a leader/follower scheme: whoever takes ``_read_lock`` reads the socket and
routes every reply it finds (results of synchronous calls into ``_results``, asynchronous
ones into their futures); the others wait on a condition until their reply is routed or
the read lock frees up.  So a sequential call never hops threads: the calling thread sends
its request and reads its own reply.  ``call_async`` starts one reader thread lazily (never
at import or construction) so futures complete without anyone waiting.  Sending is shared
the same way: whoever holds ``_send_lock`` writes everything queued, so requests queued
meanwhile by other threads leave in its next write.

Deadlines use one budget per call.  When it passes, the pending entry is dropped, a cancel
frame is sent, and DeadlineExceeded is raised at once, even if the server is silent.  A lost
connection fails every pending call promptly with ConnectionLost; nothing is ever re-sent.

The per-call hot paths (call, call_async, notify, send, wait, read, route) live in a
*client core* picked per backend: ``_client_py.ConnectionCore`` (pure Python) or the
compiled ``_client_c.ConnectionCore`` (cext/client.pyx).  This module holds everything
else, once: connecting and the handshake, keepalive, waiting for writability, cancelling,
async deadlines, losing and closing the connection.  :func:`connection_class` gives the
class for a backend.
"""

from __future__ import annotations

import collections
import heapq
import math
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType
from typing import Any

from .._select import pick
from ..core.protocol import ClientConnection
from ..errors import ConnectionLost, DeadlineExceeded, ProtocolError, Unavailable
from ..wire import constants as C
from . import _client_py
from ._common import RECV_SLICE, SYNC, NotSent, copy_error, settle

__all__ = ["CORES", "SYNC", "BlockingConnection", "NotSent", "connection_class"]

_POLLIN = select.POLLIN | select.POLLERR | select.POLLHUP
_POLLOUT = select.POLLOUT | select.POLLERR | select.POLLHUP
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_KIND_ERROR = C.KIND_ERROR

#: The client cores loaded: ``{"python": _client_py, "cython": _client_c}`` (when built).
_core, CORES = pick(__package__, "_client_c", "_client_py")


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


class BlockingConnection(_client_py.ConnectionCore):
    """One connection to a server, usable from many threads.

    Opening it connects with *connect_timeout*, sends the preface and settings and waits
    for the server's (the server's limits are known before the first call).  *keepalive*
    (seconds, or None) bounds how long a waiting reader tolerates silence: it then pings,
    and declares the connection lost when the next *keepalive* passes without a byte.
    """

    #: The last request id used before a fresh connection is opened (tests lower it).
    MAX_REQUEST_ID = C.MAX_REQUEST_ID
    #: The lock type of _state, _send_lock and _read_lock: the core's own.
    _Lock: Callable[[], Any] = _client_py.Lock

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
        lock = self._Lock
        self._state = lock()
        self._cond = threading.Condition(self._state)
        self._send_lock = lock()
        self._read_lock = lock()
        self._results: dict[int, tuple[int, Any]] = {}
        # Calls of map_calls generators dropped while _state was taken (see _abandon).
        self._abandoned: collections.deque[int] = collections.deque()
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
        # Longest single blocking recv (SO_RCVTIMEO): keepalive silence is counted in
        # these steps, and waits at least this long need no poll() first.
        self._recv_slice = RECV_SLICE if keepalive is None else min(keepalive, RECV_SLICE)
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
            # SO_RCVTIMEO (reads) and poll() (shorter waits, writes): one poll object per
            # direction, since a reading and a sending thread may wait at the same time.
            sock.settimeout(None)
            sec = int(self._recv_slice)
            usec = max(int((self._recv_slice - sec) * 1e6), 0 if sec else 1)  # 0/0: never
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", sec, usec))
            self._rpoll = select.poll()
            self._rpoll.register(sock, _POLLIN)
            self._wpoll = select.poll()
            self._wpoll.register(sock, _POLLOUT)
            self._core_init()
        except BaseException:
            sock.close()
            raise

    def _handshake(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        proto = self.proto
        proto.initiate()
        sock = self.sock
        sock.settimeout(timeout)
        # Read exactly the server's preface and first frame (settings, or a goaway that
        # turns us away): every later byte is the client core's to read.
        need = C.PREFACE_SIZE + C.HEADER_SIZE
        got = bytearray()
        try:
            sock.sendall(proto.data_to_send())
            while not proto.handshake_complete:
                if deadline is not None:
                    sock.settimeout(max(0.001, deadline - time.monotonic()))
                data = sock.recv(need - len(got))
                if not data:
                    raise ConnectionLost(f"{self._where()} closed during the handshake")
                got += data
                proto.receive_data(data)  # (a bad preface or header raises at once)
                if proto.goaway_received is not None:
                    _, code, message = proto.goaway_received
                    raise Unavailable(f"server refused the connection: {message}", code)
                if len(got) == C.PREFACE_SIZE + C.HEADER_SIZE:
                    need += int.from_bytes(got[C.PREFACE_SIZE : C.PREFACE_SIZE + 4], "big")
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
        if (  # (usable, inlined: this runs before every call)
            self.error is not None
            or self.draining
            or self._generation != _fork_generation
            or self.proto.ids_exhausted
        ):
            return False
        if time.monotonic() - self._last_heard < idle:
            return True
        return self._refresh()

    def _refresh(self) -> bool:
        """The slow half of :meth:`fresh` (shared with the compiled core's fast half): read
        what an idle connection may have been sent, without blocking; then usable?"""
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

    # --- slow paths the client core calls ---------------------------------------------------

    def _write_rest(self, views: list[memoryview], deadline: float | None) -> None:
        """Write *views* fully: the kernel buffer was full, so wait for room as needed."""
        sock = self.sock
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

    def _backlog_stalled(self) -> None:
        """Output has waited for the socket to drain: give up after two keepalive periods."""
        keepalive = self.keepalive
        if (
            keepalive is not None
            and self._backlog
            and time.monotonic() - self._stalled_since >= 2 * keepalive
        ):
            self._lost(
                ConnectionLost(f"{self._where()} took no byte we sent for {2 * keepalive:g}s")
            )

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

    def _forget(self, rid: int) -> None:
        """Cancel a pending call (deadline passed, or its future was cancelled)."""
        with self._state:
            if self.error is not None:
                return
            self.proto.cancel(rid)
        self._send_queued(time.monotonic() + 1.0)

    def map_calls(
        self,
        method: str,
        calls: Iterator[tuple[Any, ...]],
        window: int,
        deadline: float | None,
        call_timeout: float | None,
    ) -> Iterator[Any]:
        """Call *method* with each argument tuple of *calls*; yield the results in order.

        At most *window* calls are in flight.  Requests leave in batches (the window is
        refilled once a quarter of it came back) and replies are collected without a
        Future each: this is the throughput path for many calls from one thread.  The
        first failed call raises its error where its result would be yielded; the calls
        still in flight are then cancelled, as they are when the caller stops iterating.
        Each call must finish within *call_timeout* seconds of being sent and before
        *deadline* (monotonic time; it bounds the whole map); either may be None.
        """
        if self._abandoned:
            self._abandon(())  # (left by a generator the GC finalized under the lock)
        inflight: collections.deque[tuple[int, float | None]] = collections.deque()
        # Refill once a quarter of the window came back: the server then always has work
        # queued (refilling at half let the pipe run dry: 280k vs 510k calls/s here).
        refill_below = max(1, window - window // 4)
        exhausted = False
        try:
            while True:
                if not exhausted and len(inflight) < refill_below:
                    for args in calls:
                        now = time.monotonic()
                        limit = deadline
                        if call_timeout is not None and (
                            limit is None or now + call_timeout < limit
                        ):
                            limit = now + call_timeout
                        if limit is not None and limit <= now:
                            raise DeadlineExceeded(f"map of {method!r} exceeded its deadline")
                        left = None if limit is None else limit - now
                        inflight.append((self.submit(method, args, None, left), limit))
                        if len(inflight) >= window:
                            break
                    else:
                        exhausted = True
                    self._send_queued(math.inf if deadline is None else deadline)
                if not inflight:
                    return
                rid, limit = inflight.popleft()
                yield self.collect(rid, limit, method, call_timeout)
        finally:
            if inflight:
                self._abandon(rid for rid, _ in inflight)

    def _abandon(self, rids: Iterable[int]) -> None:
        """Drop submitted calls nobody will collect: cancel those still pending.

        Never waits for ``_state``: a map generator left in a reference cycle is finalized
        by the cyclic GC, which can run inside this very thread while it holds the lock
        (a plain Lock: waiting would deadlock).  Then the ids wait in ``_abandoned`` for
        the next map or abandon on this connection; until then their replies sit in
        ``_results`` (at most a window each).
        """
        abandoned = self._abandoned
        abandoned.extend(rids)
        if not abandoned or not self._state.acquire(blocking=False):
            return
        try:
            if self.error is not None:
                abandoned.clear()
                return
            while abandoned:
                rid = abandoned.popleft()
                if self._results.pop(rid, None) is None:
                    self.proto.cancel(rid)
        finally:
            self._state.release()
        self._send_queued(time.monotonic() + 1.0)

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
            self._send_queued(now + 1.0)

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
                    self._results[rid] = (_KIND_ERROR, copy_error(error))
                else:
                    futures.append(token)
            self._cond.notify_all()
        for future in futures:
            settle(future, _KIND_ERROR, copy_error(error))
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
            settle(future, _KIND_ERROR, DeadlineExceeded("call exceeded its deadline"))
        if expired:
            self._send_queued(now + 1.0)
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


_CLASSES: dict[str, type[BlockingConnection]] = {"python": BlockingConnection}

if "cython" in CORES:

    class CompiledBlockingConnection(CORES["cython"].ConnectionCore, BlockingConnection):  # type: ignore[misc,name-defined]
        """BlockingConnection whose hot paths come from the compiled client core."""

        _Lock = CORES["cython"].Lock

    _CLASSES["cython"] = CompiledBlockingConnection


def connection_class(backend: str) -> type[BlockingConnection]:
    """The connection class of *backend* (``"cython"`` or ``"python"``)."""
    try:
        return _CLASSES[backend]
    except KeyError:
        raise ValueError(
            f"no client core for backend {backend!r} (loaded: {', '.join(sorted(_CLASSES))}); "
            "build the extension or use backend='python'"
        ) from None
