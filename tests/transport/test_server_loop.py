"""The compiled server loop against the pure one: identical bytes on the wire, and the things
only the compiled loop does (its fused request fast path, buffer reuse, zero-copy replies).

Every behaviour suite in this folder already runs on both loops (the backend picks the
loop, see ``make_server``).  Here the two loops serve the same scripted client side by
side, and every byte each one sends back is compared, step by step.
"""

from __future__ import annotations

import math
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rpc_helpers import wire_of

import rapidrpc
from rapidrpc import StatusCode
from rapidrpc.core.protocol import ClientConnection
from rapidrpc.transport import eventloop, loops
from rapidrpc.wire import constants as C

REQ, RESP, ERR, NOTE = C.KIND_REQUEST, C.KIND_RESPONSE, C.KIND_ERROR, C.KIND_NOTIFICATION
LOOPS = ("cython", "python")


@pytest.fixture
def compiled_loop() -> Any:
    """The compiled loop class (skipped when it is deliberately not loaded)."""
    from rapidrpc import _backend

    if _backend.PURE_PYTHON:
        pytest.skip("RAPIDRPC_PURE_PYTHON=1: the compiled loop is deliberately off")
    return loops.IMPLEMENTATIONS["cython"].EventLoop


# --- scripted clients ---------------------------------------------------------------------


class Wire:
    """Frame and body encoders of one wire backend, for hand-built client input."""

    def __init__(self, backend_name: str) -> None:
        w = wire_of(backend_name)
        self.framing = w["framing"]
        self.dumps = w["serializer"].dumps
        self.loads = w["serializer"].loads
        self.kw = w

    def hello(self, **settings: Any) -> bytes:
        """The client's preface and settings frame."""
        proto = ClientConnection(**self.kw, **settings)
        proto.initiate()
        return proto.data_to_send()

    def frame(self, kind: int, rid: int, value: Any) -> bytes:
        return self.framing.encode_frame(kind, rid, self.dumps(value))

    def call(self, rid: int, method: Any, *args: Any, kwargs: Any = None, meta: Any = None):
        body: list[Any] = [method, list(args)]
        if kwargs is not None or meta is not None:
            body.append(kwargs)
        if meta is not None:
            body.append(meta)
        return self.frame(REQ, rid, body)

    def notify(self, method: str, *args: Any) -> bytes:
        return self.frame(NOTE, 0, [method, list(args)])

    def decode(self, data: bytes) -> list[tuple[int, int, Any]]:
        """Every frame the server sent, as ``(kind, request_id, decoded body)``."""
        parser = self.framing.FrameParser(expect_preface=True)
        return [(f.kind, f.request_id, self.loads(f.body)) for f in parser.feed(data)]


def header(length: int, kind: int, flags: int = 0, reserved: int = 0, rid: int = 1) -> bytes:
    return struct.pack(">IBBHI", length, kind, flags, reserved, rid)


def run_script(server: rapidrpc.Server, wire: Wire, steps: list[tuple]) -> list[bytes]:
    """Play *steps* against *server*; return the bytes received for each reading step.

    Steps: ``("send", data)``; ``("pieces", data)`` sends one byte at a time;
    ``("sync",)`` sends a ping and reads up to its pong (the server answers in order, so
    everything the earlier steps caused has arrived); ``("frames", n)`` reads n frames;
    ``("eof",)`` reads until the server closes; ``("do", fn)`` runs fn().
    """
    sock = socket.create_connection(server.address, timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    parser = wire.framing.FrameParser(expect_preface=True)
    got: list[bytes] = []
    buf = bytearray()
    frames: list[Any] = []
    ping = 0

    def read_until(done: Callable[[], bool]) -> None:
        end = time.monotonic() + 10
        while not done():
            assert time.monotonic() < end, f"timed out; received {bytes(buf)!r:.300}"
            data = sock.recv(1 << 20)
            if not data:
                return
            buf.extend(data)
            frames.extend(parser.feed(data))

    with sock:
        for step in steps:
            op = step[0]
            if op == "send":
                sock.sendall(step[1])
            elif op == "pieces":
                for i in range(len(step[1])):
                    sock.send(step[1][i : i + 1])
                    if i % 5 == 0:
                        time.sleep(0.0005)
            elif op == "do":
                step[1]()
            else:
                if op == "sync":
                    ping += 1
                    value = ping
                    sock.sendall(wire.frame(C.KIND_PING, 0, value))
                    read_until(
                        lambda v=value: any(
                            f.kind == C.KIND_PONG and wire.loads(f.body) == v for f in frames
                        )
                    )
                elif op == "frames":
                    read_until(lambda n=step[1]: len(frames) >= n)
                elif op == "eof":
                    read_until(lambda: False)
                else:  # pragma: no cover - a typo in a script
                    raise ValueError(op)
                got.append(bytes(buf))
                buf.clear()
                frames.clear()
    return got


def serve_script(
    backend_name: str,
    loop: str,
    steps: list[tuple],
    setup: Callable[[rapidrpc.Server], None],
    **server_kw: Any,
) -> list[bytes]:
    """Run *steps* against a fresh server on *loop* with *backend_name*'s wire modules."""
    server_kw.setdefault("keepalive", None)
    server_kw.setdefault("idle_timeout", None)
    server = rapidrpc.Server("127.0.0.1", 0, backend=backend_name, **server_kw)
    server._loop_factory = loops.IMPLEMENTATIONS[loop].EventLoop
    setup(server)
    server.start()
    try:
        return run_script(server, Wire(backend_name), steps)
    finally:
        server.stop(grace=0)


class Gate:
    """An event blocking handlers wait on, opened by a script step."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def open(self) -> None:
        self.event.set()


def handlers(server: rapidrpc.Server, gate: Gate | None = None) -> None:
    server.register(lambda a, b: a + b, name="add")
    server.register(lambda x: x, name="echo")
    server.register(lambda n: b"x" * n, name="make")
    server.register(lambda: object(), name="unencodable")

    def boom(x):
        raise KeyError(x)

    def deny():
        raise rapidrpc.Unavailable("not now", details={"retry_after": 1})

    def kw(a, *, b=0):
        return [a, b]

    server.register(boom)
    server.register(deny)
    server.register(kw)
    server.register(int, name="toint")  # a builtin without an introspectable signature
    server.register(lambda s: s.upper(), name="upper")
    if gate is not None:
        server.register(lambda tag: (gate.event.wait(5), tag)[1], name="hold", blocking=True)


def compare(
    backend_name: str, steps_for: Callable[[Wire], list[tuple]], **kw: Any
) -> list[tuple[int, int, Any]]:
    """Run one script against each loop; assert identical bytes; return the decoded frames.

    A ``("do", "open")`` step opens the gate the ``hold`` handler waits on.
    """
    wire = Wire(backend_name)
    transcripts = {}
    for loop in LOOPS:
        gate = Gate()
        steps = [(op[0], gate.open) if op == ("do", "open") else op for op in steps_for(wire)]
        transcripts[loop] = serve_script(
            backend_name, loop, steps, lambda s, g=gate: handlers(s, g), **kw
        )
    assert transcripts["cython"] == transcripts["python"]
    return wire.decode(b"".join(transcripts["cython"]))


def replies(frames: list[tuple[int, int, Any]]) -> dict[int, tuple[int, Any]]:
    """Replies by request id: ``{rid: (kind, body)}`` (pongs and goaways left out)."""
    return {rid: (kind, body) for kind, rid, body in frames if kind in (RESP, ERR)}


def kinds(frames: list[tuple[int, int, Any]]) -> list[int]:
    return [kind for kind, _rid, _body in frames]


# --- the two loops, byte for byte -----------------------------------------------------------


def test_calls_and_errors_identical(backend_name, compiled_loop) -> None:
    """Fast path, every way off it, and every error reply: the same bytes from both loops."""
    blob = bytes(range(256)) * 800  # 200 KiB: referenced, not copied, by the compiled loop

    def steps(w: Wire) -> list[tuple]:
        return [
            ("send", w.hello()),
            ("sync",),
            ("send", w.call(1, "add", 1, 2)),
            ("sync",),
            ("send", w.call(2, "add", kwargs={"a": 1, "b": 2})),
            ("send", w.call(3, "add", 1, 2, meta={"timeout": 30.0})),
            ("send", w.call(4, "add", 3, 4, meta={"timeout": 5})),
            ("send", w.call(5, "add", 5, 6, kwargs=None, meta={"trace": "t"})),
            ("send", w.call(6, "kw", 1, kwargs={"b": 2})),
            ("sync",),
            ("send", w.call(7, "nope") + w.call(8, "add", 1) + w.call(9, "boom", "k")),
            ("send", w.call(10, "unencodable") + w.call(11, "deny") + w.call(12, "make", 10)),
            ("send", w.call(13, "make", 70_000) + w.call(14, "echo", blob)),
            ("send", w.call(15, "make", 0xFFFF) + w.call(16, "make", 0x10000)),
            ("send", w.call(17, "echo", [1, {"a": (2, 3)}, None, 1.5, "é"])),
            ("send", w.call(18, "rpc.methods")),
            ("send", w.call(31, "toint", [1]) + w.call(32, "toint", 1, 2, 3, 4)),
            ("send", w.call(33, "toint", "7") + w.call(34, "upper", 5)),
            ("send", w.call(35, "kw", kwargs={"a": 1, "c": 2}) + w.call(36, "kw", 1, 2)),
            ("sync",),
            ("send", w.call(19, "add", 1, 2, meta={"timeout": 0})),
            ("send", w.call(20, "add", 1, 2, meta={"timeout": -1.0})),
            ("send", w.call(21, "add", 1, 2, meta={"timeout": math.nan})),
            ("send", w.call(22, "add", 1, 2, meta={"timeout": "soon"})),
            ("send", w.call(23, "add", 1, 2, meta={"timeout": True})),
            ("send", w.frame(REQ, 24, ["add", [1, 2], None, [1]])),  # meta not a map
            ("send", w.frame(REQ, 25, ["add", (1, 2), [1]])),  # kwargs not a map
            ("send", w.frame(REQ, 26, ["add", 1])),  # args not an array
            ("send", w.frame(REQ, 27, [1, [1]])),  # method not a str
            ("send", w.frame(REQ, 28, ["add"])),  # too short
            ("send", w.frame(REQ, 29, {"add": [1]})),  # not an array
            ("send", w.frame(REQ, 30, [["unhashable"], []])),
            ("sync",),
            ("send", w.notify("add", 1, 2) + w.notify("nope") + w.notify("boom", 1)),
            ("send", w.frame(C.KIND_CANCEL, 999, None)),  # cancel of nothing: ignored
            ("send", w.frame(C.KIND_GOAWAY, 0, [0, 0, "client leaving"])),
            ("send", w.call(1, "add", 2, 3)),  # an id may come back once its call ended
            ("sync",),
            ("send", b"".join(w.call(rid, "add", rid, 1) for rid in range(100, 400))),
            ("sync",),
        ]

    frames = compare(backend_name, steps)
    got = replies(frames)
    assert got[1] == (RESP, 5)  # the last call with id 1
    assert [got[rid] for rid in (2, 3, 4, 5)] == [(RESP, 3), (RESP, 3), (RESP, 7), (RESP, 11)]
    assert got[6] == (RESP, [1, 2])
    codes = {rid: body[0] for rid, (kind, body) in got.items() if kind == ERR}
    assert codes[7] == StatusCode.UNIMPLEMENTED and codes[8] == StatusCode.INVALID_ARGUMENT
    assert got[9][1][:3] == [StatusCode.UNKNOWN, "'k'", "KeyError"]
    assert codes[10] == StatusCode.INTERNAL and got[11][1][3] == {"retry_after": 1}
    assert got[13] == (RESP, b"x" * 70_000) and got[14] == (RESP, blob)
    assert got[15] == (RESP, b"x" * 0xFFFF) and got[16] == (RESP, b"x" * 0x10000)
    assert codes[19] == codes[20] == StatusCode.DEADLINE_EXCEEDED
    assert all(codes[rid] == StatusCode.INVALID_ARGUMENT for rid in range(21, 31))
    assert codes[31] == codes[32] == codes[35] == codes[36] == StatusCode.INVALID_ARGUMENT
    assert got[33] == (RESP, 7)
    assert got[34][1][0] == StatusCode.UNKNOWN and got[34][1][2] == "AttributeError"
    assert [got[rid] for rid in range(100, 400)] == [(RESP, rid + 1) for rid in range(100, 400)]
    assert 999 not in got and 0 not in got  # nothing for the cancel or the notifications


def test_replies_too_large_for_the_client_identical(backend_name, compiled_loop) -> None:
    def steps(w: Wire) -> list[tuple]:
        return [
            ("send", w.hello(max_frame_size=1000)),
            ("send", w.call(1, "make", 2000) + w.call(2, "make", 100)),
            ("send", w.call(3, "make", 70_000) + w.call(4, "echo", "é" * 600)),
            ("sync",),
        ]

    got = replies(compare(backend_name, steps))
    assert got[2] == (RESP, b"x" * 100)
    for rid in (1, 3, 4):
        assert got[rid][0] == ERR and got[rid][1][0] == StatusCode.RESOURCE_EXHAUSTED


def test_handshake_and_calls_in_one_write_and_in_pieces(backend_name, compiled_loop) -> None:
    def steps(w: Wire) -> list[tuple]:
        calls = b"".join(w.call(rid, "add", rid, rid) for rid in range(1, 50))
        return [
            ("send", w.hello() + calls + w.call(50, "make", 100_000)),
            ("sync",),
            ("pieces", w.call(51, "echo", "é" * 40) + w.call(52, "add", 1, 1)),
            ("sync",),
        ]

    got = replies(compare(backend_name, steps))
    assert [got[rid] for rid in range(1, 50)] == [(RESP, 2 * rid) for rid in range(1, 50)]
    assert got[50] == (RESP, b"x" * 100_000) and got[52] == (RESP, 2)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda w: header(1, 0x7F, rid=9) + b"\xc0", id="unknown-kind"),
        pytest.param(lambda w: header(0, REQ), id="empty-body"),
        pytest.param(lambda w: header(C.DEFAULT_MAX_FRAME_SIZE + 1, REQ), id="too-large"),
        pytest.param(lambda w: header(1, REQ, reserved=1)[:8], id="partial-reserved"),
        pytest.param(lambda w: header(1, 0)[:5], id="partial-kind"),
        pytest.param(lambda w: w.frame(RESP, 7, 1), id="forbidden-kind"),
        pytest.param(lambda w: w.call(0, "add", 1, 2), id="request-id-0"),
        pytest.param(
            lambda w: w.framing.encode_frame(REQ, 9, b"\x92\xa3add\x90\xc0"), id="trailing"
        ),
        pytest.param(lambda w: w.framing.encode_frame(REQ, 9, b"\xc1"), id="undecodable"),
        pytest.param(lambda w: w.frame(C.KIND_PING, 0, "x"), id="bad-ping"),
        pytest.param(lambda w: w.frame(C.KIND_CANCEL, 3, 1), id="bad-cancel"),
    ],
)
def test_protocol_violations_identical(backend_name, compiled_loop, bad) -> None:
    """A bad header drops the good calls of the same chunk (the parser raises for the whole
    feed); a bad body does not.  Either way: a goaway saying why, then close."""

    def steps(w: Wire) -> list[tuple]:
        return [
            ("send", w.hello()),
            ("send", w.call(1, "add", 1, 2)),
            ("sync",),
            ("send", w.call(2, "add", 1, 2) + w.call(3, "add", 3, 4) + bad(w)),
            ("eof",),
        ]

    frames = compare(backend_name, steps)
    assert kinds(frames)[-1] == C.KIND_GOAWAY
    goaway = frames[-1][2]
    assert goaway[1] == StatusCode.INTERNAL and goaway[2]
    assert replies(frames)[1] == (RESP, 3)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(header(1, 0x7F) + b"\xc0", id="unknown-kind"),
        pytest.param(header(1, REQ, flags=2)[:6], id="partial-flags"),
        pytest.param(b"", id="none"),
    ],
)
def test_handshake_calls_and_bad_header_in_one_write_identical(
    backend_name, compiled_loop, bad
) -> None:
    """The handshake is no exception: a bad header in the same chunk fails all of it (the
    peer never even gets our preface); without one, the calls after it are answered."""

    def steps(w: Wire) -> list[tuple]:
        calls = w.call(1, "add", 1, 2) + w.call(2, "add", 3, 4)
        return [("send", w.hello() + calls + bad), ("eof" if bad else "sync",)]

    frames = compare(backend_name, steps)
    if bad:
        assert frames == []
    else:
        assert replies(frames) == {1: (RESP, 3), 2: (RESP, 7)}


def test_settings_must_come_first_identical(backend_name, compiled_loop) -> None:
    def steps(w: Wire) -> list[tuple]:
        return [("send", C.PREFACE + w.call(1, "add", 1, 2)), ("eof",)]

    frames = compare(backend_name, steps)
    assert kinds(frames)[-1] == C.KIND_GOAWAY and "settings" in frames[-1][2][2]


def test_non_native_peer_gets_nothing_identical(backend_name, compiled_loop) -> None:
    def steps(w: Wire) -> list[tuple]:
        return [("send", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), ("eof",)]

    assert compare(backend_name, steps) == []


def test_blocking_calls_and_limits_identical(backend_name, compiled_loop) -> None:
    """Calls while a blocking one is in flight leave the fast path; limits, cancel and the
    order of replies stay those of the pure loop."""

    def steps(w: Wire) -> list[tuple]:
        return [
            ("send", w.hello()),
            ("send", w.call(1, "hold", "a") + w.call(2, "hold", "b")),
            ("send", w.call(3, "add", 1, 2)),  # inline, with two calls in flight: refused
            # Call 2 waits in the one-thread pool: the cancel stops it, but the pool reports
            # that only on a later loop turn, so call 4 (same chunk) is still refused.
            ("send", w.frame(C.KIND_CANCEL, 2, None) + w.call(4, "add", 1, 2)),
            ("sync",),
            ("do", "open"),
            ("frames", 1),  # call 1's reply; call 2 was cancelled: nothing
            ("send", w.call(5, "add", 2, 2)),
            ("sync",),
        ]

    frames = compare(backend_name, steps, max_inflight=2, threads=1)
    got = replies(frames)
    assert got[1] == (RESP, "a") and 2 not in got and got[5] == (RESP, 4)
    assert got[3][1][0] == got[4][1][0] == StatusCode.RESOURCE_EXHAUSTED


def test_request_id_reuse_while_in_flight_identical(backend_name, compiled_loop) -> None:
    def steps(w: Wire) -> list[tuple]:
        return [
            ("send", w.hello()),
            ("send", w.call(1, "hold", "a")),
            ("sync",),
            ("send", w.call(1, "add", 1, 2)),
            ("eof",),
            ("do", "open"),
        ]

    frames = compare(backend_name, steps)
    assert kinds(frames)[-1] == C.KIND_GOAWAY and "reused" in frames[-1][2][2]


def test_graceful_stop_identical(backend_name, compiled_loop) -> None:
    servers: list[rapidrpc.Server] = []

    def steps(w: Wire) -> list[tuple]:
        return [
            ("send", w.hello()),
            ("send", w.call(7, "add", 1, 2)),
            ("sync",),
            ("do", lambda: threading.Thread(target=servers[-1].stop, args=(1.0,)).start()),
            ("eof",),
        ]

    def setup(server: rapidrpc.Server) -> None:
        handlers(server)
        servers.append(server)

    wire = Wire(backend_name)
    out = [serve_script(backend_name, loop, steps(wire), setup) for loop in LOOPS]
    assert out[0] == out[1]
    goaway = wire.decode(b"".join(out[0]))[-1]
    assert goaway == (C.KIND_GOAWAY, 0, [7, StatusCode.OK, "server shutting down"])


# --- what only the compiled loop does ---------------------------------------------------------


def test_backend_picks_the_loop(backend_name) -> None:
    """``cython`` serves on the compiled loop (with the compiled wire), ``python`` on the
    pure one; BACKEND is ``cython`` only when the compiled loop loaded."""
    server = rapidrpc.Server(backend=backend_name)
    try:
        assert server._loop_factory is loops.IMPLEMENTATIONS[backend_name].EventLoop
    finally:
        server.stop()
    assert loops.IMPLEMENTATIONS["python"] is eventloop
    if rapidrpc.BACKEND == "cython":
        assert loops.EventLoop is loops.IMPLEMENTATIONS["cython"].EventLoop
        assert loops.EventLoop.__module__ == "rapidrpc.transport._eventloop_c"


def test_compiled_loop_is_epoll_only(compiled_loop) -> None:
    from rapidrpc.core.dispatch import Dispatcher

    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        pytest.raises(ValueError, match="epoll only"),
    ):
        compiled_loop(listener, Dispatcher(), use_epoll=False)


def test_fast_path_bypasses_the_event_machinery(make_server, raw_peer, backend_name, monkeypatch):
    """After the handshake, plain inline calls never reach ServerConnection.receive_data on
    the compiled loop; every other frame (here a ping) still goes through it."""
    from rapidrpc.core.protocol import ServerConnection

    fed: list[bytes] = []
    original = ServerConnection.receive_data

    def counting(self, data):
        fed.append(bytes(data))
        return original(self, data)

    monkeypatch.setattr(ServerConnection, "receive_data", counting)
    server = make_server()
    server.register(lambda a, b: a + b, name="add")
    peer = raw_peer(server.address)
    wire = Wire(backend_name)
    handshake_feeds = len(fed)
    peer.sock.sendall(b"".join(wire.call(rid, "add", rid, 1) for rid in range(1, 101)))
    got = []
    while len(got) < 100:
        got += [f for f in peer.proto._parser.feed(peer.recv_some()) if f.kind == RESP]
    peer.sock.sendall(wire.frame(C.KIND_PING, 0, 5))
    assert peer.proto._parser.feed(peer.recv_some())[0].kind == C.KIND_PONG
    if backend_name == "cython":
        assert len(fed) == handshake_feeds + 1  # only the ping
    else:
        assert len(fed) > handshake_feeds + 1


def test_registrations_after_start_are_seen(make_server, make_client) -> None:
    """The fast path reads the dispatcher's live table: new and replaced handlers count."""
    server = make_server()
    client = make_client(server)
    with pytest.raises(rapidrpc.MethodNotFound):
        client.late()
    server.register(lambda: 1, name="late")
    assert client.late() == 1
    server.register(lambda: 2, name="late")
    assert client.late() == 2
    server.register(lambda: 3, name="late", blocking=True)
    assert client.late() == 3


def test_large_frames_in_pieces_then_small_calls(make_server, make_client, raw_peer, backend_name):
    """A frame far larger than one read arrives in pieces into one growing buffer; the
    buffer is reused (or released) and small calls go on, many replies per write."""
    server = make_server(max_frame_size=8 << 20)
    server.register(lambda b: len(b), name="size")
    server.register(lambda b: b, name="echo")
    peer = raw_peer(server.address)
    wire = Wire(backend_name)
    big = os.urandom(5 << 20)
    frame = wire.call(1, "size", big)
    for i in range(0, len(frame), 1 << 20):
        peer.sock.sendall(frame[i : i + (1 << 20)])
        time.sleep(0.01)
    small = b"".join(wire.call(rid, "echo", b"y" * rid) for rid in range(2, 40))
    peer.sock.sendall(wire.call(40, "echo", big) + small)
    got: dict[int, Any] = {}
    end = time.monotonic() + 20
    while len(got) < 39 and time.monotonic() < end:
        for f in peer.proto._parser.feed(peer.recv_some()):
            got[f.request_id] = wire.loads(f.body)
    assert got[1] == len(big) and got[40] == big
    assert all(got[rid] == b"y" * rid for rid in range(2, 40))
    client = make_client(server, max_frame_size=8 << 20)
    assert client.echo(big[:3_000_000]) == big[:3_000_000]


def test_stop_from_an_inline_handler(make_server, make_client) -> None:
    server = make_server()
    server.register(lambda: (server._loop.stop(0.5), "bye")[1], name="quit")
    client = make_client(server)
    assert client.quit() == "bye"
    assert server._loop.join(5)


_SIGINT_SERVER = textwrap.dedent(
    """
    import sys, rapidrpc
    server = rapidrpc.Server(backend=sys.argv[1])
    print(server.address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    """
)


def test_ctrl_c_interrupts_serve_forever(backend_name) -> None:
    """The compiled loop sleeps in epoll_wait without the GIL: a signal still reaches the
    Python handler (KeyboardInterrupt out of serve_forever), and everything is released."""
    if backend_name == "cython":
        from rapidrpc import _backend

        if _backend.PURE_PYTHON:
            pytest.skip("RAPIDRPC_PURE_PYTHON=1")
    proc = subprocess.Popen(
        [sys.executable, "-c", _SIGINT_SERVER, backend_name], stdout=subprocess.PIPE, text=True
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)  # bounded: never hang here
        assert ready, "the server child printed no port within 30 s"
        port = int(proc.stdout.readline())
        with rapidrpc.Client(("127.0.0.1", port), backend=backend_name) as client:
            assert client.call("rpc.methods")
        time.sleep(0.2)  # idle: no call, no bytecode of ours running in the server
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
        assert out.strip() == "interrupted" and proc.returncode == 0
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()


def test_signals_wake_a_main_thread_loop_at_once(backend_name) -> None:
    """serve_forever in the main thread hands the loop a signal wakeup fd (as asyncio does):
    a signal landing just before the loop sleeps still runs its handler at once, not at
    the next sweep.  The previous wakeup fd is restored afterwards."""
    server = rapidrpc.Server("127.0.0.1", 0, backend=backend_name)  # (sweeps every 1 s)
    seen: list[tuple[int, float]] = []  # (wakeup fd during the handler, handler delay)
    sent_at = [0.0]

    def on_usr1(signum: int, frame: Any) -> None:
        fd = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(fd)
        seen.append((fd, time.monotonic() - sent_at[0]))
        if len(seen) == 50:
            server.stop(grace=0)

    def send_signals() -> None:
        end = time.monotonic() + 10
        while server._loop is None and time.monotonic() < end:
            time.sleep(0.001)
        server._loop.wait_running(10)  # (a signal before the loop runs has nothing to wake)
        pid = os.getpid()
        for i in range(50):
            time.sleep(0.001 * (i % 7))  # at varying moments: some just as the loop sleeps
            sent_at[0] = time.monotonic()
            os.kill(pid, signal.SIGUSR1)
            end = time.monotonic() + 5
            while len(seen) <= i and time.monotonic() < end:
                time.sleep(0.0005)

    previous = signal.signal(signal.SIGUSR1, on_usr1)
    sender = threading.Thread(target=send_signals)
    before = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(before)
    try:
        timer = threading.Timer(20, server.stop, kwargs={"grace": 0})  # bounded: never hang
        timer.start()
        sender.start()
        server.serve_forever()
        timer.cancel()
    finally:
        sender.join(10)
        signal.signal(signal.SIGUSR1, previous)
    assert len(seen) == 50
    assert all(fd >= 0 for fd, _ in seen)  # a wakeup fd was installed while serving
    assert max(delay for _, delay in seen) < 0.5  # at once, not at the next 1 s sweep
    after = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(after)
    assert after == before  # restored


def test_begin_call_and_table_hooks(backend) -> None:
    """The two core hooks the fused fast path relies on."""
    from rapidrpc.core.dispatch import Dispatcher
    from rapidrpc.core.protocol import ServerConnection

    dispatcher = Dispatcher()
    table = dispatcher.table
    dispatcher.register(len, name="length")
    assert table["length"].func is len and dispatcher.table is table
    proto = ServerConnection(serializer=backend.serializer, framing=backend.framing)
    proto.begin_call(5)
    assert proto.inflight == 1
    proto.send_exception(5, KeyError("k"))
    assert proto.inflight == 0 and proto.output_size > 0
    proto.send_response(5, 1)  # ended already: nothing more is sent
    assert len(proto.take_output()) == 1


# --- random conversations ---------------------------------------------------------------------

_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.lists(st.integers(0, 300), max_size=4),
)
_META = st.one_of(
    st.none(),
    st.fixed_dictionaries({"timeout": st.sampled_from([30.0, 5, 0, -1.0, "x", True, 1e-300])}),
    st.fixed_dictionaries({"trace": st.text(max_size=5)}),
)


@st.composite
def _frame_items(draw: st.DrawFn) -> tuple:
    """One client frame of a random conversation (no header violations: those drop whole
    chunks, so their effect depends on how the kernel splits the stream)."""
    kind = draw(st.sampled_from(["call", "call", "call", "notify", "ping", "cancel", "raw"]))
    rid = draw(st.integers(1, 40))
    if kind in ("call", "notify"):
        method, args, kwargs = draw(
            st.one_of(
                st.tuples(
                    st.just("add"), st.lists(st.integers(), min_size=2, max_size=2), st.none()
                ),
                st.tuples(st.just("echo"), st.lists(_VALUES, min_size=1, max_size=1), st.none()),
                st.tuples(
                    st.just("make"),
                    st.lists(
                        st.sampled_from([0, 5, 0xFFFF, 0x10000, 100_000]), min_size=1, max_size=1
                    ),
                    st.none(),
                ),
                st.tuples(
                    st.sampled_from(["add", "echo", "boom", "nope", "kw", "toint"]),
                    st.lists(_VALUES, max_size=3),
                    st.one_of(st.none(), st.fixed_dictionaries({"b": _VALUES})),
                ),
            )
        )
        return (kind, rid, method, args, kwargs, draw(_META))
    if kind == "raw":  # a request body of the wrong shape
        return ("raw", rid, draw(st.sampled_from([[], ["add"], {"a": 1}, 5, ["add", 1, 2, 3, 4]])))
    return (kind, rid)


def _encode_items(w: Wire, items: list[tuple]) -> bytes:
    out = []
    for item in items:
        if item[0] == "call":
            _, rid, method, args, kwargs, meta = item
            out.append(w.call(rid, method, *args, kwargs=kwargs, meta=meta))
        elif item[0] == "notify":
            _, _rid, method, args, kwargs, meta = item
            out.append(w.frame(NOTE, 0, [method, args, kwargs, meta]))
        elif item[0] == "ping":
            out.append(w.frame(C.KIND_PING, 0, 1000 + item[1]))
        elif item[0] == "cancel":
            out.append(w.frame(C.KIND_CANCEL, item[1], None))
        else:
            out.append(w.frame(REQ, item[1], item[2]))
    return b"".join(out)


@settings(
    max_examples=15,
    deadline=None,
    # compiled_loop is a constant; the leak guard checks once after all examples.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    items=st.lists(_frame_items(), min_size=1, max_size=25),
    cuts=st.lists(st.integers(1, 4000), max_size=6),
    wire_backend=st.sampled_from(["cython", "python"]),
)
def test_random_conversations_identical(compiled_loop, items, cuts, wire_backend) -> None:
    """Random frames, cut into random pieces: both loops answer with the same bytes."""

    def steps(w: Wire) -> list[tuple]:
        data = _encode_items(w, items)
        pieces, at = [], 0
        for cut in sorted(cuts):
            if at < cut < len(data):
                pieces.append(("send", data[at:cut]))
                at = cut
        pieces.append(("send", data[at:]))
        return [("send", w.hello()), *pieces, ("sync",)]

    frames = compare(wire_backend, steps)
    assert kinds(frames)[-1] == C.KIND_PONG
