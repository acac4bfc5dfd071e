"""HOSTILE 33 on ``rapidrpc.aio.Client``: reconnect backoff, then recovery on the same port.

The backoff runs on an injected clock, so attempts are counted against the schedule
without sleeping; the client runs on asyncio and uvloop.
"""

from __future__ import annotations

import asyncio

import aio_support
import pytest
import test_client_resilience
from aio_support import wait_for_condition

from rapidrpc import ConnectionLost, Unavailable, aio
from rapidrpc.transport.resilience import Backoff, RetryBudget, RetryPolicy

arun, loop_name, loops_warmed = aio_support.arun, aio_support.loop_name, aio_support.loops_warmed
# The blocking client's retry fixture and policy (pytest finds fixtures by module attribute).
unavailable_server = test_client_resilience.unavailable_server
FAST = test_client_resilience.FAST


class FakeClock:
    """A clock that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _hang_up(server, sock, proto) -> None:
    """Accept, then close at once: the client's handshake fails."""


async def attempt(client: aio.Client) -> str:
    """Make one call that must fail; its message."""
    with pytest.raises(ConnectionLost) as info:
        await client.call("echo", 1)
    return str(info.value)


def test_reconnect_backoff_spaces_attempts_then_recovers(
    arun, scripted_server, backend_name, loop_name
) -> None:
    clock = FakeClock()
    backoff = Backoff(initial=1.0, multiplier=2.0, max_delay=8.0, jitter=0.0, clock=clock)
    down = scripted_server(_hang_up)
    host, port = down.address

    async def failing_phase(client: aio.Client) -> None:
        assert "reconnecting" not in await attempt(client)
        assert await wait_for_condition(lambda: down.connections == 1)
        for _ in range(20):  # inside the window: fail fast, no connection attempt
            assert "reconnecting in 1.0 s" in await attempt(client)
        clock.now += 1.0
        assert "reconnecting" not in await attempt(client)
        assert await wait_for_condition(lambda: down.connections == 2)
        assert "reconnecting in 2.0 s" in await attempt(client)

    async def recovery_phase(client: aio.Client) -> None:
        clock.now += 2.0
        message = await attempt(client)  # nothing listens now: refused
        assert "cannot connect" in message and "reconnecting" not in message
        assert "reconnecting in 4.0 s" in await attempt(client)
        server = aio.Server(host, port, backend=backend_name)
        server.register(lambda x: x, name="echo")
        await server.start()
        try:
            assert "reconnecting in" in await attempt(client)
            clock.now += 4.0
            assert await client.call("echo", 1) == 1
            assert backoff.failures == 0 and backoff.remaining() == 0.0
        finally:
            await server.stop(0)

    async def main() -> None:
        client = aio.Client((host, port), backend=backend_name, reconnect_backoff=backoff)
        try:
            await failing_phase(client)
            down.close()
            await recovery_phase(client)
        finally:
            await client.close()

    arun(main())


# --- retries of idempotent methods (HOSTILE 34), as in the blocking client ---------------------


def _aio_client(server, backend_name: str, **kw) -> aio.Client:
    return aio.Client(server.address, backend=backend_name, **kw)


def test_aio_idempotent_call_retried_until_it_succeeds(
    unavailable_server, backend_name, arun
) -> None:
    budget = RetryBudget()

    async def main() -> str:
        async with _aio_client(
            unavailable_server,
            backend_name,
            idempotent_methods={"flaky"},
            retry=FAST,
            retry_budget=budget,
        ) as client:
            return await client.flaky()

    assert arun(main()) == "done"
    assert len(unavailable_server.calls) == 3
    assert budget.tokens == pytest.approx(10 - 2 + 0.1)


def test_aio_non_idempotent_calls_are_never_resent(unavailable_server, backend_name, arun):
    async def main() -> int:
        failures = 0
        async with _aio_client(
            unavailable_server, backend_name, idempotent_methods={"flaky"}, retry=FAST
        ) as client:
            for _ in range(5):
                with pytest.raises(Unavailable):
                    await client.down()
                failures += 1
        return failures

    assert arun(main()) == 5
    assert len(unavailable_server.calls) == 5


def test_aio_retries_stay_within_the_call_deadline(unavailable_server, backend_name, arun):
    slow = RetryPolicy(initial=1.0, max_delay=1.0)  # the first delay outlasts the deadline

    async def main() -> None:
        async with _aio_client(
            unavailable_server, backend_name, idempotent_methods={"down"}, retry=slow
        ) as client:
            with pytest.raises(Unavailable):
                await client.call("down", timeout=0.5)

    arun(main())
    assert len(unavailable_server.calls) == 1


def test_aio_retry_budget_stops_a_retry_storm(unavailable_server, backend_name, arun) -> None:
    budget = RetryBudget(max_tokens=4, token_ratio=0.1)

    async def main() -> int:
        async with _aio_client(
            unavailable_server,
            backend_name,
            idempotent_methods=["down"],
            retry=FAST,
            retry_budget=budget,
        ) as client:

            async def caller() -> int:
                failed = 0
                for _ in range(5):
                    try:
                        await client.down()
                    except Unavailable:
                        failed += 1
                return failed

            return sum(await asyncio.gather(*(caller() for _ in range(8))))

    assert arun(main()) == 40
    # 40 calls, a budget of 4 tokens allows retries only while more than 2 are left: 2 retries
    assert len(unavailable_server.calls) == 40 + 2
