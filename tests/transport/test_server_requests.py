"""Every shape of request body gets the same answer from both server loops.

The compiled loop reads the common request (``[method, [args...]]``, optionally followed by
nil or ``{}`` kwargs and nil, ``{}`` or ``{"timeout": number}`` meta) straight from its
bytes, and hands every other shape to the general path; the pure loop decodes everything.
Each body below goes to a server of each backend on its own connection, followed by an
ordinary call that shows whether the connection survived, and the bytes each server sends
back must be identical.  The bodies sit on either side of every boundary of the direct
read: fixarray/fixstr/fixint limits, the argument count, the depth limit, nil and empty
maps, malformed and truncated bytes, bytes after the envelope.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Iterator

import pytest
from rpc_helpers import RawPeer, wire_of

import rapidrpc
from rapidrpc.wire import _serializer_py
from rapidrpc.wire import constants as C
from testsupport import load_backend

dumps = _serializer_py.dumps
MAX_DEPTH = 4  # small, so the depth limit falls inside the arguments


def _envelope(*parts: object) -> bytes:
    return dumps(list(parts))


BODIES: dict[str, bytes] = {
    "no args": _envelope("echo", []),
    "scalars and containers": _envelope("echo", [1, -1, 2.5, "x", b"\x00", None, [1, {"a": 1}]]),
    "15 args": _envelope("echo", list(range(15))),
    "16 args (array 16)": _envelope("echo", list(range(16))),
    "nil kwargs": _envelope("echo", [1], None),
    "empty kwargs": _envelope("echo", [1], {}),
    "kwargs": _envelope("kw", [1], {"b": 2}),
    "kwargs not a map": _envelope("echo", [1], [1]),
    "nil meta": _envelope("echo", [1], None, None),
    "empty meta": _envelope("echo", [1], None, {}),
    "float timeout": _envelope("echo", [1], None, {"timeout": 5.0}),
    "fixint timeout": _envelope("echo", [1], None, {"timeout": 5}),
    "uint16 timeout": _envelope("echo", [1], None, {"timeout": 300}),
    "nil timeout": _envelope("echo", [1], None, {"timeout": None}),
    "zero timeout": _envelope("echo", [1], None, {"timeout": 0}),
    "negative timeout": _envelope("echo", [1], None, {"timeout": -1.0}),
    "nan timeout": _envelope("echo", [1], None, {"timeout": math.nan}),
    "tiny timeout": _envelope("echo", [1], None, {"timeout": 1e-300}),
    "text timeout": _envelope("echo", [1], None, {"timeout": "5"}),
    "other meta key": _envelope("echo", [1], None, {"trace": 1}),
    "timeout and more": _envelope("echo", [1], None, {"timeout": 5.0, "trace": 1}),
    "meta not a map": _envelope("echo", [1], None, 5),
    "kwargs and timeout": _envelope("kw", [1], {"b": 3}, {"timeout": 5.0}),
    "wide method name": _envelope("\u540d", [2]),
    "empty method name": _envelope("", []),
    "unknown method": _envelope("nosuch", []),
    "method not a str": _envelope(5, []),
    "args not an array": _envelope("echo", {"a": 1}),
    "one element": _envelope("echo"),
    "five elements": _envelope("echo", [], None, None, None),
    "not an array": dumps({"echo": []}),
    "bad utf-8 method": b"\x92\xa2\xff\xfe\x90",
    "method name past the end": b"\x92\xbfecho\x90",
    "no args after the name": b"\x92\xa4echo",
    "meta key without a value": _envelope("echo", [1], None, {"timeout": 5})[:-1],
    "float timeout cut short": _envelope("echo", [1], None, {"timeout": 5.0})[:-1],
    "bad utf-8 argument": b"\x92\xa4echo\x91\xa1\xff",
    "truncated argument": _envelope("echo", [1, 2.5])[:-1],
    "truncated meta": _envelope("echo", [1], None, {"timeout": 5.0})[:-3],
    "bytes after the envelope": _envelope("echo", [1]) + b"\xc0",
    "reserved byte in args": b"\x92\xa4echo\x91\xc1",
    "depth at the limit": _envelope("echo", [[[1]]]),
    "depth over the limit": _envelope("echo", [[[[1]]]]),
    "wrong argument count": _envelope("add", [1]),
    "handler raises": _envelope("add", [1, "x"]),
    "blocking handler": _envelope("slow", [1]),
}


def _handlers(server: rapidrpc.Server) -> None:
    server.config.max_depth = MAX_DEPTH  # (not a Server argument; the loop reads its config)
    server.register(lambda *args: list(args), name="echo")
    server.register(lambda a, b=0: [a, b], name="kw")
    server.register(lambda a, b: a + b, name="add")
    server.register(lambda n: n * 2, name="\u540d")
    server.register(lambda n: n, name="slow", blocking=True)


@pytest.fixture
def both_servers() -> Iterator[dict[str, rapidrpc.Server]]:
    """One started server per backend, same handlers and limits."""
    load_backend("cython")  # (skips under RAPIDRPC_PURE_PYTHON=1)
    servers = {}
    try:
        for name in ("cython", "python"):
            server = rapidrpc.Server("127.0.0.1", 0, backend=name)
            _handlers(server)
            server.start()
            servers[name] = server
        yield servers
    finally:
        for server in servers.values():
            server.stop(grace=0)


def _answer(server: rapidrpc.Server, body: bytes) -> bytes:
    """Everything *server* sends back for *body* (request 1) and an ordinary call (request 2)
    on a fresh connection: until both replies arrived or the server closed."""
    framing = wire_of("python")["framing"]
    peer = RawPeer(server.address, "python")
    try:
        peer.sock.sendall(framing.encode_frame(C.KIND_REQUEST, 1, body))
        peer.sock.sendall(framing.encode_frame(C.KIND_REQUEST, 2, _envelope("echo", ["next"])))
        received = b""
        seen: set[int] = set()
        end = time.monotonic() + 5
        while seen != {1, 2} and time.monotonic() < end:
            try:
                data = peer.recv_some(max(0.01, end - time.monotonic()))
            except (TimeoutError, ConnectionResetError):
                break
            if not data:
                break
            received += data
            seen |= {f.request_id for f in peer.proto._parser.feed(data)}
        return received
    finally:
        peer.close()


@pytest.mark.parametrize("shape", sorted(BODIES))
def test_each_request_gets_the_same_bytes_from_both_loops(both_servers, shape) -> None:
    body = BODIES[shape]
    answers = {name: _answer(server, body) for name, server in both_servers.items()}
    assert answers["cython"] == answers["python"], shape
    assert answers["python"], shape  # (something came back: an answer or a goaway)


# --- what some of those answers are ----------------------------------------------------------


def _call(make_server, raw_peer, body: bytes) -> tuple[int, object]:
    """(kind, decoded body) of the reply to *body* sent as request 7."""
    server = make_server(start=False)
    _handlers(server)
    server.start()
    peer: RawPeer = raw_peer(server.address)
    peer.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    framing = wire_of("python")["framing"]
    peer.sock.sendall(framing.encode_frame(C.KIND_REQUEST, 7, body))
    while True:
        frames = peer.proto._parser.feed(peer.recv_some())
        if frames:
            (frame,) = frames
            assert frame.request_id == 7
            return frame.kind, _serializer_py.loads(frame.body)


@pytest.mark.parametrize(
    ("shape", "result"),
    [
        ("15 args", list(range(15))),
        ("16 args (array 16)", list(range(16))),
        ("empty kwargs", [1]),
        ("kwargs and timeout", [1, 3]),
        ("fixint timeout", [1]),
        ("nil timeout", [1]),
        ("wide method name", 4),
        ("depth at the limit", [[[1]]]),
    ],
)
def test_accepted_shapes(make_server, raw_peer, shape, result) -> None:
    assert _call(make_server, raw_peer, BODIES[shape]) == (C.KIND_RESPONSE, result)


@pytest.mark.parametrize(
    ("shape", "code"),
    [
        ("zero timeout", rapidrpc.StatusCode.DEADLINE_EXCEEDED),
        ("negative timeout", rapidrpc.StatusCode.DEADLINE_EXCEEDED),
        ("nan timeout", rapidrpc.StatusCode.INVALID_ARGUMENT),
        ("text timeout", rapidrpc.StatusCode.INVALID_ARGUMENT),
        ("tiny timeout", rapidrpc.StatusCode.DEADLINE_EXCEEDED),
        ("wrong argument count", rapidrpc.StatusCode.INVALID_ARGUMENT),
        ("unknown method", rapidrpc.StatusCode.UNIMPLEMENTED),
    ],
)
def test_refused_shapes(make_server, raw_peer, shape, code) -> None:
    kind, body = _call(make_server, raw_peer, BODIES[shape])
    assert kind == C.KIND_ERROR
    assert body[0] == code, body
