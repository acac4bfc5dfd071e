"""HOSTILE 33 on ``rapidrpc.aio.Client``: reconnect backoff, then recovery on the same port.

The backoff runs on an injected clock, so attempts are counted against the schedule
without sleeping; the client runs on asyncio and uvloop.
"""

from __future__ import annotations

import aio_support
import pytest
from aio_support import wait_for_condition

from rapidrpc import ConnectionLost, aio
from rapidrpc.transport.resilience import Backoff

arun, loop_name, loops_warmed = aio_support.arun, aio_support.loop_name, aio_support.loops_warmed


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
