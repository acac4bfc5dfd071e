"""Timed call loops shared by every Python client: bounded in count and in time.

Each loop takes one clock reading per call (the end of one call is the start of the next), so
the per-call cost of measuring is a clock read and a list store, the same for every system.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from time import perf_counter_ns
from typing import Any, Protocol, TypeVar

from .stats import Batch

BATCH_TIMEOUT_S = 120.0  # no batch may run longer, whatever the system does
CALL_TIMEOUT_S = 30.0  # every client call carries this timeout (the slowest call takes ~0.1 s)

T = TypeVar("T")


class BenchTimeout(TimeoutError):
    """A batch ran past :data:`BATCH_TIMEOUT_S`."""


class FutureLike(Protocol):
    """What ``concurrent.futures.Future`` and ``grpc.Future`` have in common here."""

    def add_done_callback(self, fn: Callable[[Any], object]) -> None: ...

    def result(self, timeout: float | None = None) -> Any: ...


def timed_calls(fn: Callable[[], T], n: int) -> tuple[Batch, T]:
    """Calls *fn* *n* times in a row; returns the batch and the last result (for checking)."""
    lat = [0] * n
    limit = perf_counter_ns() + int(BATCH_TIMEOUT_S * 1e9)
    result: Any = None
    start = t0 = perf_counter_ns()
    for i in range(n):
        result = fn()
        t1 = perf_counter_ns()
        lat[i] = t1 - t0
        t0 = t1
        if t1 > limit:
            raise BenchTimeout(f"{n} calls took more than {BATCH_TIMEOUT_S} s")
    return Batch(n, (t0 - start) / 1e9, lat), result


def timed_window(submit: Callable[[], FutureLike], k: int, n: int) -> Batch:
    """*n* calls with *k* in flight: each completion (on any thread) lets the next one go."""
    slots = threading.Semaphore(k)
    finished = threading.Event()
    lock = threading.Lock()
    lat: list[int] = []
    errors: list[BaseException] = []
    pending = [n]

    def on_done(fut: FutureLike, t0: int) -> None:
        t1 = perf_counter_ns()
        try:
            fut.result(timeout=0)
        except BaseException as exc:  # recorded and re-raised by the caller
            errors.append(exc)
        with lock:
            lat.append(t1 - t0)
            pending[0] -= 1
            if pending[0] == 0:
                finished.set()
        slots.release()

    deadline = perf_counter_ns() + int(BATCH_TIMEOUT_S * 1e9)
    start = perf_counter_ns()
    for _ in range(n):
        if not slots.acquire(timeout=max(0.0, (deadline - perf_counter_ns()) / 1e9)):
            raise BenchTimeout(f"no call finished within {BATCH_TIMEOUT_S} s")
        if errors:
            break
        t0 = perf_counter_ns()
        submit().add_done_callback(lambda fut, t0=t0: on_done(fut, t0))
    if not errors and not finished.wait(max(0.0, (deadline - perf_counter_ns()) / 1e9)):
        raise BenchTimeout(f"{n} calls with {k} in flight took more than {BATCH_TIMEOUT_S} s")
    if errors:
        raise errors[0]
    return Batch(n, (perf_counter_ns() - start) / 1e9, lat)


def timed_map(run_map: Callable[[Iterable[int]], Iterable[object]], n: int) -> tuple[Batch, object]:
    """*n* calls through a client's ordered map (``run_map(first_args) -> results``).

    The map pulls an argument when it sends that call, so the argument iterator stamps the
    send time; each call's latency runs from there to its result.  Returns the batch and
    the last result (for checking).
    """
    sent: list[int] = []
    stamp = sent.append

    def first_args() -> Iterator[int]:
        for _ in range(n):
            stamp(perf_counter_ns())
            yield 1

    lat = [0] * n
    limit = perf_counter_ns() + int(BATCH_TIMEOUT_S * 1e9)
    last: object = None
    i = 0
    start = perf_counter_ns()
    for item in run_map(first_args()):
        t1 = perf_counter_ns()
        last = item
        lat[i] = t1 - sent[i]
        i += 1
        if t1 > limit:
            raise BenchTimeout(f"{n} calls took more than {BATCH_TIMEOUT_S} s")
    if i != n:
        raise BenchTimeout(f"the map ended after {i} of {n} results")
    return Batch(n, (perf_counter_ns() - start) / 1e9, lat), last


async def timed_calls_async(fn: Callable[[], Awaitable[T]], n: int) -> tuple[Batch, T]:
    """Async twin of :func:`timed_calls`."""
    lat = [0] * n
    limit = perf_counter_ns() + int(BATCH_TIMEOUT_S * 1e9)
    result: Any = None
    start = t0 = perf_counter_ns()
    for i in range(n):
        result = await fn()
        t1 = perf_counter_ns()
        lat[i] = t1 - t0
        t0 = t1
        if t1 > limit:
            raise BenchTimeout(f"{n} calls took more than {BATCH_TIMEOUT_S} s")
    return Batch(n, (t0 - start) / 1e9, lat), result


async def timed_window_async(fn: Callable[[], Awaitable[object]], k: int, n: int) -> Batch:
    """*n* calls from *k* concurrent tasks on one client: always *k* in flight until the end."""
    lat: list[int] = []
    left = [n]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            t0 = perf_counter_ns()
            await fn()
            lat.append(perf_counter_ns() - t0)

    start = perf_counter_ns()
    try:
        await asyncio.wait_for(
            asyncio.gather(*(worker() for _ in range(min(k, n)))), BATCH_TIMEOUT_S
        )
    except asyncio.TimeoutError:
        raise BenchTimeout(
            f"{n} calls with {k} in flight took more than {BATCH_TIMEOUT_S} s"
        ) from None
    return Batch(n, (perf_counter_ns() - start) / 1e9, lat)


def run_async(loop: asyncio.AbstractEventLoop, coro: Awaitable[T]) -> T:
    """Runs *coro* on *loop*, bounded by :data:`BATCH_TIMEOUT_S` (plus a little slack)."""
    return loop.run_until_complete(asyncio.wait_for(coro, BATCH_TIMEOUT_S + 5))
