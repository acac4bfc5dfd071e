"""``rapidrpc.Server``: serve Python functions over the rapidrpc protocol.

    server = rapidrpc.Server("127.0.0.1", 8000)

    @server.export
    def add(a, b):
        return a + b

    @server.export(name="files.read", blocking=True)   # runs in a thread pool
    def read(path): ...

    server.start()          # background thread; returns once listening
    ...
    server.stop(grace=5)    # stop accepting, goaway, finish in-flight calls, close

Plain handlers run inline on the event loop (fastest; they must not block).
``blocking=True`` handlers run in a thread pool.  ``async def`` handlers need
:class:`rapidrpc.aio.Server`.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from .client import wire_modules
from .core.dispatch import Dispatcher, Registrar
from .transport import eventloop, loops
from .wire import constants as C

__all__ = ["Server"]

F = TypeVar("F", bound=Callable[..., Any])


def _loop_class(backend: str) -> type[eventloop.EventLoop]:
    """The event loop implementation for *backend*: the compiled epoll loop for
    ``"cython"``, the pure-Python loop for ``"python"`` (see :mod:`rapidrpc.transport.loops`).
    Both have the same constructor, ``run``, ``stop``, ``wait_running`` and ``join``.
    """
    return loops.loop_class(backend)  # type: ignore[no-any-return]


class Server(Registrar):
    """An RPC server listening on *host*:*port* (port 0 picks a free port; see
    :attr:`address`).  The socket is bound and listening when the constructor returns.

    Limits: *max_connections*; *max_frame_size* (bytes per message, both directions);
    *max_inflight* calls per connection; *idle_timeout* closes connections without calls;
    *handshake_timeout* for a new connection's preface; *frame_timeout* for a started
    frame to complete (and for queued replies to make progress); *keepalive* pings silent
    connections.  Timeouts are in seconds; None disables idle_timeout and keepalive.
    *threads* sizes the pool of ``blocking=True`` handlers (started on first use).
    *backend* picks the implementation (``"cython"``/``"python"``; None:
    ``rapidrpc.BACKEND``).  ``workers > 1``: :meth:`serve_forever` forks that many
    processes sharing the port with SO_REUSEPORT, restarts any that dies and forwards
    SIGTERM/SIGINT to them (see :mod:`rapidrpc.transport.workers`).
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
        threads: int | None = None,
        backend: str | None = None,
        backlog: int = 1024,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        #: Worker processes (see :mod:`rapidrpc.transport.workers`).
        self.workers = workers
        self._backlog = backlog
        if backend is None:
            from . import _backend

            backend = _backend.active()
        serializer, framing = wire_modules(backend)
        self.backend = backend
        self.dispatcher = Dispatcher()
        self.config = eventloop.ServerConfig(
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
        if threads is not None:
            self.config.pool_size = threads
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server(
            (host, port),
            family=family,
            backlog=backlog,
            reuse_port=workers > 1 and hasattr(socket, "SO_REUSEPORT"),
        )
        #: The bound ``(host, port)``.
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        # The loop implementation (a seam: tests run the selectors fallback through it).
        self._loop_factory: Callable[..., eventloop.EventLoop] = _loop_class(backend)
        self._loop: eventloop.EventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def connection_count(self) -> int:
        """Connections currently open (0 when not running)."""
        loop = self._loop
        return loop.connection_count if isinstance(loop, loops.LOOP_TYPES) else 0

    @property
    def stats(self) -> dict[str, int]:
        """Counters of the running loop: accepted, rejected, protocol_errors, accept_paused."""
        loop = self._loop
        return dict(loop.stats) if isinstance(loop, loops.LOOP_TYPES) else {}

    # --- running ----------------------------------------------------------------------------

    def _new_loop(self) -> eventloop.EventLoop:
        with self._lock:
            if self._loop is not None:
                raise RuntimeError("the server is already running (or was stopped)")
            if self.workers > 1:  # forks after binding; each worker builds its own loop
                from .transport.workers import Supervisor

                self._loop = Supervisor(  # type: ignore[assignment]
                    self._listener,
                    self.workers,
                    lambda sock: self._loop_factory(sock, self.dispatcher, self.config),
                    backlog=self._backlog,
                )
                return self._loop  # type: ignore[return-value]
            self._loop = self._loop_factory(self._listener, self.dispatcher, self.config)
            return self._loop

    def serve_forever(self) -> None:
        """Serve in the calling thread until :meth:`stop` (from another thread or a signal
        handler) or KeyboardInterrupt."""
        loop = self._new_loop()
        self._thread = threading.current_thread()
        loop.run()

    def start(self) -> Server:
        """Serve in a background thread; returns once the loop is running."""
        loop = self._new_loop()
        self._thread = threading.Thread(target=loop.run, name="rapidrpc-server", daemon=True)
        self._thread.start()
        loop.wait_running()
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, send goaway, let in-flight calls finish for up to *grace*
        seconds, then close every connection.  Blocks until done."""
        with self._lock:
            loop = self._loop
            if loop is None:  # never started: just release the socket
                self._loop = _Stopped()  # type: ignore[assignment]
                self._listener.close()
                return
        loop.stop(grace)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            loop.join()  # (from the serving thread itself, e.g. a signal handler: no wait)

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<rapidrpc.Server {self.address[0]}:{self.address[1]} backend={self.backend}>"


class _Stopped:
    """Placeholder loop of a server stopped before it ever ran."""

    def stop(self, grace: float = 0.0) -> None:
        """Nothing to stop."""

    def join(self, timeout: float | None = None) -> bool:
        """Nothing to wait for."""
        return True
