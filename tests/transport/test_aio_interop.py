"""Interop both ways between the asyncio faces and the blocking ones.

``aio.Client`` -> ``rapidrpc.Server`` (the epoll server on its thread) and
``rapidrpc.Client`` -> ``aio.Server`` (blocking calls from executor threads while the
loop serves): same results, same exception classes, same wire.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
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
    StatusCode,
    aio,
)

# The shared fixtures (pytest finds fixtures by module attribute).
arun, loop_name, loops_warmed = aio_support.arun, aio_support.loop_name, aio_support.loops_warmed


class Calculator:
    def add(self, a, b):
        return a + b


# --- aio.Client -> rapidrpc.Server ---------------------------------------------------------


def test_aio_client_against_blocking_server(arun, make_server, backend_name) -> None:
    server = make_server(start=False)
    notes: list[str] = []
    server.register(lambda a, b: a + b, name="add")
    server.register(lambda t: (time.sleep(t), t)[1], name="nap", blocking=True)
    server.register(lambda msg: notes.append(msg), name="note")
    server.register(lambda: 1 / 0, name="boom")
    server.register_instance(Calculator(), prefix="calc")
    server.start()

    async def main() -> None:
        async with aio.Client(server.address, backend=backend_name, timeout=10) as client:
            assert await client.add(1, 2) == 3
            assert await client.calc.add(2, 3) == 5
            assert await client.nap(0.01) == 0.01
            results = await asyncio.gather(*(client.add(i, i) for i in range(200)))
            assert results == [2 * i for i in range(200)]
            with pytest.raises(MethodNotFound):
                await client.missing()
            with pytest.raises(InvalidParams):
                await client.add(1)
            with pytest.raises(RemoteError) as info:
                await client.boom()
            assert info.value.remote_type == "ZeroDivisionError"
            with pytest.raises(DeadlineExceeded):
                await client.call("nap", 0.3, timeout=0.1)
            await client.notify("note", "hi")
            assert await wait_for_condition(lambda: notes == ["hi"])
            assert server.stats["accepted"] == 1

    arun(main())


def test_aio_client_sees_blocking_server_stop(arun, make_server, backend_name) -> None:
    server = make_server(start=False)
    server.register(lambda t: (time.sleep(t), "done")[1], name="nap", blocking=True)
    server.start()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with aio.Client(server.address, backend=backend_name, timeout=10) as client:
            call = asyncio.ensure_future(client.nap(0.3))
            await asyncio.sleep(0.1)
            # A graceful stop: the call in flight finishes, then nobody listens.
            await loop.run_in_executor(None, server.stop, 5.0)
            assert await call == "done"
            with pytest.raises(ConnectionLost):
                await client.nap(0)

    arun(main())


# --- rapidrpc.Client -> aio.Server ---------------------------------------------------------


def make_aio_server(backend_name: str) -> aio.Server:
    server = aio.Server(backend=backend_name)
    server.register(lambda a, b: a + b, name="add")

    @server.export
    async def async_add(a, b):
        await asyncio.sleep(0.001)
        return a + b

    @server.export(blocking=True)
    def nap(t):
        time.sleep(t)
        return t

    @server.export
    async def boom():
        raise KeyError("missing key")

    server.register_instance(Calculator(), prefix="calc")
    return server


def test_blocking_client_against_aio_server(arun, backend_name) -> None:
    async def main() -> None:
        server = make_aio_server(backend_name)
        outcome: list[str] = []

        @server.export
        async def forever():
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise

        async with server:
            client = rapidrpc.Client(server.address, backend=backend_name, timeout=10)
            try:

                def calls() -> None:
                    assert client.add(1, 2) == 3
                    assert client.async_add(2, 3) == 5
                    assert client.calc.add(3, 4) == 7
                    assert client.nap(0.01) == 0.01
                    futures = [client.call_async("async_add", i, i) for i in range(200)]
                    assert [f.result(10) for f in futures] == [2 * i for i in range(200)]
                    with pytest.raises(MethodNotFound):
                        client.missing()
                    with pytest.raises(InvalidParams):
                        client.async_add(1)
                    with pytest.raises(RemoteError) as info:
                        client.boom()
                    assert (info.value.code, info.value.remote_type) == (
                        StatusCode.UNKNOWN,
                        "KeyError",
                    )
                    with pytest.raises(DeadlineExceeded):
                        client.call("forever", timeout=0.1)

                await asyncio.to_thread(calls)
                assert await wait_for_condition(lambda: outcome == ["cancelled"])
                assert server.stats["accepted"] == 1
            finally:
                await asyncio.to_thread(client.close)

    arun(main())


def test_ten_threads_share_one_blocking_client_on_aio_server(arun, backend_name) -> None:
    async def main() -> None:
        async with make_aio_server(backend_name) as server:
            client = rapidrpc.Client(server.address, backend=backend_name, timeout=10)
            loop = asyncio.get_running_loop()
            try:

                def worker(n: int) -> list[int]:
                    return [client.async_add(n, i) for i in range(50)]

                with concurrent.futures.ThreadPoolExecutor(10) as pool:
                    results = await asyncio.gather(
                        *(loop.run_in_executor(pool, worker, n) for n in range(10))
                    )
                assert results == [[n + i for i in range(50)] for n in range(10)]
                assert server.stats["accepted"] == 1
            finally:
                await asyncio.to_thread(client.close)

    arun(main())


def test_blocking_client_sees_aio_server_goaway(arun, backend_name) -> None:
    """A graceful stop of the aio server: the blocking client's call in flight finishes;
    after a restart on the same address the next call reconnects transparently."""

    async def main() -> None:
        first = make_aio_server(backend_name)
        await first.start()
        client = rapidrpc.Client(first.address, backend=backend_name, timeout=10)
        try:
            call = asyncio.ensure_future(asyncio.to_thread(client.nap, 0.3))
            await asyncio.sleep(0.1)
            await first.stop(grace=5)
            assert await call == 0.3
            second = aio.Server(*first.address, backend=backend_name)
            second.register(lambda a, b: a * b, name="add")  # a different server now
            async with second:
                assert await asyncio.to_thread(client.add, 3, 4) == 12
                await asyncio.to_thread(client.close)  # (else stop() lingers for our EOF)
        finally:
            await asyncio.to_thread(client.close)

    arun(main())
