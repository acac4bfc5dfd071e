"""rapidrpc itself: Cython backend, pure-Python backend, and the asyncio face.

Written against the API of issue 3 (``rapidrpc.Server(host, port=0, backend=...)``,
``@server.export``, ``start()``/``address``/``stop()``; ``rapidrpc.Client("host:port")`` with
``client.add``, ``client.call``, ``client.call_async``; ``rapidrpc.aio.Server``/``Client``).
Until ``rapidrpc.Server`` exists these systems report "rapidrpc.Server not available yet".

The pure-Python system runs its server child with ``RAPIDRPC_PURE_PYTHON=1`` (what a user
without the extension gets); its client runs in the harness process and is asked for the
Python backend when ``Client`` takes a ``backend`` argument.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
from collections.abc import Callable
from typing import Any

from ..affinity import Placement
from ..proc import (
    ServerProcess,
    announce,
    exit_when_released,
    python_server_command,
    wait_for_release,
)
from ..stats import Batch
from ..timing import CALL_TIMEOUT_S, FutureLike, timed_map
from ..workloads import Workload
from .base import (
    ADD_RESULT,
    AsyncSystem,
    SyncSystem,
    Unsupported,
    check_result,
    loop_name,
    new_event_loop,
)

NOT_YET = "rapidrpc.Server not available yet"


def _server_missing() -> str | None:
    """NOT_YET while the package (still being built) has no Server/Client."""
    try:
        import rapidrpc
    except Exception:  # a half-built package can fail in many ways; all mean "not yet"
        return NOT_YET
    if not hasattr(rapidrpc, "Server") or not hasattr(rapidrpc, "Client"):
        return NOT_YET
    return None


def _export_handlers(server: Any) -> None:
    """The two methods every system serves."""

    @server.export
    def add(a: int, b: int) -> int:
        return a + b

    @server.export
    def echo(data: bytes) -> bytes:
        return data


async def _maybe_await(value: Any) -> Any:
    """The spec leaves open whether aio start/close are coroutines: accept both."""
    if inspect.isawaitable(value):
        return await value
    return value


class RapidrpcCython(SyncSystem):
    """rapidrpc's blocking client against its epoll server, Cython backend."""

    key = "rapidrpc-cython"
    title = "rapidrpc (Cython)"
    backend = "cython"

    def __init__(self, placement: Placement) -> None:
        super().__init__(placement)
        self.client: Any = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        missing = _server_missing()
        if missing or cls.backend != "cython":
            return missing
        import rapidrpc

        if rapidrpc.BACKEND != "cython":
            return f"the rapidrpc Cython backend is not loaded (BACKEND={rapidrpc.BACKEND!r})"
        return None

    @classmethod
    def serve(cls) -> None:
        import rapidrpc

        server = rapidrpc.Server("127.0.0.1", port=0, backend=cls.backend)
        _export_handlers(server)
        server.start()
        announce(server.address[1])
        wait_for_release()
        server.stop()

    def start_server(self) -> None:
        env = {"RAPIDRPC_PURE_PYTHON": "1"} if self.backend == "python" else {}
        self.server = ServerProcess(
            python_server_command(self.key, self.placement.server_cpu), self.title, env
        )

    def start(self) -> None:
        import rapidrpc

        self.start_server()
        assert self.server is not None
        kwargs: dict[str, Any] = {"timeout": CALL_TIMEOUT_S}
        if "backend" in inspect.signature(rapidrpc.Client).parameters:
            kwargs["backend"] = self.backend
        self.client = rapidrpc.Client(f"127.0.0.1:{self.server.port}", **kwargs)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        self._stop_server()

    def add_fn(self) -> Callable[[], object]:
        return functools.partial(self.client.add, 1, 2)

    def echo_fn(self, data: bytes) -> Callable[[], object]:
        return functools.partial(self.client.call, "echo", data)

    def submit_add(self) -> FutureLike:
        return self.client.call_async("add", 1, 2)

    def run_inflight(self, k: int, n: int) -> Batch:
        """*k* calls in flight through ``Client.map`` (ordered results, no Future each)."""
        twos = itertools.repeat(2)
        batch, last = timed_map(lambda ones: self.client.map("add", ones, twos, window=k), n)
        check_result(self.key, last, ADD_RESULT)
        return batch


class RapidrpcPython(RapidrpcCython):
    """The same, pure-Python backend (server child forced pure)."""

    key = "rapidrpc-python"
    title = "rapidrpc (pure Python)"
    backend = "python"


class RapidrpcCythonFutures(RapidrpcCython):
    """The Cython backend's ``call_async`` futures, driven like every other Future-based
    client here (a callback per completion lets the next call go)."""

    key = "rapidrpc-cython-futures"
    title = "rapidrpc (Cython, call_async)"

    def run(self, workload: Workload, n: int) -> Batch:
        if workload.inflight <= 1:
            raise Unsupported("measured only with calls in flight (see rapidrpc (Cython))")
        return SyncSystem.run_inflight(self, workload.inflight, n)


class RapidrpcAio(AsyncSystem):
    """``rapidrpc.aio`` client and server, on uvloop when installed."""

    key = "rapidrpc-aio"
    title = "rapidrpc aio"

    def __init__(self, placement: Placement) -> None:
        super().__init__(placement)
        self.client: Any = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        missing = _server_missing()
        if missing:
            return missing
        try:
            from rapidrpc import aio
        except ImportError:
            return "rapidrpc.aio not available yet"
        if not hasattr(aio, "Server") or not hasattr(aio, "Client"):
            return "rapidrpc.aio not available yet"
        return None

    @classmethod
    def display_title(cls) -> str:
        return f"rapidrpc aio ({loop_name(cls.uses_uvloop)})"

    @classmethod
    def serve(cls) -> None:
        from rapidrpc import aio

        async def main() -> None:
            server = aio.Server("127.0.0.1", port=0)
            _export_handlers(server)
            await _maybe_await(server.start())
            announce(server.address[1])
            await asyncio.Event().wait()  # serve until the process is released

        exit_when_released()
        new_event_loop(cls.uses_uvloop).run_until_complete(main())

    async def connect(self, port: int) -> None:
        from rapidrpc import aio

        self.client = aio.Client(f"127.0.0.1:{port}")

    async def disconnect(self) -> None:
        if self.client is not None:
            await _maybe_await(self.client.close())
            self.client = None

    async def add(self) -> object:
        return await self.client.add(1, 2)

    async def echo_async(self, data: bytes) -> object:
        return await self.client.call("echo", data)
