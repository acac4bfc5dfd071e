"""grpcio, sync and aio, with generic method handlers (no protoc, no generated code).

``Add`` carries msgpack ``[a, b]`` -> msgpack result; ``Echo`` carries raw bytes with identity
serializers, so grpc's own cost is measured, not a codec's.  The sync server uses a thread
pool of 16 workers; grpc aio runs on plain asyncio (its own loop integration).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from ..affinity import Placement
from ..proc import announce, exit_when_released, wait_for_release
from ..timing import CALL_TIMEOUT_S, FutureLike
from .base import AsyncSystem, SyncSystem

SERVICE = "bench.Bench"
ADD = f"/{SERVICE}/Add"
ECHO = f"/{SERVICE}/Echo"
# 1 MiB echoes plus framing must fit; grpc's default receive limit is 4 MiB.
OPTIONS = [
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]
SYNC_SERVER_WORKERS = 16


def _missing() -> str | None:
    try:
        import grpc  # noqa: F401
        import msgpack  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install rapidrpc[bench])"
    return None


def _handler(asynchronous: bool) -> Any:
    import grpc
    import msgpack

    if asynchronous:

        async def add(request: list[int], context: Any) -> int:
            return request[0] + request[1]

        async def echo(request: bytes, context: Any) -> bytes:
            return request

    else:

        def add(request: list[int], context: Any) -> int:  # type: ignore[misc]
            return request[0] + request[1]

        def echo(request: bytes, context: Any) -> bytes:  # type: ignore[misc]
            return request

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Add": grpc.unary_unary_rpc_method_handler(
                add, request_deserializer=msgpack.unpackb, response_serializer=msgpack.packb
            ),
            "Echo": grpc.unary_unary_rpc_method_handler(echo),  # bytes in, bytes out
        },
    )


class GrpcSync(SyncSystem):
    """grpcio's blocking API: ``stub(request)`` and ``stub.future(request)``."""

    key = "grpc-sync"
    title = "grpcio sync"

    def __init__(self, placement: Placement) -> None:
        super().__init__(placement)
        self.channel: Any = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return _missing()

    @classmethod
    def serve(cls) -> None:
        from concurrent.futures import ThreadPoolExecutor

        import grpc

        server = grpc.server(ThreadPoolExecutor(max_workers=SYNC_SERVER_WORKERS), options=OPTIONS)
        server.add_generic_rpc_handlers((_handler(asynchronous=False),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        announce(port)
        wait_for_release()
        server.stop(grace=None)

    def start(self) -> None:
        import grpc
        import msgpack

        self.start_server()
        assert self.server is not None
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}", options=OPTIONS)
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self._add = self.channel.unary_unary(
            ADD, request_serializer=msgpack.packb, response_deserializer=msgpack.unpackb
        )
        self._echo = self.channel.unary_unary(ECHO)

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        self._stop_server()

    def add_fn(self) -> Callable[[], object]:
        return functools.partial(self._add, (1, 2), timeout=CALL_TIMEOUT_S)

    def echo_fn(self, data: bytes) -> Callable[[], object]:
        return functools.partial(self._echo, data, timeout=CALL_TIMEOUT_S)

    def submit_add(self) -> FutureLike:
        return self._add.future((1, 2), timeout=CALL_TIMEOUT_S)


class GrpcAio(AsyncSystem):
    """grpcio's asyncio API, client and server."""

    key = "grpc-aio"
    title = "grpcio aio"
    uses_uvloop = False

    def __init__(self, placement: Placement) -> None:
        super().__init__(placement)
        self.channel: Any = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return _missing()

    @classmethod
    def serve(cls) -> None:
        import grpc

        async def main() -> None:
            server = grpc.aio.server(options=OPTIONS)
            server.add_generic_rpc_handlers((_handler(asynchronous=True),))
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            announce(port)
            await server.wait_for_termination()

        exit_when_released()
        asyncio.run(main())

    async def connect(self, port: int) -> None:
        import grpc
        import msgpack

        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS)
        await asyncio.wait_for(self.channel.channel_ready(), 30)
        self._add = self.channel.unary_unary(
            ADD, request_serializer=msgpack.packb, response_deserializer=msgpack.unpackb
        )
        self._echo = self.channel.unary_unary(ECHO)

    async def disconnect(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None

    async def add(self) -> object:
        return await self._add((1, 2), timeout=CALL_TIMEOUT_S)

    async def echo_async(self, data: bytes) -> object:
        return await self._echo(data, timeout=CALL_TIMEOUT_S)
