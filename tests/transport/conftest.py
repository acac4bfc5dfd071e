"""Fixtures for socket-level tests: servers on 127.0.0.1:0, raw peers, and a leak guard.

Every test here runs under :func:`no_leaks`, which asserts that threads and file
descriptors return to their starting count (uvloop's ``_testbase`` idea: resource
counters at tear-down are the cheapest defence against leaks).
"""

from __future__ import annotations

import functools
import selectors
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from rpc_helpers import RawPeer, ScriptedServer, fd_count, thread_ids, wait_until

import rapidrpc
from rapidrpc.transport import loops
from rapidrpc.transport.eventloop import EventLoop


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Threads and fds must return to their starting count after each test."""
    threads, fds = thread_ids(), fd_count()
    yield
    # Pool threads and closing sockets need a moment to wind down after stop().
    assert wait_until(lambda: thread_ids() <= threads, 10.0), (
        f"threads leaked: {[t.name for t in threading.enumerate() if t.ident not in threads]}"
    )
    assert wait_until(lambda: fd_count() <= fds, 5.0), f"fds leaked: {fd_count()} > {fds}"


@pytest.fixture
def loop_kind() -> str:
    """The server loop: ``"epoll"`` is the backend's own loop (the compiled one for
    ``cython``, the pure one for ``python``); a module overrides it with ``"selectors"`` to
    rerun its tests on the pure loop's selectors fallback."""
    return "epoll"


@pytest.fixture
def make_server(backend_name: str, loop_kind: str) -> Iterator[Callable[..., rapidrpc.Server]]:
    """``make_server(**kw)`` -> a started Server on the test's backend; stopped at tear-down."""
    servers: list[rapidrpc.Server] = []

    def make(*, start: bool = True, **kw: Any) -> rapidrpc.Server:
        kw.setdefault("backend", backend_name)
        server = rapidrpc.Server("127.0.0.1", 0, **kw)
        if loop_kind == "selectors":
            server._loop_factory = functools.partial(
                EventLoop, use_epoll=False, selector_cls=selectors.PollSelector
            )
        else:  # every server-side test runs once per loop: the backend picks it
            assert server._loop_factory is loops.loop_class(kw["backend"])
        servers.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in servers:
        server.stop(grace=0)


@pytest.fixture
def make_client(backend_name: str) -> Iterator[Callable[..., rapidrpc.Client]]:
    """``make_client(server_or_address, **kw)`` -> a Client closed at tear-down."""
    clients: list[rapidrpc.Client] = []

    def make(target: Any, **kw: Any) -> rapidrpc.Client:
        kw.setdefault("backend", backend_name)
        address = target.address if isinstance(target, rapidrpc.Server) else target
        client = rapidrpc.Client(address, **kw)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def raw_peer(backend_name: str) -> Iterator[Callable[..., RawPeer]]:
    """``raw_peer(address, handshake=True)`` -> a RawPeer closed at tear-down."""
    peers: list[RawPeer] = []

    def make(address: tuple[str, int], handshake: bool = True) -> RawPeer:
        peer = RawPeer(address, backend_name, handshake)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.close()


@pytest.fixture
def scripted_server(backend_name: str) -> Iterator[Callable[..., ScriptedServer]]:
    """``scripted_server(script)`` -> a ScriptedServer closed at tear-down."""
    servers: list[ScriptedServer] = []

    def make(script: Callable[..., None]) -> ScriptedServer:
        server = ScriptedServer(backend_name, script)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()
