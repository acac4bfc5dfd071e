"""The ``rapidrpc`` command line: serve, call, methods, bench (real processes where it matters).

Servers run as ``python -m rapidrpc serve`` children on 127.0.0.1 port 0, each in its own
session so tear-down can kill the whole group; every wait is bounded.  The server child
runs on the test's backend (``RAPIDRPC_PURE_PYTHON=1`` for "python").
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import rapidrpc
from rapidrpc import _cli_bench, _cli_json, _cli_target, cli
from rapidrpc.wire.serializer import ExtType
from testsupport import load_backend

REPO = Path(__file__).resolve().parent.parent

SERVICE = textwrap.dedent(
    '''
    """A module served by the CLI tests."""
    import os
    import time
    from os.path import join  # imported: never served


    def add(a, b):
        """Add two numbers.

        More text that `methods` does not show.
        """
        return a + b


    def echo(value):
        """Return the value unchanged."""
        return value


    def pid():
        """This process id."""
        return os.getpid()


    def slow(seconds, marker=None):
        """Touch *marker*, then sleep."""
        if marker:
            open(marker, "w").close()
        time.sleep(seconds)
        return "slept"


    def fail(message):
        raise ValueError(message)


    def blob(n):
        return bytes(range(n))


    def _private():
        return "never served"


    async def coro():
        return "skipped"


    class Counter:
        """Counts."""

        def __init__(self):
            self.n = 0

        def incr(self, by=1):
            """Add *by* and return the total."""
            self.n += by
            return self.n

        def _hidden(self):
            return "never served"


    counter = Counter()
    '''
)

_BANNER = re.compile(r"rapidrpc serving on (\S+):(\d+) \(backend: (\w+), workers: (\d+)\)")


def child_env(backend_name: str) -> dict[str, str]:
    """The environment that puts a child process on *backend_name*."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAPIDRPC_PURE_PYTHON", "RAPIDRPC_REQUIRE_EXTENSION")
    }
    env["RAPIDRPC_PURE_PYTHON" if backend_name == "python" else "RAPIDRPC_REQUIRE_EXTENSION"] = "1"
    return env


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The first stdout line of *proc* within *timeout* (fails the test otherwise)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            pytest.fail(f"no line from the server within {timeout} s (got {buf!r})")
        chunk = os.read(fd, 1)  # one byte at a time: leave the rest for communicate()
        if not chunk:
            err = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"the server exited (code {proc.wait()}) before its banner:\n{err}")
        buf += chunk
    return buf.decode()


class Serve:
    """A ``rapidrpc serve`` child; ``address`` is ``"127.0.0.1:PORT"``."""

    def __init__(self, target: str, backend_name: str, *options: str, cwd: Path = REPO) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rapidrpc", "serve", target, "--port", "0", *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(backend_name),
            cwd=cwd,
            start_new_session=True,  # its own process group: workers included in kill()
        )
        try:
            self.banner = read_line(self.proc, 30)
        except BaseException:
            self.close()
            raise
        match = _BANNER.search(self.banner)
        assert match, self.banner
        self.host, self.port = match.group(1), int(match.group(2))
        self.backend, self.workers = match.group(3), int(match.group(4))
        self.address = f"{self.host}:{self.port}"
        self.err_seen = b""  # stderr read by wait_stderr (finish() returns it too)

    def wait_stderr(self, text: str, timeout: float = 10.0) -> None:
        """Read stderr until *text* appears (fails the test after *timeout* s)."""
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        deadline = time.monotonic() + timeout
        while text.encode() not in self.err_seen:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                pytest.fail(f"{text!r} not on stderr within {timeout} s: {self.err_seen!r}")
            chunk = os.read(fd, 4096)
            if not chunk:
                pytest.fail(f"stderr closed before {text!r}: {self.err_seen!r}")
            self.err_seen += chunk

    def signal(self, sig: int) -> None:
        """Send *sig* to the serve process itself."""
        os.kill(self.proc.pid, sig)

    def finish(self, timeout: float = 20) -> tuple[int, str, str]:
        """Wait for the exit: ``(code, stdout, stderr)``."""
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, self.banner + out.decode(), (self.err_seen + err).decode()

    def close(self) -> None:
        """Kill the process group if still alive; reap; close pipes."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.communicate(timeout=10)


@pytest.fixture
def service(tmp_path: Path) -> Path:
    """The test service module, as a file."""
    path = tmp_path / "service.py"
    path.write_text(SERVICE)
    return path


@pytest.fixture
def serve(backend_name: str) -> Iterator[object]:
    """``serve(target, *options)`` -> a running Serve child on the test's backend."""
    children: list[Serve] = []

    def start(target: str, *options: str, cwd: Path = REPO) -> Serve:
        child = Serve(target, backend_name, *options, cwd=cwd)
        children.append(child)
        return child

    yield start
    for child in children:
        child.close()


@pytest.fixture(scope="module", params=("cython", "python"))
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """One service child per backend, shared by the call/methods tests of this module."""
    load_backend(request.param)  # skips the Cython run under RAPIDRPC_PURE_PYTHON=1
    path = tmp_path_factory.mktemp("served") / "service.py"
    path.write_text(SERVICE)
    child = Serve(str(path), request.param)
    yield child
    child.close()


def run_cli(*args: str, backend_name: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``python -m rapidrpc ARGS`` on *backend_name*."""
    return subprocess.run(
        [sys.executable, "-m", "rapidrpc", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(backend_name),
        cwd=REPO,
    )


def live_children(pid: int) -> set[int]:
    """Child pids of *pid* that are not zombies."""
    try:
        kids = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return set()
    out = set()
    for kid in kids:
        try:
            if kid.status() != psutil.STATUS_ZOMBIE:
                out.add(kid.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_for(predicate, timeout: float = 10.0) -> bool:
    """Poll *predicate* until true or *timeout* (bounded)."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def second_signal_after_the_first_took_effect(child) -> None:
    """SIGTERM, wait until the server says it is stopping, then SIGTERM again.  Two
    signals sent before the first is handled are one signal to the process (a loaded
    machine once delayed the handler past a fixed 0.2 s pause)."""
    child.signal(signal.SIGTERM)
    child.wait_stderr("signal again to force")
    child.signal(signal.SIGTERM)


def gone(pids: set[int]) -> bool:
    """True when none of *pids* is a running process."""
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


# --- serve: targets, signals -----------------------------------------------------------------


def test_serve_module_path_call_methods_and_sigint(serve, service: Path, backend_name) -> None:
    """Path form: public functions served; `rapidrpc call` and Client reach them; SIGINT -> 0."""
    child = serve(str(service))
    assert child.backend == backend_name and child.workers == 1 and child.host == "127.0.0.1"

    result = run_cli("call", child.address, "add", "2", "3", backend_name=backend_name)
    assert (result.returncode, result.stdout, result.stderr) == (0, "5\n", "")

    with rapidrpc.Client(child.address, timeout=10) as client:
        assert client.add(40, 2) == 42
        assert client.pid() == child.proc.pid  # one process: the server itself
        names = {m["name"] for m in client.call("rpc.methods")}
    assert names == {"add", "blob", "echo", "fail", "pid", "slow", "rpc.methods"}

    listing = run_cli("methods", child.address, backend_name=backend_name)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert any(line.startswith("add(a, b)") and line.endswith("Add two numbers.") for line in lines)
    assert "More text" not in listing.stdout and "join" not in listing.stdout

    child.signal(signal.SIGINT)
    code, _, err = child.finish()
    assert code == 0, err
    assert "skipping async def coro" in err
    assert "stopping (grace 5 s)" in err


def test_serve_dotted_module_and_objects(serve, service: Path, backend_name) -> None:
    """Dotted module name from the current directory; a class (instantiated) and an instance."""
    calc = serve("examples.calc")  # cwd is the repo root, like `python -m`
    with rapidrpc.Client(calc.address, timeout=10) as client:
        assert client.add(2, 3) == 5
        assert client.hypot(3, 4) == 5.0
        names = {m["name"] for m in client.call("rpc.methods")}
    assert names == {"add", "echo", "hypot", "slow", "rpc.methods"}  # no sqrt, _scale, class

    for target in (f"{service}:Counter", f"{service}:counter"):
        child = serve(target, cwd=service.parent)
        with rapidrpc.Client(child.address, timeout=10) as client:
            assert [client.incr(), client.incr(by=5)] == [1, 6]
            names = {m["name"] for m in client.call("rpc.methods")}
            with pytest.raises(rapidrpc.MethodNotFound):
                client.call("_hidden")
        assert names == {"incr", "rpc.methods"}
        child.signal(signal.SIGTERM)
        assert child.finish()[0] == 0


def test_sigterm_lets_an_inflight_call_finish(serve, service: Path, tmp_path: Path) -> None:
    """SIGTERM during a slow call: the call completes, then the server exits 0."""
    child = serve(str(service))
    marker = tmp_path / "started"
    with rapidrpc.Client(child.address, timeout=30) as client:
        future = client.call_async("slow", 1.0, str(marker))
        assert wait_for(marker.exists), "the slow call never started"
        child.signal(signal.SIGTERM)
        assert future.result(timeout=20) == "slept"
    code, _, err = child.finish()
    assert code == 0, err
    with pytest.raises(OSError):  # the port is closed
        socket.create_connection(("127.0.0.1", child.port), timeout=2).close()


def test_second_signal_forces_exit(serve, service: Path, tmp_path: Path) -> None:
    """A second signal does not wait for the grace period: exit code 1, pending call lost."""
    child = serve(str(service), "--grace", "60")
    marker = tmp_path / "started"
    with rapidrpc.Client(child.address, timeout=60) as client:
        future = client.call_async("slow", 60, str(marker))
        assert wait_for(marker.exists), "the slow call never started"
        second_signal_after_the_first_took_effect(child)
        code, _, err = child.finish(timeout=15)
        assert code == 1, err
        with pytest.raises(rapidrpc.ConnectionLost):
            future.result(timeout=15)


def test_serve_workers_and_process_group_sigint(serve, service: Path, backend_name) -> None:
    """--workers 2: calls reach both workers; Ctrl-C (SIGINT to the group) -> all exit, 0."""
    child = serve(str(service), "--workers", "2")
    assert child.workers == 2
    assert wait_for(lambda: len(live_children(child.proc.pid)) == 2)
    workers = live_children(child.proc.pid)
    seen: set[int] = set()
    for _ in range(200):  # SO_REUSEPORT spreads new connections over both workers
        with rapidrpc.Client(child.address, timeout=10) as client:
            seen.add(client.pid())
        if seen == workers:
            break
    assert seen == workers
    os.killpg(child.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    code, _, err = child.finish()
    assert code == 0, err
    assert gone(workers)


def test_serve_workers_second_signal_kills_workers(serve, service: Path, tmp_path: Path) -> None:
    """Workers mode: a second signal kills the workers at once; exit code 1."""
    child = serve(str(service), "--workers", "2", "--grace", "60")
    assert wait_for(lambda: len(live_children(child.proc.pid)) == 2)
    workers = live_children(child.proc.pid)
    marker = tmp_path / "started"
    with rapidrpc.Client(child.address, timeout=60) as client:
        future = client.call_async("slow", 60, str(marker))
        assert wait_for(marker.exists)
        second_signal_after_the_first_took_effect(child)
        code, _, err = child.finish(timeout=15)
        assert code == 1, err
        assert "killed" in err
        with pytest.raises(rapidrpc.ConnectionLost):
            future.result(timeout=15)
    assert gone(workers)


def test_serve_errors_exit_2(backend_name, tmp_path: Path) -> None:
    """Unknown module, nothing to serve, a busy port: a message and exit code 2."""
    empty = tmp_path / "empty.py"
    empty.write_text("from os import getcwd\n\ndef _private():\n    pass\n")
    result = run_cli("serve", "no_such_module_xyz", backend_name=backend_name)
    assert result.returncode == 2 and "no module named 'no_such_module_xyz'" in result.stderr
    result = run_cli("serve", str(empty), "--port", "0", backend_name=backend_name)
    assert result.returncode == 2 and "nothing to serve" in result.stderr
    result = run_cli("serve", f"{empty}:missing", backend_name=backend_name)
    assert result.returncode == 2 and "no attribute 'missing'" in result.stderr
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = str(busy.getsockname()[1])
        result = run_cli("serve", "examples.calc", "--port", port, backend_name=backend_name)
    assert result.returncode == 2 and "cannot listen on 127.0.0.1:" in result.stderr


# --- call / methods (in-process CLI against a served child) ------------------------------------


def cli_call(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``rapidrpc ARGS`` in this process: ``(exit code, stdout, stderr)``."""
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_call_arguments_and_results_as_json(served, capsys) -> None:
    """JSON literals in, JSON out; plain words are strings; b64: means bytes both ways."""
    addr = served.address
    value = '{"a": [1, 2.5, null, true], "b": "x"}'
    assert cli_call(capsys, "call", addr, "echo", value) == (0, value + "\n", "")
    assert cli_call(capsys, "call", addr, "echo", "hello") == (0, '"hello"\n', "")
    assert cli_call(capsys, "call", addr, "echo", '"42"') == (0, '"42"\n', "")
    assert cli_call(capsys, "call", addr, "echo", "-7") == (0, "-7\n", "")
    assert cli_call(capsys, "call", addr, "blob", "3") == (0, '"b64:AAEC"\n', "")
    assert cli_call(capsys, "call", addr, "echo", "b64:AAEC") == (0, '"b64:AAEC"\n', "")
    assert cli_call(capsys, "call", addr, "echo", '"b64:AAEC"') == (0, '"b64:AAEC"\n', "")
    code, out, _ = cli_call(capsys, "call", addr, "add", "--kw", "a=[1]", "--kw", "b=[2, 3]")
    assert (code, json.loads(out)) == (0, [1, 2, 3])
    code, out, _ = cli_call(capsys, "call", addr, "echo", "[1, 2]", "--indent", "2")
    assert (code, out) == (0, "[\n  1,\n  2\n]\n")


def test_call_errors_and_exit_codes(served, capsys) -> None:
    """Remote errors: stderr and exit 1; connection and usage errors: exit 2."""
    addr = served.address
    code, out, err = cli_call(capsys, "call", addr, "fail", "boom")
    assert (code, out) == (1, "") and "ValueError: boom" in err
    code, _, err = cli_call(capsys, "call", addr, "nope")
    assert code == 1 and "not found" in err
    code, _, err = cli_call(capsys, "call", addr, "add", "1")
    assert code == 1 and "InvalidParams" in err
    code, _, err = cli_call(capsys, "call", addr, "slow", "0.5", "--timeout", "0.1")
    assert code == 1 and "DeadlineExceeded" in err
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    code, _, err = cli_call(capsys, "call", f"127.0.0.1:{port}", "add", "1", "2")
    assert code == 2 and "cannot reach" in err
    assert cli_call(capsys, "call", "no-port", "add")[0] == 2
    code, _, err = cli_call(capsys, "call", addr, "add", "--kw", "not a pair")
    assert code == 2 and "NAME=VALUE" in err


def test_methods_listing(served, capsys) -> None:
    """Signatures and docstring first lines; --json gives the raw list."""
    code, out, _ = cli_call(capsys, "methods", served.address)
    assert code == 0
    assert re.search(r"^add\(a, b\) +Add two numbers\.$", out, re.M)
    assert re.search(r"^slow\(seconds, marker=None\) +Touch \*marker\*, then sleep\.$", out, re.M)
    assert re.search(r"^fail\(message\)$", out, re.M)  # no docstring: nothing after
    code, out, _ = cli_call(capsys, "methods", served.address, "--json")
    listing = json.loads(out)
    assert {"name": "pid", "signature": "()", "doc": "This process id."} in listing


# --- bench ------------------------------------------------------------------------------------


def test_bench_smoke_table(backend_name) -> None:
    """`bench --seconds 1` runs both systems and prints its table (no timing assertions)."""
    result = run_cli("bench", "--seconds", "1", "--progress", backend_name=backend_name)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for text in ("calls/s", "p50 us", "p99 us", "speed-up", "add(1, 2)", "echo 1 KiB"):
        assert text in out
    assert f"rapidrpc ({backend_name})" in out and "stdlib xmlrpc" in out
    assert "rapidrpc vs stdlib xmlrpc:" in out
    assert re.search(r"\[#+-*\] +\d+%", result.stderr)  # the progress bar was drawn


def test_bench_json(backend_name) -> None:
    """`bench --json`: every (workload, system) pair with counts and percentiles."""
    result = run_cli(
        "bench", "--seconds", "0.4", "--payload", "100", "--json", backend_name=backend_name
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # not a terminal: no progress bar
    doc = json.loads(result.stdout)
    assert doc["backend"] == backend_name and doc["payload"] == 100
    pairs = {(r["workload"], r["system"]) for r in doc["results"]}
    assert pairs == {(w, s) for w in ("add", "echo") for s in ("rapidrpc", "xmlrpc")}
    for r in doc["results"]:
        assert r["calls"] > 0 and 0 < r["p50_us"] <= r["p99_us"]
    assert set(doc["speedup"]) == {"add", "echo"}


def test_bench_table_format() -> None:
    """The table and the ratio from fixed results."""
    results = [
        _cli_bench.Result("add", "rapidrpc", 1000, 0.1, 10000.0, 90.0, 150.0),
        _cli_bench.Result("add", "xmlrpc", 250, 0.1, 2500.0, 400.0, 520.0),
    ]
    placement = _cli_bench.Placement(0, 1, "server pinned to CPU 0, client to CPU 1")
    assert _cli_bench.speedups(results) == {"add": 4.0}
    table = _cli_bench.format_table(results, "cython", 1024, 1.0, placement)
    assert "rapidrpc (cython)" in table and "10,000" in table and "4.00x" in table
    assert "4.0x on add(1, 2)" in table and "client to CPU 1" in table


# --- the parser and the entry points ----------------------------------------------------------


def test_version_help_and_module_entry(capsys, backend_name) -> None:
    """--version keeps working; no command prints help; `python -m rapidrpc` is the CLI."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("rapidrpc 0.1.0")
    assert cli.main([]) == 0
    assert "serve" in capsys.readouterr().out
    result = run_cli("--version", backend_name=backend_name)
    assert result.returncode == 0 and f"(backend: {backend_name}" in result.stdout


# --- JSON conversion and target loading (no sockets) -------------------------------------------


def test_parse_arg_and_kwarg() -> None:
    """JSON literal, else the string; b64: unquoted is bytes; bad input is a ValueError."""
    assert _cli_json.parse_arg("1.5") == 1.5
    assert _cli_json.parse_arg("null") is None
    assert _cli_json.parse_arg('{"k": [true]}') == {"k": [True]}
    assert _cli_json.parse_arg("two words") == "two words"
    assert _cli_json.parse_arg("b64:aGk=") == b"hi"
    assert _cli_json.parse_arg('"b64:aGk="') == "b64:aGk="
    with pytest.raises(ValueError, match="invalid base64"):
        _cli_json.parse_arg("b64:not base64!")
    assert _cli_json.parse_kwarg("n=3") == ("n", 3)
    assert _cli_json.parse_kwarg("s=a=b") == ("s", "a=b")
    for bad in ("novalue", "=3", "1x=2"):
        with pytest.raises(ValueError):
            _cli_json.parse_kwarg(bad)


def test_results_as_json_after_a_round_trip(backend) -> None:
    """Values as each backend decodes them, written as JSON (bytes, tuples, ext, keys...)."""
    when = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc)
    value = {
        "bytes": b"\x00\xff",
        "tuple": (1, (2, 3)),
        "when": when,
        "ext": ExtType(5, b"ab"),
        "big": 2**80,
        1: "int key",
        b"k": "bytes key",
        None: [None, False, 0.5],
    }
    decoded = backend.serializer.loads(backend.serializer.dumps(value))
    text = _cli_json.dumps_result(decoded)
    assert json.loads(text) == {
        "bytes": "b64:" + base64.b64encode(b"\x00\xff").decode(),
        "tuple": [1, [2, 3]],
        "when": "2024-05-06T07:08:09+00:00",
        "ext": {"ext": 5, "data": "b64:YWI="},
        "big": 2**80,
        "1": "int key",
        "b64:aw==": "bytes key",
        "null": [None, False, 0.5],
    }


def test_to_jsonable_other_types() -> None:
    """Sets (sorted when possible), memoryview, dates; unknown objects as repr."""
    assert _cli_json.to_jsonable({3, 1, 2}) == [1, 2, 3]
    assert sorted(_cli_json.to_jsonable({1, "a"}), key=str) == [1, "a"]
    assert _cli_json.to_jsonable(memoryview(b"hi")) == "b64:aGk="
    assert _cli_json.to_jsonable(datetime.date(2024, 1, 2)) == "2024-01-02"
    assert _cli_json.to_jsonable({(1, 2): 3}) == {"[1, 2]": 3}
    assert _cli_json.to_jsonable(object).startswith("<class")


@pytest.fixture
def clean_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo what loading a serve target does to sys.path and sys.modules."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_target_forms_register_public_callables(clean_imports, service: Path, backend_name) -> None:
    """Module: own public functions only; class -> instance; instance; a single function."""
    module = _cli_target.load_target(str(service))
    assert [name for name, _ in _cli_target.public_callables(module)] == [
        "add", "blob", "coro", "echo", "fail", "pid", "slow"
    ]  # fmt: skip
    server = rapidrpc.Server(backend=backend_name)
    try:
        served, skipped = _cli_target.register_target(server, module)
        assert skipped == ["coro"] and "coro" not in server.dispatcher
        assert served == ["add", "blob", "echo", "fail", "pid", "slow"]
        assert server.dispatcher.call("add", (1, 2)) == 3
    finally:
        server.stop(grace=0)

    counter = _cli_target.load_target(f"{service}:Counter")
    assert type(counter).__name__ == "Counter"  # instantiated
    assert [n for n, _ in _cli_target.public_callables(counter)] == ["incr"]
    instance = _cli_target.load_target(f"{service}:counter")
    assert [n for n, _ in _cli_target.public_callables(instance)] == ["incr"]
    func = _cli_target.load_target(f"{service}:add")
    assert [n for n, _ in _cli_target.public_callables(func)] == ["add"]


def test_target_errors(clean_imports, tmp_path: Path) -> None:
    """Missing module/file/attribute, a class needing arguments, nothing to serve."""
    (tmp_path / "needs_args.py").write_text(
        "class Svc:\n    def __init__(self, x):\n        pass\n"
    )
    (tmp_path / "broken.py").write_text("raise RuntimeError('broken at import')\n")
    with pytest.raises(_cli_target.TargetError, match="no module named"):
        _cli_target.load_target("no_such_module_abc")
    with pytest.raises(_cli_target.TargetError, match="no such file"):
        _cli_target.load_target(str(tmp_path / "missing.py"))
    with pytest.raises(_cli_target.TargetError, match="cannot instantiate"):
        _cli_target.load_target(f"{tmp_path / 'needs_args.py'}:Svc")
    with pytest.raises(RuntimeError, match="broken at import"):  # with its traceback
        _cli_target.load_target(str(tmp_path / "broken.py"))
    with pytest.raises(_cli_target.TargetError, match="nothing to serve"):
        _cli_target.register_target(None, object())
