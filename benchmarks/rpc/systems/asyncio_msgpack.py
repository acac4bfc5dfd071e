"""A hand-written asyncio + msgpack RPC: what users write today when they need something fast.

4-byte big-endian length prefix, body ``msgpack([msgid, method, params])``, reply
``[msgid, error, result]``; ``StreamReader.readexactly`` on both sides, ``write`` + ``drain``,
requests answered in order as they come.  Runs on uvloop when installed (client and server).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..affinity import Placement
from ..proc import announce, exit_when_released
from .base import AsyncSystem, loop_name, new_event_loop

try:
    import msgpack
except ImportError:  # reported by AsyncioMsgpack.unavailable_reason
    msgpack = None


def _frame(obj: Any) -> bytes:
    body = msgpack.packb(obj)
    return len(body).to_bytes(4, "big") + body


async def _read_message(reader: asyncio.StreamReader) -> Any:
    size = int.from_bytes(await reader.readexactly(4), "big")
    return msgpack.unpackb(await reader.readexactly(size))


async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    methods = {"add": lambda a, b: a + b, "echo": lambda data: data}
    try:
        while True:
            msgid, method, params = await _read_message(reader)
            try:
                reply = [msgid, None, methods[method](*params)]
            except Exception as exc:
                reply = [msgid, repr(exc), None]
            writer.write(_frame(reply))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


class _NaiveClient:
    """Multiplexes calls on one connection: a reader task resolves futures by msgid."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.next_id = 0
        self.task = asyncio.get_running_loop().create_task(self._read_replies())

    async def call(self, method: str, *params: Any) -> Any:
        self.next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        self.writer.write(_frame([self.next_id, method, params]))
        await self.writer.drain()
        return await fut

    async def _read_replies(self) -> None:
        try:
            while True:
                msgid, error, result = await _read_message(self.reader)
                fut = self.pending.pop(msgid)
                if error is not None:
                    fut.set_exception(RuntimeError(error))
                else:
                    fut.set_result(result)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            for fut in self.pending.values():
                fut.set_exception(ConnectionError(f"connection lost: {exc!r}"))
            self.pending.clear()

    async def close(self) -> None:
        self.task.cancel()
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


class AsyncioMsgpack(AsyncSystem):
    """The naive asyncio + msgpack baseline (uvloop when installed)."""

    key = "asyncio-msgpack"
    title = "asyncio+msgpack"

    def __init__(self, placement: Placement) -> None:
        super().__init__(placement)
        self.client: _NaiveClient | None = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if msgpack is None:
            return "msgpack is not installed (pip install rapidrpc[bench])"
        return None

    @classmethod
    def display_title(cls) -> str:
        return f"{loop_name(cls.uses_uvloop)}+msgpack"

    @classmethod
    def serve(cls) -> None:
        async def main() -> None:
            server = await asyncio.start_server(_serve_connection, "127.0.0.1", 0)
            announce(server.sockets[0].getsockname()[1])
            async with server:
                await server.serve_forever()

        exit_when_released()
        loop = new_event_loop(cls.uses_uvloop)
        loop.run_until_complete(main())

    async def connect(self, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self.client = _NaiveClient(reader, writer)

    async def disconnect(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None

    async def add(self) -> object:
        return await self.client.call("add", 1, 2)  # type: ignore[union-attr]

    async def echo_async(self, data: bytes) -> object:
        return await self.client.call("echo", data)  # type: ignore[union-attr]
