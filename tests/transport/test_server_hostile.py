"""HOSTILE.md 1-9 and 28/31 against a real server: raw sockets playing bad clients.

Each case checks the behaviour, that a well-behaved client on the same server is
unaffected, and (through the autouse leak guard) that threads and fds come back.
"""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest
from rpc_helpers import BAD_FRAMES, NON_NATIVE_INPUTS, RawPeer, header, wait_until, wire_of

import rapidrpc
from rapidrpc import StatusCode
from rapidrpc.wire import constants as C

REQ, RESP, ERR = C.KIND_REQUEST, C.KIND_RESPONSE, C.KIND_ERROR


def request_frame(backend_name: str, rid: int, method: str, *args: object) -> bytes:
    """A request frame encoded by hand (bypasses the client's own limits)."""
    w = wire_of(backend_name)
    return w["framing"].encode_frame(REQ, rid, w["serializer"].dumps([method, list(args)]))


def replies(peer: RawPeer, count: int, timeout: float = 10.0) -> list[tuple]:
    """Read until *count* frames arrived on *peer*: ``[(kind, request_id, decoded body)]``.

    Requests encoded by hand are unknown to the peer's protocol object, so the frames
    are parsed directly (after the handshake the peer's parser is past the preface).
    """
    loads = peer.proto._loads
    out: list[tuple] = []
    end = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < end:
        data = peer.recv_some(max(0.01, end - time.monotonic()))
        assert data, f"server closed after {len(out)} replies"
        out += [(f.kind, f.request_id, loads(f.body)) for f in peer.proto._parser.feed(data)]
    return out


@pytest.fixture
def echo_server(make_server):
    server = make_server(handshake_timeout=5, frame_timeout=5)
    calls: list[object] = []
    server.register(lambda *a: (calls.append(a), list(a))[1], name="echo")
    server.calls = calls  # type: ignore[attr-defined]
    return server


def assert_still_serving(server, make_client) -> None:
    client = make_client(server)
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
def test_bad_header_gets_goaway_then_close(echo_server, raw_peer, make_client, data) -> None:
    peer = raw_peer(echo_server.address)
    peer.sock.sendall(data)
    events = peer.proto.receive_data(peer.recv_some())
    assert [e[0] for e in events] == [C.KIND_GOAWAY]
    assert events[0][2] == StatusCode.INTERNAL
    assert peer.closed_by_peer(5)
    assert_still_serving(echo_server, make_client)


def test_oversized_length_rejected_before_the_body(echo_server, raw_peer) -> None:
    """HOSTILE 1: the header alone triggers the refusal; no body byte is awaited."""
    peer = raw_peer(echo_server.address)
    peer.sock.sendall(header(0xFFFFFFFF, REQ))  # and nothing else
    assert peer.closed_by_peer(5)


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


# --- HOSTILE 5: thousands of pipelined frames in one write ----------------------------------


def test_ten_thousand_pipelined_frames_in_one_write(echo_server, raw_peer, backend_name) -> None:
    peer = raw_peer(echo_server.address)
    n = 10**4
    peer.sock.sendall(b"".join(request_frame(backend_name, i, "echo", i) for i in range(1, n + 1)))
    assert replies(peer, n, timeout=60) == [(RESP, i, [i]) for i in range(1, n + 1)]


# --- HOSTILE 28: in-flight cap, cancel-then-resend ------------------------------------------


def test_inflight_cap_counts_cancelled_calls_until_they_end(make_server, raw_peer, backend_name):
    server = make_server(max_inflight=2)
    gate = threading.Event()
    server.register(lambda tag: (gate.wait(5), tag)[1], name="hold", blocking=True)
    peer = raw_peer(server.address)
    send = peer.sock.sendall
    send(request_frame(backend_name, 1, "hold", 1) + request_frame(backend_name, 2, "hold", 2))
    send(request_frame(backend_name, 3, "hold", 3))
    [(kind, rid, body)] = replies(peer, 1)
    assert (kind, rid, body[0]) == (ERR, 3, StatusCode.RESOURCE_EXHAUSTED)
    # Rapid reset: cancel a running call, send another at once: still refused.
    cancel = wire_of(backend_name)["framing"].encode_frame(C.KIND_CANCEL, 1, b"\xc0")
    send(cancel + request_frame(backend_name, 4, "hold", 4))
    [(kind, rid, body)] = replies(peer, 1)
    assert (kind, rid, body[0]) == (ERR, 4, StatusCode.RESOURCE_EXHAUSTED)
    gate.set()  # the handlers end: call 1's reply is dropped (cancelled), call 2 answers
    assert replies(peer, 1) == [(RESP, 2, 2)]
    send(request_frame(backend_name, 5, "hold", 5))
    assert replies(peer, 1) == [(RESP, 5, 5)]


# --- HOSTILE 7: slowloris -----------------------------------------------------------------


def test_slowloris_header_closed_by_frame_deadline(make_server, raw_peer) -> None:
    server = make_server(frame_timeout=0.3)
    peer = raw_peer(server.address)
    start = time.monotonic()
    for byte in header(100, REQ)[:6]:  # one byte every 0.1 s, never a whole frame
        try:
            peer.sock.send(bytes([byte]))
        except OSError:
            break
        time.sleep(0.1)
    assert peer.closed_by_peer(3)
    assert time.monotonic() - start < 2.0


def test_silent_connection_closed_by_handshake_deadline(make_server, raw_peer) -> None:
    server = make_server(handshake_timeout=0.3)
    silent = raw_peer(server.address, handshake=False)
    partial = raw_peer(server.address, handshake=False)
    partial.sock.sendall(C.PREFACE[:4])
    start = time.monotonic()
    assert silent.closed_by_peer(3) and partial.closed_by_peer(3)
    assert time.monotonic() - start < 2.0


def test_idle_connection_gets_goaway_then_close(make_server, raw_peer) -> None:
    server = make_server(idle_timeout=0.3, keepalive=None)
    peer = raw_peer(server.address)
    events = peer.proto.receive_data(peer.recv_some(3))
    assert events[0][0] == C.KIND_GOAWAY and events[0][3] == "idle timeout"
    assert peer.closed_by_peer(3)


# --- HOSTILE 31: keepalive ----------------------------------------------------------------


def test_keepalive_drops_a_peer_that_never_answers(make_server, raw_peer) -> None:
    server = make_server(keepalive=0.2)
    peer = raw_peer(server.address)
    assert replies(peer, 1, 3)[0][0] == C.KIND_PING  # we do not answer it
    assert peer.closed_by_peer(3)


def test_keepalive_keeps_a_peer_that_answers(make_server, raw_peer) -> None:
    server = make_server(keepalive=0.1)
    peer = raw_peer(server.address)
    pings = 0
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        try:
            data = peer.recv_some(0.05)
        except TimeoutError:
            continue
        assert data, "closed although we answered every ping"
        pings += len(peer.proto.receive_data(data)) == 0  # pings produce no client event
        peer.sock.sendall(peer.proto.data_to_send())  # our pongs
    assert pings >= 3
    assert server.connection_count == 1


# --- HOSTILE 8: a client that never reads its replies ------------------------------------


def test_client_that_never_reads_is_capped_and_closed(make_server, raw_peer, make_client):
    """Its queued output stops growing (reading it is paused, memory stays bounded), and
    once the output makes no progress for frame_timeout the connection is closed."""
    limit = 64 * 1024
    server = make_server(max_frame_size=limit, frame_timeout=0.5)
    server.register(lambda: b"r" * 60_000, name="big")
    server.register(lambda x: x, name="echo")
    hog = raw_peer(server.address)
    hog.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    burst = b"".join(request_frame("python", rid, "big") for rid in range(1, 2001))
    hog.sock.sendall(burst)  # ~120 MB of replies requested; we read none of them
    client = make_client(server)
    assert client.echo("still fine") == "still fine"
    assert wait_until(lambda: server.connection_count == 1, 10)  # the hog is gone
    proc = psutil.Process()
    assert proc.memory_info().rss < 2**30  # bounded, not 120 MB per hog


# --- HOSTILE 9 and connection limits --------------------------------------------------


def test_max_connections(make_server, make_client) -> None:
    server = make_server(max_connections=2)
    server.register(lambda: "ok", name="ok")
    a, b = make_client(server), make_client(server)
    assert a.ok() == b.ok() == "ok"
    with pytest.raises((rapidrpc.Unavailable, rapidrpc.ConnectionLost)):
        make_client(server).ok()
    assert server.stats["rejected"] >= 1
    a.close()
    assert wait_until(lambda: server.connection_count == 1)
    assert make_client(server).ok() == "ok"


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} file descriptors, hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def test_thousand_idle_connections(make_server, make_client, backend_name) -> None:
    _raise_fd_limit(4096)
    server = make_server(max_connections=1100)
    server.register(lambda: "ok", name="ok")
    peers = []
    try:
        for _ in range(1000):
            peers.append(RawPeer(server.address, backend_name))
        client = make_client(server)
        start = time.monotonic()
        assert [client.ok() for _ in range(100)] == ["ok"] * 100
        assert time.monotonic() - start < 5
        assert server.connection_count == 1001
    finally:
        for peer in peers:
            peer.close()
    assert wait_until(lambda: server.connection_count == 1, 10)


_EMFILE_SERVER = textwrap.dedent(
    """
    import resource, sys, rapidrpc
    server = rapidrpc.Server(backend=sys.argv[1])
    server.register(lambda: "ok", name="ok")
    # Leave room for only a handful of connections.
    import os
    used = len(os.listdir("/proc/self/fd"))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + 8, hard))
    print(server.address[1], flush=True)
    server.serve_forever()
    """
)


def test_emfile_accept_loop_does_not_spin(make_client, backend_name) -> None:
    """HOSTILE 9: out of fds, the loop backs off instead of spinning; calls go on."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _EMFILE_SERVER, backend_name],
        stdout=subprocess.PIPE,
        text=True,
    )
    flood: list[socket.socket] = []
    try:
        port = int(proc.stdout.readline())
        client = make_client(("127.0.0.1", port))
        assert client.ok() == "ok"
        for _ in range(40):  # far more than the server has fds for
            flood.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.3)
        server_proc = psutil.Process(proc.pid)
        cpu_before = sum(server_proc.cpu_times()[:2])
        time.sleep(1.0)
        cpu_used = sum(server_proc.cpu_times()[:2]) - cpu_before
        assert cpu_used < 0.5, f"accept loop spun: {cpu_used:.2f}s CPU in 1s"
        assert client.ok() == "ok"  # existing calls go on
        for s in flood:
            s.close()
        flood.clear()
        fresh = make_client(("127.0.0.1", port))
        assert wait_until(lambda: _call_ok(fresh), 10)
    finally:
        for s in flood:
            s.close()
        proc.kill()
        proc.wait(10)
        proc.stdout.close()


def _call_ok(client: rapidrpc.Client) -> bool:
    try:
        return client.ok() == "ok"
    except (rapidrpc.ConnectionLost, rapidrpc.Unavailable):
        return False


def test_backpressure_pauses_reading_then_resumes(make_server, raw_peer, backend_name) -> None:
    """HOSTILE 5/8: past the high-water mark the server stops reading that connection (its
    requests wait in the kernel), and resumes once the peer reads; nothing is dropped."""
    server = make_server(start=False, max_frame_size=1 << 20)
    server.config.high_water = 256 * 1024
    runs: list[int] = []
    server.register(lambda i: (runs.append(i), b"r" * 100_000)[1], name="big")
    server.start()
    peer = raw_peer(server.address)
    peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    total = 300  # 30 MB of replies, far beyond what the kernel buffers hold
    for start in range(1, total + 1, 10):
        batch = b"".join(request_frame(backend_name, i, "big", i) for i in range(start, start + 10))
        peer.sock.sendall(batch)
        time.sleep(0.005)
    assert wait_until(lambda: len(runs) < total and _stable(runs), 5)
    assert server.connection_count == 1  # paused, not closed
    got = replies(peer, total, timeout=60)  # reading lets the server go on
    assert [rid for _, rid, _ in got] == list(range(1, total + 1))
    assert runs == list(range(1, total + 1))


def _stable(runs: list[int]) -> bool:
    before = len(runs)
    time.sleep(0.2)
    return len(runs) == before
