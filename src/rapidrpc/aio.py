"""``rapidrpc.aio``: the asyncio faces, on any asyncio loop (uvloop included).

    server = aio.Server("127.0.0.1", 8000)

    @server.export
    async def fetch(url): ...            # awaited as a task on the loop

    @server.export
    def add(a, b):                       # plain: runs inline on the loop
        return a + b

    @server.export(blocking=True)        # runs in the loop's default executor
    def checksum(path): ...

    async with server:                   # start(); stop() on exit
        async with aio.Client(f"127.0.0.1:{server.address[1]}", timeout=5) as client:
            await client.add(1, 2)
            await client.calc.add(1, 2)              # dotted names: "calc.add"
            await client.call("add", 1, 2, timeout=0.5)
            await asyncio.gather(*(client.add(i, i) for i in range(1000)))
            await client.notify("log", "hello")      # no reply

Outside a running loop, ``server.run()`` blocks and serves on a fresh loop (pick it with
``loop_factory=``, e.g. ``uvloop.new_event_loop``); with ``aio.Server(workers=N)`` it
forks N processes after binding, each with its own fresh loop, supervised like
``rapidrpc.Server(workers=N)``::

    server = aio.Server("0.0.0.0", 8000, workers=4)
    ...
    server.run(loop_factory=uvloop.new_event_loop)   # SIGTERM: graceful stop

Both faces wrap the protocol classes of :mod:`rapidrpc.transport.aio` (the embedding API,
see docs/embedding.md) and behave like their blocking twins: the same limits, the same
exception classes, the same wire bytes.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl as _ssl
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from types import TracebackType
from typing import Any, TypeVar

from .client import _MethodProxy, parse_address, wire_modules
from .core.dispatch import Dispatcher, Registrar
from .core.protocol import NotProcessed
from .errors import ConnectionLost, DeadlineExceeded, Unavailable
from .transport.aio import ConnectionGroup, NotSent, RPCClientProtocol, ServerConfig
from .transport.resilience import Backoff, RetryBudget, RetryPolicy, call_with_retries_async
from .wire import constants as C

__all__ = ["Client", "Server"]

F = TypeVar("F", bound=Callable[..., Any])


class Server(Registrar):
    """An asyncio RPC server listening on *host*:*port* (port 0 picks a free port; see
    :attr:`address`).  The socket is bound when the constructor returns; :meth:`start`
    serves it on the running loop.

    Handlers: plain functions run inline on the loop (they must not block);
    ``blocking=True`` ones run in the loop's default executor; ``async def`` ones run as
    tasks, cancelled when the client cancels the call or its deadline passes.

    The limits and timeouts are those of :class:`rapidrpc.Server` (same names, same
    defaults).  *backend* picks the wire implementation (``"cython"``/``"python"``;
    None: ``rapidrpc.BACKEND``).  *ssl* serves TLS with that ``ssl.SSLContext``.

    Two ways to run it: inside your loop (``await start()`` / ``serve_forever()`` /
    ``stop()``, ``async with``), or :meth:`run`, which blocks and serves on a fresh loop
    of its own.  ``workers > 1`` needs :meth:`run`: it forks that many processes sharing
    the port with SO_REUSEPORT after binding, each running a fresh loop, restarts any
    that dies and turns SIGTERM/SIGINT into a graceful stop of all of them (the
    supervisor of :class:`rapidrpc.Server`, :mod:`rapidrpc.transport.workers`).  A
    process with a running loop cannot be forked safely, hence no ``start()`` with
    workers.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_connections: int = 1024,
        max_frame_size: int = C.DEFAULT_MAX_FRAME_SIZE,
        max_inflight: int = 100,
        idle_timeout: float | None = 300.0,
        handshake_timeout: float = 30.0,
        frame_timeout: float = 60.0,
        keepalive: float | None = 60.0,
        workers: int = 1,
        backend: str | None = None,
        backlog: int = 1024,
        ssl: _ssl.SSLContext | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        #: Worker processes (see :meth:`run`).
        self.workers = workers
        if backend is None:
            from . import _backend

            backend = _backend.active()
        serializer, framing = wire_modules(backend)
        self.backend = backend
        self.dispatcher = Dispatcher(allow_async=True)
        self.config = ServerConfig(
            max_connections=max_connections,
            max_frame_size=max_frame_size,
            max_inflight=max_inflight,
            idle_timeout=idle_timeout,
            handshake_timeout=handshake_timeout,
            frame_timeout=frame_timeout,
            keepalive=keepalive,
            serializer=serializer,
            framing=framing,
        )
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server(
            (host, port),
            family=family,
            backlog=backlog,
            reuse_port=workers > 1 and hasattr(socket, "SO_REUSEPORT"),
        )
        #: The bound ``(host, port)``.
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        self._backlog = backlog
        self._ssl = ssl
        self._group = ConnectionGroup(self.dispatcher, self.config)
        self._server: asyncio.AbstractServer | None = None
        self._stopping = False
        self._stopped: asyncio.Event | None = None
        self._supervisor: Any = None  # the Supervisor while run() runs with workers

    @property
    def connection_count(self) -> int:
        """Connections currently open."""
        return len(self._group.connections)

    @property
    def stats(self) -> dict[str, int]:
        """Counters: accepted, rejected, protocol_errors."""
        return dict(self._group.stats)

    # --- running ----------------------------------------------------------------------------

    async def start(self) -> Server:
        """Start serving on the running loop; returns once accepting connections."""
        if self._server is not None or self._stopping:
            raise RuntimeError("the server is already running (or was stopped)")
        if self.workers > 1 and self._supervisor is None:
            raise RuntimeError(
                f"workers={self.workers}: serve with server.run(...) outside any event loop "
                "(it forks the workers, then each runs a fresh loop); a process with a "
                "running loop cannot be forked safely"
            )
        loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._server = await loop.create_server(
            self._group, sock=self._sock, backlog=self._backlog, ssl=self._ssl
        )
        return self

    async def serve_forever(self) -> None:
        """Serve until :meth:`stop` (starting first if needed).  Cancelling the awaiting
        task stops the server at once (grace 0) and re-raises the cancellation."""
        if self._server is None:
            await self.start()
        assert self._stopped is not None
        try:
            await self._stopped.wait()
        except asyncio.CancelledError:
            await self.stop(grace=0)
            raise

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, send goaway, let in-flight calls finish for up to *grace*
        seconds, then close every connection.  Returns when all are closed."""
        if self._stopping:
            if self._stopped is not None:
                await self._stopped.wait()
            return
        self._stopping = True
        server = self._server
        if server is None:  # never started: just release the socket
            self._sock.close()
            return
        server.close()  # stop accepting
        try:
            await self._group.shutdown(grace)
            await server.wait_closed()
        finally:
            self._sock.close()  # (already closed or detached by the loop: a no-op)
            assert self._stopped is not None
            self._stopped.set()

    async def __aenter__(self) -> Server:
        if self._server is None:
            await self.start()
        return self

    def run(
        self,
        *,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
        grace: float = 5.0,
    ) -> None:
        """Serve until stopped, blocking the calling thread (no loop may run in it).

        Each process serves on a fresh loop from *loop_factory* (e.g.
        ``uvloop.new_event_loop``; None: asyncio's, which follows an installed event loop
        policy such as ``uvloop.install()``).  With ``workers > 1`` this forks the workers
        (after binding; nothing else is started before), restarts any that dies and, when
        called from the main thread, turns SIGTERM/SIGINT into a graceful stop: goaway,
        in-flight calls finish within *grace* seconds, then every worker exits; a second
        signal kills them.  Raises :class:`~rapidrpc.transport.workers.WorkerCrashLoop`
        when workers keep dying at start.  With one worker SIGTERM stops gracefully the
        same way and Ctrl-C stops at once (KeyboardInterrupt propagates).
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("run() blocks: call it outside a running event loop")
        if self._server is not None or self._stopping or self._supervisor is not None:
            raise RuntimeError("the server is already running (or was stopped)")
        if self.workers == 1:
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                runner.run(self._serve_until_signalled(grace))
            return
        from .transport.workers import Supervisor

        self._supervisor = Supervisor(
            self._sock,
            self.workers,
            lambda sock: _WorkerLoop(self, sock, loop_factory),
            grace=grace,
            backlog=self._backlog,
        )
        try:
            self._supervisor.run()
        finally:
            self._stopping = True
            self._sock.close()

    async def _serve_until_signalled(self, grace: float) -> None:
        """serve_forever, with SIGTERM as a graceful stop (main thread only)."""
        loop = asyncio.get_running_loop()
        watched = False
        if threading.current_thread() is threading.main_thread():
            try:
                loop.add_signal_handler(signal.SIGTERM, lambda: loop.create_task(self.stop(grace)))
                watched = True
            except (NotImplementedError, RuntimeError):  # no signals on this loop
                pass
        try:
            await self.serve_forever()
        finally:
            if watched:
                loop.remove_signal_handler(signal.SIGTERM)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        host, port = self.address[:2]
        return f"<rapidrpc.aio.Server {host}:{port} backend={self.backend}>"


class _WorkerLoop:
    """One worker of ``aio.Server(workers=N)``: the :class:`~rapidrpc.transport.workers.
    LoopLike` the supervisor runs in each forked process.  It builds a fresh event loop
    (after the fork), serves *sock* on it until :meth:`stop`, then closes the loop."""

    def __init__(
        self,
        server: Server,
        sock: socket.socket,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None,
    ) -> None:
        self._server = server
        self._factory = loop_factory
        self._loop: asyncio.AbstractEventLoop | None = None
        # A stop request, as its grace.  No lock: stop() may run in a signal handler that
        # interrupted this very thread; plain attribute reads and writes are atomic.
        self._grace: float | None = None
        server._sock = sock  # this process serves its own slot's socket

    def run(self) -> None:
        """Serve until stopped."""
        with asyncio.Runner(loop_factory=self._factory) as runner:
            self._loop = runner.get_loop()
            try:
                runner.run(self._serve())
            finally:
                self._loop = None

    async def _serve(self) -> None:
        server = self._server
        await server.start()
        grace = self._grace  # (set before the loop existed: no wake-up was sent)
        if grace is not None:  # stopped before the loop ran
            await server.stop(grace)
        await server.serve_forever()

    def stop(self, grace: float = 0.0) -> None:
        """Stop gracefully within *grace* seconds (thread- and signal-safe)."""
        if self._grace is None or grace < self._grace:
            self._grace = grace
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._stop_now)
            except RuntimeError:  # the loop is closed: nothing left to stop
                pass

    def _stop_now(self) -> None:
        grace = self._grace
        if grace is not None and self._server._server is not None:
            asyncio.get_running_loop().create_task(self._server.stop(grace))


class Client:
    """An asyncio RPC client for one server address.

    Any number of concurrent calls share one connection (``asyncio.gather`` of 1000
    calls is fine).  The connection is opened on the first call and reopened on demand
    after a loss, a goaway or when request ids run out; a call in flight on a lost
    connection fails with ConnectionLost and is never re-sent.  The client belongs to the
    event loop it first connects on.

    *timeout* is the default deadline of every call in seconds (None: no deadline); it
    covers connecting too.  *connect_timeout* bounds connecting and the handshake.
    *max_frame_size* caps the size of a reply.  *keepalive*: how long a pending call
    tolerates a silent connection before pinging (and, after as long again, declaring it
    lost).  *backend* picks the wire implementation (``"cython"``/``"python"``; None:
    ``rapidrpc.BACKEND``).  *ssl* (an ``ssl.SSLContext``) connects with TLS, checking the
    certificate against *server_hostname* (default: the host).  *reconnect_backoff* (a
    :class:`~rapidrpc.transport.resilience.Backoff`; default 1 s x1.6 +-20 % up to 120 s)
    spaces connection attempts after a failed one: within its window calls fail fast with
    ConnectionLost.  As in the blocking :class:`rapidrpc.Client`, only methods named in
    *idempotent_methods* are retried, per *retry* (a :class:`RetryPolicy`, default 5
    attempts, 0.1 s x2 up to 1 s) on ConnectionLost/Unavailable within the call's deadline,
    and all calls share *retry_budget* (a :class:`RetryBudget`); other calls are never
    re-sent once they may have run.

    Remote methods whose names clash with this class's own attributes (``call``,
    ``close``, ...) are reached with :meth:`call`.
    """

    #: Seconds :meth:`close` lets queued output drain before dropping the connection.
    _CLOSE_FLUSH = 2.0

    def __init__(
        self,
        address: str | tuple[str, int],
        timeout: float | None = None,
        *,
        connect_timeout: float | None = 10.0,
        max_frame_size: int = C.DEFAULT_MAX_FRAME_SIZE,
        keepalive: float | None = 30.0,
        backend: str | None = None,
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        reconnect_backoff: Backoff | None = None,
        idempotent_methods: Iterable[str] = (),
        retry: RetryPolicy | None = None,
        retry_budget: RetryBudget | None = None,
    ) -> None:
        self.address = parse_address(address)
        self.timeout = timeout
        self.reconnect_backoff = Backoff() if reconnect_backoff is None else reconnect_backoff
        self.idempotent_methods = frozenset(idempotent_methods)
        self.retry = RetryPolicy() if retry is None else retry
        self.retry_budget = RetryBudget() if retry_budget is None else retry_budget
        self._connect_error = ""
        self.connect_timeout = connect_timeout
        serializer, framing = wire_modules(backend)
        host, port = self.address
        self._factory = partial(
            RPCClientProtocol,
            max_frame_size=max_frame_size,
            keepalive=keepalive,
            serializer=serializer,
            framing=framing,
            peer=f"{host}:{port}",
        )
        self._ssl = ssl
        self._server_hostname = server_hostname
        self._conn: RPCClientProtocol | None = None
        self._retired: set[RPCClientProtocol] = set()  # draining: close with the client
        self._connecting: asyncio.Task[RPCClientProtocol] | None = None
        self._closed = False

    # --- connection management --------------------------------------------------------------

    async def _connection(self, deadline: float | None) -> RPCClientProtocol:
        """A usable connection, opening one (shared by concurrent callers) if needed."""
        for _ in range(3):
            conn = self._conn
            if conn is not None and conn.usable:
                return conn
            if self._closed:
                raise RuntimeError("the client is closed")
            task = self._connecting
            if task is None or task.done():  # (a finished one: its result was not usable)
                wait = self.reconnect_backoff.remaining()
                if wait > 0:  # fail fast rather than hammer a server that just refused us
                    raise ConnectionLost(f"{self._connect_error}; reconnecting in {wait:.1f} s")
                task = self._connecting = asyncio.get_running_loop().create_task(self._open())
                task.add_done_callback(self._connected)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceeded("deadline passed while connecting")
            # (asyncio.wait never cancels the task: a caller giving up leaves the connect
            # to the others sharing it.)
            done, _ = await asyncio.wait({task}, timeout=remaining)
            if not done:
                raise DeadlineExceeded(
                    f"deadline passed while connecting to {self.address[0]}:{self.address[1]}"
                )
            conn = task.result()
            if conn.usable:
                return conn
            # The callers woken before us used up its request ids (or it is lost already):
            # open the next one.
        return conn

    def _connected(self, task: asyncio.Task[RPCClientProtocol]) -> None:
        if self._connecting is task:
            self._connecting = None
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter may have given up

    async def _open(self) -> RPCClientProtocol:
        try:
            conn = await self._open_connection()
        except (ConnectionLost, Unavailable) as exc:
            self.reconnect_backoff.failed()
            self._connect_error = str(exc)
            raise
        self.reconnect_backoff.reset()
        return conn

    async def _open_connection(self) -> RPCClientProtocol:
        old = self._conn
        if old is not None:
            self._conn = None
            old.retire()  # in-flight calls finish on it; it closes when idle
            if old.error is None:
                self._retired.add(old)
        self._retired = {c for c in self._retired if c.error is None}
        loop = asyncio.get_running_loop()
        host, port = self.address
        timeout = self.connect_timeout
        started = time.monotonic()
        kw: dict[str, Any] = {}
        if self._ssl is not None:
            kw = {"ssl": self._ssl, "server_hostname": self._server_hostname or host}
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(self._factory, host, port, **kw), timeout
            )
        except asyncio.TimeoutError as exc:
            raise ConnectionLost(f"cannot connect to {host}:{port}: timed out") from exc
        except OSError as exc:
            raise ConnectionLost(f"cannot connect to {host}:{port}: {exc}") from exc
        try:
            left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
            await conn.wait_ready(left)
        except BaseException:
            conn.abort()
            raise
        if self._closed:  # closed while we were connecting
            conn.close()
            raise RuntimeError("the client is closed")
        self._conn = conn
        return conn

    # --- calls ------------------------------------------------------------------------------

    async def _invoke(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        if timeout is None:
            timeout = self.timeout
        if name in self.idempotent_methods:
            deadline = None if timeout is None else time.monotonic() + timeout
            return await call_with_retries_async(
                lambda left: self._invoke_once(name, args, kwargs, left),
                self.retry,
                self.retry_budget,
                deadline,
            )
        return await self._invoke_once(name, args, kwargs, timeout)

    async def _invoke_once(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        kw = kwargs or None
        attempts = 0
        conn = self._conn
        if conn is not None and conn.usable:
            try:
                return await conn.call(name, args, kw, timeout)
            except (NotSent, NotProcessed):
                # Nothing ran: the connection died before our request was queued, or the
                # server's goaway says it never processed it.  Safe to try a new one, once.
                attempts = 1
        # One budget: connecting spends the call's deadline too.
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            conn = await self._connection(deadline)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await conn.call(name, args, kw, left, budget=timeout)
            except (NotSent, NotProcessed):
                attempts += 1
                if attempts > 1:
                    raise

    async def call(self, name: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Call remote method *name* and return its result.

        *timeout* overrides the client's default deadline for this call.
        """
        return await self._invoke(name, args, kwargs, timeout)

    async def notify(self, name: str, *args: Any, **kwargs: Any) -> None:
        """Send a notification: the server runs *name* and sends no reply."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        try:
            (await self._connection(deadline)).notify(name, args, kwargs or None)
        except NotSent:
            (await self._connection(deadline)).notify(name, args, kwargs or None)

    def __getattr__(self, name: str) -> _MethodProxy:
        if name.startswith("_"):
            raise AttributeError(name)
        proxy = _MethodProxy(self, name)
        self.__dict__[name] = proxy
        return proxy

    # --- lifecycle --------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the connection; calls still pending fail with ConnectionLost."""
        self._closed = True
        task, self._connecting = self._connecting, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=5.0)
        conns = [c for c in (self._conn, *self._retired) if c is not None]
        self._conn = None
        self._retired = set()
        for conn in conns:
            conn.close()
        for conn in conns:
            # A close flushes queued output first; a server that stopped reading gets a
            # bounded time for that, then the connection is dropped.
            if not await conn.wait_closed(self._CLOSE_FLUSH):
                conn.abort()
                await conn.wait_closed(1.0)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<rapidrpc.aio.Client {self.address[0]}:{self.address[1]}>"
