"""Helpers for the asyncio tests: two loops, a bounded runner, a server on its own thread.

No pytest-asyncio: every test builds its loop (plain asyncio or uvloop, like uvloop's own
``tests/test_tcp.py`` runs one suite under both), runs one coroutine bounded in time,
then asserts that no task was left running and closes the loop (default executor
included).  The leak guard of conftest.py then checks threads and fds.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
from rpc_helpers import RawPeer, wire_of

from rapidrpc import aio
from rapidrpc.wire import constants as C

LOOPS = ("asyncio", "uvloop")


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    """A fresh event loop of kind *name* (``"asyncio"`` or ``"uvloop"``)."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _close_loop(loop: asyncio.AbstractEventLoop) -> list[str]:
    """Cancel leftover tasks, shut the executor down, close; return the leftovers' names."""
    leftovers = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in leftovers:
        task.cancel()
    if leftovers:
        loop.run_until_complete(asyncio.wait(leftovers, timeout=5))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.run_until_complete(loop.shutdown_default_executor())
    loop.close()
    return [repr(t) for t in leftovers]


def run(coro: Coroutine[Any, Any, Any], loop_name: str, timeout: float = 30.0) -> Any:
    """Run *coro* on a new *loop_name* loop, bounded by *timeout*; assert no task leaks."""
    loop = new_loop(loop_name)

    async def main() -> Any:
        try:
            return await asyncio.wait_for(coro, timeout)
        finally:
            for _ in range(5):  # let done callbacks of closing connections run
                await asyncio.sleep(0)

    try:
        result = loop.run_until_complete(main())
    finally:
        leftovers = _close_loop(loop)
    assert not leftovers, f"tasks left running: {leftovers}"
    return result


def loop_param(request: pytest.FixtureRequest) -> str:
    """Body of the ``loop_name`` fixture: skip uvloop where it is not installed."""
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
    return request.param


@pytest.fixture(scope="session")
def loops_warmed() -> None:
    """Create and close one loop of each kind before any test takes its fd baseline.

    libuv opens a couple of process-wide descriptors with its first loop and keeps them:
    that is not a leak of the test that happens to run first.
    """
    for name in LOOPS:
        try:
            new_loop(name).close()
        except ImportError:
            pass


@pytest.fixture(params=LOOPS)
def loop_name(request: pytest.FixtureRequest, loops_warmed: None) -> str:
    """The event loop implementation a test runs on."""
    return loop_param(request)


@pytest.fixture
def arun(loop_name: str) -> Callable[..., Any]:
    """``arun(coro, timeout=30)``: run a coroutine on this test's loop kind."""

    def runner(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return run(coro, loop_name, timeout)

    return runner


async def wait_for_condition(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll *predicate* on the loop until true or *timeout*; returns its last value."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= end:
            return predicate()
        await asyncio.sleep(0.005)
    return True


class ThreadedServer:
    """An :class:`aio.Server` served by a loop on its own thread, for tests whose peer is
    a blocking raw socket (or a blocking client) in the test thread."""

    def __init__(self, loop_name: str, backend_name: str, **kw: Any) -> None:
        self.loop = new_loop(loop_name)
        self.server = aio.Server(backend=backend_name, **kw)
        self.address = self.server.address
        self._thread = threading.Thread(target=self.loop.run_forever, name="aio-test-server")
        self._started = False

    def start(self) -> ThreadedServer:
        """Run the loop thread and start serving."""
        self._thread.start()
        self._started = True
        self.call(self.server.start())
        return self

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 15.0) -> Any:
        """Run *coro* on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call *fn* on the server's loop (thread-safe)."""
        self.loop.call_soon_threadsafe(fn, *args)

    @property
    def stats(self) -> dict[str, int]:
        """The server's counters."""
        return self.server.stats

    @property
    def connection_count(self) -> int:
        """Open connections."""
        return self.server.connection_count

    def stop(self, grace: float = 0.0) -> None:
        """Stop the server, the loop and its thread; close the loop."""
        if self._started:
            self._started = False
            try:
                self.call(self.server.stop(grace))
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(15)
        elif not self.loop.is_closed():
            self.loop.run_until_complete(self.server.stop(grace))  # releases the socket
        if self.loop.is_closed():
            return
        leftovers = _close_loop(self.loop)
        assert not leftovers, f"server tasks left running: {leftovers}"


@pytest.fixture
def aio_server(loop_name: str, backend_name: str) -> Iterator[Callable[..., ThreadedServer]]:
    """``aio_server(start=True, **Server kwargs)`` -> a ThreadedServer stopped at tear-down."""
    servers: list[ThreadedServer] = []

    def make(*, start: bool = True, **kw: Any) -> ThreadedServer:
        server = ThreadedServer(loop_name, backend_name, **kw)
        servers.append(server)
        return server.start() if start else server

    yield make
    for server in servers:
        server.stop()


# --- raw frames -------------------------------------------------------------------------------


def request_frame(backend_name: str, rid: int, method: str, *args: Any, meta: Any = None) -> bytes:
    """A request frame encoded by hand (bypasses the client's own limits and ids)."""
    w = wire_of(backend_name)
    body = [method, list(args)] if meta is None else [method, list(args), None, meta]
    return w["framing"].encode_frame(C.KIND_REQUEST, rid, w["serializer"].dumps(body))


def cancel_frame(backend_name: str, rid: int) -> bytes:
    """A cancel frame for request *rid*."""
    return wire_of(backend_name)["framing"].encode_frame(C.KIND_CANCEL, rid, b"\xc0")


def replies(peer: RawPeer, count: int, timeout: float = 10.0) -> list[tuple[int, int, Any]]:
    """Read until *count* frames arrived on *peer*: ``[(kind, request_id, decoded body)]``.

    Frames are parsed directly (hand-encoded requests are unknown to the peer's protocol
    object; after its handshake the peer's parser is past the preface).
    """
    loads = peer.proto._loads
    out: list[tuple[int, int, Any]] = []
    end = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < end:
        data = peer.recv_some(max(0.01, end - time.monotonic()))
        assert data, f"server closed after {len(out)} frames"
        out += [(f.kind, f.request_id, loads(f.body)) for f in peer.proto._parser.feed(data)]
    return out
