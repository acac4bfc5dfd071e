"""The asyncio client under faults: silent, killed, lying, refusing and restarting servers.

HOSTILE.md 25-27, 29-31, 35 for ``rapidrpc.aio.Client``: the same exception classes as
the blocking client.  Scripted servers (threads driving a sans-IO ServerConnection by
hand) play the peers a real server never is; the client runs on asyncio and uvloop.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time

import aio_support
import pytest
from aio_support import wait_for_condition
from rpc_helpers import wire_of

from rapidrpc import ConnectionLost, DeadlineExceeded, StatusCode, Unavailable, aio
from rapidrpc.transport.aio import RPCClientProtocol
from rapidrpc.wire import constants as C

REQ, RESP, ERR = C.KIND_REQUEST, C.KIND_RESPONSE, C.KIND_ERROR

# The shared fixtures (pytest finds fixtures by module attribute).
arun, loop_name, loops_warmed = aio_support.arun, aio_support.loop_name, aio_support.loops_warmed


def client_for(server, backend_name: str, **kw) -> aio.Client:
    return aio.Client(server.address, backend=backend_name, **kw)


def read_until_request(srv, sock, proto, count: int = 1) -> list[int]:
    """Record events until *count* requests arrived on this connection; their ids."""
    sock.settimeout(5)
    ids: list[int] = []
    while len(ids) < count:
        data = sock.recv(65536)
        if not data:
            break
        for event in proto.receive_data(data):
            srv.events.append(event)
            if event[0] == REQ:
                ids.append(event[1])
    return ids


def test_silent_server_deadline_and_cancel_frame(arun, scripted_server, backend_name) -> None:
    """HOSTILE 27: DeadlineExceeded on time although the server never answers, and the
    server is told with a cancel frame."""

    def script(srv, sock, proto):
        srv.handshake(sock, proto)
        srv.read_events(sock, proto, 5.0, answer=False)

    server = scripted_server(script)

    async def main() -> None:
        async with client_for(server, backend_name) as client:
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                await client.call("anything", 1, timeout=0.2)
            assert time.monotonic() - started < 4.0  # the deadline, not the silence, ended it
            assert await wait_for_condition(
                lambda: [e[0] for e in server.events] == [REQ, C.KIND_CANCEL]
            )

    arun(main())


_AIO_SERVER = textwrap.dedent(
    """
    import asyncio, sys
    from rapidrpc import aio

    async def main():
        server = aio.Server(backend=sys.argv[1])

        @server.export
        async def sleep(t):
            await asyncio.sleep(t)
            return t

        server.register(lambda: "ok", name="ok")
        await server.start()
        print(server.address[1], flush=True)
        await server.serve_forever()

    asyncio.run(main())
    """
)


def test_killed_server_fails_pending_calls_promptly(arun, backend_name) -> None:
    """HOSTILE 29: every pending call fails with ConnectionLost at once, not at its
    deadline; nothing is re-sent; the next call finds nobody listening."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _AIO_SERVER, backend_name], stdout=subprocess.PIPE, text=True
    )

    async def main() -> None:
        port = int(await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline))
        async with aio.Client(("127.0.0.1", port), backend=backend_name, timeout=30) as client:
            assert await client.ok() == "ok"
            calls = [asyncio.ensure_future(client.sleep(20)) for _ in range(5)]
            await asyncio.sleep(0.2)
            killed_at = time.monotonic()
            proc.kill()
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert [type(r) for r in results] == [ConnectionLost] * 5
            assert time.monotonic() - killed_at < 5.0  # far from the 30 s deadline
            with pytest.raises(ConnectionLost):
                await client.ok()

    try:
        arun(main())
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()


def test_reset_mid_reply_is_never_a_truncated_result(arun, scripted_server, backend_name):
    """HOSTILE 30."""

    def script(srv, sock, proto):
        srv.handshake(sock, proto)
        [rid] = read_until_request(srv, sock, proto)
        proto.send_response(rid, "x" * 1000)
        data = proto.data_to_send()
        sock.sendall(data[: len(data) // 2])  # then the connection closes

    server = scripted_server(script)

    async def main() -> None:
        async with client_for(server, backend_name, timeout=5) as client:
            with pytest.raises(ConnectionLost):
                await client.echo("x" * 1000)

    arun(main())


def test_unknown_and_duplicate_reply_ids_are_dropped(arun, scripted_server, backend_name):
    """HOSTILE 25: never a misrouted result."""
    w = wire_of(backend_name)

    def script(srv, sock, proto):
        srv.handshake(sock, proto)
        [rid] = read_until_request(srv, sock, proto)
        bogus = w["framing"].encode_frame(RESP, rid + 76, w["serializer"].dumps("wrong"))
        right = w["framing"].encode_frame(RESP, rid, w["serializer"].dumps("right"))
        sock.sendall(bogus + right + right)
        srv.read_events(sock, proto, 5.0)

    server = scripted_server(script)

    async def main() -> None:
        async with client_for(server, backend_name, timeout=5) as client:
            assert await client.which() == "right"
            proto = client._conn.proto
            assert await wait_for_condition(lambda: proto.dropped_replies == 2)
            assert client._conn.usable

    arun(main())


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(lambda w, rid: w["framing"].encode_frame(RESP, rid, b"\xc1"), id="bad"),
        pytest.param(
            lambda w, rid: w["framing"].encode_frame(ERR, rid, w["serializer"].dumps(["x"])),
            id="malformed-error",
        ),
        pytest.param(
            lambda w, rid: w["framing"].encode_frame(RESP, rid, w["serializer"].dumps("y" * 2000)),
            id="over-client-limit",
        ),
    ],
)
def test_bad_reply_is_connection_lost(arun, scripted_server, backend_name, reply) -> None:
    """HOSTILE 35: the client enforces its own limits and the protocol on replies."""
    w = wire_of(backend_name)

    def script(srv, sock, proto):
        srv.handshake(sock, proto)
        [rid] = read_until_request(srv, sock, proto)
        sock.sendall(reply(w, rid))
        srv.read_events(sock, proto, 5.0)

    server = scripted_server(script)

    async def main() -> None:
        async with client_for(server, backend_name, timeout=5, max_frame_size=1024) as client:
            with pytest.raises(ConnectionLost, match="protocol error"):
                await client.call("x")

    arun(main())


def test_not_a_rapidrpc_server(arun, scripted_server, backend_name) -> None:
    def script(srv, sock, proto):
        sock.settimeout(5)
        sock.recv(100)
        sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    server = scripted_server(script)

    async def main() -> None:
        async with client_for(server, backend_name, timeout=5) as client:
            with pytest.raises(ConnectionLost, match="not a rapidrpc server"):
                await client.add(1, 2)

    arun(main())


def test_refused_connection_is_unavailable(arun, scripted_server, backend_name) -> None:
    def script(srv, sock, proto):  # what a full server does on accept
        proto.refuse(StatusCode.RESOURCE_EXHAUSTED, "server has too many connections")
        sock.sendall(proto.data_to_send())
        srv.read_events(sock, proto, 5.0)

    server = scripted_server(script)

    async def main() -> None:
        async with client_for(server, backend_name, timeout=5) as client:
            with pytest.raises(Unavailable, match="too many connections") as info:
                await client.add(1, 2)
            assert info.value.code == StatusCode.RESOURCE_EXHAUSTED

    arun(main())


def test_goaway_unprocessed_call_is_retried_once(arun, scripted_server, backend_name) -> None:
    """A goaway saying a call was never processed: the client retries it on a new
    connection (safe: it never ran)."""
    w = wire_of(backend_name)

    def script(srv, sock, proto):
        srv.handshake(sock, proto)
        [rid] = read_until_request(srv, sock, proto)
        if srv.connections == 1:
            goaway = w["serializer"].dumps([0, StatusCode.OK, "restarting"])
            sock.sendall(w["framing"].encode_frame(C.KIND_GOAWAY, 0, goaway))
        else:
            proto.send_response(rid, f"served on connection {srv.connections}")
            sock.sendall(proto.data_to_send())
        srv.read_events(sock, proto, 2.0)

    server = scripted_server(script)

    async def main() -> None:
        async with client_for(server, backend_name, timeout=5) as client:
            assert await client.work() == "served on connection 2"
        assert [e[0] for e in server.events].count(REQ) == 2

    arun(main())


def test_half_open_connection_detected_by_keepalive(arun, scripted_server, backend_name):
    """HOSTILE 31: no deadline, a server that went silent (not even pongs): the pending
    call fails with ConnectionLost after the keepalive pings go unanswered."""

    def script(srv, sock, proto):
        srv.handshake(sock, proto)
        srv.read_events(sock, proto, 5.0, answer=False)

    server = scripted_server(script)

    async def main() -> None:
        async with client_for(server, backend_name, keepalive=0.1) as client:
            with pytest.raises(ConnectionLost, match="keepalive"):
                await client.call("anything")

    arun(main())


def test_handshake_timeout_and_deadline_while_connecting(arun, scripted_server, backend_name):
    def script(srv, sock, proto):
        srv.read_events(sock, proto, 3.0, answer=False)  # reads, never says a word

    server = scripted_server(script)

    async def main() -> None:
        async with client_for(server, backend_name, connect_timeout=0.1) as client:
            with pytest.raises(ConnectionLost, match="handshake timed out"):
                await client.add(1, 2)
        # The call's own deadline also covers connecting (one budget).
        async with client_for(server, backend_name, timeout=0.1) as client:
            with pytest.raises(DeadlineExceeded, match="connecting"):
                await client.add(1, 2)

    arun(main())


def test_request_ids_exhausted_open_a_new_connection(arun, backend_name, monkeypatch) -> None:
    """HOSTILE 26: ids are never reused; concurrent calls finish on the retired connection."""
    monkeypatch.setattr(RPCClientProtocol, "MAX_REQUEST_ID", 3)

    async def main() -> None:
        server = aio.Server(backend=backend_name)

        @server.export
        async def echo(x):
            await asyncio.sleep(0.001)
            return x

        async with server, aio.Client(server.address, backend=backend_name, timeout=10) as c:
            assert [await c.echo(i) for i in range(7)] == list(range(7))
            assert server.stats["accepted"] == 3
            assert await asyncio.gather(*(c.echo(i) for i in range(10))) == list(range(10))
            assert await wait_for_condition(lambda: server.connection_count == 1)

    arun(main())


def test_calls_wait_while_the_server_does_not_read(
    arun, scripted_server, backend_name, monkeypatch
) -> None:
    """The client honours pause_writing: while its buffer is over the high-water mark (the
    server stopped reading), new calls wait unsent, bounded by their deadline."""
    monkeypatch.setattr(aio.Client, "_CLOSE_FLUSH", 0.2)

    def script(srv, sock, proto):
        srv.handshake(sock, proto)
        srv.stopping.wait(10)  # never reads again

    server = scripted_server(script)

    async def main() -> None:
        client = client_for(server, backend_name)
        try:
            big = b"x" * (12 << 20)  # more than the kernel buffers take
            first = asyncio.ensure_future(client.call("echo", big))
            assert await wait_for_condition(lambda: client._conn is not None)
            conn = client._conn
            assert await wait_for_condition(lambda: conn._writing_paused)
            queued = conn.transport.get_write_buffer_size()
            with pytest.raises(DeadlineExceeded, match="before it could be sent"):
                await client.call("echo", big, timeout=0.2)
            assert conn.transport.get_write_buffer_size() <= queued  # never queued
            assert conn.pending == 1
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
        finally:
            await client.close()  # bounded although the server never takes the bytes

    arun(main())
