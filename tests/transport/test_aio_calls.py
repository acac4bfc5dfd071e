"""rapidrpc.aio: Server and Client together on one loop (asyncio and uvloop, both backends).

Calls of every handler kind, errors by code, many concurrent calls on one connection,
deadlines, cancellation, notifications, graceful stop, reconnect on demand.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import aio_support
import pytest
from aio_support import wait_for_condition

import rapidrpc
from rapidrpc import (
    ConnectionLost,
    DeadlineExceeded,
    InvalidParams,
    MethodNotFound,
    RemoteError,
    ResourceExhausted,
    StatusCode,
    aio,
)
from rapidrpc.core.dispatch import Dispatcher
from rapidrpc.transport.aio import RPCClientProtocol, RPCServerProtocol, ServerConfig
from rapidrpc.wire import framing, serializer
from testsupport import load_backend

# The shared fixtures (pytest finds fixtures by module attribute).
arun, loop_name, loops_warmed = aio_support.arun, aio_support.loop_name, aio_support.loops_warmed


class Calculator:
    """Public methods become ``calc.*``; ``_secret`` never callable."""

    def add(self, a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    async def mul(self, a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a * b

    def _secret(self) -> str:
        return "nope"


def make_server(backend_name: str, **kw) -> aio.Server:
    server = aio.Server("127.0.0.1", 0, backend=backend_name, **kw)

    @server.export
    def add(a, b):
        return a + b

    @server.export
    async def async_add(a, b, *, bonus=0):
        await asyncio.sleep(0.001)
        return a + b + bonus

    @server.export(blocking=True)
    def blocking_add(a, b):
        assert threading.current_thread() is not threading.main_thread()
        return a + b

    @server.export
    def echo(data):
        return data

    server.register_instance(Calculator(), prefix="calc")
    return server


def make_client(server: aio.Server, backend_name: str, **kw) -> aio.Client:
    host, port = server.address
    return aio.Client(f"{host}:{port}", backend=backend_name, **kw)


def test_every_handler_kind(arun, backend_name) -> None:
    async def main() -> None:
        async with (
            make_server(backend_name) as server,
            make_client(server, backend_name, timeout=10) as client,
        ):
            assert await client.add(1, 2) == 3
            assert await client.async_add(1, 2) == 3
            assert await client.call("async_add", 1, 2, bonus=10) == 13
            assert await client.blocking_add(2, 3) == 5
            assert await client.calc.add(2, 3) == 5
            assert await client.calc.mul(6, 7) == 42
            assert await client.call("calc.mul", 2, b=5) == 10
            big = bytes(range(256)) * 4096  # 1 MiB: large bodies travel as separate chunks
            assert await client.echo(big) == big
            names = [m["name"] for m in await client.call("rpc.methods")]
            assert {"add", "async_add", "blocking_add", "calc.add", "calc.mul"} <= set(names)
            assert "calc._secret" not in names
            assert server.connection_count == 1

    arun(main())


def test_errors_by_code_and_connection_survives(arun, backend_name) -> None:
    async def main() -> None:
        server = make_server(backend_name)

        @server.export
        def boom():
            raise ValueError("plain failure")

        @server.export
        async def async_boom():
            await asyncio.sleep(0)
            raise KeyError("async failure")

        @server.export(blocking=True)
        def blocking_boom():
            raise InvalidParams("custom check", details={"field": "x"})

        @server.export
        def unencodable():
            return object()

        async with server, make_client(server, backend_name, timeout=10) as client:
            with pytest.raises(MethodNotFound):
                await client.missing()
            with pytest.raises(AttributeError):
                client.calc._secret  # noqa: B018 (private names are not even proxied)
            with pytest.raises(MethodNotFound):
                await client.call("calc._secret")
            with pytest.raises(InvalidParams):
                await client.add(1)
            with pytest.raises(InvalidParams):
                await client.async_add(1, 2, 3)
            with pytest.raises(RemoteError) as info:
                await client.boom()
            assert (info.value.code, info.value.remote_type) == (StatusCode.UNKNOWN, "ValueError")
            assert info.value.message == "plain failure"
            with pytest.raises(RemoteError) as info:
                await client.async_boom()
            assert info.value.remote_type == "KeyError"
            with pytest.raises(InvalidParams) as info:
                await client.blocking_boom()
            assert info.value.details == {"field": "x"}
            with pytest.raises(RemoteError) as info:
                await client.unencodable()
            assert info.value.code == StatusCode.INTERNAL
            assert await client.add(1, 1) == 2  # still the same, healthy connection
            assert server.stats["accepted"] == 1

    arun(main())


def test_private_attribute_proxy_is_local(arun, backend_name) -> None:
    async def main() -> None:
        client = aio.Client("127.0.0.1:9", backend=backend_name)
        with pytest.raises(AttributeError):
            client._hidden  # noqa: B018
        await client.close()

    arun(main())


def test_gather_1000_calls_share_one_connection(arun, backend_name) -> None:
    async def main() -> None:
        async with (
            make_server(backend_name) as server,
            make_client(server, backend_name, timeout=30) as client,
        ):
            calls = [client.add(i, i) for i in range(500)]
            calls += [client.async_add(i, 1) for i in range(500)]
            results = await asyncio.gather(*calls)
            assert results == [2 * i for i in range(500)] + [i + 1 for i in range(500)]
            assert server.stats["accepted"] == 1

    arun(main())


def test_server_inflight_limit_is_respected_by_the_client(arun, backend_name) -> None:
    """The client holds calls past the server's announced max_inflight: none is refused."""

    async def main() -> None:
        server = make_server(backend_name, max_inflight=3)
        running = []
        peak = []

        @server.export
        async def hold(i):
            running.append(i)
            peak.append(len(running))
            await asyncio.sleep(0.005)
            running.remove(i)
            return i

        async with server, make_client(server, backend_name, timeout=10) as client:
            assert await asyncio.gather(*(client.hold(i) for i in range(20))) == list(range(20))
        assert max(peak) == 3

    arun(main())


def test_out_of_order_replies(arun, backend_name) -> None:
    async def main() -> None:
        server = make_server(backend_name)
        gate = asyncio.Event()
        order = []

        @server.export
        async def slow():
            await gate.wait()
            return "slow"

        async with server, make_client(server, backend_name, timeout=10) as client:

            async def record(coro):
                order.append(await coro)

            slow_task = asyncio.ensure_future(record(client.slow()))
            await record(client.add(1, 1))  # answered while slow() still runs
            await record(client.blocking_add(1, 2))
            gate.set()
            await slow_task
        assert order == [2, 3, "slow"]

    arun(main())


def test_notifications_run_without_reply(arun, backend_name) -> None:
    async def main() -> None:
        server = make_server(backend_name)
        seen: list[object] = []
        done = asyncio.Event()

        @server.export
        def log(msg):
            seen.append(msg)

        @server.export
        async def async_log(msg):
            await asyncio.sleep(0)
            seen.append(msg)
            done.set()

        async with server, make_client(server, backend_name) as client:
            assert await client.notify("log", "plain") is None
            await client.notify("missing", "ignored")
            await client.notify("async_log", msg="async")
            await asyncio.wait_for(done.wait(), 5)
            assert await client.add(0, 0) == 0  # a later call: the notifications went first
        assert seen == ["plain", "async"]

    arun(main())


def test_deadline_cancels_async_handler(arun, backend_name) -> None:
    """DeadlineExceeded for the caller even though the handler never answers; the server
    cancels the handler task at the deadline it was sent."""

    async def main() -> None:
        server = make_server(backend_name)
        outcome: list[str] = []
        started = asyncio.Event()

        @server.export
        async def forever():
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise

        async with server, make_client(server, backend_name) as client:
            with pytest.raises(DeadlineExceeded) as info:
                await client.call("forever", timeout=0.2)
            assert isinstance(info.value, TimeoutError)
            # Either side may call it first: the client's timer or the server's deadline reply.
            assert "deadline" in str(info.value).lower()
            assert started.is_set()
            assert await wait_for_condition(lambda: outcome == ["cancelled"])
            assert await client.add(2, 2) == 4

    arun(main())


def test_default_timeout_applies_to_proxy_calls(arun, backend_name) -> None:
    async def main() -> None:
        server = make_server(backend_name)

        @server.export(blocking=True)
        def nap(seconds):
            time.sleep(seconds)
            return seconds

        async with server, make_client(server, backend_name, timeout=0.1) as client:
            with pytest.raises(DeadlineExceeded):
                await client.nap(0.3)
            assert await client.call("nap", 0.01, timeout=5) == 0.01

    arun(main())


def test_cancelling_the_caller_cancels_the_handler(arun, backend_name) -> None:
    """Task cancellation of an awaiting caller sends a cancel frame: the server cancels
    the handler task, and the connection keeps working."""

    async def main() -> None:
        server = make_server(backend_name)
        outcome: list[str] = []
        started = asyncio.Event()

        @server.export
        async def forever():
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise

        async with server, make_client(server, backend_name, timeout=10) as client:
            task = asyncio.ensure_future(client.forever())
            await asyncio.wait_for(started.wait(), 5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await wait_for_condition(lambda: outcome == ["cancelled"])
            assert await client.add(1, 2) == 3

    arun(main())


def test_request_over_server_frame_limit_is_refused_locally(arun, backend_name) -> None:
    async def main() -> None:
        async with (
            make_server(backend_name, max_frame_size=4096) as server,
            make_client(server, backend_name, timeout=10) as client,
        ):
            assert await client.echo(b"x" * 100) == b"x" * 100
            with pytest.raises(ResourceExhausted) as info:
                await client.echo(b"x" * 10_000)
            assert "max_frame_size=4096" in str(info.value)
            assert await client.echo(b"ok") == b"ok"

    arun(main())


def test_reply_over_client_frame_limit_is_an_error_reply(arun, backend_name) -> None:
    async def main() -> None:
        async with (
            make_server(backend_name) as server,
            make_client(server, backend_name, timeout=10, max_frame_size=4096) as client,
        ):
            with pytest.raises(ResourceExhausted):
                await client.echo(b"x" * 3000 + b"y" * 3000)
            assert await client.add(1, 2) == 3

    arun(main())


def test_graceful_stop_finishes_inflight_calls(arun, backend_name) -> None:
    async def main() -> None:
        server = make_server(backend_name)
        started = asyncio.Event()

        @server.export
        async def slow():
            started.set()
            await asyncio.sleep(0.2)
            return "finished"

        await server.start()
        client = make_client(server, backend_name, timeout=10)
        try:
            call = asyncio.ensure_future(client.slow())
            await asyncio.wait_for(started.wait(), 5)
            await server.stop(grace=5)
            assert call.done() and call.result() == "finished"
            assert server.connection_count == 0
            with pytest.raises(ConnectionLost):  # nobody listens anymore
                await client.add(1, 2)
        finally:
            await client.close()

    arun(main())


def test_stop_after_grace_cancels_handlers(arun, backend_name) -> None:
    async def main() -> None:
        server = make_server(backend_name)
        outcome: list[str] = []
        started = asyncio.Event()

        @server.export
        async def forever():
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise

        await server.start()
        async with make_client(server, backend_name, timeout=10) as client:
            call = asyncio.ensure_future(client.forever())
            await asyncio.wait_for(started.wait(), 5)
            await server.stop(grace=0.1)
            with pytest.raises(ConnectionLost):
                await call
        assert outcome == ["cancelled"]

    arun(main())


def test_reconnect_on_demand_never_resends(arun, backend_name) -> None:
    """A call in flight when its server goes away fails (never re-sent); the next call
    connects to whoever listens on the address now."""

    async def main() -> None:
        first = make_server(backend_name)
        runs: list[str] = []
        started = asyncio.Event()

        @first.export
        async def charge(tag):
            runs.append(tag)
            started.set()
            await asyncio.sleep(10)

        await first.start()
        client = make_client(first, backend_name, timeout=10)
        try:
            call = asyncio.ensure_future(client.charge("once"))
            await asyncio.wait_for(started.wait(), 5)
            await first.stop(grace=0)
            with pytest.raises(ConnectionLost):
                await call
            second = aio.Server(*first.address, backend=backend_name)
            second_runs: list[str] = []
            second.register(lambda tag: (second_runs.append(tag), tag)[1], name="charge")
            async with second:
                assert await client.charge("next") == "next"
            assert runs == ["once"] and second_runs == ["next"]
        finally:
            await client.close()

    arun(main())


def test_idle_goaway_is_transparent(arun, backend_name) -> None:
    async def main() -> None:
        async with (
            make_server(backend_name, idle_timeout=0.1) as server,
            make_client(server, backend_name, timeout=10) as client,
        ):
            assert await client.add(1, 1) == 2
            assert await wait_for_condition(lambda: server.connection_count == 0)
            assert await client.add(2, 2) == 4
            assert server.stats["accepted"] == 2

    arun(main())


def test_client_close_fails_pending_calls(arun, backend_name) -> None:
    async def main() -> None:
        server = make_server(backend_name)
        started = asyncio.Event()

        @server.export
        async def forever():
            started.set()
            await asyncio.Event().wait()

        async with server:
            client = make_client(server, backend_name)
            call = asyncio.ensure_future(client.forever())
            await asyncio.wait_for(started.wait(), 5)
            await client.close()
            with pytest.raises(ConnectionLost):
                await call
            with pytest.raises(RuntimeError, match="closed"):
                await client.add(1, 2)
            assert await wait_for_condition(lambda: server.connection_count == 0)

    arun(main())


def test_connection_refused_is_connection_lost(arun, backend_name) -> None:
    async def main() -> None:
        server = aio.Server(backend=backend_name)
        address = server.address
        await server.stop()  # bound, never served, now closed: nobody listens
        async with aio.Client(address, backend=backend_name, timeout=5) as client:
            with pytest.raises(ConnectionLost, match="cannot connect"):
                await client.add(1, 2)

    arun(main())


def test_server_lifecycle(arun, backend_name) -> None:
    async def main() -> None:
        server = make_server(backend_name)
        assert server.address[1] > 0 and repr(server).startswith("<rapidrpc.aio.Server")
        serving = asyncio.ensure_future(server.serve_forever())
        async with make_client(server, backend_name, timeout=10) as client:
            assert await client.add(1, 2) == 3
            with pytest.raises(RuntimeError):
                await server.start()
            await server.stop(grace=1)
            await asyncio.wait_for(serving, 5)
        await server.stop()  # idempotent
        # Cancelling serve_forever stops the server.
        other = make_server(backend_name)
        task = asyncio.ensure_future(other.serve_forever())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        never_started = make_server(backend_name)
        await never_started.stop()

    arun(main())


def test_backend_selects_wire_modules(arun, backend_name) -> None:
    async def main() -> None:
        async with (
            make_server(backend_name) as server,
            make_client(server, backend_name, timeout=10) as client,
        ):
            assert await client.add(1, 2) == 3
            assert server.config.serializer is serializer.IMPLEMENTATIONS[backend_name]
            assert server.config.framing is framing.IMPLEMENTATIONS[backend_name]
            proto = client._conn.proto
            assert proto._dumps is serializer.IMPLEMENTATIONS[backend_name].dumps
        with pytest.raises(ValueError, match="backend"):
            aio.Client("127.0.0.1:1", backend="fortran")

    arun(main())


def test_aio_is_lazy_and_exported() -> None:
    assert rapidrpc.aio is aio
    assert {"Client", "Server"} <= set(aio.__all__)
    code = (
        "import sys, threading, rapidrpc; "
        "assert 'asyncio' not in sys.modules and 'rapidrpc.aio' not in sys.modules; "
        "assert threading.active_count() == 1; "
        "assert rapidrpc.aio.Server and 'asyncio' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def conversation(backend_name: str) -> tuple[bytes, bytes]:
    """One fixed sequence of calls; every byte each side sent."""
    wire = {
        "serializer": serializer.IMPLEMENTATIONS[backend_name],
        "framing": framing.IMPLEMENTATIONS[backend_name],
    }
    to_server, to_client = bytearray(), bytearray()

    def recording(cls: type, record: bytearray) -> type:
        # The transports read through get_buffer/buffer_updated (BufferedProtocol).
        class Recording(cls):  # type: ignore[valid-type, misc]
            def get_buffer(self, sizehint: int) -> memoryview:
                self.last_buffer = super().get_buffer(sizehint)
                return self.last_buffer

            def buffer_updated(self, nbytes: int) -> None:
                record.extend(self.last_buffer[:nbytes])
                super().buffer_updated(nbytes)

        return Recording

    RecordingServer = recording(RPCServerProtocol, to_server)
    RecordingClient = recording(RPCClientProtocol, to_client)

    dispatcher = Dispatcher(allow_async=True)
    dispatcher.register(lambda x: x, name="echo")
    dispatcher.register(lambda: int("x"), name="boom")
    done = asyncio.Event()
    dispatcher.register(lambda *a: done.set(), name="note")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: RecordingServer(dispatcher, ServerConfig(**wire)), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    _, client = await loop.create_connection(lambda: RecordingClient(**wire), "127.0.0.1", port)
    await client.wait_ready(5)
    value = {"s": "é∂", "t": [1, 2.5], "n": None, "big": 2**70, "b": b"\x00" * 70_000}
    assert await client.call("echo", [value], timeout=5) == value
    assert await client.call("echo", (), {"x": [True, -1, 1.5]}) == [True, -1, 1.5]
    with pytest.raises(MethodNotFound):
        await client.call("missing", [1])
    with pytest.raises(RemoteError):
        await client.call("boom")
    client.notify("note", [1])
    await asyncio.wait_for(done.wait(), 5)
    assert await client.call("rpc.methods")
    client.close()
    await client.wait_closed(5)
    server.close()
    await server.wait_closed()
    return bytes(to_server), bytes(to_client)


def test_both_backends_send_identical_bytes(arun) -> None:
    """The same calls produce the same bytes in both directions, whichever backend
    encodes them (clients and servers of the two backends are interchangeable)."""
    streams = {}
    for name in ("cython", "python"):
        load_backend(name)  # (fails, or skips under RAPIDRPC_PURE_PYTHON, like the fixture)
        streams[name] = arun(conversation(name))
    assert streams["cython"] == streams["python"]
    assert len(streams["python"][0]) > 70_000 and len(streams["python"][1]) > 70_000
