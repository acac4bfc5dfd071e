"""``rapidrpc.Client``: the blocking, thread-safe client.

    with rapidrpc.Client("127.0.0.1:8000", timeout=5) as client:
        client.add(1, 2)                    # attribute proxy: calls "add"
        client.calc.add(1, 2)               # dotted names: calls "calc.add"
        client.call("add", 1, 2, timeout=0.5)
        future = client.call_async("add", 1, 2)
        client.notify("log", "hello")       # no reply

Remote failures raise :class:`~rapidrpc.RemoteError` subclasses chosen by status code
(``MethodNotFound``, ``InvalidParams``, ...); deadlines raise
:class:`~rapidrpc.DeadlineExceeded`; a lost connection fails pending calls with
:class:`~rapidrpc.ConnectionLost`.  The connection is opened on the first call and reopened
on demand after a loss (a call is never re-sent: one that was in flight fails), after a
goaway, when request ids run out, and in a forked child.  After a failed connect, calls fail
fast with ConnectionLost until a jittered exponential backoff window has passed (HOSTILE 33).
Methods named in ``idempotent_methods`` are retried on ConnectionLost/Unavailable under the
client's RetryPolicy, within the call's deadline, throttled by a per-client RetryBudget
(HOSTILE 34).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from types import ModuleType, TracebackType
from typing import Any

from .core.protocol import NotProcessed
from .errors import ConnectionLost, Unavailable
from .transport import blocking
from .transport.blocking import BlockingConnection, NotSent
from .transport.resilience import Backoff, RetryBudget, RetryPolicy, call_with_retries
from .wire import constants as C

__all__ = ["Client", "parse_address", "resolve_backend", "wire_modules"]


def parse_address(address: str | tuple[str, int]) -> tuple[str, int]:
    """``"host:port"``, ``"[v6addr]:port"`` or ``(host, port)`` -> ``(host, port)``."""
    if isinstance(address, tuple):
        host, port = address
        return str(host), int(port)
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address must look like 'host:port', got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "127.0.0.1", int(port)


def resolve_backend(backend: str | None) -> str:
    """*backend*, or the active backend's name when None."""
    if backend is None:
        from . import _backend

        return _backend.active()
    return backend


def wire_modules(backend: str | None) -> tuple[ModuleType, ModuleType]:
    """The (serializer, framing) implementation modules of *backend* (None: the active one)."""
    from .wire import framing, serializer

    backend = resolve_backend(backend)
    try:
        return serializer.IMPLEMENTATIONS[backend], framing.IMPLEMENTATIONS[backend]
    except KeyError:
        raise ValueError(
            f"backend {backend!r} is not available (loaded: "
            f"{', '.join(sorted(serializer.IMPLEMENTATIONS))}); build the extension or "
            "use backend='python'"
        ) from None


class _MethodProxy:
    """``client.name(...)`` calls the remote method ``name``; ``client.a.b(...)`` calls ``a.b``.

    Shared by :class:`Client` and :class:`rapidrpc.aio.Client` (whose ``_invoke`` returns an
    awaitable, so there ``await client.name(...)``).

    Keyword arguments all go to the remote method; use :meth:`Client.call` for a per-call
    ``timeout``.
    """

    def __init__(self, client: Client, name: str) -> None:
        self._client = client
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._client._invoke(self._name, args, kwargs, None)

    def __getattr__(self, attr: str) -> _MethodProxy:
        if attr.startswith("_"):
            raise AttributeError(attr)
        proxy = type(self)(self._client, f"{self._name}.{attr}")
        self.__dict__[attr] = proxy  # cached: the next access is a plain attribute lookup
        return proxy

    def __repr__(self) -> str:
        return f"<remote method {self._name!r} of {self._client!r}>"


_PROXIES: dict[str, type[_MethodProxy]] = {"python": _MethodProxy}

if "cython" in blocking.CORES:

    class _CompiledMethodProxy(blocking.CORES["cython"].MethodCall, _MethodProxy):  # type: ignore[misc,name-defined]
        """The blocking Client's method proxy with the compiled core: its ``__call__`` is
        compiled (cext/client.pyx ``MethodCall``), the rest is :class:`_MethodProxy`."""

    _PROXIES["cython"] = _CompiledMethodProxy


class Client:
    """A blocking RPC client for one server address, safe to share between threads.

    *timeout* is the default deadline of every call in seconds (None: no deadline).
    *max_frame_size* caps the size of a reply this client accepts.  *keepalive* is how
    long a waiting call tolerates a silent connection before pinging (and, after as long
    again, declaring it lost).  *backend* picks the wire implementation (``"cython"`` or
    ``"python"``; None: ``rapidrpc.BACKEND``).

    *reconnect_backoff* spaces connection attempts after a failed one (default: 1 s x1.6
    +-20 % up to 120 s); within its window calls fail fast with ConnectionLost.  Calls of the
    methods in *idempotent_methods* (exact names, e.g. ``"calc.add"``) are retried per
    *retry* (default :class:`RetryPolicy`: 5 attempts, 0.1 s x2 to 1 s) when they fail with
    ConnectionLost or Unavailable, all attempts within the call's one deadline; retries of
    all calls share *retry_budget* (default :class:`RetryBudget`), so a failing server sees
    no retry storm.  Other calls are never re-sent once they may have run.

    Remote methods whose names clash with this class's own attributes (``call``,
    ``close``, ...) are reached with :meth:`call`.
    """

    def __init__(
        self,
        address: str | tuple[str, int],
        timeout: float | None = None,
        *,
        connect_timeout: float | None = 10.0,
        max_frame_size: int = C.DEFAULT_MAX_FRAME_SIZE,
        keepalive: float | None = 30.0,
        backend: str | None = None,
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
        self._serializer, self._framing = wire_modules(backend)
        self._conn_class = blocking.connection_class(resolve_backend(backend))
        self._proxy_class = _PROXIES[resolve_backend(backend)]
        self._conn_kw = {
            "connect_timeout": connect_timeout,
            "max_frame_size": max_frame_size,
            "keepalive": keepalive,
            "serializer": self._serializer,
            "framing": self._framing,
        }
        self._lock = threading.Lock()
        self._generation = blocking.fork_generation()
        self._conn: BlockingConnection | None = None
        self._closed = False

    # --- connection management --------------------------------------------------------------

    def _connection(self) -> BlockingConnection:
        conn = self._conn
        if conn is not None and conn.fresh():
            return conn
        return self._reconnect()

    def _reconnect(self) -> BlockingConnection:
        if self._generation != blocking.fork_generation():
            # Forked child: the parent's lock may be held by a thread that does not exist
            # here, and its connection belongs to the parent. Start over.
            self._lock = threading.Lock()
            self._generation = blocking.fork_generation()
            old, self._conn = self._conn, None
            if old is not None:
                old.close()  # only drops this process's copy of the descriptor
        with self._lock:
            if self._closed:
                raise RuntimeError("the client is closed")
            conn = self._conn
            if conn is not None and conn.usable:
                return conn
            if conn is not None:
                conn.retire()  # in-flight calls finish on it; it closes when idle
            self._conn = None
            backoff = self.reconnect_backoff
            wait = backoff.remaining()
            if wait > 0:  # fail fast rather than hammer a server that just refused us
                error = ConnectionLost(f"{self._connect_error}; reconnecting in {wait:.1f} s")
                error.retry_after = wait  # type: ignore[attr-defined]
                raise error
            try:
                conn = self._conn_class(*self.address, **self._conn_kw)
            except (ConnectionLost, Unavailable) as exc:
                exc.retry_after = backoff.failed()  # type: ignore[attr-defined]
                self._connect_error = str(exc)
                raise
            backoff.reset()
            self._conn = conn
            return conn

    # --- calls ------------------------------------------------------------------------------

    def _invoke(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        retry: bool = True,
    ) -> Any:
        # Every call's path, in one Python frame (callgrind: merging _invoke_once into this
        # frame, and compiling the fast half of fresh(), took 14 % of the client's
        # instructions per sequential call).
        if timeout is None:
            timeout = self.timeout
        if retry and name in self.idempotent_methods:
            deadline = None if timeout is None else time.monotonic() + timeout
            return call_with_retries(
                lambda left: self._invoke(name, args, kwargs, left, False),
                self.retry,
                self.retry_budget,
                deadline,
            )
        conn = self._conn  # (_connection(), inlined)
        if conn is None or not conn.fresh():
            conn = self._reconnect()
        try:
            return conn.call(name, args, kwargs or None, timeout)
        except (NotSent, NotProcessed):
            return self._resend(name, args, kwargs, timeout)

    def _resend(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        # Nothing ran: the connection died before our request was queued, or the server's
        # goaway says it never processed it.  Safe to try once more on a new connection.
        return self._connection().call(name, args, kwargs or None, timeout)

    def call(self, name: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Call remote method *name* and return its result.

        *timeout* overrides the client's default deadline for this call.
        """
        return self._invoke(name, args, kwargs, timeout)

    def call_async(
        self, name: str, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> Future[Any]:
        """Send a call and return a :class:`concurrent.futures.Future` of its result.

        Many calls may be in flight on the one connection; replies complete their futures
        in any order.  Cancelling the future cancels the call.
        """
        if timeout is None:
            timeout = self.timeout
        conn = self._conn
        if conn is None or not conn.fresh():
            conn = self._reconnect()
        try:
            return conn.call_async(name, args, kwargs or None, timeout)
        except NotSent:
            return self._connection().call_async(name, args, kwargs or None, timeout)

    def map(
        self,
        name: str,
        *iterables: Iterable[Any],
        window: int = 64,
        timeout: float | None = None,
    ) -> Iterator[Any]:
        """Call *name* once per item, like :meth:`concurrent.futures.Executor.map`.

        ``client.map("add", [1, 2], [10, 20])`` yields ``add(1, 10)`` then ``add(2, 20)``:
        results come in input order, with up to *window* calls in flight on the one
        connection.  Requests are sent in batches as results are consumed, and replies
        are collected without a Future per call, so this is the fastest way to make many
        calls from one thread.  A failed call raises its error when its result is
        reached; stopping early (or an error) cancels the calls still in flight.

        *timeout* bounds the whole map, from this call on (as in ``Executor.map``); each
        call also keeps the client's per-call timeout.  Calls are not retried.
        """
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        calls = zip(*iterables, strict=False)  # (shortest wins, as in Executor.map)
        conn = self._conn
        if conn is None or not conn.fresh():
            conn = self._reconnect()
        if conn.error is not None:
            conn = self._connection()
        return conn.map_calls(name, calls, window, deadline, self.timeout)

    def notify(self, name: str, *args: Any, **kwargs: Any) -> None:
        """Send a notification: the server runs *name* and sends no reply."""
        try:
            self._connection().notify(name, args, kwargs or None)
        except NotSent:
            self._connection().notify(name, args, kwargs or None)

    def __getattr__(self, name: str) -> _MethodProxy:
        if name.startswith("_"):
            raise AttributeError(name)
        proxy = self._proxy_class(self, name)
        self.__dict__[name] = proxy
        return proxy

    # --- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection; calls still pending fail with ConnectionLost."""
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<rapidrpc.Client {self.address[0]}:{self.address[1]}>"
