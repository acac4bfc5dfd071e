"""The adapter shape every benchmarked system has.

A system starts its server in a child process (pinned to the server CPU), makes a client in
this process, and offers ``call_add()``, ``echo(data)``, sequential batches and
``run_inflight(k, n)``, then ``close()``.  Adding a system is one subclass of
:class:`SyncSystem` (blocking client) or :class:`AsyncSystem` (asyncio client) plus its
``serve()`` (the server side, run in the child) and one line in ``systems/__init__.py``.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable
from typing import Any, ClassVar

from ..affinity import Placement
from ..proc import ServerProcess, python_server_command
from ..stats import Batch
from ..timing import (
    FutureLike,
    run_async,
    timed_calls,
    timed_calls_async,
    timed_window,
    timed_window_async,
)
from ..workloads import Workload

ADD_RESULT = 3  # every system's add(1, 2)


class Unsupported(Exception):
    """The system has no sensible way to run this workload (the message says why)."""


class WrongResult(AssertionError):
    """A call returned something else than it should: the numbers would be meaningless."""


def check_result(system: str, got: object, expected: object) -> None:
    """Raises :class:`WrongResult` unless *got* equals *expected* (bytes-like compared as bytes)."""
    if isinstance(got, (bytearray, memoryview)):
        got = bytes(got)
    if got != expected:
        shown = got if not isinstance(got, bytes) else f"{len(got)} bytes"
        raise WrongResult(f"{system}: wrong result {shown!r}")


class System(abc.ABC):
    """One benchmarked RPC system: server child + client here."""

    key: ClassVar[str]  # stable id: pytest ids, `rpc.serve` argument, report rows
    title: ClassVar[str]  # shown in tables

    def __init__(self, placement: Placement) -> None:
        self.placement = placement
        self.server: ServerProcess | None = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this system can't run here (missing package…), or None when it can."""
        return None

    @classmethod
    def display_title(cls) -> str:
        """Title as shown in tables (may depend on what is installed, e.g. uvloop)."""
        return cls.title

    @classmethod
    def serve(cls) -> None:
        """Child side: run the server, :func:`~rpc.proc.announce` the port, serve until
        released.  Only Python systems have one; it runs in ``python -m rpc.serve KEY``."""
        raise NotImplementedError(f"{cls.key} has no Python server")

    def start_server(self) -> None:
        """Starts ``serve()`` in a child process pinned to the server CPU."""
        self.server = ServerProcess(
            python_server_command(self.key, self.placement.server_cpu), self.title
        )

    @abc.abstractmethod
    def start(self) -> None:
        """Starts the server child and connects the client."""

    @abc.abstractmethod
    def close(self) -> None:
        """Closes the client and stops the server child (safe to call more than once)."""

    @abc.abstractmethod
    def call_add(self) -> object:
        """One ``add(1, 2)`` call; returns its result."""

    @abc.abstractmethod
    def echo(self, data: bytes) -> bytes:
        """One bytes echo; returns what came back."""

    @abc.abstractmethod
    def run_sequential(self, workload: Workload, n: int) -> Batch:
        """*n* calls of *workload* one after the other, each timed; the last one is checked."""

    @abc.abstractmethod
    def run_inflight(self, k: int, n: int) -> Batch:
        """*n* ``add(1, 2)`` calls from one client with *k* in flight."""

    def run(self, workload: Workload, n: int) -> Batch:
        """One batch of *n* calls of *workload*."""
        if workload.inflight > 1:
            return self.run_inflight(workload.inflight, n)
        return self.run_sequential(workload, n)

    def verify(self) -> None:
        """Checks the system answers correctly before anything is measured."""
        check_result(self.key, self.call_add(), ADD_RESULT)
        data = bytes(range(256)) * 4
        check_result(self.key, self.echo(data), data)

    def _stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


class SyncSystem(System):
    """A system with a blocking client: subclasses return the callables, timing lives here."""

    @abc.abstractmethod
    def add_fn(self) -> Callable[[], object]:
        """A zero-argument callable making one ``add(1, 2)`` call."""

    @abc.abstractmethod
    def echo_fn(self, data: bytes) -> Callable[[], object]:
        """A zero-argument callable echoing *data* once."""

    def submit_add(self) -> FutureLike:
        """Starts one ``add(1, 2)`` without waiting; raise :class:`Unsupported` if impossible."""
        raise Unsupported(f"{self.title} has no concurrent calls on one client")

    def call_add(self) -> object:
        return self.add_fn()()

    def echo(self, data: bytes) -> bytes:
        return self.echo_fn(data)()  # type: ignore[return-value]

    def run_sequential(self, workload: Workload, n: int) -> Batch:
        if workload.is_add:
            batch, last = timed_calls(self.add_fn(), n)
            check_result(self.key, last, ADD_RESULT)
        else:
            body = workload.body()
            batch, last = timed_calls(self.echo_fn(body), n)
            check_result(self.key, last, body)
        return batch

    def run_inflight(self, k: int, n: int) -> Batch:
        self.submit_add().result(timeout=30)  # Unsupported surfaces here, before timing
        return timed_window(self.submit_add, k, n)


class AsyncSystem(System):
    """A system with an asyncio client, driven from this thread on its own event loop."""

    uses_uvloop: ClassVar[bool] = True  # run client (and server) on uvloop when installed

    def __init__(self, placement: Placement) -> None:
        super().__init__(placement)
        self.loop: asyncio.AbstractEventLoop | None = None

    @abc.abstractmethod
    async def connect(self, port: int) -> None:
        """Creates the client (runs on ``self.loop``)."""

    @abc.abstractmethod
    async def disconnect(self) -> None:
        """Closes the client (runs on ``self.loop``)."""

    @abc.abstractmethod
    async def add(self) -> object:
        """One ``add(1, 2)`` call."""

    @abc.abstractmethod
    async def echo_async(self, data: bytes) -> object:
        """One bytes echo."""

    def start(self) -> None:
        self.start_server()
        assert self.server is not None
        self.loop = new_event_loop(self.uses_uvloop)
        run_async(self.loop, self.connect(self.server.port))

    def close(self) -> None:
        if self.loop is not None:
            try:
                run_async(self.loop, self.disconnect())
            finally:
                self.loop.close()
                self.loop = None
        self._stop_server()

    def _run(self, coro: Any) -> Any:
        assert self.loop is not None, "start() first"
        return run_async(self.loop, coro)

    def call_add(self) -> object:
        return self._run(self.add())

    def echo(self, data: bytes) -> bytes:
        return self._run(self.echo_async(data))

    def run_sequential(self, workload: Workload, n: int) -> Batch:
        if workload.is_add:
            batch, last = self._run(timed_calls_async(self.add, n))
            check_result(self.key, last, ADD_RESULT)
        else:
            body = workload.body()
            batch, last = self._run(timed_calls_async(lambda: self.echo_async(body), n))
            check_result(self.key, last, body)
        return batch

    def run_inflight(self, k: int, n: int) -> Batch:
        return self._run(timed_window_async(self.add, k, n))


def uvloop_installed() -> bool:
    """True when uvloop can be imported."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def new_event_loop(prefer_uvloop: bool = True) -> asyncio.AbstractEventLoop:
    """A fresh event loop: uvloop's when asked for and installed, else asyncio's."""
    if prefer_uvloop and uvloop_installed():
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def loop_name(prefer_uvloop: bool = True) -> str:
    """``"uvloop"`` or ``"asyncio"``: which loop :func:`new_event_loop` gives."""
    return "uvloop" if prefer_uvloop and uvloop_installed() else "asyncio"
