"""The sans-IO connection state machine: bytes in -> events out, calls in -> bytes out.

Every test runs over each wire backend (the ``backend`` fixture hands the implementation
modules to the protocol), and one test checks both backends put identical bytes on the wire.
Most HOSTILE.md RPC semantics (23, 25, 26, 28, 35) and the framing cases the protocol must
turn into connection errors (1-6) are checked here without sockets.
"""

from __future__ import annotations

from typing import Any

import pytest

from rapidrpc.core.protocol import ClientConnection, NotProcessed, ServerConnection
from rapidrpc.errors import (
    InvalidParams,
    MethodNotFound,
    ProtocolError,
    RemoteError,
    ResourceExhausted,
    StatusCode,
    Unavailable,
)
from rapidrpc.wire import constants as C

REQ, RESP, ERR, NOTE, CANCEL = (
    C.KIND_REQUEST,
    C.KIND_RESPONSE,
    C.KIND_ERROR,
    C.KIND_NOTIFICATION,
    C.KIND_CANCEL,
)


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wire(backend: Any) -> dict[str, Any]:
    return {"serializer": backend.serializer, "framing": backend.framing}


def connect(backend: Any, server_kw: dict | None = None, client_kw: dict | None = None):
    """A client and a server that completed the preface/settings handshake."""
    client = ClientConnection(**wire(backend), **(client_kw or {}))
    server = ServerConnection(**wire(backend), **(server_kw or {}))
    client.initiate()
    assert feed(server, client.data_to_send()) == []
    assert client.receive_data(server.data_to_send()) == []
    assert client.handshake_complete and server.handshake_complete
    return client, server


def feed(server: ServerConnection, data: bytes) -> list[tuple[Any, ...]]:
    """Every event *data* completes, taken without handling any (like one greedy driver)."""
    return list(server.receive_data(data))


def raw_frames(backend: Any, *frames: tuple) -> bytes:
    """Encode frames with the backend's framing (bypassing the client's own checks)."""
    return backend.framing.encode_frames(frames)


def request_body(backend: Any, *envelope: Any) -> bytes:
    return backend.serializer.dumps(list(envelope))


def error_replies(backend: Any, server: ServerConnection) -> list[tuple[int, list]]:
    """Decode the error frames the server queued: [(request_id, [code, msg, type, details])]."""
    parser = backend.framing.FrameParser(expect_preface=False)
    frames = parser.feed(server.data_to_send())
    assert all(f.kind == ERR for f in frames), frames
    return [(f.request_id, backend.serializer.loads(f.body)) for f in frames]


# --- handshake --------------------------------------------------------------------------


def test_handshake_announces_settings(backend) -> None:
    client, server = connect(
        backend,
        server_kw={"max_frame_size": 1 << 20, "max_inflight": 7, "max_depth": 64},
        client_kw={"max_frame_size": 1 << 16},
    )
    assert client.peer_settings == {"max_frame_size": 1 << 20, "max_inflight": 7, "max_depth": 64}
    assert client.peer_max_frame_size == 1 << 20
    assert server.peer_max_frame_size == 1 << 16


def test_server_stays_silent_until_the_client_preface(backend) -> None:
    server = ServerConnection(**wire(backend))
    assert feed(server, C.PREFACE[:5]) == []
    assert server.data_to_send() == b""
    feed(server, C.PREFACE[5:])
    assert server.data_to_send().startswith(C.PREFACE)


def test_client_holds_calls_until_server_settings(backend) -> None:
    client = ClientConnection(**wire(backend))
    client.initiate()
    handshake = client.data_to_send()
    rid = client.send_request("add", [1, 2])
    assert rid == 1 and client.data_to_send() == b""  # held: limit not known yet
    server = ServerConnection(**wire(backend))
    feed(server, handshake)
    client.receive_data(server.data_to_send())
    events = feed(server, client.data_to_send())
    assert [e[:5] for e in events] == [(REQ, 1, "add", [1, 2], None)]


def test_identical_bytes_on_both_backends() -> None:
    from rapidrpc.wire import framing, serializer

    if "cython" not in serializer.IMPLEMENTATIONS or "cython" not in framing.IMPLEMENTATIONS:
        pytest.skip("only one backend loaded")

    def conversation(name: str) -> list[bytes]:
        kw = {
            "serializer": serializer.IMPLEMENTATIONS[name],
            "framing": framing.IMPLEMENTATIONS[name],
        }
        client, server, out = ClientConnection(**kw), ServerConnection(**kw), []
        client.initiate()
        out.append(client.data_to_send())
        feed(server, out[-1])
        out.append(server.data_to_send())
        client.receive_data(out[-1])
        client.send_request("calc.add", (1, 2.5), {"c": "é"}, timeout=1.5)
        client.send_request("echo", [b"x" * 70000])
        client.send_notification("log", ["hi"])
        out.append(client.data_to_send())
        for event in feed(server, out[-1]):
            if event[0] == REQ and event[1] == 1:
                server.send_response(1, {"sum": 3.5, "list": [None, True]})
            elif event[0] == REQ:
                server.send_exception(event[1], InvalidParams("bad", details={"k": [1]}))
        server.send_ping()
        server.send_goaway(StatusCode.OK, "bye")
        out.append(server.data_to_send())
        client.receive_data(out[-1])
        client.cancel(client.send_request("slow", []))
        out.append(client.data_to_send())
        return out

    assert conversation("cython") == conversation("python")


# --- calls ------------------------------------------------------------------------------


def test_request_response_roundtrip(backend) -> None:
    client, server = connect(backend)
    token = object()
    rid = client.send_request("add", (1, 2), token=token)
    events = feed(server, client.data_to_send())
    assert events == [(REQ, rid, "add", [1, 2], None, None, None)]
    assert server.inflight == 1
    server.send_response(rid, 3)
    assert server.inflight == 0
    assert client.receive_data(server.data_to_send()) == [(RESP, rid, token, 3)]
    assert client.pending == 0


def test_kwargs_meta_and_deadline(backend) -> None:
    clock = Clock()
    client, server = connect(backend, server_kw={"clock": clock})
    client.send_request("f", [], {"x": 1}, timeout=2.5, meta={"trace": "t-1", "auth": [1]})
    [event] = feed(server, client.data_to_send())
    assert event[:5] == (REQ, 1, "f", [], {"x": 1})
    assert event[5] == clock.now + 2.5
    assert event[6] == {"trace": "t-1", "auth": [1], "timeout": 2.5}


def test_out_of_order_replies_routed_by_id(backend) -> None:
    client, server = connect(backend)
    rids = [client.send_request("f", [i], token=f"t{i}") for i in range(5)]
    feed(server, client.data_to_send())
    for rid in reversed(rids):
        server.send_response(rid, rid * 10)
    events = client.receive_data(server.data_to_send())
    assert [(e[1], e[2], e[3]) for e in events] == [
        (r, f"t{r - 1}", r * 10) for r in reversed(rids)
    ]


def test_error_reply_becomes_remote_error_subclass(backend) -> None:
    client, server = connect(backend)
    a = client.send_request("nope", [])
    b = client.send_request("boom", [])
    c = client.send_request("other", [])
    feed(server, client.data_to_send())
    server.send_exception(a, MethodNotFound("method 'nope' not found"))
    server.send_exception(b, ZeroDivisionError("division by zero"))
    server.send_error(c, 77, "custom", "MyError", {"why": [1, 2]})
    events = client.receive_data(server.data_to_send())
    excs = {e[1]: e[3] for e in events}
    assert all(e[0] == ERR for e in events)
    assert type(excs[a]) is MethodNotFound and excs[a].code == StatusCode.UNIMPLEMENTED
    assert type(excs[b]) is RemoteError
    assert (excs[b].code, excs[b].message, excs[b].remote_type) == (
        StatusCode.UNKNOWN,
        "division by zero",
        "ZeroDivisionError",
    )
    assert (excs[c].code, excs[c].details) == (77, {"why": [1, 2]})


def test_unserializable_details_still_reply(backend) -> None:
    client, server = connect(backend)
    rid = client.send_request("f", [])
    feed(server, client.data_to_send())
    server.send_error(rid, StatusCode.UNKNOWN, "bad", "X", details=object())
    [(kind, _, _, exc)] = client.receive_data(server.data_to_send())
    assert kind == ERR and exc.message == "bad" and exc.details is None


def test_unserializable_result_is_an_internal_error(backend) -> None:
    client, server = connect(backend)
    rid = client.send_request("f", [])
    feed(server, client.data_to_send())
    server.send_response(rid, object())
    [(kind, _, _, exc)] = client.receive_data(server.data_to_send())
    assert kind == ERR and exc.code == StatusCode.INTERNAL
    assert server.inflight == 0


def test_unencodable_arguments_raise_locally(backend) -> None:
    client, _ = connect(backend)
    with pytest.raises(TypeError):
        client.send_request("f", [object()])
    assert client.pending == 0 and client.data_to_send() == b""


def test_notifications(backend) -> None:
    client, server = connect(backend, server_kw={"max_inflight": 2})
    for i in range(3):
        client.send_notification("log", [i], {"level": 1} if i else None)
    events = feed(server, client.data_to_send())
    assert [e[:5] for e in events] == [
        (NOTE, 0, "log", [0], None),
        (NOTE, 0, "log", [1], {"level": 1}),
    ]
    assert server.inflight == 2 and server.dropped_notifications == 1
    assert server.data_to_send() == b""  # notifications never get replies
    server.finish_notification()
    server.finish_notification()
    assert server.inflight == 0


def test_large_bodies_travel_as_separate_chunks(backend) -> None:
    client, server = connect(backend)
    blob = b"z" * (C.ZERO_COPY_MIN_BODY * 2)
    rid = client.send_request("echo", [blob])
    chunks = client.take_output()
    assert len(chunks) == 2 and len(chunks[0]) == C.HEADER_SIZE
    [event] = feed(server, b"".join(chunks))
    server.send_response(rid, event[3][0])
    assert server.output_size == C.HEADER_SIZE + 5 + len(blob)  # bin32: 5-byte header
    [reply] = client.receive_data(server.data_to_send())
    assert bytes(reply[3]) == blob


@pytest.mark.parametrize("size", [0xFFFF, 0x10000, C.ZERO_COPY_MIN_BODY * 3])
def test_large_bytes_result_is_queued_by_reference(backend, size) -> None:
    """A bytes result of 64 KiB or more goes out as header + bin 32 prefix + the object
    itself (no copy), byte for byte what dumps would have made; 0xFFFF is still bin 16."""
    client, server = connect(backend)
    rid = client.send_request("blob", [])
    feed(server, client.data_to_send())
    blob = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    server.send_response(rid, blob)
    expected = backend.framing.encode_frame(RESP, rid, backend.serializer.dumps(blob))
    chunks = server.take_output()
    assert b"".join(chunks) == expected
    assert (chunks[-1] is blob) == (size >= 0x10000)


def test_frames_above_the_default_limit_when_both_sides_allow_them(backend) -> None:
    """max_frame_size above the 16 MiB default on both sides: a 17 MiB request and reply
    are encoded and parsed (the header encoder used to refuse them at its own default)."""
    big = 17 * 1024 * 1024
    client, server = connect(
        backend, server_kw={"max_frame_size": 32 << 20}, client_kw={"max_frame_size": 32 << 20}
    )
    blob = b"q" * big
    rid = client.send_request("echo", [blob])
    [event] = feed(server, client.data_to_send())
    assert len(event[3][0]) == big
    server.send_response(rid, [event[3][0]])  # a list: through dumps, not by reference
    [reply] = client.receive_data(server.data_to_send())
    assert len(reply[3][0]) == big


# --- HOSTILE 23: malformed envelopes get an error reply, the connection goes on ---------


@pytest.mark.parametrize(
    "envelope",
    [
        ["only-method"],
        ["m", [], None, None, "extra"],
        [1, []],
        ["m", "not-a-list"],
        ["m", [], ["kwargs-not-map"]],
        ["m", [], None, "meta-not-map"],
        ["m", [], None, {"timeout": "soon"}],
    ],
)
def test_malformed_envelope_error_reply(backend, envelope) -> None:
    _, server = connect(backend)
    bad = request_body(backend, *envelope)
    assert feed(server, raw_frames(backend, (REQ, 1, bad))) == []
    [(rid, (code, message, _, _))] = error_replies(backend, server)
    assert rid == 1 and code == StatusCode.INVALID_ARGUMENT and message
    assert server.inflight == 0
    good = request_body(backend, "ok", [])
    assert feed(server, raw_frames(backend, (REQ, 2, good)))[0][:3] == (REQ, 2, "ok")


def test_non_list_envelope(backend) -> None:
    _, server = connect(backend)
    body = backend.serializer.dumps({"method": "m"})
    assert feed(server, raw_frames(backend, (REQ, 1, body))) == []
    assert error_replies(backend, server)[0][1][0] == StatusCode.INVALID_ARGUMENT


# --- HOSTILE 25: unknown / duplicate reply ids are dropped, never misrouted --------------


def test_unknown_and_duplicate_reply_ids_dropped(backend) -> None:
    client, server = connect(backend)
    rid = client.send_request("f", [], token="mine")
    feed(server, client.data_to_send())
    dumps = backend.serializer.dumps
    replies = raw_frames(
        backend,
        (RESP, 999, dumps("bogus")),
        (RESP, rid, dumps("right")),
        (RESP, rid, dumps("duplicate")),
        (ERR, 12345, dumps([2, "x", "", None])),
    )
    assert client.receive_data(replies) == [(RESP, rid, "mine", "right")]
    assert client.dropped_replies == 3


def test_late_reply_after_cancel_is_dropped(backend) -> None:
    client, server = connect(backend)
    rid = client.send_request("slow", [], token="t")
    feed(server, client.data_to_send())
    assert client.cancel(rid) == "t"
    assert client.cancel(rid) is None
    [event] = feed(server, client.data_to_send())
    assert event == (CANCEL, rid)
    assert server.is_cancelled(rid)
    # A reply the server had already sent arrives late: dropped, not misrouted.
    late = raw_frames(backend, (RESP, rid, backend.serializer.dumps(1)))
    assert client.receive_data(late) == []
    assert client.dropped_replies == 1


# --- HOSTILE 26: request ids never wrap ----------------------------------------------------


def test_request_id_exhaustion(backend) -> None:
    client, _ = connect(backend, client_kw={"max_request_id": 3})
    assert [client.send_request("f", []) for _ in range(3)] == [1, 2, 3]
    assert client.ids_exhausted
    with pytest.raises(RuntimeError, match="new connection"):
        client.send_request("f", [])
    assert client.pending == 3


# --- HOSTILE 28: in-flight limit, cancelled calls keep counting -------------------------


def test_inflight_limit_and_rapid_cancel(backend) -> None:
    _, server = connect(backend, server_kw={"max_inflight": 2})
    req = request_body(backend, "slow", [])
    events = feed(server, raw_frames(backend, (REQ, 1, req), (REQ, 2, req), (REQ, 3, req)))
    assert [e[1] for e in events] == [1, 2]
    [(rid, (code, _, _, _))] = error_replies(backend, server)
    assert (rid, code) == (3, StatusCode.RESOURCE_EXHAUSTED)
    # Cancel-then-resend: the cancelled call still occupies its slot.
    events = feed(server, raw_frames(backend, (CANCEL, 1, b"\xc0"), (REQ, 4, req)))
    assert events == [(CANCEL, 1)]
    [(rid, (code, message, _, _))] = error_replies(backend, server)
    assert (rid, code) == (4, StatusCode.RESOURCE_EXHAUSTED) and "max_inflight=2" in message
    assert server.inflight == 2
    server.send_response(1, "ignored")  # the cancelled handler ends: no reply, slot freed
    assert server.data_to_send() == b"" and server.inflight == 1
    assert feed(server, raw_frames(backend, (REQ, 5, req)))[0][1] == 5


def test_pipelined_calls_handled_inline_are_never_refused(backend) -> None:
    """HOSTILE 5: the limit counts running handlers, not frames that arrived together."""
    _, server = connect(backend, server_kw={"max_inflight": 2})
    req = request_body(backend, "f", [])
    data = raw_frames(backend, *[(REQ, rid, req) for rid in range(1, 51)])
    handled = []
    for event in server.receive_data(data):  # a driver answering each call before the next
        handled.append(event[1])
        server.send_response(event[1], "ok")
    assert handled == list(range(1, 51))
    parser = backend.framing.FrameParser(expect_preface=False)
    replies = parser.feed(server.data_to_send())
    assert [(f.kind, f.request_id) for f in replies] == [(RESP, rid) for rid in range(1, 51)]


def test_client_holds_calls_beyond_server_limit(backend) -> None:
    client, server = connect(backend, server_kw={"max_inflight": 2})
    rids = [client.send_request("f", [i], token=i) for i in range(5)]
    events = feed(server, client.data_to_send())
    assert [e[1] for e in events] == rids[:2]
    assert client.cancel(rids[3]) == 3  # a held call: forgotten, no cancel frame needed
    assert client.data_to_send() == b""
    server.send_response(rids[0], "a")
    client.receive_data(server.data_to_send())
    events = feed(server, client.data_to_send())
    assert [e[1] for e in events] == [rids[2]]
    server.send_response(rids[1], "b")
    client.receive_data(server.data_to_send())
    events = feed(server, client.data_to_send())
    assert [e[1] for e in events] == [rids[4]]
    assert client.pending == 2


# --- deadlines ------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [0, -1.5, 0.0])
def test_expired_deadline_answered_without_dispatch(backend, timeout) -> None:
    _, server = connect(backend)
    body = request_body(backend, "f", [], None, {"timeout": timeout})
    assert feed(server, raw_frames(backend, (REQ, 1, body))) == []
    [(rid, (code, _, _, _))] = error_replies(backend, server)
    assert (rid, code) == (1, StatusCode.DEADLINE_EXCEEDED)
    assert server.inflight == 0


# --- ping, goaway ---------------------------------------------------------------------------


def test_ping_pong(backend) -> None:
    client, server = connect(backend)
    value = server.send_ping()
    assert server.ping_outstanding == value
    assert client.receive_data(server.data_to_send()) == []
    assert feed(server, client.data_to_send()) == [(C.KIND_PONG, value)]
    assert server.ping_outstanding is None
    value = client.send_ping()
    assert feed(server, client.data_to_send()) == []
    assert client.receive_data(server.data_to_send()) == [(C.KIND_PONG, value)]
    assert client.ping_outstanding is None


def test_goaway_fails_unprocessed_calls(backend) -> None:
    client, server = connect(backend)
    rids = [client.send_request("f", []) for _ in range(3)]
    out = client.take_output()
    assert len(out) == 3
    feed(server, out[0] + out[1])  # the server has seen calls 1 and 2
    server.send_goaway(StatusCode.OK, "shutting down")
    server.send_goaway()  # a second goaway is a no-op
    assert feed(server, out[2]) == []  # call 3 raced the goaway: refused
    frames = backend.framing.FrameParser(expect_preface=False).feed(server.data_to_send())
    assert [(f.kind, f.request_id) for f in frames] == [(C.KIND_GOAWAY, 0), (ERR, 3)]
    assert backend.serializer.loads(frames[1].body)[0] == StatusCode.UNAVAILABLE
    # The client learns calls above 2 were never processed, before any reply arrives.
    events = client.receive_data(backend.framing.encode_frames(frames[:1]))
    assert events[0] == (C.KIND_GOAWAY, 2, StatusCode.OK, "shutting down")
    assert [(e[0], e[1], type(e[3])) for e in events[1:]] == [(ERR, 3, NotProcessed)]
    assert isinstance(events[1][3], Unavailable)
    assert client.goaway_received == (2, StatusCode.OK, "shutting down")
    assert rids == [1, 2, 3] and client.pending == 2
    # The refusal for call 3 that follows is then a dropped (unknown-id) reply.
    assert client.receive_data(backend.framing.encode_frames(frames[1:])) == []
    assert client.dropped_replies == 1


# --- HOSTILE 35: the client enforces its own limits on replies ---------------------------


def test_reply_larger_than_client_limit(backend) -> None:
    client, server = connect(backend, client_kw={"max_frame_size": 1000})
    rid = client.send_request("big", [])
    feed(server, client.data_to_send())
    server.send_response(rid, b"x" * 5000)  # the server knows the client's limit
    [(_, _, _, exc)] = client.receive_data(server.data_to_send())
    assert isinstance(exc, ResourceExhausted) and "max_frame_size=1000" in exc.message
    # A server ignoring the limit is a protocol error on the client side.
    client2, _ = connect(backend, client_kw={"max_frame_size": 1000})
    rid = client2.send_request("big", [])
    with pytest.raises(ProtocolError, match="1000"):
        client2.receive_data(_header(1001, RESP, rid=rid))


def test_request_larger_than_server_limit_refused_locally(backend) -> None:
    client, _ = connect(backend, server_kw={"max_frame_size": 100})
    with pytest.raises(ResourceExhausted, match="max_frame_size=100"):
        client.send_request("f", [b"x" * 200])
    assert client.pending == 0 and client.data_to_send() == b""


@pytest.mark.parametrize(
    "body",
    [b"\x91\x01", b"\x94\xa1x\xa1x\xa0\xc0", b"\xc1", b"\x93\x05\xa1x\x01"],
    ids=["too-short", "code-not-int", "undecodable", "type-not-str"],
)
def test_malformed_error_body_is_a_protocol_error(backend, body) -> None:
    client, _ = connect(backend)
    rid = client.send_request("f", [], token="t")
    with pytest.raises(ProtocolError):
        client.receive_data(raw_frames(backend, (ERR, rid, body)))
    assert client.pop_all_pending() == {rid: "t"}  # the driver fails it with the rest


def test_server_may_not_send_requests(backend) -> None:
    client, _ = connect(backend)
    with pytest.raises(ProtocolError, match="may not send request"):
        client.receive_data(raw_frames(backend, (REQ, 1, request_body(backend, "f", []))))


# --- HOSTILE 1-6 at the protocol level: every violation is a connection-level error -----


def _server_after_handshake(backend: Any) -> ServerConnection:
    return connect(backend)[1]


HEADER = C.HEADER_SIZE


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", id="tls-client-hello"),
        pytest.param(b"\x00" * 64, id="zeros"),
        pytest.param(C.PREFACE_MAGIC + b"\x09\r\n", id="other-version"),
    ],
)
def test_garbage_instead_of_preface(backend, data) -> None:
    server = ServerConnection(**wire(backend))
    with pytest.raises(ProtocolError):
        feed(server, data)
    assert server.data_to_send() == b""  # nothing native to say to a non-native peer
    with pytest.raises(ProtocolError):
        feed(server, b"more")


def _header(length: int, kind: int, flags: int = 0, reserved: int = 0, rid: int = 1) -> bytes:
    import struct

    return struct.pack(">IBBHI", length, kind, flags, reserved, rid)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_header(0xFFFFFFFF, REQ), id="huge-length"),
        pytest.param(_header(0, REQ), id="zero-length"),
        pytest.param(_header(1, 0) + b"\xc0", id="kind-0"),
        pytest.param(_header(1, 0xFF) + b"\xc0", id="kind-255"),
        pytest.param(_header(1, REQ, reserved=1) + b"\xc0", id="reserved-bits"),
        pytest.param(_header(1, REQ, flags=0x80) + b"\xc0", id="unknown-flag"),
        pytest.param(_header(4, REQ, rid=0) + b"\x92\xa1f\x90", id="request-id-0"),
        pytest.param(_header(1, REQ) + b"\xc1", id="undecodable-body"),
        pytest.param(_header(1, RESP) + b"\xc0", id="response-to-server"),
        pytest.param(_header(1, C.KIND_STREAM_ITEM) + b"\xc0", id="stream-item"),
        pytest.param(_header(1, C.KIND_PING) + b"\x01", id="ping-with-request-id"),
        pytest.param(_header(1, C.KIND_PING, rid=0) + b"\xff", id="ping-negative"),
        pytest.param(_header(1, C.KIND_GOAWAY, rid=0) + b"\x90", id="goaway-malformed"),
        pytest.param(_header(1, C.KIND_SETTINGS, rid=0) + b"\x90", id="settings-not-map"),
        pytest.param(_header(1, CANCEL) + b"\x01", id="cancel-not-nil"),
    ],
)
def test_violations_after_handshake_are_protocol_errors(backend, data) -> None:
    server = _server_after_handshake(backend)
    with pytest.raises(ProtocolError) as ei:
        feed(server, data)
    assert server.error is ei.value
    goaway = backend.framing.FrameParser(expect_preface=False).feed(server.data_to_send())
    assert [f.kind for f in goaway] == [C.KIND_GOAWAY]
    code = backend.serializer.loads(goaway[0].body)[1]
    assert code == StatusCode.INTERNAL
    with pytest.raises(ProtocolError):  # poisoned: no silent resync
        feed(server, b"")


def test_duplicate_inflight_request_id(backend) -> None:
    server = _server_after_handshake(backend)
    req = request_body(backend, "f", [])
    feed(server, raw_frames(backend, (REQ, 7, req)))
    with pytest.raises(ProtocolError, match="reused"):
        feed(server, raw_frames(backend, (REQ, 7, req)))


def test_first_frame_must_be_settings(backend) -> None:
    server = ServerConnection(**wire(backend))
    data = C.PREFACE + raw_frames(backend, (REQ, 1, request_body(backend, "f", [])))
    with pytest.raises(ProtocolError, match="settings"):
        feed(server, data)


def test_huge_length_rejected_from_the_header(backend) -> None:
    """HOSTILE 1: refused before any body byte arrives (no allocation of the declared size)."""
    server = _server_after_handshake(backend)
    with pytest.raises(ProtocolError, match=str(C.DEFAULT_MAX_FRAME_SIZE)):
        feed(server, _header(C.DEFAULT_MAX_FRAME_SIZE + 1, REQ))


def test_partial_frame_held_without_events(backend) -> None:
    """HOSTILE 3: a peer closing mid-frame leaves a partial frame; no handler runs."""
    client, server = connect(backend)
    client.send_request("f", [b"x" * 100])
    data = client.data_to_send()
    assert feed(server, data[:-1]) == []
    assert server.buffered == len(data) - 1 and server.inflight == 0


# --- HOSTILE 4 and 5: any split gives the same events; many frames in one read ---------


def test_every_split_point_gives_the_same_events(backend) -> None:
    client = ClientConnection(**wire(backend))
    client.initiate()
    stream = client.data_to_send()
    probe = ServerConnection(**wire(backend))
    feed(probe, stream)
    client.receive_data(probe.data_to_send())
    client.send_request("a", [1], {"k": "v"}, timeout=5.0)
    client.send_notification("n", ["x" * 40])
    client.cancel(client.send_request("b", [[1, 2], {"z": None}]))
    stream += client.data_to_send()
    clock = Clock()
    expected = feed(ServerConnection(**wire(backend), clock=clock), stream)
    assert [e[0] for e in expected] == [REQ, NOTE, REQ, CANCEL]
    for cut in range(1, len(stream)):
        server = ServerConnection(**wire(backend), clock=clock)
        events = feed(server, stream[:cut]) + feed(server, stream[cut:])
        assert events == expected, cut
    server = ServerConnection(**wire(backend), clock=clock)
    events = []
    for i in range(len(stream)):
        events += feed(server, stream[i : i + 1])
    assert events == expected


def test_ten_thousand_pipelined_requests_in_one_read(backend) -> None:
    n = 10**4
    client, server = connect(backend, server_kw={"max_inflight": n})
    for i in range(n):
        client.send_request("add", (i, 1))
    events = feed(server, client.data_to_send())
    assert [e[1] for e in events] == list(range(1, n + 1))
    for e in events:
        server.send_response(e[1], e[3][0] + e[3][1])
    replies = client.receive_data(server.data_to_send())
    assert [r[3] for r in replies] == [i + 1 for i in range(n)]


def test_pop_all_pending_keeps_the_pending_table(backend) -> None:
    """The compiled client holds the pending table itself: it is cleared, never replaced."""
    client = ClientConnection(**wire(backend))
    table = client._pending
    client.send_request("f", [], token="a")
    client.send_request("g", [], token="b")
    assert client.pop_all_pending() == {1: "a", 2: "b"}
    assert client._pending is table and not table and client.pending == 0
