"""Embedding rapidrpc as the transport inside another asyncio application.

Run it with ``python examples/aio_embedding.py`` (add ``--uvloop`` to run on uvloop).
The application below owns its event loop and its sockets, and uses rapidrpc's protocol
classes directly instead of :class:`rapidrpc.aio.Server`:

* one TCP port shared by rapidrpc and plain-HTTP health checks (the first byte tells
  them apart: every rapidrpc connection starts with the 0xC1 preface byte);
* the same methods also on a Unix socket, with one ConnectionGroup for limits and a
  graceful shutdown across both listeners;
* clients built from :class:`RPCClientProtocol` over TCP and over the Unix socket.

It starts everything, makes a few calls, shuts down cleanly and exits.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile

import rapidrpc
from rapidrpc.core.dispatch import Dispatcher
from rapidrpc.transport.aio import (
    ConnectionGroup,
    RPCClientProtocol,
    ServerConfig,
)
from rapidrpc.wire import constants

# --- the methods ------------------------------------------------------------------------------

dispatcher = Dispatcher(allow_async=True)  # allow_async: async def handlers are awaited


@dispatcher.export
async def greet(name: str) -> str:
    """Say hello (an async handler: runs as a task on the loop)."""
    await asyncio.sleep(0)
    return f"Hello, {name}!"


@dispatcher.export(name="math.add")
def add(a: float, b: float) -> float:
    """Add two numbers (a plain handler: runs inline on the loop)."""
    return a + b


# --- the application's own protocol: one port, two kinds of clients --------------------------


class PortSharing(asyncio.Protocol):
    """Hand rapidrpc connections to the group; answer anything else as an HTTP probe."""

    def __init__(self, group: ConnectionGroup) -> None:
        self.group = group
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if data[:1] == constants.PREFACE[:1]:
            rpc = self.group()  # a new RPCServerProtocol of this group
            self.transport.set_protocol(rpc)
            rpc.connection_made(self.transport)
            rpc.data_received(data)
        else:
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
            )
            self.transport.close()


async def http_probe(host: str, port: int) -> str:
    """What a load balancer's health check would see on the shared port."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    status = (await reader.readline()).decode().strip()
    writer.close()
    await writer.wait_closed()
    return status


async def main() -> None:
    """Serve on TCP and a Unix socket, call both ways, shut down gracefully."""
    with tempfile.TemporaryDirectory() as tmp:
        await serve_and_call(os.path.join(tmp, "rpc.sock"))
    print("stopped")


async def serve_and_call(path: str) -> None:
    """The application: serve, call, shut down."""
    loop = asyncio.get_running_loop()
    group = ConnectionGroup(dispatcher, ServerConfig(max_connections=100, idle_timeout=60))
    tcp = await loop.create_server(lambda: PortSharing(group), "127.0.0.1", 0)
    unix = await loop.create_unix_server(group, path)  # the group is a protocol factory
    host, port = tcp.sockets[0].getsockname()[:2]
    print(f"serving on {host}:{port} and a Unix socket (backend: {rapidrpc.BACKEND})")

    # Clients: the protocol over any transport; wait for the handshake, then call.
    _, over_tcp = await loop.create_connection(RPCClientProtocol, host, port)
    _, over_unix = await loop.create_unix_connection(RPCClientProtocol, path)
    for client in (over_tcp, over_unix):
        await client.wait_ready(timeout=5)
    print(await over_tcp.call("greet", ["embedder"], timeout=5))
    print("2 + 3 =", await over_unix.call("math.add", [2, 3], timeout=5))
    sums = await asyncio.gather(*(over_tcp.call("math.add", [i, i]) for i in range(5)))
    print("doubles:", sums)
    try:
        await over_unix.call("math.div", [1, 0], timeout=5)
    except rapidrpc.MethodNotFound as exc:
        print("error:", exc)
    print("health:", await http_probe(host, port))
    print("connections:", len(group.connections))

    # Shutdown: clients first, then stop accepting, then goaway + grace for in-flight calls.
    for client in (over_tcp, over_unix):
        client.close()
        await client.wait_closed(5)
    tcp.close()
    unix.close()
    await group.shutdown(grace=5)
    await tcp.wait_closed()
    await unix.wait_closed()


if __name__ == "__main__":
    if "--uvloop" in sys.argv:
        import uvloop

        loop = uvloop.new_event_loop()
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()
    else:
        asyncio.run(main())
