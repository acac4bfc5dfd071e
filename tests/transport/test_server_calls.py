"""Server semantics over real sockets: registration, errors, blocking handlers, deadlines,
pipelining, out-of-order replies, shared clients, graceful stop.  Each test runs on both
backends (server and client use the same one)."""

from __future__ import annotations

import threading
import time

import pytest
from rpc_helpers import wait_until

import rapidrpc
from rapidrpc import (
    ConnectionLost,
    DeadlineExceeded,
    InvalidParams,
    MethodNotFound,
    RemoteError,
    StatusCode,
    Unavailable,
)


class Calc:
    def add(self, a, b):
        """Add."""
        return a + b

    def _secret(self):
        return "hidden"


def test_basic_calls_and_introspection(make_server, make_client) -> None:
    server = make_server()

    @server.export
    def add(a, b):
        """Add two numbers."""
        return a + b

    @server.export(name="text.upper")
    def upper(s, *, suffix=""):
        return s.upper() + suffix

    server.register(len, name="length")
    server.register_instance(Calc(), prefix="calc")
    host, port = server.address
    assert host == "127.0.0.1" and port > 0
    client = make_client(f"{host}:{port}")
    assert client.add(2, 3) == 5
    assert client.text.upper("ab", suffix="!") == "AB!"
    assert client.call("text.upper", "x") == "X"
    assert client.calc.add(1.5, 2) == 3.5
    assert client.length([1, 2, 3]) == 3
    assert client.add("a", "b") == "ab"
    assert client.add([1], [2]) == [1, 2]
    assert client.add(b"\x00", b"\xff") == b"\x00\xff"
    methods = {m["name"]: m for m in client.call("rpc.methods")}
    assert methods["add"]["signature"] == "(a, b)" and methods["add"]["doc"] == "Add two numbers."
    assert "calc.add" in methods and "calc._secret" not in methods


def test_methods_are_found_as_registered_now(make_server, make_client) -> None:
    """Repeated, alternating and re-registered names each reach their current handler."""
    server = make_server()
    server.register(lambda: "a", name="fa")
    server.register(lambda: "b", name="fb")
    server.register(lambda: "wide", name="f\u540d")  # same length, not ASCII
    client = make_client(server)
    assert [client.call(n) for n in ("fa", "fa", "fb", "fa", "f\u540d", "fb")] == [
        "a",
        "a",
        "b",
        "a",
        "wide",
        "b",
    ]
    server.register(lambda: "a again", name="".join(["f", "a"]))  # another str object
    assert client.call("fa") == "a again"
    assert client.call("fb") == "b"
    with pytest.raises(rapidrpc.MethodNotFound):
        client.call("fc")


def test_errors_keep_the_connection_usable(make_server, make_client) -> None:
    """HOSTILE 23/24: unknown method, wrong arity, handler exceptions -> error replies."""
    server = make_server()
    server.register_instance(Calc(), prefix="calc")

    @server.export
    def boom(x):
        raise KeyError(x)

    @server.export
    def deny():
        raise Unavailable("not now", details={"retry_after": 1})

    client = make_client(server)
    with pytest.raises(MethodNotFound) as ei:
        client.nope()
    assert ei.value.code == StatusCode.UNIMPLEMENTED
    with pytest.raises(AttributeError):
        client.calc._secret  # noqa: B018 - private names never even build a proxy
    with pytest.raises(MethodNotFound):
        client.call("calc._secret")
    with pytest.raises(InvalidParams):
        client.calc.add(1)
    with pytest.raises(InvalidParams):
        client.calc.add(1, 2, c=3)
    with pytest.raises(RemoteError) as ei:
        client.boom("k")
    assert (ei.value.code, ei.value.remote_type, ei.value.message) == (
        StatusCode.UNKNOWN,
        "KeyError",
        "'k'",
    )
    with pytest.raises(Unavailable) as ei:
        client.deny()
    assert ei.value.details == {"retry_after": 1}
    assert client.calc.add(1, 1) == 2  # the same connection still works
    assert server.connection_count == 1


def test_private_attribute_proxy_refused_locally(make_server, make_client) -> None:
    client = make_client(make_server())
    with pytest.raises(AttributeError):
        client._private  # noqa: B018


def test_unserializable_result_is_an_error_reply(make_server, make_client) -> None:
    server = make_server()
    server.register(lambda: object(), name="bad")
    client = make_client(server)
    with pytest.raises(RemoteError) as ei:
        client.bad()
    assert ei.value.code == StatusCode.INTERNAL


def test_async_handlers_point_to_aio(make_server) -> None:
    server = make_server(start=False)

    async def coro():
        return 1

    with pytest.raises(TypeError, match=r"rapidrpc\.aio\.Server"):
        server.register(coro)


def test_out_of_order_replies(make_server, make_client) -> None:
    """A blocking handler and an inline one in flight together: the later one answers first."""
    server = make_server()
    release = threading.Event()

    @server.export(blocking=True)
    def wait_for_release():
        assert release.wait(5)
        return "slow"

    @server.export
    def fast():
        return "fast"

    client = make_client(server)
    slow = client.call_async("wait_for_release")
    assert client.fast() == "fast"
    assert not slow.done()
    release.set()
    assert slow.result(5) == "slow"


def test_ten_thousand_pipelined_calls(make_server, make_client) -> None:
    server = make_server()
    server.register(lambda a, b: a + b, name="add")
    client = make_client(server)
    futures = [client.call_async("add", i, 1) for i in range(10**4)]
    assert [f.result(30) for f in futures] == [i + 1 for i in range(10**4)]


def test_map_yields_results_in_input_order(make_server, make_client) -> None:
    server = make_server()
    server.register(lambda a, b: a + b, name="add")
    server.register(lambda: "none", name="nothing")
    client = make_client(server)
    n = 10**4
    assert list(client.map("add", range(n), range(n))) == [2 * i for i in range(n)]
    assert list(client.map("add", [1, 2, 3], [10, 20])) == [11, 22]  # the shortest wins
    assert list(client.map("add", [], [])) == []
    assert list(client.map("add", [(1,)], [(2,)], window=1)) == [[1, 2]]  # (tuples: arrays)
    with pytest.raises(ValueError, match="window"):
        client.map("add", [1], [2], window=0)
    assert client.add(1, 2) == 3  # the connection is clean for other calls


def test_map_keeps_at_most_window_calls_in_flight(make_server, make_client) -> None:
    server = make_server(threads=8)
    running = [0, 0]  # now, most at once
    lock = threading.Lock()

    def slow(x):
        with lock:
            running[0] += 1
            running[1] = max(running)
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return x

    server.register(slow, name="slow", blocking=True)
    client = make_client(server)
    assert list(client.map("slow", range(24), window=4)) == list(range(24))
    assert 1 < running[1] <= 4


def test_map_shares_the_client_with_other_threads(make_server, make_client) -> None:
    """A map in one thread while other threads call and map on the same client: every
    reply reaches its own caller (the map's leader reads for everyone, and follows others)."""
    server = make_server()
    server.register(lambda a, b: a + b, name="add")
    client = make_client(server)
    results: dict[str, object] = {}

    def mapper(key: str, offset: int) -> None:
        results[key] = list(client.map("add", range(3000), [offset] * 3000, window=32))

    def caller(key: str) -> None:
        results[key] = [client.add(i, 1) for i in range(300)]

    threads = [
        threading.Thread(target=mapper, args=("map-a", 1)),
        threading.Thread(target=mapper, args=("map-b", 2)),
        threading.Thread(target=caller, args=("calls-a",)),
        threading.Thread(target=caller, args=("calls-b",)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results["map-a"] == [i + 1 for i in range(3000)]
    assert results["map-b"] == [i + 2 for i in range(3000)]
    assert results["calls-a"] == results["calls-b"] == [i + 1 for i in range(300)]


def _settled(client) -> bool:
    conn = client._conn
    return conn.proto.pending == 0 and not conn._results


def test_map_raises_at_the_failed_call_and_cancels_the_rest(make_server, make_client) -> None:
    server = make_server()

    def check(x):
        if x == 5:
            raise KeyError("five")
        return x

    server.register(check, name="check")
    client = make_client(server)
    results = client.map("check", range(100), window=16)
    assert [next(results) for _ in range(5)] == list(range(5))
    with pytest.raises(RemoteError, match="five") as info:
        next(results)
    assert info.value.remote_type == "KeyError"
    with pytest.raises(StopIteration):
        next(results)
    assert wait_until(lambda: _settled(client))
    assert client.call("check", 7) == 7


def test_map_stopped_early_cancels_the_calls_in_flight(make_server, make_client) -> None:
    server = make_server(threads=4)
    seen: list[int] = []
    server.register(lambda x: (seen.append(x), time.sleep(0.01), x)[2], name="work", blocking=True)
    client = make_client(server)
    results = client.map("work", range(1000), window=32)
    assert next(results) == 0 and next(results) == 1
    results.close()
    assert wait_until(lambda: _settled(client))
    assert client.call("work", 9) == 9
    assert len(seen) <= 64 + 1  # at most two windows were ever sent, not the 1000


def test_map_dropped_while_the_connection_lock_is_held(make_server, make_client) -> None:
    """A map generator finalized by the GC inside code holding the connection's lock (the
    GC runs at any allocation) must not wait for that lock: its calls are cancelled later."""
    server = make_server(threads=4)
    server.register(lambda x: (time.sleep(0.01), x)[1], name="work", blocking=True)
    client = make_client(server)
    results = client.map("work", range(100), window=8)
    assert next(results) == 0
    conn = client._conn
    with conn._state:  # as if the GC finalized the generator here
        done = threading.Event()

        def drop() -> None:
            results.close()
            done.set()

        dropper = threading.Thread(target=drop)  # (the same call from this thread: no wait)
        dropper.start()
        assert done.wait(5), "abandoning a map waited for the connection lock"
        dropper.join(5)
    assert len(conn._abandoned) == 7  # the 7 calls still in flight, cancelled later
    assert list(client.map("work", [5])) == [5]  # the next map cancels them first
    assert not conn._abandoned
    assert wait_until(lambda: _settled(client))


def test_map_timeout_bounds_the_whole_map(make_server, make_client) -> None:
    server = make_server(threads=4)
    server.register(lambda x: (time.sleep(0.05), x)[1], name="work", blocking=True)
    client = make_client(server)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        list(client.map("work", range(1000), window=2, timeout=0.3))
    assert time.monotonic() - started < 5
    assert wait_until(lambda: _settled(client))


def test_pipelined_blocking_calls_wait_for_inflight_slots(make_server, make_client) -> None:
    """HOSTILE 5: beyond max_inflight, calls wait (client side) instead of being refused."""
    server = make_server(max_inflight=4, threads=4)
    server.register(lambda x: (time.sleep(0.001), x)[1], name="work", blocking=True)
    client = make_client(server)
    futures = [client.call_async("work", i) for i in range(200)]
    assert [f.result(30) for f in futures] == list(range(200))


def test_ten_threads_share_one_client(make_server, make_client) -> None:
    server = make_server()
    server.register(lambda a, b: (a, b), name="pair")
    server.register(lambda x: (time.sleep(0.002), x)[1], name="slow", blocking=True)
    client = make_client(server)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(150):
                assert client.pair(n, i) == [n, i]
                if i % 30 == 0:
                    assert client.slow(n * 1000 + i) == n * 1000 + i
                if n % 2 and i % 50 == 0:  # async calls (and the reader thread) mixed in
                    futures = [client.call_async("pair", n, -j) for j in range(20)]
                    assert [f.result(10) for f in futures] == [[n, -j] for j in range(20)]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert server.stats["accepted"] == 1  # all ten threads used one connection


def test_handler_sleeping_past_the_deadline(make_server, make_client) -> None:
    """HOSTILE 27: DeadlineExceeded on time; the server goes on."""
    server = make_server()
    server.register(lambda t: (time.sleep(t), t)[1], name="sleep", blocking=True)
    client = make_client(server)
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        client.call("sleep", 1.0, timeout=0.2)
    assert time.monotonic() - start < 1.5
    assert client.call("sleep", 0, timeout=5) == 0


def test_client_default_timeout(make_server, make_client) -> None:
    server = make_server()
    server.register(lambda t: (time.sleep(t), t)[1], name="sleep", blocking=True)
    client = make_client(server, timeout=0.2)
    with pytest.raises(DeadlineExceeded):
        client.sleep(1.0)
    assert client.call("sleep", 0.3, timeout=3) == 0.3


def test_expired_work_is_skipped(make_server, make_client) -> None:
    """A call whose deadline passed while it queued behind others never runs."""
    server = make_server(threads=1)
    ran: list[str] = []
    gate = threading.Event()

    @server.export(blocking=True)
    def hold():
        gate.wait(5)
        return "held"

    @server.export(blocking=True)
    def work(tag):
        ran.append(tag)
        return tag

    client = make_client(server)
    held = client.call_async("hold")
    with pytest.raises(DeadlineExceeded):
        client.call("work", "late", timeout=0.2)
    # The server's deadline counts from when *it* received the call, a moment after the
    # client sent it: let that moment pass too before the pool frees up.
    time.sleep(0.3)
    gate.set()
    assert held.result(5) == "held"
    assert client.work("now") == "now"
    assert ran == ["now"]


def test_blocking_handler_does_not_stall_others(make_server, make_client) -> None:
    server = make_server()
    gate = threading.Event()
    server.register(lambda: gate.wait(5), name="block", blocking=True)
    server.register(lambda: "pong", name="ping")
    blocked = make_client(server).call_async("block")
    other = make_client(server)
    assert [other.ping() for _ in range(20)] == ["pong"] * 20
    gate.set()
    assert blocked.result(5) is True


def test_notifications(make_server, make_client) -> None:
    server = make_server()
    seen: list[object] = []
    server.register(lambda *a, **k: seen.append((a, k)), name="log")
    server.register(lambda: 1 / 0, name="fail")
    client = make_client(server)
    client.notify("log", 1, x=2)
    client.notify("fail")  # a failing notification is dropped silently
    client.notify("missing")
    assert client.call("rpc.methods")  # a round trip orders us after the notifications
    assert seen == [((1,), {"x": 2})]


def test_large_payload_roundtrip(make_server, make_client) -> None:
    server = make_server()
    server.register(lambda b: b, name="echo")
    client = make_client(server)
    blob = bytes(range(256)) * 4096  # 1 MiB
    assert client.echo(blob) == blob
    futures = [client.call_async("echo", blob) for _ in range(8)]
    assert all(f.result(30) == blob for f in futures)


def test_message_size_limits_both_ways(make_server, make_client) -> None:
    server = make_server(max_frame_size=64 * 1024)
    server.register(lambda n: b"x" * n, name="make")
    server.register(lambda b: len(b), name="size")
    client = make_client(server, max_frame_size=32 * 1024)
    with pytest.raises(rapidrpc.ResourceExhausted, match="max_frame_size=65536"):
        client.size(b"x" * 100_000)  # refused before sending
    with pytest.raises(rapidrpc.ResourceExhausted, match="max_frame_size=32768"):
        client.make(40_000)  # the server knows the client's limit and refuses to send
    assert client.make(10) == b"x" * 10


def test_graceful_stop_finishes_inflight_calls(make_server, make_client) -> None:
    """HOSTILE 32: stop accepting, goaway, in-flight calls finish within the grace period."""
    server = make_server()
    started = threading.Event()

    @server.export(blocking=True)
    def slow():
        started.set()
        time.sleep(0.3)
        return "done"

    client = make_client(server)
    future = client.call_async("slow")
    assert started.wait(5)
    t0 = time.monotonic()
    server.stop(grace=5)
    assert time.monotonic() - t0 < 3
    assert future.result(1) == "done"  # the accepted call was not lost
    with pytest.raises(ConnectionLost):  # nobody listens anymore
        client.slow()


def test_stop_after_grace_fails_calls_promptly(make_server, make_client) -> None:
    server = make_server()
    server.register(lambda: time.sleep(1.0), name="forever", blocking=True)
    client = make_client(server)
    future = client.call_async("forever")
    time.sleep(0.1)
    t0 = time.monotonic()
    server.stop(grace=0.2)
    with pytest.raises(ConnectionLost):
        future.result(5)
    assert time.monotonic() - t0 < 0.9


def test_context_manager_and_restart_refused(backend_name) -> None:
    with rapidrpc.Server(backend=backend_name) as server:
        server.register(lambda: 1, name="one")
        server.start()
        with rapidrpc.Client(server.address, backend=backend_name) as client:
            assert client.one() == 1
        with pytest.raises(RuntimeError):
            server.start()
    assert wait_until(lambda: server.connection_count == 0)


def test_stop_before_start_releases_the_socket(backend_name) -> None:
    server = rapidrpc.Server(backend=backend_name)
    server.stop()
    server.stop()  # idempotent
