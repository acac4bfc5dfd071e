"""``aio.Server(workers=N).run()``: forked SO_REUSEPORT workers, each on a fresh loop.

Servers run as child scripts (``run()`` from the main thread of a fresh interpreter, as in
production) in their own session, so tear-down kills the whole group; every wait is
bounded.  Worker pids come from the workers themselves (a ``pid`` method) and from psutil.
Each case runs on both wire backends and both loops (``loop_factory``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aio_support
import pytest
from rpc_helpers import wait_until
from test_workers import WorkersServer, pid_via_new_connection, replaced_set, running

import rapidrpc
from rapidrpc import aio

loop_name, loops_warmed = aio_support.loop_name, aio_support.loops_warmed

SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys
    from rapidrpc import aio

    count, backend, loop_kind = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    server = aio.Server("127.0.0.1", 0, workers=count, backend=backend)
    server.register(os.getpid, name="pid")

    async def slow(seconds, marker):
        open(marker, "w").close()
        await asyncio.sleep(seconds)
        return "slept"

    server.register(slow)
    server.register(lambda: type(asyncio.get_running_loop()).__module__, name="loop")
    factory = None
    if loop_kind == "uvloop":
        import uvloop
        factory = uvloop.new_event_loop
    print(server.address[1], flush=True)
    server.run(loop_factory=factory, grace=10)
    print("stopped", flush=True)
    """
)


class AioWorkersServer(WorkersServer):
    """A child process running ``aio.Server(workers=count).run(loop_factory=...)``
    (the mode argument is the loop kind)."""

    SCRIPT = SCRIPT


@pytest.fixture
def spawn(backend_name: str, loop_name: str) -> Iterator[Callable[[int], AioWorkersServer]]:
    """``spawn(count)`` -> an AioWorkersServer on the test's backend and loop."""
    servers: list[AioWorkersServer] = []

    def make(count: int) -> AioWorkersServer:
        server = AioWorkersServer(count, backend_name, loop_name)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def test_workers_serve_restart_and_stop(spawn, loop_name) -> None:
    """N distinct workers serve on the loop asked for; a killed one is replaced and calls
    keep succeeding; SIGTERM to the parent stops them all, exit code 0."""
    server = spawn(3)
    assert wait_until(lambda: len(server.workers()) == 3, 15)
    first = server.workers()
    seen: set[int] = set()
    for _ in range(300):  # SO_REUSEPORT spreads new connections over the sockets
        seen.add(pid_via_new_connection(server.address))
        if seen == first:
            break
    assert seen == first
    with rapidrpc.Client(server.address, timeout=10) as client:
        assert client.loop().split(".")[0] == ("uvloop" if loop_name == "uvloop" else "asyncio")

    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    current = replaced_set_of(server, victim, 3)
    assert current is not None, "no stable set of 3 workers without the victim"
    (replacement,) = current - first
    seen = set()
    for _ in range(300):
        seen.add(pid_via_new_connection(server.address))  # every call must succeed
        if seen == current:
            break
    assert seen == current and replacement in seen

    server.proc.send_signal(signal.SIGTERM)
    code, out, err = server.finish()
    assert code == 0, err
    assert out.strip() == "stopped"
    assert f"(pid {victim}) was killed by SIGKILL" in err and "restarting it" in err
    assert not any(running(pid) for pid in current)


def replaced_set_of(server: AioWorkersServer, victim: int, count: int) -> set[int] | None:
    """replaced_set for *count* workers (the blocking tests use two)."""
    if count == 2:
        return replaced_set(server, victim, 15)
    for _ in range(300):  # bounded: 300 x 50 ms
        before = server.workers()
        time.sleep(0.05)
        after = server.workers()
        if before == after and len(after) == count and victim not in after:
            return after
    return None


def test_sigterm_lets_inflight_calls_finish(spawn, tmp_path: Path) -> None:
    """SIGTERM to the parent: calls in flight on the workers complete, then all exit 0
    and the port is closed."""
    server = spawn(2)
    assert wait_until(lambda: len(server.workers()) == 2, 15)
    markers = [tmp_path / f"started{i}" for i in range(4)]
    clients = [rapidrpc.Client(server.address, timeout=30) for _ in markers]
    try:
        futures = [c.call_async("slow", 1.0, str(m)) for c, m in zip(clients, markers, strict=True)]
        assert wait_until(lambda: all(m.exists() for m in markers), 15), "calls never started"
        workers = server.workers()
        server.proc.send_signal(signal.SIGTERM)
        assert [f.result(timeout=20) for f in futures] == ["slept"] * 4
    finally:
        for client in clients:
            client.close()
    code, out, err = server.finish()
    assert code == 0, err
    assert out.strip() == "stopped"
    assert not any(running(pid) for pid in workers)
    with pytest.raises(OSError):  # the port is closed
        socket.create_connection(server.address, timeout=2).close()


def test_workers_stop_when_the_parent_dies(spawn) -> None:
    """A parent killed outright: its workers notice (control pipe EOF) and exit."""
    server = spawn(2)
    assert wait_until(lambda: len(server.workers()) == 2, 15)
    workers = server.workers()
    os.kill(server.pid, signal.SIGKILL)
    server.finish()
    assert wait_until(lambda: not any(running(pid) for pid in workers), 15)


def test_worker_count_is_validated(backend_name) -> None:
    """workers must be at least 1, as for rapidrpc.Server."""
    with pytest.raises(ValueError, match="workers must be >= 1"):
        aio.Server(workers=0, backend=backend_name)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        rapidrpc.Server(workers=0, backend=backend_name)


def test_workers_need_run_not_start(backend_name, loop_name) -> None:
    """start()/serve_forever() inside a loop refuse workers > 1 and name run(); run()
    refuses to block inside a running loop."""
    server = aio.Server(workers=2, backend=backend_name)

    async def main() -> None:
        with pytest.raises(RuntimeError, match=r"server\.run\("):
            await server.start()
        with pytest.raises(RuntimeError, match=r"server\.run\("):
            await server.serve_forever()
        with pytest.raises(RuntimeError, match="outside a running event loop"):
            server.run()
        await server.stop()

    aio_support.run(main(), loop_name)


def test_run_with_one_worker_stops_on_sigterm(backend_name, loop_name, tmp_path) -> None:
    """run() without workers: one process, a fresh loop, SIGTERM finishes the call in
    flight, then run() returns."""
    script = SCRIPT.replace("workers=count", "workers=1")
    env = dict(os.environ)
    env.pop("RAPIDRPC_PURE_PYTHON", None)
    if backend_name == "python":
        env["RAPIDRPC_PURE_PYTHON"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-c", script, "1", backend_name, loop_name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    holder = WorkersServer.__new__(WorkersServer)
    holder.proc, holder.pid = proc, proc.pid
    try:
        port = int(holder.line())
        marker = tmp_path / "started"
        with rapidrpc.Client(("127.0.0.1", port), timeout=30) as client:
            assert client.pid() == proc.pid
            future = client.call_async("slow", 0.5, str(marker))
            assert wait_until(marker.exists, 15)
            proc.send_signal(signal.SIGTERM)
            assert future.result(timeout=20) == "slept"
        code, out, err = holder.finish()
        assert code == 0, err
        assert out.strip() == "stopped"
    finally:
        holder.close()
