"""``Server(workers=N)``: forked SO_REUSEPORT workers, restarts, graceful stop, fork-safety.

Servers run as child scripts (``serve_forever`` from the main thread of a fresh interpreter,
as in production) in their own session, so tear-down kills the whole group; every wait is
bounded.  Worker pids come from the workers themselves (a ``pid`` method) and from psutil.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from rpc_helpers import wait_until

import rapidrpc
from rapidrpc.transport import workers as workers_mod

SCRIPT = textwrap.dedent(
    """
    import os, sys, time, warnings
    import rapidrpc
    from rapidrpc.transport.workers import WorkerCrashLoop

    count, backend, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    server = rapidrpc.Server("127.0.0.1", 0, workers=count, backend=backend)
    server.register(os.getpid, name="pid")

    def slow(seconds, marker):
        open(marker, "w").close()
        time.sleep(seconds)
        return "slept"

    server.register(slow)
    if mode == "crash":
        def broken(*args):
            raise RuntimeError("boom on start")
        server._loop_factory = broken
    print(server.address[1], flush=True)
    if mode == "thread":  # supervise from a background thread, stop from this one
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            server.start()
        print("warned:", any("other thread" in str(w.message) for w in caught), flush=True)
        sys.stdin.readline()
        server.stop(grace=1)
        print("stopped", flush=True)
        sys.exit(0)
    try:
        server.serve_forever()
    except WorkerCrashLoop as exc:
        print("crash loop:", exc, flush=True)
        sys.exit(3)
    print("stopped", flush=True)
    """
)


class WorkersServer:
    """A child process running ``Server(workers=count).serve_forever()``."""

    #: The child's program (argv: count, backend name, mode).
    SCRIPT = SCRIPT

    def __init__(self, count: int, backend_name: str, mode: str = "serve") -> None:
        env = dict(os.environ)
        env.pop("RAPIDRPC_PURE_PYTHON", None)
        if backend_name == "python":
            env["RAPIDRPC_PURE_PYTHON"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.SCRIPT, str(count), backend_name, mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        try:
            self.port = int(self.line())
        except BaseException:
            self.close()
            raise
        self.address = ("127.0.0.1", self.port)

    def line(self, timeout: float = 30.0) -> str:
        """The next stdout line (bounded wait)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        buf = b""
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                pytest.fail(f"no line from the server within {timeout} s (got {buf!r})")
            chunk = os.read(fd, 1)
            if not chunk:
                pytest.fail(f"the server exited (code {self.proc.wait()}) (got {buf!r})")
            buf += chunk
        return buf.decode().strip()

    def workers(self) -> set[int]:
        """Live (non-zombie) child pids."""
        return live_children(self.pid)

    def finish(self, timeout: float = 20.0) -> tuple[int, str, str]:
        """Wait for the exit: ``(code, rest of stdout, stderr)``."""
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out.decode(), err.decode()

    def close(self) -> None:
        """Kill the group if still alive; reap; close the pipes."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.communicate(timeout=10)


def live_children(pid: int) -> set[int]:
    """Child pids of *pid* that are not zombies."""
    out = set()
    try:
        kids = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return out
    for kid in kids:
        try:
            if kid.status() != psutil.STATUS_ZOMBIE:
                out.add(kid.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def running(pid: int) -> bool:
    """True while *pid* is a process that has not exited."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def replaced_set(server: WorkersServer, victim: int, timeout: float) -> set[int] | None:
    """The workers once *victim* is replaced: two pids, read twice 50 ms apart to the same
    set (one read can catch a child between fork and exec, or one already dying)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        before = server.workers()
        time.sleep(0.05)
        after = server.workers()
        if before == after and len(after) == 2 and victim not in after:
            return after
    return None


def pid_via_new_connection(address: tuple[str, int]) -> int:
    """Which worker a fresh connection lands on."""
    with rapidrpc.Client(address, timeout=10) as client:
        return client.pid()


@pytest.fixture
def spawn(backend_name: str) -> Iterator[Callable[..., WorkersServer]]:
    """``spawn(count, mode="serve")`` -> a WorkersServer on the test's backend."""
    servers: list[WorkersServer] = []

    def make(count: int, mode: str = "serve") -> WorkersServer:
        server = WorkersServer(count, backend_name, mode)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def test_workers_share_the_port_restart_and_stop(spawn) -> None:
    """Both workers serve; a killed one is replaced and calls keep succeeding; SIGTERM to
    the parent stops them all, exit code 0."""
    server = spawn(2)
    assert wait_until(lambda: len(server.workers()) == 2, 10)
    first = server.workers()
    seen: set[int] = set()
    for _ in range(200):  # SO_REUSEPORT spreads new connections over both sockets
        seen.add(pid_via_new_connection(server.address))
        if seen == first:
            break
    assert seen == first

    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    current = replaced_set(server, victim, 10)
    assert current is not None, "no stable set of 2 workers without the victim"
    (replacement,) = current - first
    seen = set()
    for _ in range(200):
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


def test_sigterm_lets_inflight_calls_finish(spawn, tmp_path: Path) -> None:
    """SIGTERM to the parent: a call in flight on a worker completes, then all exit 0."""
    server = spawn(2)
    marker = tmp_path / "started"
    with rapidrpc.Client(server.address, timeout=30) as client:
        future = client.call_async("slow", 1.0, str(marker))
        assert wait_until(marker.exists, 10), "the slow call never started"
        workers = server.workers()
        server.proc.send_signal(signal.SIGTERM)
        assert future.result(timeout=20) == "slept"
    code, _, err = server.finish()
    assert code == 0, err
    assert not any(running(pid) for pid in workers)
    with pytest.raises(OSError):  # the port is closed
        socket.create_connection(server.address, timeout=2).close()


def test_workers_stop_when_the_parent_dies(spawn) -> None:
    """A parent killed outright: its workers notice (control pipe EOF) and exit."""
    server = spawn(2)
    assert wait_until(lambda: len(server.workers()) == 2, 10)
    workers = server.workers()
    os.kill(server.pid, signal.SIGKILL)
    server.finish()
    assert wait_until(lambda: not any(running(pid) for pid in workers), 15)


def test_crash_loop_gives_up(spawn) -> None:
    """Workers that die at start are restarted a bounded number of times, then run() raises."""
    server = spawn(2, "crash")
    code, out, err = server.finish(timeout=60)
    assert code == 3, err
    assert out.startswith("crash loop:") and "giving up" in out
    assert "boom on start" in err and err.count("restarting it") >= 10


def test_supervising_from_a_thread_warns_and_stops(spawn) -> None:
    """start() forks from a background thread (warned); stop() from the caller ends it."""
    server = spawn(2, "thread")
    assert server.line() == "warned: True"
    assert pid_via_new_connection(server.address) in server.workers()
    workers = server.workers()
    assert server.proc.stdin is not None
    server.proc.stdin.write(b"go\n")
    server.proc.stdin.flush()
    code, out, err = server.finish()
    assert (code, out.strip()) == (0, "stopped"), err
    assert not any(running(pid) for pid in workers)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_client_in_a_forked_child_opens_its_own_connection(spawn, backend_name) -> None:
    """A Client made in the parent and used in a forked child gets a new connection; the
    parent's connection keeps working."""
    server = spawn(2)
    with rapidrpc.Client(server.address, timeout=10, backend=backend_name) as client:
        assert client.pid() in server.workers()
        parent_conn = client._conn
        assert parent_conn is not None
        parent_local = parent_conn.sock.getsockname()
        pid = os.fork()
        if pid == 0:  # the child: never return into pytest
            code = 1
            try:
                ok = all(client.pid() > 0 for _ in range(50))
                conn = client._conn
                own = conn is not parent_conn and conn.sock.getsockname() != parent_local
                code = 0 if ok and own else 2
                client.close()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert client._conn is parent_conn
        assert all(client.pid() > 0 for _ in range(50))


def test_worker_count_is_validated(backend_name) -> None:
    """workers must be at least 1."""
    with pytest.raises(ValueError, match="workers must be >= 1"):
        rapidrpc.Server(workers=0, backend=backend_name)
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        pytest.raises(ValueError, match="workers must be >= 1"),
    ):
        workers_mod.Supervisor(listener, 0, lambda sock: None)  # type: ignore[arg-type,return-value]


def test_listeners_per_worker_or_shared() -> None:
    """One SO_REUSEPORT socket per worker on the same port; a listener bound without it is
    shared by every worker instead (no extra binds)."""
    plain = socket.create_server(("127.0.0.1", 0))
    with plain:
        socks, sharing = workers_mod.bind_listeners(plain, 3)
        assert sharing == "shared" and socks == [plain, plain, plain]
    if not workers_mod.reuseport_supported():
        return
    first = socket.create_server(("127.0.0.1", 0), reuse_port=True)
    socks, sharing = workers_mod.bind_listeners(first, 3)
    try:
        assert sharing == "reuseport" and socks[0] is first and len(set(socks)) == 3
        assert {s.getsockname()[1] for s in socks} == {first.getsockname()[1]}
    finally:
        for sock in socks:
            sock.close()
