"""The asyncio receive path: a reused ReceiveBuffer, frames parsed in place.

Protocol-level cases drive RPCServerProtocol through get_buffer/buffer_updated with a
recording transport (exact control over where reads split the stream); socket-level
cases run aio.Server/aio.Client on real loopback connections.  Everything runs on both
wire backends and both loops (asyncio, uvloop).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aio_support
from aio_support import request_frame, wait_for_condition
from rpc_helpers import header, wait_until, wire_of

from rapidrpc import aio
from rapidrpc.core.dispatch import Dispatcher
from rapidrpc.transport import aio as taio
from rapidrpc.transport.aio import ReceiveBuffer, RPCServerProtocol, ServerConfig
from rapidrpc.wire import constants as C

REQ, RESP = C.KIND_REQUEST, C.KIND_RESPONSE

aio_server, arun, loop_name, loops_warmed = (
    aio_support.aio_server,
    aio_support.arun,
    aio_support.loop_name,
    aio_support.loops_warmed,
)

MiB = 1 << 20


# --- the buffer on its own ------------------------------------------------------------------


def test_buffer_grows_only_with_arrived_bytes() -> None:
    rbuf = ReceiveBuffer()
    assert rbuf.size == ReceiveBuffer.INITIAL
    arrived = 0
    while arrived < 3 * MiB:
        room = rbuf.writable()
        assert len(room) >= ReceiveBuffer.MIN_READ
        n = min(len(room), 10_000)
        room[:n] = b"a" * n
        rbuf.written(n)
        arrived += n
        # Never more than twice what arrived (plus the room a read needs).
        assert rbuf.size <= max(ReceiveBuffer.INITIAL, 2 * (arrived + ReceiveBuffer.MIN_READ))
    assert rbuf.pending == arrived
    assert bytes(rbuf.view()) == b"a" * arrived


def test_buffer_is_replaced_not_resized_while_a_view_lives() -> None:
    rbuf = ReceiveBuffer()
    rbuf.append(b"x" * (ReceiveBuffer.INITIAL - 100))
    old = rbuf.view()  # e.g. a parsed body still referenced somewhere
    rbuf.append(b"y" * ReceiveBuffer.INITIAL)  # forces growth
    assert rbuf.size == 2 * ReceiveBuffer.INITIAL
    assert bytes(old) == b"x" * (ReceiveBuffer.INITIAL - 100)  # the old buffer is intact
    assert bytes(rbuf.view()) == b"x" * (ReceiveBuffer.INITIAL - 100) + b"y" * ReceiveBuffer.INITIAL


def test_buffer_compacts_a_small_tail_in_place() -> None:
    rbuf = ReceiveBuffer()
    rbuf.append(b"a" * (ReceiveBuffer.INITIAL - 10))
    rbuf.consume(ReceiveBuffer.INITIAL - 30)  # 20 bytes left, near the end
    room = rbuf.writable()
    assert rbuf.size == ReceiveBuffer.INITIAL and rbuf.start == 0
    assert len(room) == ReceiveBuffer.INITIAL - 20
    assert bytes(rbuf.view()) == b"a" * 20


def test_buffer_shrinks_once_the_large_size_was_not_needed() -> None:
    rbuf = ReceiveBuffer()
    rbuf.append(b"b" * (3 * MiB))
    assert rbuf.size >= 3 * MiB
    rbuf.consume(3 * MiB)
    assert rbuf.maybe_shrink()  # used since the last check: kept for now
    assert rbuf.size > ReceiveBuffer.INITIAL
    assert not rbuf.maybe_shrink()  # idle for a whole period: back to the initial size
    assert rbuf.size == ReceiveBuffer.INITIAL
    rbuf.append(b"c" * 100)
    assert bytes(rbuf.view()) == b"c" * 100


# --- protocol level: a recording transport, reads split by hand ------------------------------


class RecordingTransport:
    """Just enough of a transport: output recorded, flow control recorded."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.reading = True
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: Any) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closing = True

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


def echo_dispatcher() -> Dispatcher:
    dispatcher = Dispatcher(allow_async=True)
    dispatcher.register(lambda x: x, name="echo")
    return dispatcher


def client_hello(backend_name: str) -> bytes:
    w = wire_of(backend_name)
    settings = w["serializer"].dumps({"max_frame_size": 64 * MiB, "max_inflight": 100})
    return C.PREFACE + w["framing"].encode_frame(C.KIND_SETTINGS, 0, settings)


def deliver(protocol: RPCServerProtocol, data: bytes, piece: int) -> None:
    """Hand *data* to the protocol as reads of at most *piece* bytes."""
    pos = 0
    while pos < len(data):
        room = protocol.get_buffer(-1)
        n = min(len(room), piece, len(data) - pos)
        room[:n] = data[pos : pos + n]
        protocol.buffer_updated(n)
        pos += n


def replies_in(backend_name: str, out: bytes) -> list[tuple[int, int, Any]]:
    """The frames the server wrote (after its preface and settings), decoded."""
    w = wire_of(backend_name)
    frames = w["framing"].FrameParser(max_frame_size=64 * MiB).feed(out)
    assert frames[0].kind == C.KIND_SETTINGS
    loads = w["serializer"].loads
    return [(f.kind, f.request_id, loads(f.body)) for f in frames[1:]]


def new_protocol(backend_name: str, **config: Any) -> tuple[RPCServerProtocol, RecordingTransport]:
    protocol = RPCServerProtocol(echo_dispatcher(), ServerConfig(**wire_of(backend_name), **config))
    transport = RecordingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


def conversation(backend_name: str) -> tuple[bytes, list[tuple[int, int, Any]]]:
    """Small and large requests, a ping, a notification: the stream and the replies."""
    w = wire_of(backend_name)
    big = bytes(range(256)) * 300  # 76,800 bytes: parsed as a view of the buffer
    data = b"".join(
        [
            client_hello(backend_name),
            request_frame(backend_name, 1, "echo", [1, "a"]),
            w["framing"].encode_frame(C.KIND_PING, 0, w["serializer"].dumps(7)),
            request_frame(backend_name, 2, "echo", big),
            w["framing"].encode_frame(C.KIND_NOTIFICATION, 0, w["serializer"].dumps(["echo", [0]])),
            request_frame(backend_name, 3, "echo", "z"),
        ]
    )
    expected = [(RESP, 1, [1, "a"]), (C.KIND_PONG, 0, 7), (RESP, 2, big), (RESP, 3, "z")]
    return data, expected


def test_split_at_every_boundary_same_replies(arun, backend_name) -> None:
    data, expected = conversation(backend_name)
    head, tail = 300, len(data) - 300
    cuts = [*range(0, head), *range(head, tail, 509), *range(tail, len(data) + 1)]

    async def main() -> None:
        for cut in cuts:
            protocol, transport = new_protocol(backend_name)
            deliver(protocol, data[:cut], len(data))
            deliver(protocol, data[cut:], len(data))
            assert replies_in(backend_name, bytes(transport.out)) == expected, cut
            assert protocol._rbuf.pending == 0
            protocol.connection_lost(None)

    arun(main(), timeout=120)


def test_one_byte_reads_same_replies(arun, backend_name) -> None:
    data, expected = conversation(backend_name)

    async def main() -> None:
        protocol, transport = new_protocol(backend_name)
        deliver(protocol, data, 1)
        assert replies_in(backend_name, bytes(transport.out)) == expected
        # Reads of one byte never made the buffer grow past what was pending at once.
        assert protocol._rbuf.size <= 2 * ReceiveBuffer.INITIAL
        protocol.connection_lost(None)

    arun(main(), timeout=60)


def test_many_messages_in_one_read(arun, backend_name) -> None:
    frames = b"".join(request_frame(backend_name, i, "echo", i) for i in range(1, 3001))

    async def main() -> None:
        protocol, transport = new_protocol(backend_name)
        deliver(protocol, client_hello(backend_name) + frames, len(frames) + 100)
        got = replies_in(backend_name, bytes(transport.out))
        assert got == [(RESP, i, i) for i in range(1, 3001)]
        protocol.connection_lost(None)

    arun(main())


def test_backlog_holds_no_view_of_the_receive_buffer(arun, backend_name) -> None:
    """Pipelined large requests past the high-water mark: the rest waits as a backlog,
    reading pauses, and scribbling over the whole receive buffer changes no reply."""
    payloads = [bytes([i]) * (300 * 1024 + i) for i in range(1, 9)]
    stream = client_hello(backend_name) + b"".join(
        request_frame(backend_name, i, "echo", p) for i, p in enumerate(payloads, 1)
    )

    async def main() -> None:
        protocol, transport = new_protocol(backend_name, high_water=256 * 1024)
        protocol.data_received(stream)  # all of it in the buffer, then parsed at once
        assert protocol._backlog is not None and not transport.reading
        rbuf = protocol._rbuf
        assert rbuf.pending == 0  # every frame was taken: the backlog owns copies
        rbuf._buf[:] = b"\xee" * len(rbuf._buf)
        assert await wait_for_condition(lambda: transport.reading, 10)
        got = replies_in(backend_name, bytes(transport.out))
        assert got == [(RESP, i, p) for i, p in enumerate(payloads, 1)]
        protocol.connection_lost(None)

    arun(main())


def test_data_received_still_works(arun, backend_name) -> None:
    """Bytes handed over by other code (a port-sharing protocol) take the same path."""
    data, expected = conversation(backend_name)

    async def main() -> None:
        protocol, transport = new_protocol(backend_name)
        for i in range(0, len(data), 1000):
            protocol.data_received(data[i : i + 1000])
        assert replies_in(backend_name, bytes(transport.out)) == expected
        protocol.connection_lost(None)

    arun(main())


# --- socket level ---------------------------------------------------------------------------


def test_large_bodies_both_ways(arun, backend_name) -> None:
    async def main() -> None:
        server = aio.Server(backend=backend_name, max_frame_size=8 * MiB)
        server.register(lambda x: x, name="echo")
        async with server:
            address = f"127.0.0.1:{server.address[1]}"
            async with aio.Client(address, backend=backend_name, max_frame_size=8 * MiB) as c:
                for size in (MiB + 1, 3 * MiB + 7, 100, 2 * MiB):
                    payload = bytes(range(251)) * (size // 251) + b"!" * (size % 251)
                    assert await c.call("echo", payload, timeout=20) == payload
                mixed = [b"s" * 10, b"L" * (MiB + 3), "text" * 50_000, [b"k" * 70_000] * 3]
                got = await asyncio.gather(*(c.call("echo", m, timeout=20) for m in mixed))
                assert got == mixed

    arun(main(), timeout=60)


def test_pipelined_large_requests_under_backpressure(arun, backend_name) -> None:
    async def main() -> None:
        server = aio.Server(backend=backend_name, max_frame_size=4 * MiB)
        server.config.high_water = 128 * 1024
        server.register(lambda x: x, name="echo")
        async with server:
            address = f"127.0.0.1:{server.address[1]}"
            async with aio.Client(address, backend=backend_name, max_frame_size=4 * MiB) as c:
                payloads = [bytes([i % 256]) * (MiB + i) for i in range(12)]
                got = await asyncio.gather(*(c.call("echo", p, timeout=30) for p in payloads))
                assert got == payloads
                assert await c.call("echo", 5) == 5

    arun(main(), timeout=90)


def test_receive_buffers_shrink_after_a_big_message(arun, backend_name, monkeypatch) -> None:
    monkeypatch.setattr(taio, "RECEIVE_BUFFER_IDLE", 0.05)

    async def main() -> None:
        server = aio.Server(backend=backend_name)
        server.register(lambda x: x, name="echo")
        address = f"127.0.0.1:{server.address[1]}"
        async with server, aio.Client(address, backend=backend_name) as c:
            assert await c.call("echo", b"m" * (2 * MiB), timeout=20) == b"m" * (2 * MiB)
            (sconn,) = server._group.connections
            cconn = c._conn
            assert cconn is not None
            assert sconn._rbuf.size > MiB and cconn._rbuf.size > MiB
            assert await wait_for_condition(
                lambda: sconn._rbuf.size == cconn._rbuf.size == ReceiveBuffer.INITIAL, 5
            )
            assert await c.call("echo", b"again") == b"again"  # still usable

    arun(main())


def test_declared_huge_length_with_few_bytes(aio_server, raw_peer, backend_name) -> None:
    """A header announcing a body at the frame limit, then a trickle: memory stays at the
    buffer's initial size, nothing is dispatched, the slowloris deadline closes it."""
    server = aio_server(start=False, max_frame_size=32 * MiB, frame_timeout=0.5)
    calls: list[Any] = []
    server.server.register(lambda *a: calls.append(a), name="echo")
    server.start()
    peer = raw_peer(server.address)
    peer.sock.sendall(header(32 * MiB, REQ, rid=1) + b"\x00" * 1000)
    assert wait_until(lambda: server.connection_count == 1)
    (conn,) = list(server.server._group.connections)
    for _ in range(20):
        try:
            peer.sock.sendall(b"\x00" * 100)
        except OSError:
            break
    assert conn._rbuf.size == ReceiveBuffer.INITIAL
    assert peer.closed_by_peer(10)
    assert wait_until(lambda: server.connection_count == 0)
    assert calls == []


def test_declared_length_above_the_limit_closes_from_the_header(
    aio_server, raw_peer, backend_name
) -> None:
    server = aio_server(frame_timeout=30)
    peer = raw_peer(server.address)
    peer.sock.sendall(header(0xFFFFFFFF, REQ, rid=1)[:4])  # four bytes of a header
    events = peer.proto.receive_data(peer.recv_some())
    assert [e[0] for e in events] == [C.KIND_GOAWAY]
    assert peer.closed_by_peer(5)
    assert wait_until(lambda: server.connection_count == 0)


def test_peer_closing_mid_frame_frees_the_connection(aio_server, raw_peer, backend_name) -> None:
    server = aio_server()
    peer = raw_peer(server.address)
    frame = request_frame(backend_name, 1, "rpc.methods")
    peer.sock.sendall(frame + request_frame(backend_name, 2, "echo", b"q" * MiB)[: MiB // 2])
    assert wait_until(lambda: server.connection_count == 1)
    peer.sock.shutdown(socket.SHUT_WR)
    assert wait_until(lambda: server.connection_count == 0, 10)
