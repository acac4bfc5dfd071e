"""HOSTILE 33 and 34 on the blocking Client: reconnect backoff and throttled retries.

The reconnect backoff runs on an injected clock, so attempts are counted against the
schedule without sleeping; retry delays are made tiny so nothing waits for long.
"""

from __future__ import annotations

import threading

import pytest
from rpc_helpers import wait_until, wire_of

import rapidrpc
from rapidrpc import ConnectionLost, Unavailable
from rapidrpc.transport.resilience import Backoff, RetryBudget, RetryPolicy
from rapidrpc.wire import constants as C

FAST = RetryPolicy(initial=0.001, multiplier=2, max_delay=0.004)


class FakeClock:
    """A clock that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _hang_up(server, sock, proto) -> None:
    """Accept, then close at once: the client's handshake fails."""


def connect_fails(client: rapidrpc.Client, match: str | None = None) -> None:
    """A call that really tried to connect (not a fast failure inside the window)."""
    with pytest.raises(ConnectionLost, match=match) as info:
        client.call("echo", 1)
    assert "reconnecting in" not in str(info.value)


def test_reconnect_backoff_spaces_attempts_then_recovers(
    scripted_server, make_client, backend_name
) -> None:
    clock = FakeClock()
    backoff = Backoff(initial=1.0, multiplier=2.0, max_delay=8.0, jitter=0.0, clock=clock)
    down = scripted_server(_hang_up)
    host, port = down.address
    client = make_client(down.address, reconnect_backoff=backoff, connect_timeout=5)

    connect_fails(client)
    assert wait_until(lambda: down.connections == 1)
    for _ in range(50):  # inside the window: fail fast, no connection attempt
        with pytest.raises(ConnectionLost, match=r"reconnecting in 1\.0 s"):
            client.call("echo", 1)
    with pytest.raises(ConnectionLost, match=r"reconnecting in 1\.0 s"):
        client.call_async("echo", 1)
    clock.now += 0.75
    with pytest.raises(ConnectionLost, match=r"reconnecting in 0\.2 s"):
        client.call("echo", 1)
    assert down.connections == 1

    clock.now += 0.25  # the window is over: one new attempt, then a window twice as long
    connect_fails(client)
    assert wait_until(lambda: down.connections == 2)
    with pytest.raises(ConnectionLost, match=r"reconnecting in 2\.0 s"):
        client.call("echo", 1)

    down.close()  # now nothing listens: the connect itself is refused
    clock.now += 2.0
    connect_fails(client, "cannot connect")
    with pytest.raises(ConnectionLost, match=r"cannot connect.*reconnecting in 4\.0 s"):
        client.call("echo", 1)

    # The server comes back on the same port; the same client recovers after the window.
    server = rapidrpc.Server(host, port, backend=backend_name)
    server.register(lambda x: x, name="echo")
    server.start()
    try:
        with pytest.raises(ConnectionLost, match="reconnecting in"):
            client.call("echo", 1)
        clock.now += 4.0
        assert client.call("echo", 1) == 1
        assert backoff.failures == 0 and backoff.remaining() == 0.0  # success resets it
        assert client.call("echo", 2) == 2
    finally:
        client.close()
        server.stop()


def test_connection_refused_by_goaway_also_backs_off(scripted_server, make_client) -> None:
    def refuse(server, sock, proto) -> None:
        proto.refuse(rapidrpc.StatusCode.UNAVAILABLE, "full")
        sock.sendall(proto.data_to_send())

    clock = FakeClock()
    down = scripted_server(refuse)
    client = make_client(down.address, reconnect_backoff=Backoff(clock=clock))
    with pytest.raises(Unavailable, match="full"):
        client.call("echo", 1)
    with pytest.raises(ConnectionLost, match="reconnecting in"):
        client.call("echo", 1)
    assert down.connections == 1


@pytest.fixture
def unavailable_server(make_server):
    """A server whose ``down`` always answers UNAVAILABLE; ``calls`` counts handler runs."""
    server = make_server()
    calls: list[int] = []
    lock = threading.Lock()

    def down() -> None:
        with lock:
            calls.append(1)
        raise Unavailable("overloaded")

    flaky_left = [2]

    def flaky() -> str:
        with lock:
            calls.append(1)
            if flaky_left[0]:
                flaky_left[0] -= 1
                raise Unavailable("try again")
        return "done"

    server.register(down, name="down")
    server.register(flaky, name="flaky")
    server.calls = calls  # type: ignore[attr-defined]
    return server


def test_retry_budget_stops_a_retry_storm(unavailable_server, make_client) -> None:
    budget = RetryBudget(max_tokens=4, token_ratio=0.1)
    client = make_client(
        unavailable_server, idempotent_methods=["down"], retry=FAST, retry_budget=budget
    )
    failures: list[BaseException] = []

    def caller() -> None:
        for _ in range(5):
            try:
                client.down()
            except Unavailable as exc:
                failures.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(failures) == 40
    # 40 calls, a budget of 4 tokens allows retries only while more than 2 are left: 2 retries
    assert len(unavailable_server.calls) == 40 + 2


def test_idempotent_call_retried_until_it_succeeds(unavailable_server, make_client) -> None:
    budget = RetryBudget()
    client = make_client(
        unavailable_server, idempotent_methods={"flaky"}, retry=FAST, retry_budget=budget
    )
    assert client.flaky() == "done"
    assert len(unavailable_server.calls) == 3
    assert budget.tokens == pytest.approx(10 - 2 + 0.1)


def test_non_idempotent_calls_are_never_resent(unavailable_server, make_client) -> None:
    client = make_client(unavailable_server, idempotent_methods={"flaky"}, retry=FAST)
    for _ in range(5):
        with pytest.raises(Unavailable):
            client.down()
    assert len(unavailable_server.calls) == 5


def test_retries_stay_within_the_call_deadline(unavailable_server, make_client) -> None:
    slow = RetryPolicy(initial=1.0, max_delay=1.0)  # the first delay outlasts the deadline
    client = make_client(unavailable_server, idempotent_methods={"down"}, retry=slow)
    with pytest.raises(Unavailable):
        client.call("down", timeout=0.5)
    assert len(unavailable_server.calls) == 1


def test_idempotent_call_survives_a_lost_connection(scripted_server, make_client) -> None:
    """The first connection dies with the call in flight; the retry goes on a new one."""

    def script(server, sock, proto) -> None:
        server.handshake(sock, proto)
        sock.settimeout(5)
        while data := sock.recv(65536):
            for event in proto.receive_data(data):
                if event[0] != C.KIND_REQUEST:
                    continue
                server.events.append(event)
                if server.connections == 1:
                    return  # hang up with the call unanswered
                w = wire_of(server.backend_name)
                body = w["serializer"].dumps("second try")
                sock.sendall(w["framing"].encode_frame(C.KIND_RESPONSE, event[1], body))

    server = scripted_server(script)
    client = make_client(server.address, idempotent_methods={"get"}, retry=FAST)
    assert client.call("get", timeout=5) == "second try"
    assert server.connections == 2 and len(server.events) == 2
    client.close()  # frees the scripted server for the next client
    server.connections = 0
    other = make_client(server.address, retry=FAST)  # not idempotent: not re-sent
    with pytest.raises(ConnectionLost):
        other.call("put", timeout=5)
    assert server.connections == 1 and len(server.events) == 3
