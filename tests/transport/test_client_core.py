"""The blocking client's two cores (cext/client.pyx and transport/_client_py.py).

Both cores must put the same bytes on the wire and behave the same: replies split
anywhere, large bodies read into place, bytes that follow the handshake, callbacks that
submit more calls (batched sends, reading threads that never block on a full socket),
keepalive across long calls, async deadline bookkeeping, and the Future semantics of
``call_async``.  Every behaviour test runs on both backends.
"""

from __future__ import annotations

import os
import random
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, as_completed, wait
from typing import Any

import pytest
from rpc_helpers import ScriptedServer, wait_until, wire_of

import rapidrpc
from rapidrpc import DeadlineExceeded, RemoteError, StatusCode
from rapidrpc.core.protocol import ClientConnection, ServerConnection
from rapidrpc.transport import _client_py, blocking
from rapidrpc.transport._common import CORE_API, CORE_METHODS, PROTOCOL_FIELDS
from rapidrpc.wire import constants as C
from testsupport import load_backend

# --- the two cores -------------------------------------------------------------------------------


def test_both_cores_export_the_same_api(backend_name) -> None:
    core = blocking.CORES[backend_name]
    assert tuple(sorted(core.__all__)) == CORE_API
    for name in CORE_METHODS:  # defined by the core itself, not inherited
        assert name in vars(core.ConnectionCore), f"{backend_name} core lacks {name}"
    assert issubclass(core.CallFuture, Future)


def test_protocol_fields_the_compiled_core_reaches_are_slots(make_server, make_client) -> None:
    """The compiled core reads and writes these at their slot's offset in the protocol."""
    server = make_server()
    server.register(lambda: 1, name="one")
    client = make_client(server)
    assert client.one() == 1
    proto = client._conn.proto
    for name in PROTOCOL_FIELDS:
        descriptor = getattr(type(proto), name)
        assert type(descriptor).__name__ == "member_descriptor", name
        assert name not in vars(proto), f"{name} is also in the instance __dict__"
        assert descriptor.__get__(proto) is getattr(proto, name)


class _ShadowedField(ClientConnection):
    last_request_id = 0  # a class attribute hides the slot: the value lands in __dict__


def test_compiled_core_reaches_only_slots() -> None:
    """The core takes slot offsets only from real slots, and only for that protocol type."""
    load_backend("cython")  # (skips under RAPIDRPC_PURE_PYTHON=1)
    from rapidrpc.transport import _client_c

    a, b = socket.socketpair()
    try:
        core = _client_c.ConnectionCore()
        core.sock = a
        core.proto = _ShadowedField()
        with pytest.raises(TypeError, match="last_request_id is not a writable __slots__"):
            core._core_init()
        core.proto = ClientConnection()
        core._core_init()
        assert core.fresh(float("inf"))  # usable: its offsets read the protocol's fields
        core.proto._next_id = C.MAX_REQUEST_ID + 1
        assert not core.fresh(float("inf"))  # ids exhausted, read at the slot's offset
        core.proto = _ShadowedField()  # another type: its offsets may differ
        with pytest.raises(TypeError, match="protocol object was replaced"):
            core.fresh(float("inf"))
    finally:
        a.close()
        b.close()


def test_each_backend_uses_its_own_core(make_server, make_client, backend_name) -> None:
    server = make_server()
    server.register(lambda: 1, name="one")
    client = make_client(server)
    assert client.one() == 1
    conn = type(client._conn)
    assert conn is blocking.connection_class(backend_name)
    own = blocking.CORES[backend_name].ConnectionCore
    assert conn.call is own.call  # the hot paths come from the backend's core
    if backend_name == "cython":
        assert own is not _client_py.ConnectionCore
    with pytest.raises(ValueError, match="backend"):
        blocking.connection_class("fortran")


# --- identical bytes on the wire ---------------------------------------------------------------


class RecordingServer:
    """One connection at a time: records every byte the client sends, answers with a
    fixed (pure-Python) ServerConnection, so two clients can be compared byte for byte.

    Methods: ``echo(x)`` returns x, ``add(a, b)``, ``fail()`` an error reply, ``none()``
    never answers.  The first ``add`` reply is preceded by a ping.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.address = self.listener.getsockname()[:2]
        self.received: list[bytes] = []
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            with sock:
                self._serve(sock)

    def _serve(self, sock: socket.socket) -> None:
        proto = ServerConnection(**wire_of("python"))
        stream = bytearray()
        pinged = False
        sock.settimeout(10)
        while True:
            try:
                data = sock.recv(1 << 20)
            except OSError:
                data = b""
            if not data:
                self.received.append(bytes(stream))
                return
            stream += data
            for event in proto.receive_data(data):
                if event[0] != C.KIND_REQUEST:
                    continue
                _, rid, method, args, kwargs = event[:5]
                if method == "add" and not pinged:
                    pinged = True
                    proto.send_ping()
                if method == "echo":
                    proto.send_response(rid, args[0] if not kwargs else [args, kwargs])
                elif method == "add":
                    proto.send_response(rid, args[0] + args[1])
                elif method == "fail":
                    proto.send_error(rid, StatusCode.INTERNAL, "it failed", "ValueError")
            out = proto.data_to_send()
            if out:
                sock.sendall(out)

    def close(self) -> None:
        self.stopping.set()
        self._thread.join(10)
        self.listener.close()


def _conversation(client: rapidrpc.Client) -> list[Any]:
    """A fixed sequence of every kind of client output; returns what came back."""
    results: list[Any] = [
        client.add(1, 2),
        client.call("echo", {"k": [1, 2.5, None, True]}, timeout=5.0),
        client.call("echo", "x", key="v"),
    ]
    client.notify("echo", "note")
    results.append(client.call_async("echo", b"\x01" * 70_000).result(10))
    results.append(client.call("echo", bytes(range(256)) * 1200))  # > the receive buffer
    with pytest.raises(RemoteError) as failed:
        client.call("fail")
    results.append((type(failed.value).__name__, failed.value.args))
    with pytest.raises(DeadlineExceeded):
        client.call("none", timeout=0.2)  # then a cancel frame
    futures = [client.call_async("echo", i) for i in range(5)]
    results.append([f.result(10) for f in futures])
    return results


def test_both_clients_put_identical_bytes_on_the_wire() -> None:
    """Each backend's client, run through the same conversation, sends the same bytes."""
    load_backend("cython")  # (skips under RAPIDRPC_PURE_PYTHON=1)
    server = RecordingServer()
    try:
        outcomes = {}
        for name in ("cython", "python"):
            with rapidrpc.Client(server.address, backend=name) as client:
                outcomes[name] = _conversation(client)
        assert wait_until(lambda: len(server.received) == 2)
    finally:
        server.close()
    assert outcomes["cython"] == outcomes["python"]
    cython_bytes, python_bytes = server.received
    assert cython_bytes == python_bytes
    assert len(cython_bytes) > 300_000  # (the conversation did happen)


# --- receiving -----------------------------------------------------------------------------------


def _split_replies_script(seed: int, sizes: list[int]):
    """Answer one batch of pipelined ``blob`` calls with replies written in random pieces."""

    def script(server: ScriptedServer, sock: socket.socket, proto: ServerConnection) -> None:
        server.handshake(sock, proto)
        rids: list[int] = []
        while len(rids) < len(sizes):
            data = sock.recv(65536)
            if not data:
                return
            rids += [e[1] for e in proto.receive_data(data) if e[0] == C.KIND_REQUEST]
        for rid, size in zip(rids, sizes, strict=True):
            proto.send_response(rid, bytes([size % 251]) * size)
        stream = proto.data_to_send()
        rng = random.Random(seed)
        pos = 0
        while pos < len(stream):
            step = rng.choice((1, 5, 11, 12, 13, 4096, 65_535, 70_000))
            sock.sendall(stream[pos : pos + step])
            pos += step
            if rng.random() < 0.3:
                time.sleep(0.002)  # let the client read what is there so far
        server.read_events(sock, proto, 2.0)

    return script


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_replies_split_anywhere(scripted_server, make_client, seed) -> None:
    zc = C.ZERO_COPY_MIN_BODY
    sizes = [1, 3, zc - 20, zc, 7, 300_000, zc + 1, 2]
    server = scripted_server(_split_replies_script(seed, sizes))
    client = make_client(server.address, timeout=10)
    futures = [client.call_async("blob", i) for i in range(len(sizes))]
    for future, size in zip(futures, sizes, strict=True):
        assert future.result(10) == bytes([size % 251]) * size


def test_bytes_right_after_the_handshake_reach_the_core(scripted_server, make_client) -> None:
    """A server that pings in the same write as its settings gets its pong."""

    def greet_and_ping(server, sock, proto) -> None:
        sock.settimeout(5)
        while not proto.handshake_complete:
            server.events += proto.receive_data(sock.recv(65536))
        proto.send_ping()
        sock.sendall(proto.data_to_send())  # preface + settings + ping, one write
        while True:
            data = sock.recv(65536)
            if not data:
                return
            for event in proto.receive_data(data):
                server.events.append(event)
                if event[0] == C.KIND_REQUEST:
                    proto.send_response(event[1], "ok")
            sock.sendall(proto.data_to_send())

    server = scripted_server(greet_and_ping)
    client = make_client(server.address, timeout=5)
    assert client.call("f") == "ok"
    assert wait_until(lambda: any(e[0] == C.KIND_PONG for e in server.events))


def test_long_call_with_a_short_keepalive(make_server, make_client) -> None:
    """Keepalive counts the server's silence in short recv slices: a call lasting several
    keepalive periods survives as long as pings are answered."""
    server = make_server()
    server.register(lambda: (time.sleep(0.8), "done")[1], name="slow", blocking=True)
    client = make_client(server, keepalive=0.2)
    assert client.slow() == "done"


# --- sending -------------------------------------------------------------------------------------


def test_callbacks_that_submit_large_calls_never_deadlock(make_server, make_client) -> None:
    """Callbacks run by the reading thread submit more large calls: their requests must
    flow while replies are read, though neither side's socket buffer holds them all."""
    server = make_server()
    server.register(lambda data: data, name="echo")
    client = make_client(server, timeout=30)
    assert client.echo(b"") == b""
    # A send buffer smaller than one request: writes from the reading thread come up short
    # and the rest waits in its backlog, written as the socket drains.
    client._conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
    blob = bytes(range(256)) * 2048  # 512 KiB
    total, window = 40, 8
    done = threading.Event()
    lock = threading.Lock()
    state = {"submitted": 0, "finished": 0, "bad": 0}

    def submit() -> None:
        with lock:
            if state["submitted"] == total:
                return
            state["submitted"] += 1
        client.call_async("echo", blob).add_done_callback(finished)

    def finished(future) -> None:
        ok = future.exception() is None and future.result() == blob
        with lock:
            state["finished"] += 1
            state["bad"] += not ok
            if state["finished"] == total:
                done.set()
        submit()

    for _ in range(window):
        submit()
    assert done.wait(60), state
    assert state["bad"] == 0


def test_many_threads_with_callbacks_share_sends(make_server, make_client) -> None:
    """Threads submitting while another sends, and callbacks submitting from the reading
    thread: every call is answered, in any interleaving."""
    server = make_server()
    server.register(lambda x: x, name="echo")
    client = make_client(server, timeout=30)
    chained: list[Any] = []

    def worker(n: int) -> None:
        futures = []
        for i in range(200):
            future = client.call_async("echo", (n, i))
            if i % 50 == 0:
                future.add_done_callback(
                    lambda f, n=n, i=i: chained.append(client.call_async("echo", (-n, i)))
                )
            futures.append(future)
        assert [f.result(30) for f in futures] == [[n, i] for i in range(200)]
        assert client.echo(n) == n

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert wait_until(lambda: len(chained) == 24)
    assert sorted(tuple(f.result(30)) for f in chained) == sorted(
        (-n, i) for n in range(6) for i in range(0, 200, 50)
    )


def test_async_deadline_bookkeeping_stays_small(make_server, make_client) -> None:
    """Answered calls' deadlines do not pile up until they would have expired."""
    server = make_server()
    server.register(lambda x: x, name="echo")
    client = make_client(server)
    for _ in range(5):
        futures = [client.call_async("echo", i, timeout=60) for i in range(600)]
        assert [f.result(30) for f in futures] == list(range(600))
    # Compacted whenever it outgrows twice the calls pending (at most 600 here), not 3000.
    assert len(client._conn._async_deadlines) <= 2 * 600 + 64 + 1


# --- the futures of call_async -------------------------------------------------------------------


def _delayed_script(delay: float):
    """Answer each request after *delay* seconds (``boom`` with an error, ``hold`` never)."""

    def script(server, sock, proto) -> None:
        server.handshake(sock, proto)
        sock.settimeout(5)
        while True:
            data = sock.recv(65536)
            if not data:
                return
            for event in proto.receive_data(data):
                server.events.append(event)
                if event[0] == C.KIND_REQUEST and event[2] != "hold":
                    time.sleep(delay)
                    if event[2] == "boom":
                        proto.send_error(event[1], StatusCode.INTERNAL, "boom", "KeyError")
                    else:
                        proto.send_response(event[1], event[3])
            out = proto.data_to_send()
            if out:
                sock.sendall(out)

    return script


def test_future_waits_callbacks_and_errors(scripted_server, make_client) -> None:
    server = scripted_server(_delayed_script(0.1))
    client = make_client(server.address, timeout=10)
    future = client.call_async("echo", 1)
    seen: list[Any] = []
    future.add_done_callback(lambda f: seen.append(("early", f.result())))
    assert not future.done() and not future.cancelled()
    woke: list[Any] = []
    waiter = threading.Thread(target=lambda: woke.append(future.result(5)))
    waiter.start()  # a thread blocked in result() is woken by the reply
    waiter.join(5)
    assert woke == [[1]] and future.done()
    future.add_done_callback(lambda f: seen.append(("late", f.result())))  # runs at once
    assert seen == [("early", [1]), ("late", [1])]

    failing = client.call_async("boom")
    with pytest.raises(RemoteError, match="boom"):
        failing.result(5)
    assert isinstance(failing.exception(0), RemoteError)

    batch = [client.call_async("echo", i) for i in range(4)]
    done, _ = wait(batch, timeout=5, return_when=FIRST_COMPLETED)
    assert done
    assert sorted(f.result() for f in as_completed(batch, timeout=5)) == [[i] for i in range(4)]


def test_cancelled_future(scripted_server, make_client) -> None:
    server = scripted_server(_delayed_script(0.3))
    client = make_client(server.address, timeout=10)
    first = client.call_async("echo", 1)
    second = client.call_async("hold")
    assert second.cancel() and second.cancelled() and second.done()
    with pytest.raises(CancelledError):
        second.result(0)
    assert first.result(5) == [1]
    assert not first.cancel()  # already done
    assert wait_until(lambda: (C.KIND_CANCEL, 2) in server.events)


# The interleaving behind a crash once seen in the GC, long after the test that caused it:
# a thread's first use of a future's __dict__ runs the GC (the dict is allocated), a GC
# callback lets a second thread in, and that thread uses the same future's __dict__.
# Should both threads create the dict (CPython builds it lazily from the instance's values
# array), the two dicts share that array and the first to die frees it under the other.
# Run in a child with the debug allocator, where freed memory is poisoned: the crash then
# comes at once instead of tests later.
_DICT_RACE = """
import gc, sys, threading
from rapidrpc.transport import blocking

CallFuture = blocking.CORES[sys.argv[1]].CallFuture
future = CallFuture(None)
go, done = threading.Event(), threading.Event()
seen = []

def second_thread():
    go.wait()
    seen.append(id(future.__dict__))
    future._condition  # (the compiled core creates it on first use)
    done.set()

def let_the_other_thread_in(phase, info):
    if phase == "start" and not go.is_set() and threading.current_thread() is main:
        go.set()
        done.wait(5)

main = threading.current_thread()
thread = threading.Thread(target=second_thread)
thread.start()
add_done_callback = CallFuture.add_done_callback  # (no bound method: no GC allocation)
callback = lambda f: None
hold = [{} for _ in range(200)]  # empty the dict free list: a new dict is a GC allocation
gc.callbacks.append(let_the_other_thread_in)
gc.set_threshold(1)
try:
    add_done_callback(future, callback)  # first use of __dict__ in this thread
finally:
    gc.set_threshold(700, 10, 10)
    gc.callbacks.remove(let_the_other_thread_in)
    go.set()
    thread.join(10)
seen.append(id(future.__dict__))
assert seen[0] == seen[-1], "two threads saw two different instance dicts"
assert future._done_callbacks == [callback] and not future.done()
del future
gc.collect()  # traverses every dict: a freed values array crashes here
print("ok")
"""


def test_future_dict_survives_threads_racing_to_first_use(backend_name) -> None:
    env = dict(os.environ, PYTHONMALLOC="debug")
    child = subprocess.run(
        [sys.executable, "-c", _DICT_RACE, backend_name],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0 and child.stdout.strip() == "ok", child.stderr[-2000:]


# --- protocol errors in the middle of a batch -----------------------------------------------------


def _batch_script(*frames_for, piece: int = 0):
    """Answer the first two requests with one write of ``make(server, rids)`` frames
    (*piece*: in writes of that many bytes instead, a moment apart)."""

    def script(server, sock, proto) -> None:
        server.handshake(sock, proto)
        sock.settimeout(5)
        rids: list[int] = []
        while len(rids) < 2:
            data = sock.recv(65536)
            if not data:
                return
            rids += [e[1] for e in proto.receive_data(data) if e[0] == C.KIND_REQUEST]
        w = wire_of(server.backend_name)
        stream = b"".join(make(w, rids) for make in frames_for)
        for pos in range(0, len(stream), piece or len(stream)):
            sock.sendall(stream[pos : pos + (piece or len(stream))])
            if piece:
                time.sleep(0.0005)
        server.read_events(sock, proto, 2.0)

    return script


def _reply(kind: int, value: Any, which: int = 0, raw: bytes | None = None):
    """A frame answering request *which* of the batch (*raw*: that body, not encoded)."""

    def make(w: dict[str, Any], rids: list[int]) -> bytes:
        body = raw if raw is not None else w["serializer"].dumps(value)
        return w["framing"].encode_frame(kind, rids[which], body)

    return make


def test_large_replies_keep_the_protocol_rules(scripted_server, make_client) -> None:
    """Large replies, read into place in pieces: one for an unknown request is dropped, a
    large bin and a large error body reach their calls."""
    blob = bytes(range(256)) * 400

    def unknown(w: dict[str, Any], rids: list[int]) -> bytes:
        return w["framing"].encode_frame(C.KIND_RESPONSE, 77, w["serializer"].dumps(blob))

    error = _reply(C.KIND_ERROR, [13, "x" * 100_000, "ValueError", None], 1)
    server = scripted_server(
        _batch_script(unknown, _reply(C.KIND_RESPONSE, blob), error, piece=1000)
    )
    client = make_client(server.address, timeout=10)
    first, second = client.call_async("a"), client.call_async("b")
    assert first.result(10) == blob
    with pytest.raises(RemoteError) as failed:
        second.result(10)
    assert failed.value.message == "x" * 100_000
    assert client._conn.proto.dropped_replies == 1


def test_large_reply_with_bytes_after_its_value_is_a_protocol_error(
    scripted_server, make_client
) -> None:
    value = wire_of("python")["serializer"].dumps(b"\x01" * 100_000)
    bad = _reply(C.KIND_RESPONSE, None, raw=value + b"\xc0")
    server = scripted_server(_batch_script(bad, piece=1000))
    client = make_client(server.address, timeout=10)
    first, second = client.call_async("a"), client.call_async("b")
    with pytest.raises(rapidrpc.ConnectionLost, match="protocol error"):
        first.result(10)
    with pytest.raises(rapidrpc.ConnectionLost):
        second.result(10)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (_reply(C.KIND_RESPONSE, None, 1, raw=b"\xc1"), "undecodable"),
        (_reply(C.KIND_ERROR, ["not", "an", "error"], 1), "malformed error body"),
        (_reply(C.KIND_REQUEST, ["f", []], 1), "a server may not send request frames"),
    ],
)
def test_a_bad_frame_fails_every_call_of_its_batch(scripted_server, make_client, bad, message):
    """A good reply then a bad frame in one read: both calls fail, neither hangs."""
    server = scripted_server(_batch_script(_reply(C.KIND_RESPONSE, "good"), bad))
    client = make_client(server.address, timeout=5)
    futures = [client.call_async("f"), client.call_async("g")]
    for future in futures:
        with pytest.raises(rapidrpc.ConnectionLost, match=message):
            future.result(5)


# --- a lone reply (the sequential path) --------------------------------------------------------


def _lone_script(answers):
    """Answer request i with the raw frame ``answers[i](w, rid)``; record stream offsets.

    ``script.offsets[i]``: the stream offset (from the server's first byte) of answer i.
    """

    def script(server, sock, proto) -> None:
        sock.settimeout(5)
        while not proto.handshake_complete:
            data = sock.recv(65536)
            if not data:
                return
            server.events += proto.receive_data(data)
        hello = proto.data_to_send()
        sock.sendall(hello)
        offset = len(hello)
        w = wire_of(server.backend_name)
        queue = list(answers)
        while queue:
            data = sock.recv(65536)
            if not data:
                return
            for event in proto.receive_data(data):
                if event[0] == C.KIND_REQUEST and queue:
                    frame = queue.pop(0)(w, event[1])
                    script.offsets.append(offset)
                    offset += len(frame)
                    sock.sendall(frame)
        server.read_events(sock, proto, 2.0)

    script.offsets = []
    return script


def _answer(kind: int, value: Any = None, raw: bytes | None = None):
    def make(w: dict[str, Any], rid: int) -> bytes:
        body = raw if raw is not None else w["serializer"].dumps(value)
        return w["framing"].encode_frame(kind, rid, body)

    return make


def test_error_offsets_count_the_replies_before(scripted_server, make_client) -> None:
    """The compiled core routes a lone reply without the frame parser (and tells it the
    bytes went by): a later protocol error still names the exact stream offset."""
    bad_kind = lambda w, rid: struct.pack(">IBBHI", 1, 99, 0, 0, rid) + b"\xc0"  # noqa: E731
    answers = [_answer(C.KIND_RESPONSE, i) for i in range(3)] + [bad_kind]
    script = _lone_script(answers)
    server = scripted_server(script)
    client = make_client(server.address, timeout=5)
    assert [client.f() for _ in range(3)] == [0, 1, 2]
    with pytest.raises(rapidrpc.ConnectionLost) as info:
        client.f()
    assert f"stream offset {script.offsets[3]}:" in str(info.value)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (_answer(C.KIND_RESPONSE, raw=b"\xc1"), "undecodable response body (request id 2)"),
        (_answer(C.KIND_RESPONSE, raw=b"\x92\x01"), "undecodable response body (request id 2)"),
        (_answer(C.KIND_ERROR, ["not", "an", "error"]), "malformed error body"),
        (_answer(C.KIND_REQUEST, ["f", []]), "a server may not send request frames"),
    ],
)
def test_a_bad_lone_reply_fails_its_call(scripted_server, make_client, bad, message) -> None:
    """After a good reply, a bad one: its call fails with the protocol's own error."""
    server = scripted_server(_lone_script([_answer(C.KIND_RESPONSE, "good"), bad]))
    client = make_client(server.address, timeout=5)
    assert client.f() == "good"
    with pytest.raises(rapidrpc.ConnectionLost, match=re.escape(message)):
        client.f()
    assert client.f() == "good"  # only that connection was lost: the next call reconnects
    assert server.connections == 2


# --- the method proxy ---------------------------------------------------------------------------


def test_method_proxies_take_the_backends_fast_path(make_server, make_client, backend_name):
    server = make_server()
    server.register(lambda a, b: a + b, name="calc.add")
    server.register(lambda **kw: sorted(kw), name="keys")
    client = make_client(server)
    proxy = client.calc.add
    assert type(client.calc) is type(proxy)
    assert isinstance(proxy, rapidrpc.client._MethodProxy)
    if backend_name == "cython":
        assert isinstance(proxy, blocking.CORES["cython"].MethodCall)
    else:
        assert type(proxy) is rapidrpc.client._MethodProxy
    assert proxy(1, 2) == 3
    assert client.keys(b=1, a=2) == ["a", "b"]
    assert repr(proxy).startswith("<remote method 'calc.add'")
    with pytest.raises(AttributeError):
        client.calc._private  # noqa: B018


def test_method_proxy_retries_idempotent_methods(make_server, make_client, monkeypatch):
    """The compiled proxy leaves idempotent methods to Client._invoke, which retries."""
    server = make_server()
    server.register(lambda: "ok", name="ping")
    client = make_client(server, idempotent_methods=["ping"])
    assert client.ping() == "ok"
    calls = []
    real = type(client._conn).call

    def flaky(self, *args):
        calls.append(args[0])
        if len(calls) == 1:
            raise rapidrpc.ConnectionLost("lost once")
        return real(self, *args)

    monkeypatch.setattr(type(client._conn), "call", flaky)
    assert client.ping() == "ok"
    assert calls == ["ping", "ping"]


def test_method_proxy_resends_a_call_the_server_never_processed(scripted_server, make_client):
    """A goaway saying the call was not processed: the proxy sends it once more on a new
    connection (as Client._invoke does), and only then."""

    def script(server, sock, proto) -> None:
        server.handshake(sock, proto)
        w = wire_of(server.backend_name)
        first = server.connections == 1
        sock.settimeout(5)
        while True:
            data = sock.recv(65536)
            if not data:
                return
            for event in proto.receive_data(data):
                if event[0] != C.KIND_REQUEST:
                    continue
                if first:  # "nothing above request id 0 will be processed"
                    body = w["serializer"].dumps([0, 0, "restarting"])
                    sock.sendall(w["framing"].encode_frame(C.KIND_GOAWAY, 0, body))
                    return
                reply = w["serializer"].dumps(server.connections)
                sock.sendall(w["framing"].encode_frame(C.KIND_RESPONSE, event[1], reply))

    server = scripted_server(script)
    client = make_client(server.address, timeout=5)
    client._connection()  # connected and fresh: the call takes the proxy's fast path
    assert client.which() == 2
    assert server.connections == 2


# --- the core's lock ----------------------------------------------------------------------------


def test_core_lock_behaves_like_threading_lock(backend_name) -> None:
    Lock = blocking.CORES[backend_name].Lock
    lock = Lock()
    assert not lock.locked()
    assert lock.acquire() is True and lock.locked()
    assert lock.acquire(False) is False
    assert lock.acquire(blocking=False) is False
    start = time.monotonic()
    assert lock.acquire(timeout=0.05) is False
    assert time.monotonic() - start >= 0.04
    with pytest.raises(ValueError):
        lock.acquire(False, 1)
    with pytest.raises(ValueError):
        lock.acquire(timeout=-2)
    lock.release()
    with pytest.raises(RuntimeError):
        lock.release()
    with lock:
        assert lock.locked()
    assert not lock.locked()
    # Another thread releases what this one acquired (a Lock, not an RLock), and wakes us.
    lock.acquire()
    threading.Timer(0.05, lock.release).start()
    assert lock.acquire(timeout=5) is True
    lock.release()


def test_core_lock_serves_a_condition(backend_name) -> None:
    Lock = blocking.CORES[backend_name].Lock
    lock = Lock()
    cond = threading.Condition(lock)
    box: list[int] = []

    def producer() -> None:
        for i in range(100):
            with cond:
                box.append(i)
                cond.notify_all()

    thread = threading.Thread(target=producer)
    with cond:
        thread.start()
        assert cond.wait_for(lambda: len(box) == 100, timeout=10)
    thread.join(10)
    assert not thread.is_alive() and not lock.locked()


def test_settings_changed_mid_connection_are_honoured(scripted_server, make_client) -> None:
    """A second settings frame (lower limits) binds the next calls: the compiled core
    keeps copies of the peer's limits, refreshed by every connection frame."""

    def settings(w, rid) -> bytes:
        body = w["serializer"].dumps({"max_frame_size": 64, "max_inflight": 1, "max_depth": 8})
        reply = w["framing"].encode_frame(C.KIND_RESPONSE, rid, w["serializer"].dumps("first"))
        return w["framing"].encode_frame(C.KIND_SETTINGS, 0, body) + reply

    answers = [settings] + [_answer(C.KIND_RESPONSE, n) for n in range(2, 5)]
    server = scripted_server(_lone_script(answers))
    client = make_client(server.address, timeout=5)
    assert client.f() == "first"
    with pytest.raises(rapidrpc.ResourceExhausted, match="max_frame_size=64"):
        client.f(b"x" * 100)
    assert client.f() == 2  # small calls still go
    futures = [client.call_async("f") for _ in range(2)]  # one in flight, one held
    assert sorted(f.result(5) for f in futures) == [3, 4]
    assert client._conn.proto.pending == 0


def test_core_lock_wait_runs_signal_handlers(backend_name) -> None:
    """A wait for the lock in the main thread runs signal handlers and propagates what
    they raise (Ctrl-C interrupts it), as threading.Lock's does."""
    import signal

    class Boom(Exception):
        pass

    def handler(signum, frame):
        raise Boom()

    lock = blocking.CORES[backend_name].Lock()
    lock.acquire()
    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(Boom):
            lock.acquire(timeout=10)
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(Boom):
            lock.acquire()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert lock.locked()
    lock.release()
    assert not lock.locked()
