"""asyncio drivers: the rapidrpc protocol as ``asyncio.Protocol`` classes (uvloop too).

These classes only move bytes between an asyncio transport and the sans-IO
:mod:`rapidrpc.core.protocol` state machines, so they work over any stream transport:
TCP, Unix sockets, TLS.  They are the embedding API (see docs/embedding.md)::

    group = ConnectionGroup(dispatcher, ServerConfig())
    server = await loop.create_server(group, sock=listening_socket)   # or ssl=...
    ...
    server.close()
    await group.shutdown(grace=5)

    transport, client = await loop.create_connection(RPCClientProtocol, host, port)
    await client.wait_ready()
    result = await client.call("add", (1, 2))

:class:`RPCServerProtocol` runs the same behaviour as the epoll loop of
:mod:`rapidrpc.transport.eventloop` (the reference): plain handlers run inline on the loop,
``blocking=True`` ones in the loop's default executor, ``async def`` ones as tasks that are
cancelled when the client cancels or the deadline passes.  Output is written once per batch
(per received chunk, and per loop turn for completions): small frames joined into one
``write``, large bodies passed on as they are, never copied into a joined buffer.
Backpressure: past ``high_water`` queued bytes (the transport's ``pause_writing``, or the
replies of one chunk) the protocol stops reading the peer until it drains; past
``2 * max_frame_size`` the connection is aborted, as is one whose output makes no progress
for ``frame_timeout``.  Handshake, per-frame (slowloris), idle and keepalive timers run on
one periodic tick per connection, so a protocol used on its own needs nothing else.
:class:`ConnectionGroup` adds what spans connections: ``max_connections``, counters and a
graceful shutdown (goaway, finish in-flight calls within a grace period, close).

:class:`RPCClientProtocol` multiplexes any number of concurrent calls on one connection:
an awaiting caller gets its result, a :class:`~rapidrpc.RemoteError` subclass,
:class:`~rapidrpc.DeadlineExceeded` on time even if the server is silent (a cancel frame
is sent), or :class:`~rapidrpc.ConnectionLost` as soon as the connection drops.  Cancelling
the awaiting task sends a cancel frame.  Nothing is ever re-sent.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from functools import partial
from types import ModuleType
from typing import Any

from ..core.dispatch import Dispatcher, Method
from ..core.protocol import ClientConnection, ServerConnection
from ..errors import (
    Cancelled,
    ConnectionLost,
    DeadlineExceeded,
    MethodNotFound,
    ProtocolError,
    StatusCode,
    Unavailable,
)
from ..wire import constants as C
from .blocking import NotSent
from .eventloop import ServerConfig

__all__ = [
    "ConnectionGroup",
    "NotSent",
    "RPCClientProtocol",
    "RPCServerProtocol",
    "ReceiveBuffer",
    "ServerConfig",
]

_now = time.monotonic  # the clock of ServerConnection deadlines (loop.time() may differ)
_KIND_REQUEST = C.KIND_REQUEST
_KIND_NOTIFICATION = C.KIND_NOTIFICATION
_KIND_CANCEL = C.KIND_CANCEL
_KIND_RESPONSE = C.KIND_RESPONSE
_KIND_ERROR = C.KIND_ERROR
_KIND_GOAWAY = C.KIND_GOAWAY
_Task = asyncio.Task
_LARGE = C.ZERO_COPY_MIN_BODY  # bodies this large travel as separate chunks
#: Seconds between checks whether a grown receive buffer can shrink back.
RECEIVE_BUFFER_IDLE = 1.0


def _set_nodelay(transport: asyncio.BaseTransport, keepalive: bool = False) -> None:
    """TCP_NODELAY (and optionally SO_KEEPALIVE) on a TCP transport; nothing on others."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if keepalive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except (OSError, AttributeError):  # an exotic transport: the options are an optimization
        pass


def _scatter_writer(transport: asyncio.BaseTransport) -> Any:
    """The transport's ``writelines`` when it writes a list without joining it first
    (uvloop: one ``writev``; CPython 3.12+: ``sendmsg``), else None (3.11's selector and
    TLS transports join the list into one new ``bytes``)."""
    writelines = getattr(type(transport), "writelines", None)
    if writelines is None or writelines is asyncio.WriteTransport.writelines:
        return None
    return transport.writelines  # type: ignore[attr-defined]


def _write_chunks(
    transport: asyncio.WriteTransport, chunks: list[Any], writelines: Any = None
) -> None:
    """Write queued output: small chunks joined, large bodies (which the protocol queues
    apart) passed as they are, so nothing copies them into a joined buffer.

    With a scatter writer (see :func:`_scatter_writer`) the pieces leave in one call (one
    ``writev``); otherwise one ``write`` each, large bodies as memoryviews (what the
    socket does not take at once is then copied once into the transport's buffer, not
    sliced into a new ``bytes`` first)."""
    if len(chunks) == 1:
        transport.write(chunks[0])
        return
    parts: list[Any] = []
    run: list[Any] = []
    for chunk in chunks:
        if len(chunk) >= _LARGE:
            if run:
                parts.append(run[0] if len(run) == 1 else b"".join(run))
                run = []
            parts.append(chunk if writelines is not None else memoryview(chunk))
        else:
            run.append(chunk)
    if run:
        parts.append(run[0] if len(run) == 1 else b"".join(run))
    if writelines is not None:
        writelines(parts)
    else:
        for part in parts:
            transport.write(part)


class ReceiveBuffer:
    """A connection's receive buffer: the kernel writes into it, frames are parsed in it.

    Reads land in ``writable()`` (``BufferedProtocol.get_buffer``); ``view()`` is what
    arrived and was not consumed yet.  The buffer grows geometrically, and only when it is
    at least half full of bytes that actually arrived (never with a length a peer merely
    declared).  It is replaced, never resized, since views of it (the transport's, parsed
    bodies) may still be alive; it is compacted in place when little is left in it.
    :meth:`maybe_shrink`, called periodically, goes back to the initial size once the
    large size was not needed since the previous call, so an idle connection keeps
    :attr:`INITIAL` bytes, not the size of its largest message.
    """

    #: Size of a new (or shrunk) buffer.
    INITIAL = 64 * 1024
    #: Least room offered to a read; less than this left at the end makes room first.
    MIN_READ = 16 * 1024

    __slots__ = ("_buf", "_high", "_mv", "end", "start")

    def __init__(self) -> None:
        self._buf = bytearray(self.INITIAL)
        self._mv = memoryview(self._buf)
        #: Offsets of the unconsumed bytes.
        self.start = self.end = 0
        self._high = 0  # most bytes held at once since the last maybe_shrink

    @property
    def size(self) -> int:
        """Capacity in bytes."""
        return len(self._buf)

    @property
    def pending(self) -> int:
        """Bytes received and not consumed yet."""
        return self.end - self.start

    def writable(self) -> memoryview:
        """Room for the next read (at least :attr:`MIN_READ` bytes)."""
        if len(self._buf) - self.end < self.MIN_READ:
            self._make_room()
        return self._mv[self.end :]

    def written(self, nbytes: int) -> None:
        """*nbytes* were written at the start of the last :meth:`writable`."""
        self.end = end = self.end + nbytes
        if end - self.start > self._high:
            self._high = end - self.start

    def view(self) -> memoryview:
        """The unconsumed bytes (a view: do not keep it past the next read)."""
        return self._mv[self.start : self.end]

    def consume(self, nbytes: int) -> None:
        """The first *nbytes* of :meth:`view` are done with."""
        self.start += nbytes
        if self.start == self.end:
            self.start = self.end = 0

    def clear(self) -> None:
        """Drop every unconsumed byte."""
        self.start = self.end = 0

    def append(self, data: Any) -> None:
        """Copy *data* in (bytes handed over by other code instead of a read)."""
        with memoryview(data) as src, src.cast("B") as octets:
            done = 0
            total = octets.nbytes
            while done < total:
                room = self.writable()
                n = min(len(room), total - done)
                room[:n] = octets[done : done + n]
                self.written(n)
                done += n

    def _make_room(self) -> None:
        start, end = self.start, self.end
        n = end - start
        size = len(self._buf)
        if n == 0:
            self.start = self.end = 0
            if size < self.MIN_READ:  # (released)
                self._replace(self.INITIAL)
        elif n <= size // 2:  # little left: move it to the front (no allocation)
            self._mv[:n] = self._mv[start:end]
            self.start, self.end = 0, n
        else:  # at least half full of received bytes: a new buffer twice as large
            self._replace(size * 2)

    def _replace(self, size: int) -> None:
        n = self.end - self.start
        buf = bytearray(size)
        buf[:n] = self._mv[self.start : self.end]
        self._buf = buf
        self._mv = memoryview(buf)
        self.start, self.end = 0, n

    def maybe_shrink(self) -> bool:
        """Go back to :attr:`INITIAL` bytes when the larger size was not needed since the
        last call; True while the buffer is still larger than that."""
        initial = self.INITIAL
        if len(self._buf) <= initial:
            return False
        if self._high <= initial // 2 and self.end - self.start <= initial // 2:
            self._replace(initial)
            self._high = self.end - self.start
            return False
        self._high = self.end - self.start
        return True

    def release(self) -> None:
        """Free the memory (the connection is closed)."""
        self._buf = bytearray()
        self._mv = memoryview(self._buf)
        self.start = self.end = self._high = 0


def _tick_interval(*timeouts: float | None) -> float:
    """Check timers a few times per shortest timeout, at most once per 10 ms."""
    return max(0.01, min([1.0, *(t / 4 for t in timeouts if t)]))


def _copy(error: BaseException) -> BaseException:
    """A fresh instance of a stored error (each caller raises its own), chained to it."""
    cls, args = error.__reduce__()[:2]  # RemoteError's keeps code, type and details
    fresh = cls(*args)
    fresh.__cause__ = error.__cause__ or error
    return fresh


# ---------------------------------------------------------------------------------------------
# server side
# ---------------------------------------------------------------------------------------------


class _BufferedReceiver(asyncio.BufferedProtocol):
    """The receiving half both RPC protocols share: the transport reads into the
    connection's :class:`ReceiveBuffer` (``self._rbuf``), and :meth:`_received` handles the
    frames that completes (the subclass's)."""

    _rbuf: ReceiveBuffer

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the transport reads to: the free end of the receive buffer."""
        return self._rbuf.writable()

    def buffer_updated(self, nbytes: int) -> None:
        """*nbytes* arrived in the receive buffer: handle the frames they complete."""
        self._rbuf.written(nbytes)
        self._received()

    def data_received(self, data: bytes) -> None:
        """Bytes handed over by other code (the transport itself reads through
        :meth:`get_buffer`): copied into the receive buffer, then handled alike."""
        self._rbuf.append(data)
        self._received()

    def _received(self) -> None:
        raise NotImplementedError


class RPCServerProtocol(_BufferedReceiver):
    """Serve *dispatcher* on one connection (any stream transport).

    An ``asyncio.BufferedProtocol``: the transport reads into the connection's
    :class:`ReceiveBuffer` and frames are parsed in place; ``data_received`` works too
    (for bytes handed over by other code, e.g. a port-sharing protocol).

    *config* holds the limits and timeouts (:class:`ServerConfig`, the same dataclass as
    the epoll server's; ``pool_size`` does not apply: blocking handlers use the loop's
    default executor).  *group*, when given, is the :class:`ConnectionGroup` this
    connection belongs to (``max_connections``, counters, graceful shutdown).
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        config: ServerConfig | None = None,
        *,
        group: ConnectionGroup | None = None,
    ) -> None:
        cfg = config or ServerConfig()
        self.dispatcher = dispatcher
        self.config = cfg
        self.group = group
        self.transport: asyncio.Transport | None = None
        #: The sans-IO connection (set in ``connection_made``).
        self.proto: ServerConnection = None  # type: ignore[assignment]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lookup = dispatcher.lookup
        self._invoke = dispatcher.invoke
        # Pause before the output cap can be reached: one reply is at most max_frame_size.
        self._high_water = min(cfg.high_water, cfg.max_frame_size)
        self._max_output = cfg.max_output
        self._tick_every = _tick_interval(
            cfg.idle_timeout, cfg.handshake_timeout, cfg.frame_timeout, cfg.keepalive
        )
        # Running async/blocking handlers: requests by id, notifications as a set.
        self._running: dict[int, asyncio.Future[Any]] = {}
        self._notes: set[asyncio.Future[Any]] = set()
        self._expired: set[asyncio.Future[Any]] = set()  # tasks cancelled by their deadline
        # Events of a received chunk not handled yet because output passed the high-water
        # mark: resumed (before any further read) once the peer drains its replies.
        # It never refers to the receive buffer: its frames own their bodies.
        self._backlog: Iterator[tuple[Any, ...]] | None = None
        self._rbuf = ReceiveBuffer()
        self._shrink_handle: asyncio.TimerHandle | None = None
        self._writelines: Any = None
        self._reading_paused = False
        self._writing_paused = False
        self._flush_scheduled = False
        self._stopping = False
        self._closing = False
        self._eof_sent = False
        self._closed = False
        self._tick_handle: asyncio.TimerHandle | None = None
        self._linger_handle: asyncio.TimerHandle | None = None
        now = _now()
        self._created = now
        self._last_recv = now
        self._last_call = now
        self._partial_since: float | None = None
        self._ping_at: float | None = None
        self._stall_since: float | None = None
        self._stall_size = 0
        self._drained = False  # resume_writing was called since the last tick

    # --- state ------------------------------------------------------------------------------

    @property
    def inflight(self) -> int:
        """Calls and notifications whose handlers have not ended on this connection."""
        return self.proto.inflight if self.proto is not None else 0

    @property
    def closed(self) -> bool:
        """True once the transport reported the connection lost."""
        return self._closed

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Set up the connection (or refuse it when the group is full or stopping)."""
        self.transport = transport  # type: ignore[assignment]  (uvloop's are not subclasses)
        self._loop = asyncio.get_running_loop()
        cfg = self.config
        _set_nodelay(transport)
        self._writelines = _scatter_writer(transport)
        transport.set_write_buffer_limits(high=self._high_water, low=self._high_water // 2)
        self.proto = ServerConnection(
            serializer=cfg.serializer,
            framing=cfg.framing,
            max_frame_size=cfg.max_frame_size,
            max_inflight=cfg.max_inflight,
            max_depth=cfg.max_depth,
        )
        group = self.group
        if group is not None:
            verdict = group._admit(self)
            if verdict is not None:
                if verdict:  # over max_connections: say why, then close
                    self.proto.refuse(StatusCode.RESOURCE_EXHAUSTED, verdict)
                self._begin_close()
                return
        self._schedule_tick()

    def _received(self) -> None:
        now = _now()
        self._last_recv = now
        rbuf = self._rbuf
        if self._closing:
            rbuf.clear()  # draining input until the peer's EOF; never parse it
            return
        if rbuf.size > ReceiveBuffer.INITIAL and self._shrink_handle is None:
            self._schedule_shrink()
        if self._backlog is None:  # else: handled once the backlog is done
            self._process()
        if rbuf.pending:
            if self._partial_since is None:
                self._partial_since = now
        else:
            self._partial_since = None

    def _process(self) -> None:
        """Handle the whole frames in the receive buffer, parsed in place."""
        rbuf = self._rbuf
        if not rbuf.pending:
            return
        try:
            events, used = self.proto.receive_in_place(rbuf.view())
        except ProtocolError:
            rbuf.clear()
            self._protocol_error()
            return
        if used:
            # Every event is handled, or the rest detached (copied), on return: the bytes
            # are free for the next read.
            self._run_events(events, in_place=True)
            rbuf.consume(used)

    def _schedule_shrink(self) -> None:
        self._shrink_handle = self._loop.call_later(  # type: ignore[union-attr]
            RECEIVE_BUFFER_IDLE, self._shrink
        )

    def _shrink(self) -> None:
        self._shrink_handle = None
        if not self._closed and self._rbuf.maybe_shrink():
            self._schedule_shrink()

    def eof_received(self) -> bool | None:
        """The peer closed its side: a partial frame is dropped with the connection."""
        return None  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        """Cancel what still runs for this connection and release it."""
        if self._closed:
            return
        self._closed = self._closing = True
        self._backlog = None
        self._rbuf.release()
        for handle in (self._tick_handle, self._linger_handle, self._shrink_handle):
            if handle is not None:
                handle.cancel()
        self._tick_handle = self._linger_handle = self._shrink_handle = None
        # Async handlers are cancelled; blocking ones cannot be, their result is dropped.
        for fut in [*self._running.values(), *self._notes]:
            if isinstance(fut, _Task):
                fut.cancel()
        if self.group is not None:
            self.group._remove(self)

    def pause_writing(self) -> None:
        """The transport's buffer passed the high-water mark: stop reading requests."""
        self._writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        """The peer drained its replies: handle the held events, then read again."""
        self._writing_paused = False
        self._drained = True
        if self._closing:
            return
        if self._backlog is not None:
            self._resume_backlog()
        else:
            self._resume_reading()

    # --- events -----------------------------------------------------------------------------

    def _run_events(self, events: Iterator[tuple[Any, ...]], in_place: bool = False) -> None:
        """Handle *events* in order; stop at the high-water mark, keeping the rest.

        *in_place*: the events come from frames parsed in the receive buffer; the rest
        kept at the high-water mark is detached from it (copied) first."""
        proto = self.proto
        handle = self._handle
        # Nothing is written while the chunk is handled, so the room left is fixed here.
        limit = self._high_water - self.transport.get_write_buffer_size()  # type: ignore[union-attr]
        try:
            for event in events:
                handle(event)
                if proto.output_size > limit:
                    # Backpressure inside one read: the rest waits until the peer reads.
                    if in_place:
                        backlog = proto.detach_in_place()
                        events.close()  # type: ignore[attr-defined]  (a generator)
                        events = backlog
                    self._backlog = events
                    self._pause_reading()
                    self._flush()
                    if not self._writing_paused and not self._closing:
                        self._loop.call_soon(self._resume_backlog)  # type: ignore[union-attr]
                    return
        except ProtocolError:
            self._backlog = None
            self._protocol_error()
            return
        self._backlog = None
        if proto.output_size:
            self._flush()
        if self._stopping:
            self._maybe_finish_stop()

    def _resume_backlog(self) -> None:
        events = self._backlog
        if events is None or self._closing or self._writing_paused:
            return
        self._run_events(events)
        if self._backlog is None and not self._closing:
            self._process()  # bytes that arrived before reading paused
        if self._backlog is None and not self._writing_paused:
            self._resume_reading()

    def _handle(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind in (_KIND_REQUEST, _KIND_NOTIFICATION):
            self._last_call = self._last_recv  # idle means no calls (pings don't count)
            rid = event[1]
            proto = self.proto
            try:
                method = self._lookup(event[2])
            except MethodNotFound as exc:
                if kind == _KIND_REQUEST:
                    proto.send_exception(rid, exc)
                else:
                    proto.finish_notification()
                return
            deadline = event[5]
            if method.blocking:
                self._submit_blocking(kind, rid, method, event[3], event[4], deadline)
                return
            try:
                if deadline is not None and _now() >= deadline:
                    raise DeadlineExceeded("deadline exceeded before dispatch")
                result = self._invoke(method, event[3], event[4])
            except Exception as exc:  # any handler failure becomes an error reply
                if kind == _KIND_REQUEST:
                    proto.send_exception(rid, exc)
                else:
                    proto.finish_notification()
                return
            if method.is_async:
                self._start_task(kind, rid, result, deadline)
            elif kind == _KIND_REQUEST:
                proto.send_response(rid, result)
            else:
                proto.finish_notification()
        elif kind == _KIND_CANCEL:
            fut = self._running.get(event[1])
            # A task ends at its next await; a blocking handler that has not started is
            # skipped by _run_blocking.  Either way the call counts until it ends.
            if isinstance(fut, _Task):
                fut.cancel()

    def _start_task(self, kind: int, rid: int, coro: Any, deadline: float | None) -> None:
        loop = self._loop
        assert loop is not None
        task = loop.create_task(coro)
        if kind == _KIND_REQUEST:
            self._running[rid] = task
        else:
            self._notes.add(task)
        timer = None
        if deadline is not None:
            timer = loop.call_later(max(0.0, deadline - _now()), self._deadline_passed, task)
        task.add_done_callback(partial(self._handler_done, kind, rid, timer))

    def _deadline_passed(self, task: asyncio.Task[Any]) -> None:
        if not task.done():
            self._expired.add(task)
            task.cancel()

    def _submit_blocking(
        self,
        kind: int,
        rid: int,
        method: Method,
        args: Any,
        kwargs: Any,
        deadline: float | None,
    ) -> None:
        loop = self._loop
        assert loop is not None
        try:
            fut = loop.run_in_executor(
                None, self._run_blocking, rid, method, args, kwargs, deadline
            )
        except RuntimeError as exc:  # the executor is shut down: the loop is closing
            if kind == _KIND_REQUEST:
                self.proto.send_error(rid, StatusCode.UNAVAILABLE, f"server is closing: {exc}")
            else:
                self.proto.finish_notification()
            return
        if kind == _KIND_REQUEST:
            self._running[rid] = fut
        else:
            self._notes.add(fut)
        fut.add_done_callback(partial(self._handler_done, kind, rid, None))

    def _run_blocking(
        self, rid: int, method: Method, args: Any, kwargs: Any, deadline: float | None
    ) -> Any:
        # Runs in an executor thread.  A call that waited in the queue past its deadline,
        # or was cancelled meanwhile, is answered without running the handler.
        if deadline is not None and _now() >= deadline:
            raise DeadlineExceeded("deadline exceeded before the handler started")
        if rid and self.proto.is_cancelled(rid):
            raise Cancelled("call cancelled before the handler started")
        return self._invoke(method, args, kwargs)

    def _handler_done(
        self,
        kind: int,
        rid: int,
        timer: asyncio.TimerHandle | None,
        fut: asyncio.Future[Any],
    ) -> None:
        if timer is not None:
            timer.cancel()
        if kind == _KIND_REQUEST:
            if self._running.get(rid) is fut:
                del self._running[rid]
        else:
            self._notes.discard(fut)
        expired = fut in self._expired
        if expired:
            self._expired.discard(fut)
        if fut.cancelled():
            exc: BaseException | None = (
                DeadlineExceeded("deadline exceeded") if expired else Cancelled("call cancelled")
            )
        else:
            exc = fut.exception()  # (also marks it retrieved)
        if self._closed:
            return
        proto = self.proto
        if kind == _KIND_REQUEST:
            if exc is None:
                proto.send_response(rid, fut.result())
            else:
                proto.send_exception(rid, exc)
        else:
            proto.finish_notification()
        self._last_call = _now()
        self._schedule_flush()
        if self._stopping:
            self._maybe_finish_stop()

    # --- writing ----------------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        # Completions in one loop turn share one write.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_soon)  # type: ignore[union-attr]

    def _flush_soon(self) -> None:
        self._flush_scheduled = False
        self._flush()

    def _flush(self) -> None:
        proto = self.proto
        if not proto.output_size:
            return
        out = proto.take_output()
        transport = self.transport
        if self._closed or self._eof_sent or transport.is_closing():  # type: ignore[union-attr]
            return  # nobody to say it to
        _write_chunks(transport, out, self._writelines)  # type: ignore[arg-type]
        if transport.get_write_buffer_size() > self._max_output:  # type: ignore[union-attr]
            # A peer that does not read its replies: cap the memory it can pin (HOSTILE 8).
            self._abort()

    def _pause_reading(self) -> None:
        if not self._reading_paused and not self._closed:
            self._reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def _resume_reading(self) -> None:
        if self._reading_paused and not self._closed:
            self._reading_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]

    # --- closing ----------------------------------------------------------------------------

    def _protocol_error(self) -> None:
        if self.group is not None:
            self.group.stats["protocol_errors"] += 1
        self._begin_close()

    def _begin_close(self, linger: float | None = None) -> None:
        """Flush what is queued (a goaway), half-close, read until EOF or the linger time.

        Reading the peer's remaining input instead of closing at once keeps the kernel
        from answering it with a reset that could destroy the goaway in flight.
        """
        if self._closing:
            return
        self._closing = True
        self._backlog = None
        transport = self.transport
        assert transport is not None
        if not self.proto.preface_sent:
            transport.close()  # not a native peer: nothing to say, close at once
            return
        self._flush()
        if self._closed:
            return
        if transport.can_write_eof():
            self._eof_sent = True
            try:
                transport.write_eof()  # after the buffered output
            except OSError:  # the peer is gone already
                transport.abort()
                return
            self._resume_reading()
        else:  # TLS: close_notify after the buffered output
            transport.close()
        # Either way the peer gets a bounded time to take the output (and say EOF).
        delay = self.config.linger if linger is None else linger
        self._linger_handle = self._loop.call_later(delay, transport.abort)  # type: ignore[union-attr]

    def _abort(self) -> None:
        self._closing = True
        self._backlog = None
        if self.transport is not None:
            self.transport.abort()

    def shutdown(self) -> None:
        """Begin a graceful stop: goaway, then close once in-flight calls have ended.

        A connection that has not completed its handshake is closed at once.
        """
        if self._closing:
            return
        self._stopping = True
        if not self.proto.handshake_complete:
            self._begin_close(0.0)
            return
        self.proto.send_goaway(StatusCode.OK, "server shutting down")
        self._flush()
        self._maybe_finish_stop()

    def abort(self) -> None:
        """Close the connection at once (running async handlers are cancelled)."""
        self._abort()

    def _maybe_finish_stop(self) -> None:
        if not self._closing and self.proto.inflight == 0 and self._backlog is None:
            self._begin_close()

    # --- timers -----------------------------------------------------------------------------

    def _schedule_tick(self) -> None:
        self._tick_handle = self._loop.call_later(self._tick_every, self._tick)  # type: ignore[union-attr]

    def _tick(self) -> None:
        self._tick_handle = None
        if self._closing:
            return
        now = _now()
        cfg = self.config
        proto = self.proto
        transport = self.transport
        assert transport is not None
        if not proto.handshake_complete and now - self._created > cfg.handshake_timeout:
            self._begin_close(0.0)
            return
        if self._partial_since is not None and now - self._partial_since > cfg.frame_timeout:
            self._abort()  # slowloris: a frame started and never finished (HOSTILE 7)
            return
        size = transport.get_write_buffer_size()
        if size:
            if self._stall_since is None or size < self._stall_size or self._drained:
                self._stall_since = now  # progress since the last tick
            self._stall_size = size
            if now - self._stall_since > cfg.frame_timeout:
                self._abort()  # the peer stopped reading its replies (HOSTILE 8)
                return
        else:
            self._stall_since = None
        self._drained = False
        if cfg.keepalive and proto.handshake_complete:
            if self._ping_at is not None and self._last_recv >= self._ping_at:
                self._ping_at = None  # heard from the peer since the ping: alive
            if self._ping_at is not None:
                if now - self._ping_at > cfg.keepalive:
                    self._abort()  # half-open: the peer vanished (HOSTILE 31)
                    return
            elif now - self._last_recv > cfg.keepalive:
                proto.send_ping()
                self._ping_at = now
                self._flush()
        if (
            cfg.idle_timeout
            and proto.inflight == 0
            and now - self._last_call > cfg.idle_timeout
            and not self._closing
        ):
            proto.send_goaway(StatusCode.OK, "idle timeout")
            self._begin_close()
            return
        if not self._closing:
            self._schedule_tick()


class ConnectionGroup:
    """The connections of one server: a protocol factory with shared limits and shutdown.

    Pass the group itself as the protocol factory (``loop.create_server(group, ...)``).
    It refuses connections past ``config.max_connections`` (a goaway saying why),
    counts ``accepted``/``rejected``/``protocol_errors`` in :attr:`stats`, and
    :meth:`shutdown` stops every connection gracefully.
    """

    def __init__(self, dispatcher: Dispatcher, config: ServerConfig | None = None) -> None:
        self.dispatcher = dispatcher
        self.config = config or ServerConfig()
        #: The open (admitted) connections.
        self.connections: set[RPCServerProtocol] = set()
        #: Counters for tests and monitoring.
        self.stats = {"accepted": 0, "rejected": 0, "protocol_errors": 0}
        self._stopping = False
        self._empty_waiters: list[asyncio.Future[None]] = []

    def __call__(self) -> RPCServerProtocol:
        """A new protocol for one connection of this group."""
        return RPCServerProtocol(self.dispatcher, self.config, group=self)

    def _admit(self, protocol: RPCServerProtocol) -> str | None:
        """None when admitted; else why not ("" when stopping: just close)."""
        if self._stopping:
            return ""
        if len(self.connections) >= self.config.max_connections:
            self.stats["rejected"] += 1
            return "server has too many connections"
        self.connections.add(protocol)
        self.stats["accepted"] += 1
        return None

    def _remove(self, protocol: RPCServerProtocol) -> None:
        self.connections.discard(protocol)
        if not self.connections:
            waiters, self._empty_waiters = self._empty_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait until no connection is open; False on timeout."""
        if not self.connections:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._empty_waiters.append(waiter)
        try:
            await asyncio.wait({waiter}, timeout=timeout)
        finally:
            if not waiter.done():
                waiter.cancel()
                self._empty_waiters.remove(waiter)
        return not self.connections

    async def shutdown(self, grace: float = 0.0) -> None:
        """Goaway on every connection, let in-flight calls finish for up to *grace*
        seconds, then abort what is left.  New connections are refused from now on
        (close the listening server first so none arrive)."""
        self._stopping = True
        for protocol in list(self.connections):
            protocol.shutdown()
        if not await self.wait_closed(max(0.0, grace)):
            for protocol in list(self.connections):
                protocol.abort()
            await self.wait_closed(5.0)

    def abort(self) -> None:
        """Close every connection at once."""
        self._stopping = True
        for protocol in list(self.connections):
            protocol.abort()


# ---------------------------------------------------------------------------------------------
# client side
# ---------------------------------------------------------------------------------------------


class RPCClientProtocol(_BufferedReceiver):
    """One client connection over any stream transport; calls are multiplexed on it.

    An ``asyncio.BufferedProtocol`` reading into a :class:`ReceiveBuffer`, replies parsed
    in place (``data_received`` works too, for bytes handed over by other code).

    *max_frame_size* caps the replies this side accepts (announced to the server).
    *keepalive* (seconds, or None): while calls are pending and the server has been
    silent that long, ping it; after as long again without a byte the connection is
    declared lost.  *serializer*/*framing* select the wire implementation modules
    (default: the active backend).  *peer* names the server in error messages.
    """

    #: The last request id used before the connection retires (tests lower it).
    MAX_REQUEST_ID = C.MAX_REQUEST_ID

    def __init__(
        self,
        *,
        max_frame_size: int = C.DEFAULT_MAX_FRAME_SIZE,
        keepalive: float | None = 30.0,
        serializer: ModuleType | None = None,
        framing: ModuleType | None = None,
        peer: str = "server",
    ) -> None:
        self.proto = ClientConnection(
            serializer=serializer,
            framing=framing,
            max_frame_size=max_frame_size,
            max_request_id=self.MAX_REQUEST_ID,
        )
        self.keepalive = keepalive
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        #: Set once the connection is unusable (the exception pending calls failed with).
        self.error: BaseException | None = None
        #: No new calls go here (goaway received, ids exhausted, or retired).
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._refusal: BaseException | None = None  # the server turned us away
        self._ready: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._lost_called = False
        self._flush_scheduled = False
        self._last_heard = 0.0
        self._ping_sent = 0.0
        self._tick_handle: asyncio.TimerHandle | None = None
        self._writing_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._rbuf = ReceiveBuffer()
        self._shrink_handle: asyncio.TimerHandle | None = None
        self._writelines: Any = None

    # --- state ------------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """True when new calls may go on this connection."""
        return self.error is None and not self.draining and not self.proto.ids_exhausted

    @property
    def pending(self) -> int:
        """Calls awaiting a reply."""
        return self.proto.pending

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the preface and settings; calls may be issued at once (held until the
        server's settings arrive)."""
        self.transport = transport  # type: ignore[assignment]  (uvloop's are not subclasses)
        self._loop = asyncio.get_running_loop()
        _set_nodelay(transport, keepalive=True)
        self._writelines = _scatter_writer(transport)
        self._last_heard = _now()
        self.proto.initiate()
        transport.write(self.proto.data_to_send())
        if self.keepalive:
            self._schedule_tick()

    def _received(self) -> None:
        """Route replies to their callers."""
        self._last_heard = _now()
        proto = self.proto
        rbuf = self._rbuf
        if rbuf.size > ReceiveBuffer.INITIAL and self._shrink_handle is None:
            self._shrink_handle = self._loop.call_later(  # type: ignore[union-attr]
                RECEIVE_BUFFER_IDLE, self._shrink
            )
        try:
            # Every reply is decoded on return: the bytes are free for the next read.
            events, used = proto.receive_in_place(rbuf.view())
            rbuf.consume(used)
        except ProtocolError as exc:
            rbuf.clear()
            if proto.handshake_complete:
                error = ConnectionLost(f"{self.peer}: protocol error: {exc}")
            else:
                error = ConnectionLost(f"{self.peer} is not a rapidrpc server: {exc}")
            error.__cause__ = exc
            self._lost(error)
            return
        for event in events:
            kind = event[0]
            if kind == _KIND_RESPONSE:
                fut = event[2]
                if not fut.done():
                    fut.set_result(event[3])
            elif kind == _KIND_ERROR:
                fut = event[2]
                if not fut.done():
                    fut.set_exception(event[3])
            elif kind == _KIND_GOAWAY:
                self.draining = True
                if not proto.handshake_complete:
                    self._refusal = Unavailable(
                        f"server refused the connection: {event[3]}", event[2]
                    )
        ready = self._ready
        if (
            ready is not None
            and not ready.done()
            and (proto.handshake_complete or self._refusal is not None)
        ):
            ready.set_result(None)
        if proto.output_size:  # pongs, calls released by replies
            self._flush()
        if self.draining and not proto.pending:
            self.close()

    def _shrink(self) -> None:
        self._shrink_handle = None
        if not self._lost_called and self._rbuf.maybe_shrink():
            self._shrink_handle = self._loop.call_later(  # type: ignore[union-attr]
                RECEIVE_BUFFER_IDLE, self._shrink
            )

    def eof_received(self) -> bool | None:
        """The server closed its side: the connection is over."""
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail every pending call with ConnectionLost."""
        if exc is not None:
            error = ConnectionLost(f"{self.peer}: connection lost: {exc}")
        elif not self.proto.handshake_complete:
            error = ConnectionLost(f"{self.peer} closed during the handshake")
        else:
            error = ConnectionLost(f"{self.peer} closed the connection")
        self._lost(error)
        self._lost_called = True
        self._rbuf.release()
        if self._shrink_handle is not None:
            self._shrink_handle.cancel()
            self._shrink_handle = None
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    # --- calls ------------------------------------------------------------------------------

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait for the server's preface and settings.

        Raises ConnectionLost (not a rapidrpc server, closed, or *timeout* passed) or
        Unavailable (the server refused the connection, e.g. too many connections).
        """
        if not self.proto.handshake_complete and self.error is None and self._refusal is None:
            if self._ready is None:
                self._ready = asyncio.get_running_loop().create_future()
            done, _ = await asyncio.wait({self._ready}, timeout=timeout)
            if not done:
                self.abort()
                raise ConnectionLost(f"{self.peer}: handshake timed out after {timeout}s")
        if self._refusal is not None:
            raise _copy(self._refusal)
        if self.error is not None:
            raise _copy(self.error)

    async def call(
        self,
        method: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        timeout: float | None = None,
        *,
        budget: float | None = None,
    ) -> Any:
        """Call *method* and return its result.

        *timeout* (seconds) is the deadline: on time, even with a silent server, the call
        raises DeadlineExceeded and a cancel frame goes out.  Cancelling the awaiting task
        also sends a cancel frame.  Raises NotSent (a ConnectionLost) when the connection
        was already lost: nothing was sent, so a retry elsewhere is safe.  *budget* is
        the caller's whole deadline when part of it was spent before (connecting); the
        error message names it.
        """
        if self._writing_paused:
            budget = budget or timeout
            timeout = await self._drain(method, timeout, budget)
        if self.error is not None:
            raise NotSent(str(self.error))
        loop = self._loop
        assert loop is not None, "call() before the connection was made"
        fut = loop.create_future()
        rid = self.proto.send_request(method, args, kwargs, fut, timeout)
        self._send()
        timer = None
        if timeout is not None:
            timer = loop.call_later(timeout, self._expire, rid, method, budget or timeout)
        try:
            return await fut
        except asyncio.CancelledError:
            self._forget(rid)  # the caller gave up: tell the server
            raise
        finally:
            if timer is not None:
                timer.cancel()

    async def _drain(
        self, method: str, timeout: float | None, budget: float | None
    ) -> float | None:
        """Wait while the transport's buffer is over its high-water mark (the server is
        not reading); return what is left of *timeout*.  Nothing is queued meanwhile."""
        loop = self._loop
        assert loop is not None
        deadline = None if timeout is None else _now() + timeout
        while self._writing_paused and self.error is None:
            wait = None if deadline is None else deadline - _now()
            if wait is not None and wait <= 0:
                raise DeadlineExceeded(
                    f"call {method!r} exceeded its deadline of {budget or timeout}s "
                    "before it could be sent (the server is not reading)"
                )
            waiter = loop.create_future()
            self._drain_waiters.append(waiter)
            try:
                await asyncio.wait({waiter}, timeout=wait)
            finally:
                if not waiter.done():
                    waiter.cancel()
                    self._drain_waiters.remove(waiter)
        return None if deadline is None else max(0.0, deadline - _now())

    def pause_writing(self) -> None:
        """The transport's buffer passed its high-water mark: new calls wait."""
        self._writing_paused = True

    def resume_writing(self) -> None:
        """The buffer drained: let waiting calls go."""
        self._writing_paused = False
        self._wake_drain_waiters()

    def _wake_drain_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def notify(
        self,
        method: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        """Send a notification: the server runs *method* and sends no reply."""
        if self.error is not None:
            raise NotSent(str(self.error))
        self.proto.send_notification(method, args, kwargs)
        self._send()

    def _expire(self, rid: int, method: str, timeout: float) -> None:
        fut = self.proto.cancel(rid)  # a late reply is then dropped as unknown
        if fut is None:
            return
        if not fut.done():
            fut.set_exception(
                DeadlineExceeded(f"call {method!r} exceeded its deadline of {timeout}s")
            )
        self._after_forget()

    def _forget(self, rid: int) -> None:
        if self.proto.cancel(rid) is not None:
            self._after_forget()

    def _after_forget(self) -> None:
        self._flush()  # the cancel frame
        if self.draining and not self.proto.pending:
            self.close()

    # --- writing ----------------------------------------------------------------------------

    def _send(self) -> None:
        if self._flush_scheduled:
            return
        if self.proto.pending <= 1:
            self._flush()  # an idle connection: write now, for the lowest latency
        else:
            # Concurrent calls: one write per loop turn for all the calls made in it.
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_soon)  # type: ignore[union-attr]

    def _flush_soon(self) -> None:
        self._flush_scheduled = False
        self._flush()

    def _flush(self) -> None:
        proto = self.proto
        if not proto.output_size:
            return
        out = proto.take_output()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        _write_chunks(transport, out, self._writelines)

    # --- keepalive --------------------------------------------------------------------------

    def _schedule_tick(self) -> None:
        assert self.keepalive
        every = max(0.01, self.keepalive / 4)
        self._tick_handle = self._loop.call_later(every, self._tick)  # type: ignore[union-attr]

    def _tick(self) -> None:
        self._tick_handle = None
        if self.error is not None or not self.keepalive:
            return
        now = _now()
        keepalive = self.keepalive
        if self.proto.pending and now - self._last_heard >= keepalive:
            if self._ping_sent > self._last_heard:
                if now - self._ping_sent >= keepalive:
                    self._lost(
                        ConnectionLost(
                            f"{self.peer} sent nothing for {2 * keepalive:g}s "
                            "(no reply to a keepalive ping)"
                        ),
                        abort=True,
                    )
                    return
            else:
                self.proto.send_ping()
                self._ping_sent = now
                self._flush()
        self._schedule_tick()

    # --- closing ----------------------------------------------------------------------------

    def _lost(self, error: BaseException, abort: bool = False) -> None:
        """Fail every pending call with *error* and close the transport (idempotent)."""
        if self.error is not None:
            return
        self.error = error
        self.draining = True
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        for fut in self.proto.pop_all_pending().values():
            if not fut.done():
                fut.set_exception(_copy(error))
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
        self._wake_drain_waiters()
        transport = self.transport
        if transport is not None:
            if abort:
                transport.abort()
            else:
                self._flush()  # a goaway saying why, cancel frames
                transport.close()

    def retire(self) -> None:
        """Take no new calls; close as soon as no call is pending (now, if none is)."""
        self.draining = True
        if not self.proto.pending:
            self.close()

    def close(self) -> None:
        """Close the connection; calls still pending fail with ConnectionLost."""
        self._lost(ConnectionLost(f"{self.peer}: connection closed by the client"))

    def abort(self) -> None:
        """Close at once, dropping unsent output; pending calls fail with ConnectionLost."""
        self._lost(ConnectionLost(f"{self.peer}: connection aborted by the client"), abort=True)
        if self.transport is not None:  # (also when an earlier close() is still flushing)
            self.transport.abort()

    async def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait until the transport reported the connection closed; False on timeout."""
        if self._lost_called or self.transport is None:
            return True
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
        done, _ = await asyncio.wait({self._closed}, timeout=timeout)
        return bool(done)
