"""HOSTILE 10: before the handshake completes, only a tiny first frame is accepted.

The first frame after the preface (the peer's settings) may carry at most
``HANDSHAKE_MAX_FRAME_SIZE`` body bytes; a larger one is refused from its header, without
waiting for its body, and the connection is closed.  Checked on the sans-IO protocol
(both roles), the backend's own server loop and the pure loop's selectors fallback, and
the asyncio server.
"""

from __future__ import annotations

import socket

import aio_support
import pytest
from rpc_helpers import header, wait_until, wire_of

from rapidrpc.core.protocol import ClientConnection, ServerConnection
from rapidrpc.errors import FrameError, ProtocolError
from rapidrpc.wire import constants as C

LIMIT = C.HANDSHAKE_MAX_FRAME_SIZE

aio_server, loop_name, loops_warmed = (
    aio_support.aio_server,
    aio_support.loop_name,
    aio_support.loops_warmed,
)


def settings_frame(backend_name: str, body_size: int) -> bytes:
    """A valid settings frame whose body is exactly *body_size* bytes (padded by a key
    the receiver ignores)."""
    w = wire_of(backend_name)
    # fixmap(1) + str16 header (3) + key + positive fixint value (1)
    body = w["serializer"].dumps({"x" * (body_size - 5): 1})
    assert len(body) == body_size
    return w["framing"].encode_frame(C.KIND_SETTINGS, 0, body)


def big_first_header() -> bytes:
    return C.PREFACE + header(LIMIT + 1, C.KIND_SETTINGS, rid=0)


@pytest.fixture(params=["epoll", "selectors"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    """Run the server-loop tests on the backend's own loop and on the selectors fallback."""
    return request.param


# --- the sans-IO protocol ----------------------------------------------------------------


@pytest.mark.parametrize("role", [ServerConnection, ClientConnection])
@pytest.mark.parametrize("piece", [1, 5, 1000])
def test_large_first_frame_refused_from_its_header(backend_name, role, piece) -> None:
    conn = role(**wire_of(backend_name))
    data = big_first_header()  # the header alone: no body was ever sent
    with pytest.raises(ProtocolError, match=f"{LIMIT + 1} bytes exceeds the limit") as info:
        for i in range(0, len(data), piece):
            conn.receive_data(data[i : i + piece])
            assert i + piece < len(data), "the whole header went by without an error"
    assert isinstance(info.value.__cause__, FrameError)
    assert conn.error is info.value
    with pytest.raises(ProtocolError):  # the connection stays failed
        conn.receive_data(b"\x00")


@pytest.mark.parametrize("role", [ServerConnection, ClientConnection])
def test_first_frame_at_the_limit_completes_the_handshake(backend_name, role) -> None:
    conn = role(**wire_of(backend_name))
    list(conn.receive_data(C.PREFACE + settings_frame(backend_name, LIMIT)))
    assert conn.handshake_complete and conn.error is None


def test_large_frames_after_the_handshake_are_fine(backend_name) -> None:
    w = wire_of(backend_name)
    server = ServerConnection(**w)
    client = ClientConnection(**w)
    client.initiate()
    big = w["framing"].encode_frame(
        C.KIND_REQUEST, 1, w["serializer"].dumps(["echo", [b"x" * 100_000]])
    )
    # settings and a large request in one chunk: only the first frame is limited
    events = list(server.receive_data(client.data_to_send() + big))
    assert server.handshake_complete
    assert [(e[0], e[1]) for e in events] == [(C.KIND_REQUEST, 1)]


def test_non_native_bytes_keep_the_parser_error(backend_name) -> None:
    conn = ServerConnection(**wire_of(backend_name))
    with pytest.raises(ProtocolError) as info:
        conn.receive_data(b"GET / HTTP/1.1\r\n" + b"\xff" * 100)
    assert "handshake" not in str(info.value)


# --- real servers --------------------------------------------------------------------------


def refused(address: tuple[str, int]) -> bool:
    """Send a preface and an oversized first header (no body); True when closed at once.

    The server's handshake deadline is 30 s here, so a close within 5 s is the refusal.
    """
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(big_first_header())
        try:
            while sock.recv(65536):
                pass  # nothing (or at most our refusal) comes back before the close
        except ConnectionResetError:
            pass
        except TimeoutError:
            return False
    return True


def at_limit_then_call(address: tuple[str, int], backend_name: str) -> object:
    """Handshake with a settings frame of exactly the limit, then make one call."""
    w = wire_of(backend_name)
    peer = ClientConnection(**w)
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(C.PREFACE + settings_frame(backend_name, LIMIT))
        peer.preface_sent = True  # sent by hand above
        while not peer.handshake_complete:
            data = sock.recv(65536)
            assert data, "server closed during the handshake"
            peer.receive_data(data)
        peer.send_request("echo", ["ok"])
        sock.sendall(peer.data_to_send())
        while True:
            data = sock.recv(65536)
            assert data, "server closed before replying"
            for event in peer.receive_data(data):
                if event[0] == C.KIND_RESPONSE:
                    return event[-1]


def test_server_loops_refuse_large_first_frame(make_server, backend_name) -> None:
    server = make_server()
    server.register(lambda x: x, name="echo")
    assert refused(server.address)
    assert wait_until(lambda: server.stats["protocol_errors"] == 1)
    assert at_limit_then_call(server.address, backend_name) == "ok"
    assert server.stats["protocol_errors"] == 1


def test_aio_server_refuses_large_first_frame(aio_server, backend_name) -> None:
    server = aio_server(start=False)
    server.server.register(lambda x: x, name="echo")
    server.start()
    assert refused(server.address)
    assert wait_until(lambda: server.stats["protocol_errors"] == 1)
    assert at_limit_then_call(server.address, backend_name) == "ok"
    assert server.stats["protocol_errors"] == 1
