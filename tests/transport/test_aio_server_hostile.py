"""HOSTILE.md cases for the asyncio server: raw sockets playing bad clients.

The server runs on its own thread (asyncio or uvloop, each wire backend); the peers are
blocking sockets in the test thread.  Each case checks the behaviour and that a
well-behaved client is unaffected; the leak guard checks threads and fds.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import aio_support
import pytest
from aio_support import cancel_frame, replies, request_frame
from rpc_helpers import BAD_FRAMES, NON_NATIVE_INPUTS, header, wait_until, wire_of

from rapidrpc import StatusCode
from rapidrpc.core.protocol import ClientConnection
from rapidrpc.wire import constants as C

REQ, RESP, ERR = C.KIND_REQUEST, C.KIND_RESPONSE, C.KIND_ERROR

# The shared fixtures (pytest finds fixtures by module attribute).
aio_server, loop_name, loops_warmed = (
    aio_support.aio_server,
    aio_support.loop_name,
    aio_support.loops_warmed,
)


@pytest.fixture
def echo_server(aio_server):
    server = aio_server(start=False, handshake_timeout=5, frame_timeout=5)
    calls: list[object] = []
    server.server.register(lambda *a: (calls.append(a), list(a))[1], name="echo")
    server.calls = calls  # type: ignore[attr-defined]
    return server.start()


def assert_still_serving(server, make_client) -> None:
    client = make_client(server.address)
    assert client.echo(1, "x") == [1, "x"]
    client.close()


# --- HOSTILE 6: garbage, HTTP, TLS on the native port --------------------------------------


@pytest.mark.parametrize("data", NON_NATIVE_INPUTS)
def test_non_native_bytes_are_refused_at_once(echo_server, make_client, data) -> None:
    sock = socket.create_connection(echo_server.address, timeout=5)
    with sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # the server may reset us mid-send: that is a refusal too
        try:
            first = sock.recv(100)
        except ConnectionResetError:
            first = b""
        assert first == b""  # nothing is said to a non-native peer; it is just closed
    assert wait_until(lambda: echo_server.stats["protocol_errors"] == 1)
    assert echo_server.calls == []
    assert_still_serving(echo_server, make_client)


# --- HOSTILE 1 and 2: bad headers after the handshake ------------------------------------


@pytest.mark.parametrize("data", BAD_FRAMES)
def test_bad_frame_gets_goaway_then_close(echo_server, raw_peer, make_client, data) -> None:
    peer = raw_peer(echo_server.address)
    peer.sock.sendall(data)  # (the header alone: no body byte is awaited for a bad length)
    events = peer.proto.receive_data(peer.recv_some())
    assert [e[0] for e in events] == [C.KIND_GOAWAY]
    assert events[0][2] == StatusCode.INTERNAL
    assert peer.closed_by_peer(5)
    assert echo_server.stats["protocol_errors"] == 1
    assert_still_serving(echo_server, make_client)


def test_malformed_envelope_keeps_the_connection(echo_server, raw_peer, backend_name) -> None:
    """HOSTILE 23: a request of the wrong shape is an error reply, not a disconnect."""
    w = wire_of(backend_name)
    peer = raw_peer(echo_server.address)
    bad = w["framing"].encode_frame(REQ, 1, w["serializer"].dumps({"not": "a list"}))
    peer.sock.sendall(bad + request_frame(backend_name, 2, "echo", 5))
    [(kind, rid, body), second] = replies(peer, 2)
    assert (kind, rid, body[0]) == (ERR, 1, StatusCode.INVALID_ARGUMENT)
    assert second == (RESP, 2, [5])


# --- HOSTILE 3 and 4: partial frames, 1-byte pieces --------------------------------------


def test_peer_closing_mid_frame_runs_nothing(echo_server, raw_peer, make_client) -> None:
    peer = raw_peer(echo_server.address)
    frame = request_frame("python", 1, "echo", "x" * 100)
    peer.sock.sendall(frame[:-10])
    time.sleep(0.05)
    peer.close()
    assert wait_until(lambda: echo_server.connection_count == 0)
    assert echo_server.calls == []
    assert_still_serving(echo_server, make_client)


def test_one_byte_pieces(echo_server, raw_peer, backend_name) -> None:
    peer = raw_peer(echo_server.address)
    peer.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = request_frame(backend_name, 1, "echo", "é" * 3) + request_frame(backend_name, 2, "echo")
    for i in range(len(data)):
        peer.sock.send(data[i : i + 1])
        if i % 7 == 0:
            time.sleep(0.001)  # let some pieces arrive alone
    assert replies(peer, 2) == [(RESP, 1, ["ééé"]), (RESP, 2, [])]


# --- HOSTILE 5: thousands of pipelined frames ---------------------------------------------


def test_ten_thousand_pipelined_frames_in_one_write(echo_server, raw_peer, backend_name) -> None:
    peer = raw_peer(echo_server.address)
    n = 10**4
    peer.sock.sendall(b"".join(request_frame(backend_name, i, "echo", i) for i in range(1, n + 1)))
    assert replies(peer, n, timeout=60) == [(RESP, i, [i]) for i in range(1, n + 1)]


def test_backpressure_pauses_and_resumes_a_slow_reader(aio_server, raw_peer, backend_name) -> None:
    """Replies far beyond the high-water mark: the server stops reading the peer while it
    does not read, and serves every request, in order, once it does."""
    server = aio_server(start=False, max_frame_size=256 * 1024)  # high water 256 KiB
    server.server.register(lambda n: b"r" * n, name="blob")
    server.start()
    peer = raw_peer(server.address)
    n = 120  # 120 x 64 KiB = 7.5 MiB of replies
    frames = b"".join(request_frame(backend_name, i, "blob", 64 * 1024) for i in range(1, n + 1))
    sender = threading.Thread(target=peer.sock.sendall, args=(frames,))
    sender.start()
    time.sleep(0.3)  # not reading: the server must pause instead of buffering it all
    got = replies(peer, n, timeout=30)
    sender.join(10)
    assert [(k, r) for k, r, _ in got] == [(RESP, i) for i in range(1, n + 1)]
    assert all(body == b"r" * 65536 for _, _, body in got)


# --- HOSTILE 28: in-flight cap, cancel-then-resend ------------------------------------------


def test_inflight_cap_counts_cancelled_calls_until_they_end(aio_server, raw_peer, backend_name):
    server = aio_server(start=False, max_inflight=2)
    gate_holder: list[asyncio.Event] = []
    cancelled: list[int] = []

    async def hold(tag):
        if not gate_holder:
            gate_holder.append(asyncio.Event())
        try:
            await gate_holder[0].wait()
        except asyncio.CancelledError:
            cancelled.append(tag)
            await asyncio.sleep(0.2)  # still running after the cancel: still counted
            raise
        return tag

    server.server.register(hold)
    server.start()
    peer = raw_peer(server.address)
    send = peer.sock.sendall
    send(request_frame(backend_name, 1, "hold", 1) + request_frame(backend_name, 2, "hold", 2))
    send(request_frame(backend_name, 3, "hold", 3))
    [(kind, rid, body)] = replies(peer, 1)
    assert (kind, rid, body[0]) == (ERR, 3, StatusCode.RESOURCE_EXHAUSTED)
    # Rapid reset: cancel a running call, send another at once: still refused.
    send(cancel_frame(backend_name, 1) + request_frame(backend_name, 4, "hold", 4))
    [(kind, rid, body)] = replies(peer, 1)
    assert (kind, rid, body[0]) == (ERR, 4, StatusCode.RESOURCE_EXHAUSTED)
    assert wait_until(lambda: cancelled == [1])
    # Once the cancelled handler has really ended, its slot is free (and it sent nothing).
    rid, got = admitted_after_refusals(peer, backend_name, "hold", first_rid=5)
    assert got == []  # admitted: it waits for the gate like call 2
    server.soon(lambda: gate_holder[0].set())
    assert sorted(replies(peer, 2)) == [(RESP, 2, 2), (RESP, rid, rid)]


def admitted_after_refusals(peer, backend_name: str, method: str, first_rid: int):
    """Send *method* calls (argument: their id) until one is not refused for the in-flight
    limit; return its id and the frames already received for it (bounded: 100 tries)."""
    for rid in range(first_rid, first_rid + 100):
        peer.sock.sendall(request_frame(backend_name, rid, method, rid))
        try:
            got = replies(peer, 1, timeout=0.05)
        except TimeoutError:
            got = []
        if not got:
            return rid, []  # admitted and still running
        [(kind, got_rid, body)] = got
        assert got_rid == rid
        if kind != ERR or body[0] != StatusCode.RESOURCE_EXHAUSTED:
            return rid, got
        time.sleep(0.02)
    raise AssertionError("the in-flight slot never freed")


def test_cancel_of_a_blocking_call_still_counts(aio_server, raw_peer, backend_name) -> None:
    server = aio_server(start=False, max_inflight=1)
    gate = threading.Event()
    server.server.register(lambda _tag=None: gate.wait(5) and "done", name="wait", blocking=True)
    server.start()
    peer = raw_peer(server.address)
    peer.sock.sendall(request_frame(backend_name, 1, "wait") + cancel_frame(backend_name, 1))
    peer.sock.sendall(request_frame(backend_name, 2, "wait"))
    [(kind, rid, body)] = replies(peer, 1)
    assert (kind, rid, body[0]) == (ERR, 2, StatusCode.RESOURCE_EXHAUSTED)
    gate.set()  # call 1 ends: its reply is dropped (cancelled), the slot frees
    rid, got = admitted_after_refusals(peer, backend_name, "wait", first_rid=3)
    assert (got or replies(peer, 1)) == [(RESP, rid, "done")]


# --- HOSTILE 27: deadlines on the server ----------------------------------------------------


def test_deadlines_on_the_server(aio_server, raw_peer, backend_name) -> None:
    server = aio_server(start=False)
    runs: list[str] = []
    outcome: list[str] = []

    def plain():
        runs.append("plain")
        return "plain"

    async def forever():
        runs.append("forever")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    server.server.register(plain)
    server.server.register(forever)
    server.start()
    peer = raw_peer(server.address)
    # An already expired deadline: answered without running the handler.
    peer.sock.sendall(request_frame(backend_name, 1, "plain", meta={"timeout": 0}))
    [(kind, rid, body)] = replies(peer, 1)
    assert (kind, rid, body[0]) == (ERR, 1, StatusCode.DEADLINE_EXCEEDED)
    # An async handler past its deadline is cancelled and answered DEADLINE_EXCEEDED.
    peer.sock.sendall(request_frame(backend_name, 2, "forever", meta={"timeout": 0.1}))
    [(kind, rid, body)] = replies(peer, 1)
    assert (kind, rid, body[0]) == (ERR, 2, StatusCode.DEADLINE_EXCEEDED)
    assert outcome == ["cancelled"] and runs == ["forever"]


def test_cancel_frame_cancels_an_async_handler(aio_server, raw_peer, backend_name) -> None:
    server = aio_server(start=False)
    outcome: list[str] = []

    async def forever():
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    server.server.register(forever)
    server.server.register(lambda: "pong", name="ping")
    server.start()
    peer = raw_peer(server.address)
    peer.sock.sendall(request_frame(backend_name, 1, "forever"))
    time.sleep(0.05)
    peer.sock.sendall(cancel_frame(backend_name, 1) + request_frame(backend_name, 2, "ping"))
    assert replies(peer, 1) == [(RESP, 2, "pong")]  # nothing for the cancelled call
    assert wait_until(lambda: outcome == ["cancelled"])
    with pytest.raises(TimeoutError):
        peer.recv_some(0.2)


# --- HOSTILE 7: slowloris, and a silent first contact -----------------------------------


def test_slowloris_header_closed_by_frame_deadline(aio_server, raw_peer) -> None:
    server = aio_server(frame_timeout=0.3)
    peer = raw_peer(server.address)
    for byte in header(100, REQ)[:6]:  # one byte every 0.1 s, never a whole frame
        try:
            peer.sock.send(bytes([byte]))
        except OSError:
            break
        time.sleep(0.1)
    assert peer.closed_by_peer(5)
    assert wait_until(lambda: server.connection_count == 0)


def test_silent_connection_closed_by_handshake_deadline(aio_server) -> None:
    server = aio_server(handshake_timeout=0.2)
    with socket.create_connection(server.address, timeout=5) as sock:
        assert sock.recv(100) == b""  # never said a word: closed, nothing said
    assert wait_until(lambda: server.connection_count == 0)


# --- HOSTILE 8: a client that never reads its replies ---------------------------------------


def test_client_that_never_reads_is_closed(aio_server, raw_peer, backend_name, make_client):
    server = aio_server(start=False, frame_timeout=0.3, max_frame_size=128 * 1024)
    server.server.register(lambda n: b"z" * n, name="blob")
    server.start()
    peer = raw_peer(server.address)
    peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    frames = b"".join(request_frame(backend_name, i, "blob", 100_000) for i in range(1, 400))

    def flood() -> None:
        try:
            peer.sock.sendall(frames)
        except OSError:
            pass  # the server closed us: expected

    sender = threading.Thread(target=flood)
    sender.start()
    # The server pauses reading, then gives up on a peer whose replies make no progress.
    assert wait_until(lambda: server.connection_count == 0, 10)
    sender.join(10)
    assert not sender.is_alive()
    assert_still_serving_blob(server, make_client)


def assert_still_serving_blob(server, make_client) -> None:
    client = make_client(server.address)
    assert client.blob(10) == b"z" * 10
    client.close()


# --- limits across connections, idle, keepalive, graceful stop -----------------------------


def test_flood_of_idle_connections(aio_server, make_client, backend_name) -> None:
    """HOSTILE 9, the driver's part: 500 idle native connections hold only their sockets;
    a call on a new one goes through; all of them close cleanly."""
    server = aio_server(start=False)
    server.server.register(lambda: "ok", name="ok")
    server.start()
    hello = ClientConnection(**wire_of(backend_name))
    hello.initiate()
    greeting = hello.data_to_send()
    socks: list[socket.socket] = []
    try:
        for _ in range(500):
            sock = socket.create_connection(server.address, timeout=5)
            socks.append(sock)
            sock.sendall(greeting)
        assert wait_until(lambda: server.connection_count == 500, 10)
        client = make_client(server.address)
        assert client.ok() == "ok"
        client.close()
    finally:
        for sock in socks:
            sock.close()
    assert wait_until(lambda: server.connection_count == 0, 10)
    assert server.stats["accepted"] == 501


def test_max_connections_refused_with_goaway(aio_server, raw_peer) -> None:
    server = aio_server(max_connections=2)
    raw_peer(server.address)
    raw_peer(server.address)
    third = raw_peer(server.address, handshake=False)
    third.proto.initiate()
    third.sock.sendall(third.proto.data_to_send())
    events = []
    while not events:
        data = third.recv_some()
        assert data
        events = third.proto.receive_data(data)
    assert events[0][0] == C.KIND_GOAWAY and events[0][2] == StatusCode.RESOURCE_EXHAUSTED
    assert "too many connections" in events[0][3]
    assert third.closed_by_peer(5)
    assert server.stats["rejected"] == 1 and server.connection_count == 2


def test_idle_connection_gets_goaway(aio_server, raw_peer) -> None:
    server = aio_server(idle_timeout=0.2)
    peer = raw_peer(server.address)
    events = peer.proto.receive_data(peer.recv_some(5))
    assert events == [(C.KIND_GOAWAY, 0, StatusCode.OK, "idle timeout")]
    assert peer.closed_by_peer(5)


def test_keepalive_pings_and_drops_a_silent_peer(aio_server, raw_peer, backend_name) -> None:
    """HOSTILE 31: a peer that stopped answering (not even pongs) is dropped."""
    server = aio_server(keepalive=0.15, idle_timeout=None)
    peer = raw_peer(server.address)
    data = peer.recv_some(5)
    frames = peer.proto._parser.feed(data)
    assert [f.kind for f in frames] == [C.KIND_PING]  # and we never answer it
    assert peer.closed_by_peer(5)
    assert wait_until(lambda: server.connection_count == 0)


def test_keepalive_keeps_a_live_peer(aio_server, raw_peer) -> None:
    server = aio_server(keepalive=0.1, idle_timeout=None)
    peer = raw_peer(server.address)
    end = time.monotonic() + 0.6
    pings = 0
    while time.monotonic() < end:
        try:
            data = peer.recv_some(0.05)
        except TimeoutError:
            continue
        assert data, "closed although we answer every ping"
        pings += len(data) // (C.HEADER_SIZE + 1)  # ping bodies are 1-byte ints here
        peer.proto.receive_data(data)
        peer.sock.sendall(peer.proto.data_to_send())  # the pongs
    assert pings >= 2 and server.connection_count == 1


def test_graceful_stop_sends_goaway_and_finishes_the_call(aio_server, raw_peer, backend_name):
    server = aio_server(start=False)

    async def slow():
        await asyncio.sleep(0.3)
        return "finished"

    server.server.register(slow)
    server.start()
    peer = raw_peer(server.address)
    peer.sock.sendall(request_frame(backend_name, 1, "slow"))
    time.sleep(0.05)
    stopper = threading.Thread(target=server.stop, args=(5.0,))
    stopper.start()
    try:
        got = replies(peer, 2)
        assert got[0][:2] == (C.KIND_GOAWAY, 0) and got[0][2][:2] == [1, StatusCode.OK]
        assert got[1] == (RESP, 1, "finished")
        assert peer.closed_by_peer(5)
        peer.close()  # our EOF ends the server's linger at once
    finally:
        stopper.join(15)
