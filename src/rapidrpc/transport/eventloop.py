"""The pure-Python server event loop (the fallback of cext's epoll loop, same behaviour).

One thread runs :meth:`EventLoop.run`: a **level-triggered** poll over the listening socket,
a wakeup socketpair and every connection.  Level-triggered was chosen because it behaves
the same under ``select.epoll`` and under any :mod:`selectors` selector (the fallback), and
lets the loop read once per connection per turn (fair under load) without losing events.

Per loop turn: poll; accept (bounded count); read each ready connection once and feed its
:class:`~rapidrpc.core.protocol.ServerConnection`; run inline handlers right there; hand
``blocking=True`` handlers to a thread pool whose results come back through the wakeup
socket; then flush every connection that has output with one ``send``/``sendmsg``.  What the
kernel does not take is queued and written when the socket turns writable.

Protection (HOSTILE.md 1-10): a connection whose queued output passes ``high_water`` stops
being read until it drains; past ``2 * max_frame_size`` it is closed, as is one whose
output makes no progress for ``frame_timeout``.  ``max_connections``; a handshake deadline;
a per-frame read deadline (slowloris); an idle timeout; keepalive pings for half-open peers;
an accept loop that backs off on EMFILE instead of spinning.  A protocol violation closes
that connection only, after a goaway saying why.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import select
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from types import ModuleType
from typing import Any

from ..core.dispatch import Dispatcher
from ..core.protocol import ServerConnection
from ..errors import DeadlineExceeded, MethodNotFound, ProtocolError, StatusCode
from ..wire import constants as C
from . import signal_wakeup

__all__ = ["EventLoop", "ServerConfig", "serve"]

# Interest/readiness bits: the epoll values themselves, so epoll results need no
# translation on the hot path (the selectors fallback translates).  An error or hangup
# reports as both, so the next recv/send sees the condition.
_log = logging.getLogger("rapidrpc.server")

READ = getattr(select, "EPOLLIN", 1)
WRITE = getattr(select, "EPOLLOUT", 4)
_EP_ERR = getattr(select, "EPOLLERR", 8) | getattr(select, "EPOLLHUP", 16)
_READABLE = READ | _EP_ERR
_WRITABLE = WRITE | _EP_ERR
_IOV_MAX = min(getattr(os, "sysconf", lambda _n: 1024)("SC_IOV_MAX") or 1024, 1024)
_RECV_SIZE = 256 * 1024
_ACCEPTS_PER_TURN = 64
_ACCEPT_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_KIND_REQUEST = C.KIND_REQUEST
_KIND_NOTIFICATION = C.KIND_NOTIFICATION
_KIND_CANCEL = C.KIND_CANCEL
_CALL_KINDS = frozenset((_KIND_REQUEST, _KIND_NOTIFICATION))
_SMALL = C.ZERO_COPY_MIN_BODY


@dataclass
class ServerConfig:
    """Limits and timeouts of a server loop (seconds; None disables a timeout)."""

    max_connections: int = 1024
    max_frame_size: int = C.DEFAULT_MAX_FRAME_SIZE
    max_inflight: int = 100
    max_depth: int = C.DEFAULT_MAX_DEPTH
    #: Close a connection with no call activity for this long (a goaway first).
    idle_timeout: float | None = 300.0
    #: The client's preface and settings must arrive within this.
    handshake_timeout: float = 30.0
    #: A started frame must complete, and queued output must make progress, within this.
    frame_timeout: float = 60.0
    #: Ping a connection silent for this long; close it if still silent after as long again.
    keepalive: float | None = 60.0
    #: Stop reading a connection whose queued output exceeds this many bytes.
    high_water: int = 1 << 20
    #: Threads for ``blocking=True`` handlers (started lazily, on the first such call).
    pool_size: int = min(32, (os.cpu_count() or 1) + 4)
    #: How long a closing connection may take to drain its goaway and read the peer's EOF.
    linger: float = 2.0
    #: Wire implementation modules (None: the active faces).
    serializer: ModuleType | None = None
    framing: ModuleType | None = None

    @property
    def max_output(self) -> int:
        """Queued output past which a connection is closed (HOSTILE 8)."""
        return 2 * self.max_frame_size


class _Poller:
    """A level-triggered readiness poller over ``select.epoll`` or a selectors selector."""

    def __init__(self, use_epoll: bool | None = None, selector_cls: type | None = None) -> None:
        if use_epoll is None:
            use_epoll = hasattr(select, "epoll") and selector_cls is None
        self.kind = "epoll" if use_epoll else "selectors"
        if use_epoll:
            # READ/WRITE are EPOLLIN/EPOLLOUT: epoll's own methods serve as they are.
            self._ep = select.epoll()
            self.register = self._ep.register
            self.modify = self._ep.modify
            self.unregister = self._ep.unregister
            self.poll = self._ep.poll
        else:
            self._sel = (selector_cls or selectors.DefaultSelector)()
            self._masks: dict[int, int] = {}
            self.register = self._sel_register
            self.modify = self._sel_modify
            self.unregister = self._sel_unregister
            self.poll = self._sel_poll

    _SEL_MASK = {
        READ: selectors.EVENT_READ,
        WRITE: selectors.EVENT_WRITE,
        READ | WRITE: selectors.EVENT_READ | selectors.EVENT_WRITE,
    }

    def _sel_register(self, fd: int, mask: int) -> None:
        if mask:
            self._sel.register(fd, self._SEL_MASK[mask])
        self._masks[fd] = mask

    def _sel_modify(self, fd: int, mask: int) -> None:
        old = self._masks.get(fd, 0)
        if old and mask:
            self._sel.modify(fd, self._SEL_MASK[mask])
        elif mask:
            self._sel.register(fd, self._SEL_MASK[mask])
        elif old:
            self._sel.unregister(fd)
        self._masks[fd] = mask

    def _sel_unregister(self, fd: int) -> None:
        if self._masks.pop(fd, 0):
            self._sel.unregister(fd)

    def _sel_poll(self, timeout: float | None) -> list[tuple[int, int]]:
        out = []
        for key, ev in self._sel.select(timeout):
            mask = (READ if ev & selectors.EVENT_READ else 0) | (
                WRITE if ev & selectors.EVENT_WRITE else 0
            )
            out.append((key.fd, mask))
        return out

    def close(self) -> None:
        if self.kind == "epoll":
            self._ep.close()
        else:
            self._sel.close()


class _Conn:
    """Per-connection driver state (the protocol state lives in ``proto``)."""

    __slots__ = (
        "backlog",
        "close_at",
        "closed",
        "closing",
        "created",
        "fd",
        "futures",
        "last_call",
        "last_recv",
        "mask",
        "out_size",
        "outq",
        "partial_since",
        "paused",
        "ping_at",
        "proto",
        "shut_wr",
        "sock",
        "write_stalled",
    )

    def __init__(self, sock: socket.socket, proto: ServerConnection, now: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.proto = proto
        self.outq: deque[Any] = deque()
        self.out_size = 0
        self.mask = READ
        self.paused = False
        self.closing = False
        self.closed = False
        self.shut_wr = False
        self.close_at = 0.0
        self.created = now
        self.last_recv = now
        self.last_call = now
        self.partial_since: float | None = None
        self.write_stalled: float | None = None
        self.ping_at: float | None = None
        self.futures: dict[int, Future[Any]] = {}
        # Events of an already-read chunk not handled yet because output passed the
        # high-water mark: resumed (before any further read) once the peer drains it.
        self.backlog: Iterator[tuple[Any, ...]] | None = None


def _coalesce(chunks: list[Any]) -> list[Any]:
    """Join runs of small chunks (one copy of small frames; large bodies stay untouched)."""
    if len(chunks) == 1:
        return chunks
    out: list[Any] = []
    run: list[Any] = []
    for chunk in chunks:
        if len(chunk) >= _SMALL:
            if run:
                out.append(run[0] if len(run) == 1 else b"".join(run))
                run = []
            out.append(chunk)
        else:
            run.append(chunk)
    if run:
        out.append(run[0] if len(run) == 1 else b"".join(run))
    return out


class EventLoop:
    """Serve *dispatcher* on the listening socket *listener* until :meth:`stop`.

    The loop owns *listener* from :meth:`run` on and closes it when it stops.
    ``use_epoll=False`` (or a *selector_cls*) runs the same loop on :mod:`selectors`.
    """

    def __init__(
        self,
        listener: socket.socket,
        dispatcher: Dispatcher,
        config: ServerConfig | None = None,
        *,
        use_epoll: bool | None = None,
        selector_cls: type | None = None,
        stop_event: threading.Event | None = None,
        grace: float = 0.0,
    ) -> None:
        self.config = config or ServerConfig()
        self._stop_event = stop_event
        self._stop_event_grace = grace
        self.dispatcher = dispatcher
        self._listener = listener
        listener.setblocking(False)
        self._poller = _Poller(use_epoll, selector_cls)
        self._conns: dict[int, _Conn] = {}
        self._dirty: set[_Conn] = set()
        self._pool: ThreadPoolExecutor | None = None
        # Completed blocking calls, appended by pool threads, drained by the loop.
        self._done: deque[tuple[_Conn, int, int, Future[Any]]] = deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_pending = False
        self._stop_grace: float | None = None
        self._stop_at: float | None = None
        self._accept_paused_until: float | None = None
        self._running = threading.Event()
        self._finished = threading.Event()
        self._proto_kw = {
            "serializer": self.config.serializer,
            "framing": self.config.framing,
            "max_frame_size": self.config.max_frame_size,
            "max_inflight": self.config.max_inflight,
            "max_depth": self.config.max_depth,
        }
        timeouts = [
            t
            for t in (
                self.config.idle_timeout,
                self.config.handshake_timeout,
                self.config.frame_timeout,
                self.config.keepalive,
                self.config.linger,
            )
            if t
        ]
        # Pause reading before the output cap can be reached: a single reply is at most
        # max_frame_size, so pausing at or below it keeps the queue under 2 x that.
        self._high_water = min(self.config.high_water, self.config.max_frame_size)
        self._resume: set[_Conn] = set()
        # Check timers a few times per shortest timeout, at most once per 10 ms.
        self._sweep_every = max(0.01, min([1.0, *(t / 4 for t in timeouts)]))
        #: Counters for tests and monitoring.
        self.stats = {"accepted": 0, "rejected": 0, "protocol_errors": 0, "accept_paused": 0}

    # --- public control -------------------------------------------------------------------

    @property
    def poller_kind(self) -> str:
        """``"epoll"`` or ``"selectors"``."""
        return self._poller.kind

    @property
    def connection_count(self) -> int:
        """Open connections (including ones closing)."""
        return len(self._conns)

    def wait_running(self, timeout: float | None = None) -> bool:
        """Block until :meth:`run` is polling; False on timeout."""
        return self._running.wait(timeout)

    def stop(self, grace: float = 0.0) -> None:
        """Ask the loop to stop (thread-safe, returns at once).

        Stop accepting, send every connection a goaway, let in-flight calls finish for up
        to *grace* seconds, then close everything and return from :meth:`run`.
        """
        self._stop_grace = max(0.0, grace)
        self._wake()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until :meth:`run` has returned; False on timeout."""
        return self._finished.wait(timeout)

    # --- main loop ----------------------------------------------------------------------

    def run(self) -> None:
        """Run until stopped; always releases every socket, fd and thread it created."""
        poller = self._poller
        poll = poller.poll
        lfd = self._listener.fileno()
        wfd = self._wake_r.fileno()
        conns = self._conns
        # In the main thread, a signal's byte lands in the wakeup pipe too (drained there).
        previous_wakeup = signal_wakeup.install(self._wake_w.fileno())
        try:
            poller.register(lfd, READ)
            poller.register(wfd, READ)
            self._running.set()
            next_sweep = time.monotonic() + self._sweep_every
            while True:
                wake_at = next_sweep
                if self._stop_at is not None and self._stop_at < wake_at:
                    wake_at = self._stop_at  # the end of the grace period
                resume = self._accept_paused_until
                if resume is not None:
                    if resume <= time.monotonic():
                        self._resume_accept()
                    elif resume < wake_at:
                        wake_at = resume
                # Backlogs ready to resume are work to do now: don't sleep on them.
                timeout = 0.0 if self._resume else max(0.0, wake_at - time.monotonic())
                for fd, mask in poll(timeout):
                    if fd == lfd:
                        self._accept()
                    elif fd == wfd:
                        self._drain_wakeups()
                    else:
                        conn = conns.get(fd)
                        if conn is None:
                            continue
                        try:
                            if mask & _READABLE:
                                self._read(conn)
                            if mask & _WRITABLE and not conn.closed:
                                self._write(conn)
                        except Exception:  # a bug must cost one connection, not the server
                            _log.exception("rapidrpc: closing a connection after an error")
                            self._close(conn)
                if self._dirty:
                    self._flush_dirty()
                if self._resume:
                    self._resume_backlogs()
                now = time.monotonic()
                if now >= next_sweep:
                    next_sweep = now + self._sweep_every
                    if self._stop_event is not None and self._stop_event.is_set():
                        self.stop(self._stop_event_grace)
                    self._sweep(now)
                    if self._dirty:
                        self._flush_dirty()
                if self._stop_grace is not None and self._stopping():
                    break
        finally:
            signal_wakeup.restore(previous_wakeup)
            self._shutdown()

    # --- accept -------------------------------------------------------------------------

    def _accept(self) -> None:
        cfg = self.config
        for _ in range(_ACCEPTS_PER_TURN):
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_ERRNOS:
                    # Out of fds: stop polling the listener for a while instead of spinning
                    # on a readiness we cannot consume (HOSTILE 9).
                    self._pause_accept()
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue
                raise
            if len(self._conns) >= cfg.max_connections or self._stop_at is not None:
                self._reject(sock)
                continue
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                sock.close()
                continue
            conn = _Conn(sock, ServerConnection(**self._proto_kw), time.monotonic())
            self._conns[conn.fd] = conn
            self._poller.register(conn.fd, READ)
            self.stats["accepted"] += 1

    def _pause_accept(self) -> None:
        self.stats["accept_paused"] += 1
        if self._accept_paused_until is None:
            self._poller.unregister(self._listener.fileno())
        self._accept_paused_until = time.monotonic() + 0.05

    def _reject(self, sock: socket.socket) -> None:
        """Refuse a connection over the limit with a preface + goaway, then close it."""
        self.stats["rejected"] += 1
        try:
            sock.setblocking(False)
            proto = ServerConnection(**self._proto_kw)
            proto.refuse(StatusCode.RESOURCE_EXHAUSTED, "server has too many connections")
            sock.send(proto.data_to_send())
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            sock.close()

    # --- reading ------------------------------------------------------------------------

    def _read(self, conn: _Conn) -> None:
        if conn.backlog is not None:
            return  # finish the chunk already read first (reading is paused anyway)
        try:
            data = conn.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:  # peer closed: a partial frame is dropped with the connection
            self._close(conn)
            return
        now = time.monotonic()
        conn.last_recv = now
        if conn.closing:  # draining input until the peer's EOF; never parse it
            return
        proto = conn.proto
        try:
            events = proto.receive_data(data)
        except ProtocolError:
            self.stats["protocol_errors"] += 1
            self._begin_close(conn, now)
            return
        if proto.buffered:
            if conn.partial_since is None:
                conn.partial_since = now
        else:
            conn.partial_since = None
        self._run_events(conn, events)

    def _run_events(self, conn: _Conn, events: Iterator[tuple[Any, ...]]) -> None:
        """Handle *events* in order; stop at the high-water mark, keeping the rest."""
        proto = conn.proto
        handle = self._handle
        high_water = self._high_water
        try:
            for event in events:
                handle(conn, event)
                if conn.out_size + proto.output_size > high_water:
                    # Backpressure inside one read: the rest waits until the peer reads.
                    conn.backlog = events
                    conn.paused = True
                    self._dirty.add(conn)
                    return
        except ProtocolError:
            self.stats["protocol_errors"] += 1
            conn.backlog = None
            self._begin_close(conn, time.monotonic())
            return
        conn.backlog = None
        if proto.output_size:
            self._dirty.add(conn)

    def _handle(self, conn: _Conn, event: tuple[Any, ...]) -> None:
        kind = event[0]
        proto = conn.proto
        if kind in _CALL_KINDS:
            rid = event[1]
            conn.last_call = conn.last_recv  # idle means no calls (pings don't count)
            try:
                method = self.dispatcher.lookup(event[2])
            except MethodNotFound as exc:
                if kind == _KIND_REQUEST:
                    proto.send_exception(rid, exc)
                else:
                    proto.finish_notification()
                return
            if method.blocking:
                self._submit(conn, event, method)
                return
            deadline = event[5]
            try:
                if deadline is not None and time.monotonic() >= deadline:
                    raise DeadlineExceeded("deadline exceeded before dispatch")
                result = self.dispatcher.invoke(method, event[3], event[4])
            except Exception as exc:  # any handler failure becomes an error reply
                if kind == _KIND_REQUEST:
                    proto.send_exception(rid, exc)
                else:
                    proto.finish_notification()
                return
            if kind == _KIND_REQUEST:
                proto.send_response(rid, result)
            else:
                proto.finish_notification()
        elif kind == _KIND_CANCEL:
            future = conn.futures.get(event[1])
            if future is not None:
                future.cancel()  # only succeeds if the handler has not started yet

    def _resume_backlogs(self) -> None:
        resume = self._resume
        self._resume = set()
        for conn in resume:
            if conn.closed or conn.backlog is None:
                continue
            try:
                self._run_events(conn, conn.backlog)
            except Exception:
                _log.exception("rapidrpc: closing a connection after an error")
                self._close(conn)
                continue
            self._dirty.add(conn)  # the flush below unpauses it once drained
        if self._dirty:
            self._flush_dirty()

    # --- blocking handlers --------------------------------------------------------------

    def _submit(self, conn: _Conn, event: tuple[Any, ...], method: Any) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self.config.pool_size, thread_name_prefix="rapidrpc-worker"
            )
        kind, rid = event[0], event[1]
        future = self._pool.submit(self._run_blocking, method, event[3], event[4], event[5])
        if kind == _KIND_REQUEST:
            conn.futures[rid] = future
        future.add_done_callback(partial(self._completed, conn, kind, rid))

    def _run_blocking(self, method: Any, args: Any, kwargs: Any, deadline: float | None) -> Any:
        # Runs in a pool thread.  A call that waited in the queue past its deadline is
        # answered without running the handler.
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded("deadline exceeded before the handler started")
        return self.dispatcher.invoke(method, args, kwargs)

    def _completed(self, conn: _Conn, kind: int, rid: int, future: Future[Any]) -> None:
        # Runs in the pool thread (or the loop thread for a cancelled future).
        self._done.append((conn, kind, rid, future))
        self._wake()

    def _wake(self) -> None:
        if not self._wake_pending:
            self._wake_pending = True
            try:
                self._wake_w.send(b"\0")
            except (BlockingIOError, OSError):
                pass  # the pipe is full (so a wakeup is pending) or closed (loop is gone)

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        # Clear the flag before draining: a completion racing us re-signals.
        self._wake_pending = False
        done = self._done
        while done:
            conn, kind, rid, future = done.popleft()
            if conn.closed:
                continue
            proto = conn.proto
            if kind == _KIND_REQUEST:
                conn.futures.pop(rid, None)
                if future.cancelled():
                    proto.send_error(rid, StatusCode.CANCELLED, "call cancelled")
                else:
                    exc = future.exception()
                    if exc is None:
                        proto.send_response(rid, future.result())
                    else:
                        proto.send_exception(rid, exc)
            else:
                proto.finish_notification()
            conn.last_call = time.monotonic()
            if proto.output_size:
                self._dirty.add(conn)

    # --- writing ------------------------------------------------------------------------

    def _flush_dirty(self) -> None:
        dirty = self._dirty
        self._dirty = set()
        for conn in dirty:
            if conn.closed:
                continue
            chunks = conn.proto.take_output()
            if len(chunks) == 1 and not conn.outq and not conn.closing and not conn.paused:
                # Fast path (one reply, nothing queued): one send, no queue bookkeeping.
                data = chunks[0]
                try:
                    sent = conn.sock.send(data)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    self._close(conn)
                    continue
                if sent == len(data):
                    continue
                chunks = [memoryview(data)[sent:]]
            elif chunks:
                chunks = _coalesce(chunks)
            if chunks:
                conn.outq.extend(chunks)
                conn.out_size += sum(map(len, chunks))
            self._write(conn)

    def _write(self, conn: _Conn) -> None:
        outq = conn.outq
        sock = conn.sock
        while outq:
            try:
                if len(outq) == 1:
                    want = len(outq[0])
                    sent = sock.send(outq[0])
                else:
                    batch = list(itertools.islice(outq, _IOV_MAX))
                    want = sum(map(len, batch))
                    sent = sock.sendmsg(batch)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(conn)
                return
            conn.out_size -= sent
            while sent:
                head = outq[0]
                n = len(head)
                if n <= sent:
                    outq.popleft()
                    sent -= n
                else:
                    outq[0] = memoryview(head)[sent:]
                    sent = 0
            conn.write_stalled = None
            if sent < want:
                break  # the kernel buffer is full: wait for writability
        cfg = self.config
        if conn.out_size > cfg.max_output:
            # A peer that does not read its replies: cap the memory it can pin (HOSTILE 8).
            self._close(conn)
            return
        if outq:
            if conn.write_stalled is None:
                conn.write_stalled = time.monotonic()
            # Backpressure: stop reading requests until the peer reads its replies.
            if conn.out_size > self._high_water and not conn.closing:
                conn.paused = True
        else:
            conn.write_stalled = None
            if conn.closing and not conn.shut_wr:
                conn.shut_wr = True
                try:
                    conn.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    self._close(conn)
                    return
        if conn.paused and conn.out_size <= self._high_water // 2:
            if conn.backlog is not None:
                self._resume.add(conn)  # handle the rest of the chunk before reading more
            else:
                conn.paused = False
        mask = (0 if conn.paused else READ) | (WRITE if outq else 0)
        if mask != conn.mask:
            conn.mask = mask
            self._poller.modify(conn.fd, mask)

    # --- closing ------------------------------------------------------------------------

    def _begin_close(self, conn: _Conn, now: float, linger: float | None = None) -> None:
        """Flush what is queued (a goaway), half-close, read until EOF or the linger time."""
        if conn.closing or conn.closed:
            return
        conn.closing = True
        conn.paused = False
        conn.close_at = now + (self.config.linger if linger is None else linger)
        if not conn.proto.preface_sent and not conn.outq:
            self._close(conn)  # not a native peer: nothing to say, close at once
            return
        self._dirty.add(conn)

    def _close(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.pop(conn.fd, None)
        self._dirty.discard(conn)
        try:
            self._poller.unregister(conn.fd)
        except (KeyError, ValueError, OSError):
            pass
        conn.sock.close()
        conn.outq.clear()
        conn.out_size = 0
        for future in conn.futures.values():
            future.cancel()
        conn.futures.clear()

    # --- timers -------------------------------------------------------------------------

    def _resume_accept(self) -> None:
        self._accept_paused_until = None
        if self._stop_at is None:
            self._poller.register(self._listener.fileno(), READ)

    def _sweep(self, now: float) -> None:
        cfg = self.config
        for conn in list(self._conns.values()):
            if conn.closing:
                if now >= conn.close_at:
                    self._close(conn)
                continue
            proto = conn.proto
            if not proto.handshake_complete and now - conn.created > cfg.handshake_timeout:
                self._begin_close(conn, now, 0.0)
                continue
            if conn.partial_since is not None and now - conn.partial_since > cfg.frame_timeout:
                # Slowloris: a frame started and never finished (HOSTILE 7).
                self._close(conn)
                continue
            if conn.write_stalled is not None and now - conn.write_stalled > cfg.frame_timeout:
                self._close(conn)  # the peer stopped reading its replies (HOSTILE 8)
                continue
            if cfg.keepalive and proto.handshake_complete:
                if conn.ping_at is not None and conn.last_recv >= conn.ping_at:
                    conn.ping_at = None  # heard from the peer since the ping: alive
                if conn.ping_at is not None:
                    if now - conn.ping_at > cfg.keepalive:
                        self._close(conn)  # half-open: the peer vanished (HOSTILE 31)
                        continue
                elif now - conn.last_recv > cfg.keepalive:
                    proto.send_ping()
                    conn.ping_at = now
                    self._dirty.add(conn)
            if cfg.idle_timeout and proto.inflight == 0 and now - conn.last_call > cfg.idle_timeout:
                proto.send_goaway(StatusCode.OK, "idle timeout")
                self._begin_close(conn, now)

    # --- stopping -----------------------------------------------------------------------

    def _begin_stop(self) -> None:
        now = time.monotonic()
        self._stop_at = now + (self._stop_grace or 0.0)
        if self._accept_paused_until is None:
            self._poller.unregister(self._listener.fileno())
        self._accept_paused_until = None
        self._listener.close()
        for conn in list(self._conns.values()):
            if not conn.proto.handshake_complete:
                self._close(conn)
                continue
            conn.proto.send_goaway(StatusCode.OK, "server shutting down")
            self._dirty.add(conn)

    def _stopping(self) -> bool:
        """Advance a requested stop; True when the loop may exit."""
        if self._stop_at is None:
            self._begin_stop()
            if self._dirty:
                self._flush_dirty()
        now = time.monotonic()
        for conn in list(self._conns.values()):
            if (
                not conn.closing
                and conn.proto.inflight == 0
                and not conn.outq
                and conn.backlog is None
            ):
                self._begin_close(conn, now, max(0.0, self._stop_at - now))
        if self._dirty:
            self._flush_dirty()
        return not self._conns or now >= self._stop_at

    def _shutdown(self) -> None:
        for conn in list(self._conns.values()):
            self._close(conn)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        try:
            self._listener.close()
        except OSError:
            pass
        self._poller.close()
        self._wake_r.close()
        self._wake_w.close()
        self._running.set()  # never leave wait_running() hanging
        self._finished.set()


def serve(
    listener: socket.socket,
    dispatcher: Dispatcher,
    config: ServerConfig | None = None,
    stop_event: threading.Event | None = None,
    grace: float = 0.0,
) -> None:
    """Serve in this thread until *stop_event* is set (checked once per timer sweep).

    The entry point every loop implementation offers, so a server can plug in another.
    """
    EventLoop(listener, dispatcher, config, stop_event=stop_event, grace=grace).run()
