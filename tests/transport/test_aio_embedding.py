"""The embedding API: RPCServerProtocol / ConnectionGroup / RPCClientProtocol used directly
with ``loop.create_server`` and friends, over TCP, a Unix socket and TLS; and the
runnable example.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import aio_support
import pytest
from aio_support import wait_for_condition
from rpc_helpers import wire_of

import rapidrpc
from rapidrpc import ConnectionLost, DeadlineExceeded, StatusCode, aio
from rapidrpc.core.dispatch import Dispatcher
from rapidrpc.transport.aio import (
    ConnectionGroup,
    RPCClientProtocol,
    RPCServerProtocol,
    ServerConfig,
)

# The shared fixtures (pytest finds fixtures by module attribute).
arun, loop_name, loops_warmed = aio_support.arun, aio_support.loop_name, aio_support.loops_warmed

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def make_dispatcher() -> Dispatcher:
    dispatcher = Dispatcher(allow_async=True)
    dispatcher.register(lambda a, b: a + b, name="add")

    @dispatcher.export
    async def slow(seconds):
        await asyncio.sleep(seconds)
        return seconds

    return dispatcher


def config_for(backend_name: str, **kw) -> ServerConfig:
    return ServerConfig(**wire_of(backend_name), **kw)


def client_factory(backend_name: str, **kw):
    return lambda: RPCClientProtocol(**wire_of(backend_name), **kw)


def test_standalone_protocols_on_create_server(arun, backend_name) -> None:
    """No group, no face: a lambda factory is enough, timers included."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        dispatcher = make_dispatcher()
        notes: list[str] = []
        dispatcher.register(notes.append, name="note")
        protocols: list[RPCServerProtocol] = []

        def factory() -> RPCServerProtocol:
            protocols.append(
                RPCServerProtocol(dispatcher, config_for(backend_name, idle_timeout=0.2))
            )
            return protocols[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, client = await loop.create_connection(client_factory(backend_name), "127.0.0.1", port)
        await client.wait_ready(5)
        assert client.usable and client.pending == 0
        assert await client.call("add", [1, 2]) == 3
        assert await client.call("add", (), {"a": 2, "b": 5}, timeout=5) == 7
        assert (
            await asyncio.gather(*(client.call("slow", [0.01]) for _ in range(50))) == [0.01] * 50
        )
        client.notify("note", ["hello"])
        assert await wait_for_condition(lambda: notes == ["hello"])
        with pytest.raises(DeadlineExceeded):
            await client.call("slow", [5], timeout=0.05)
        # The idle timeout of a standalone protocol: goaway, then the client retires.
        assert await wait_for_condition(lambda: not client.usable, 5)
        assert await client.wait_closed(5)
        assert await wait_for_condition(lambda: protocols[0].closed)
        with pytest.raises(ConnectionLost):  # (NotSent: nothing sent, safe to retry)
            await client.call("add", [1, 1])
        server.close()
        await server.wait_closed()

    arun(main())


def test_group_graceful_shutdown_and_limits(arun, backend_name) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        group = ConnectionGroup(make_dispatcher(), config_for(backend_name, max_connections=1))
        server = await loop.create_server(group, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        factory = client_factory(backend_name)
        _, first = await loop.create_connection(factory, "127.0.0.1", port)
        await first.wait_ready(5)
        _, second = await loop.create_connection(factory, "127.0.0.1", port)
        with pytest.raises(rapidrpc.Unavailable) as info:
            await second.wait_ready(5)
        assert info.value.code == StatusCode.RESOURCE_EXHAUSTED
        assert await second.wait_closed(5)
        assert group.stats == {"accepted": 1, "rejected": 1, "protocol_errors": 0}
        call = asyncio.ensure_future(first.call("slow", [0.2]))
        await asyncio.sleep(0.05)
        server.close()
        await group.shutdown(grace=5)  # goaway; the call in flight finishes first
        assert await call == 0.2
        assert not group.connections and first.draining
        assert await first.wait_closed(5)
        await server.wait_closed()

    arun(main())


def test_unix_socket(arun, backend_name, tmp_path) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        path = str(tmp_path / "rpc.sock")
        group = ConnectionGroup(make_dispatcher(), config_for(backend_name))
        server = await loop.create_unix_server(group, path)
        _, client = await loop.create_unix_connection(client_factory(backend_name), path)
        await client.wait_ready(5)
        assert await client.call("add", ["a", "b"]) == "ab"
        big = os.urandom(1 << 20)
        assert await client.call("add", [big, b""]) == big
        client.close()
        assert await client.wait_closed(5)
        server.close()
        await group.shutdown(grace=1)
        await server.wait_closed()

    arun(main())


@pytest.fixture(scope="module")
def tls_contexts(tmp_path_factory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1, made with the openssl tool."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl tool is needed to make a test certificate")
    where = tmp_path_factory.mktemp("tls")
    key, cert = where / "key.pem", where / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    return server_ctx, client_ctx


def test_tls_faces_and_protocols(arun, backend_name, tls_contexts) -> None:
    server_ctx, client_ctx = tls_contexts

    async def main() -> None:
        server = aio.Server(backend=backend_name, ssl=server_ctx)
        server.register(lambda data: data, name="echo")

        @server.export
        async def slow():
            await asyncio.sleep(0.2)
            return "finished"

        await server.start()
        host, port = server.address
        async with aio.Client(
            server.address, backend=backend_name, timeout=10, ssl=client_ctx
        ) as client:
            payload = os.urandom(300_000)
            assert await client.echo(payload) == payload
            assert await asyncio.gather(*(client.echo(i) for i in range(100))) == list(range(100))
            # The protocol directly over a TLS transport.
            loop = asyncio.get_running_loop()
            _, raw = await loop.create_connection(
                client_factory(backend_name), host, port, ssl=client_ctx, server_hostname=host
            )
            await raw.wait_ready(5)
            assert await raw.call("echo", ["tls"]) == "tls"
            raw.close()
            assert await raw.wait_closed(5)
            # A plain (non-TLS) rapidrpc client on the TLS port is refused, not hung.
            async with aio.Client(server.address, backend=backend_name, connect_timeout=5) as plain:
                with pytest.raises(ConnectionLost):
                    await plain.echo(1)
            # Graceful stop over TLS (no half-close there): the call in flight finishes.
            call = asyncio.ensure_future(client.slow())
            await asyncio.sleep(0.05)
            await server.stop(grace=5)
            assert await call == "finished"

    arun(main())


def test_embedding_example_runs(loop_name, backend_name) -> None:
    env = dict(os.environ)
    if backend_name == "python":
        env["RAPIDRPC_PURE_PYTHON"] = "1"
    else:
        env["RAPIDRPC_REQUIRE_EXTENSION"] = "1"
    args = [sys.executable, str(EXAMPLES / "aio_embedding.py")]
    if loop_name == "uvloop":
        args.append("--uvloop")
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"(backend: {backend_name})" in out
    assert "Hello, embedder!" in out and "2 + 3 = 5" in out
    assert "doubles: [0, 2, 4, 6, 8]" in out and "MethodNotFound" in out
    assert "health: HTTP/1.1 200 OK" in out and "connections: 2" in out
    assert out.rstrip().endswith("stopped")
