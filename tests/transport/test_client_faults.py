"""The blocking client under faults: killed, silent, lying and restarting servers.

HOSTILE.md 25-27, 29-31, 33 (reconnect on demand; backoff and retry budgets belong to the
discovery layer) and 35, plus fork safety.  Scripted servers play the peers a real
rapidrpc.Server never is; each test runs on both wire backends.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from rpc_helpers import wait_until

import rapidrpc
from rapidrpc import ConnectionLost, DeadlineExceeded
from rapidrpc.transport.blocking import BlockingConnection
from rapidrpc.wire import constants as C

_SLEEPY_SERVER = textwrap.dedent(
    """
    import sys, time, rapidrpc
    server = rapidrpc.Server(backend=sys.argv[1])
    server.register(lambda t: (time.sleep(t), t)[1], name="sleep", blocking=True)
    server.register(lambda: "ok", name="ok")
    print(server.address[1], flush=True)
    server.serve_forever()
    """
)


def test_killed_server_fails_pending_calls_promptly(make_client, backend_name) -> None:
    """HOSTILE 29: pending calls fail with ConnectionLost at once, not at their deadline."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLEEPY_SERVER, backend_name], stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(proc.stdout.readline())
        client = make_client(("127.0.0.1", port), timeout=30)
        assert client.ok() == "ok"
        futures = [client.call_async("sleep", 20) for _ in range(3)]
        outcome: list[BaseException] = []

        def sync_call() -> None:
            try:
                client.sleep(20)
            except BaseException as exc:
                outcome.append(exc)

        waiter = threading.Thread(target=sync_call)
        waiter.start()
        time.sleep(0.2)
        killed_at = time.monotonic()
        proc.kill()
        for future in futures:
            with pytest.raises(ConnectionLost):
                future.result(5)
        waiter.join(5)
        assert [type(e) for e in outcome] == [ConnectionLost]
        assert time.monotonic() - killed_at < 1.5
        with pytest.raises(ConnectionLost):  # reconnect on demand: nobody is there
            client.ok()
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()


def test_reconnect_on_demand_never_resends(make_server, make_client, backend_name) -> None:
    """HOSTILE 29/33: a call in flight when the server goes away fails (not re-sent); the
    next call reconnects to whoever listens on the address now."""
    first = make_server()
    runs: list[str] = []
    started = threading.Event()

    def charge(tag):
        runs.append(tag)
        started.set()
        time.sleep(0.5)
        return tag

    first.register(charge, name="charge", blocking=True)
    client = make_client(first)
    future = client.call_async("charge", "once")
    assert started.wait(5)
    first.stop(grace=0)
    with pytest.raises(ConnectionLost):
        future.result(5)
    second = rapidrpc.Server(*first.address, backend=backend_name)
    second_runs: list[str] = []
    second.register(lambda tag: (second_runs.append(tag), tag)[1], name="charge")
    second.start()
    try:
        assert client.charge("next") == "next"
        assert second_runs == ["next"]  # "once" was never sent again
        assert wait_until(lambda: runs == ["once"])
    finally:
        second.stop(grace=0)


def test_goaway_while_idle_is_transparent(make_server, make_client, backend_name) -> None:
    """A server that restarts between two calls: the client notices the goaway and uses
    a new connection; the caller sees nothing."""
    first = make_server()
    first.register(lambda: 1, name="which")
    client = make_client(first)
    assert client.which() == 1
    address = first.address
    first.stop(grace=1)
    second = rapidrpc.Server(*address, backend=backend_name)
    second.register(lambda: 2, name="which")
    second.start()
    try:
        assert client.which() == 2
    finally:
        second.stop(grace=0)


def _silent(server, sock, proto) -> None:
    """Handshake, then read forever without answering calls or pings."""
    server.handshake(sock, proto)
    server.read_events(sock, proto, 10, answer=False)


def test_deadline_with_a_silent_server(scripted_server, make_client) -> None:
    """HOSTILE 27: DeadlineExceeded on time, and the server is told to cancel."""
    server = scripted_server(_silent)
    client = make_client(server.address)
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        client.call("anything", 1, timeout=0.3)
    elapsed = time.monotonic() - start
    assert 0.25 < elapsed < 1.0
    assert wait_until(lambda: (C.KIND_CANCEL, 1) in server.events)
    future = client.call_async("anything", 2, timeout=0.3)
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        future.result(5)
    assert time.monotonic() - start < 1.0


def test_half_open_connection_detected_by_keepalive(scripted_server, make_client) -> None:
    """HOSTILE 31: a server that vanished without a FIN: pings go unanswered, calls fail."""
    server = scripted_server(_silent)
    client = make_client(server.address, keepalive=0.2)
    start = time.monotonic()
    with pytest.raises(ConnectionLost, match="keepalive"):
        client.call("anything")  # no deadline: only the keepalive can end this
    assert time.monotonic() - start < 2.0


def _reply_script(*replies_for):
    """A server answering the first request with the raw bytes ``replies_for(rid)``."""

    def script(server, sock, proto) -> None:
        server.handshake(sock, proto)
        sock.settimeout(5)
        while True:
            data = sock.recv(65536)
            if not data:
                return
            for event in proto.receive_data(data):
                server.events.append(event)
                if event[0] == C.KIND_REQUEST:
                    for make in replies_for:
                        sock.sendall(make(server, proto, event[1]))
                    if getattr(script, "close_after", False):
                        return

    return script


def _frame(server, kind: int, rid: int, value) -> bytes:
    from rpc_helpers import wire_of

    w = wire_of(server.backend_name)
    return w["framing"].encode_frame(kind, rid, w["serializer"].dumps(value))


def test_unknown_and_duplicate_reply_ids_are_dropped(scripted_server, make_client) -> None:
    """HOSTILE 25: never a misrouted result."""
    server = scripted_server(
        _reply_script(
            lambda s, p, rid: _frame(s, C.KIND_RESPONSE, rid + 1000, "bogus"),
            lambda s, p, rid: _frame(s, C.KIND_RESPONSE, rid, f"right {rid}"),
            lambda s, p, rid: _frame(s, C.KIND_RESPONSE, rid, "duplicate"),
        )
    )
    client = make_client(server.address)
    assert client.call("f") == "right 1"
    assert client.call("f") == "right 2"
    assert wait_until(lambda: client._conn.proto.dropped_replies == 4)


def test_oversized_reply_refused_by_the_client(scripted_server, make_client) -> None:
    """HOSTILE 35: the client enforces its own frame limit, from the header."""
    header = struct.pack(">IBBHI", 10 * 1024 * 1024, C.KIND_RESPONSE, 0, 0, 1)
    server = scripted_server(_reply_script(lambda s, p, rid: header))
    client = make_client(server.address, max_frame_size=64 * 1024)
    with pytest.raises(ConnectionLost, match="65536"):
        client.call("f", timeout=5)


def test_malformed_reply_is_a_connection_error(scripted_server, make_client) -> None:
    bad_error = lambda s, p, rid: _frame(s, C.KIND_ERROR, rid, ["not", "an", "error"])  # noqa: E731
    server = scripted_server(_reply_script(bad_error))
    client = make_client(server.address)
    with pytest.raises(ConnectionLost, match="protocol error"):
        client.call("f", timeout=5)


def test_reset_mid_reply_is_never_a_truncated_result(scripted_server, make_client) -> None:
    """HOSTILE 30: half a reply, then a reset."""

    def half_then_reset(server, sock, proto):
        server.handshake(sock, proto)
        sock.settimeout(5)
        list(proto.receive_data(sock.recv(65536)))
        frame = _frame(server, C.KIND_RESPONSE, 1, b"x" * 10000)
        sock.sendall(frame[: len(frame) // 2])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    server = scripted_server(half_then_reset)
    client = make_client(server.address)
    with pytest.raises(ConnectionLost):
        client.call("f", timeout=5)


def test_not_a_rapidrpc_server(scripted_server, make_client) -> None:
    def http(server, sock, proto):
        sock.recv(100)
        sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    server = scripted_server(http)
    with pytest.raises(ConnectionLost, match="not a rapidrpc server"):
        make_client(server.address).call("f")


def test_connection_refused(make_client) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(ConnectionLost, match="cannot connect"):
            make_client(("127.0.0.1", port)).call("f")


def test_request_ids_never_wrap(make_server, make_client, monkeypatch) -> None:
    """HOSTILE 26: before the id counter would wrap, the client uses a new connection."""
    monkeypatch.setattr(BlockingConnection, "MAX_REQUEST_ID", 5)
    server = make_server()
    server.register(lambda x: x, name="echo")
    client = make_client(server)
    assert [client.echo(i) for i in range(12)] == list(range(12))
    assert server.stats["accepted"] == 3  # ids 1-5, 1-5 again on a new connection, 1-2
    assert wait_until(lambda: server.connection_count == 1)  # retired ones were closed
    futures = [client.call_async("echo", i) for i in range(12)]
    assert [f.result(5) for f in futures] == list(range(12))


def test_cancelling_a_future_cancels_the_call(make_server, make_client) -> None:
    server = make_server()
    gate = threading.Event()
    server.register(lambda: gate.wait(5), name="wait", blocking=True)
    server.register(lambda: "ok", name="ok")
    client = make_client(server)
    future = client.call_async("wait")
    assert future.cancel()
    gate.set()
    assert client.ok() == "ok"
    assert client._conn.proto.pending == 0


def test_closed_client_refuses_calls(make_server, make_client) -> None:
    server = make_server()
    server.register(lambda: 1, name="one")
    with make_client(server) as client:
        assert client.one() == 1
    with pytest.raises(RuntimeError, match="closed"):
        client.one()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_safety(make_server, make_client) -> None:
    """A Client used in a forked child opens its own connection; the parent's is untouched."""
    server = make_server()
    server.register(lambda x: x * 2, name="double")
    client = make_client(server)
    assert client.double(1) == 2
    parent_conn = client._conn
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            code = 0 if [client.double(i) for i in range(50)] == [2 * i for i in range(50)] else 2
            client.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert client.double(21) == 42
    assert client._conn is parent_conn
    assert server.stats["accepted"] == 2
