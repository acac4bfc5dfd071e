"""``rapidrpc bench``: a short side-by-side round-trip comparison on this machine.

rapidrpc (the active backend) against the standard library's ``SimpleXMLRPCServer`` +
``ServerProxy``, as shipped.  Each server runs in its own child process (a fresh
interpreter: ``python -m rapidrpc._cli_bench SYSTEM``), pinned to one CPU while this
process, the client, is pinned to another when the machine allows it: on small machines
placement alone changes round-trip times several-fold.  Workloads are sequential calls:
``add(1, 2)`` and an echo of *payload* bytes.  Each latency sample is the time from one
call's completion to the next one's (so it includes the loop's own tiny overhead).

The children announce their port with one line on stdout and exit when their stdin closes
(so they never outlive this process), or after an hour at most.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import subprocess
import sys
import threading
import time
import xmlrpc.client
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TextIO

__all__ = ["Placement", "Result", "run"]

SYSTEMS = ("rapidrpc", "xmlrpc")
_STARTUP_TIMEOUT = 30.0
_CALL_TIMEOUT = 30.0
_CHILD_LIFETIME = 3600.0


class BenchError(RuntimeError):
    """A server child failed to start or answered wrongly."""


@dataclass(frozen=True)
class Placement:
    """CPUs of the server children and of the client (None: not pinned) and why."""

    server_cpu: int | None
    client_cpu: int | None
    note: str

    @classmethod
    def detect(cls) -> Placement:
        """Servers on the first allowed CPU, the client on the second, when there are two."""
        if not hasattr(os, "sched_setaffinity"):
            return cls(None, None, "not pinned: no sched_setaffinity on this platform")
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return cls(None, None, "not pinned: one CPU available, server and client share it")
        return cls(cpus[0], cpus[1], f"server pinned to CPU {cpus[0]}, client to CPU {cpus[1]}")


@dataclass
class Result:
    """One (workload, system) run."""

    workload: str
    system: str
    calls: int
    seconds: float
    calls_per_s: float
    p50_us: float
    p99_us: float


# --- server children ---------------------------------------------------------------------------


def _exit_when_released() -> None:
    """A daemon thread ends this child when its stdin closes (the parent let go or died)."""

    def watch() -> None:
        fd = sys.stdin.fileno()
        deadline = time.monotonic() + _CHILD_LIFETIME
        while (left := deadline - time.monotonic()) > 0:
            if select.select([fd], [], [], left)[0] and not os.read(fd, 4096):
                break
        os._exit(0)  # the server owns the main thread; its sockets close with the process

    threading.Thread(target=watch, name="bench-release", daemon=True).start()


def _serve_rapidrpc(backend: str) -> None:
    import rapidrpc

    server = rapidrpc.Server("127.0.0.1", 0, backend=backend)
    server.register(lambda a, b: a + b, name="add")
    server.register(lambda data: data, name="echo")
    print(server.address[1], flush=True)
    _exit_when_released()
    server.serve_forever()


def _serve_xmlrpc() -> None:
    from xmlrpc.server import SimpleXMLRPCServer

    server = SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False, allow_none=True)
    server.register_function(lambda a, b: a + b, "add")
    server.register_function(lambda data: xmlrpc.client.Binary(data.data), "echo")
    print(server.server_address[1], flush=True)
    _exit_when_released()
    server.serve_forever()


def _child_main(argv: list[str]) -> int:
    """Entry point of a server child: ``SYSTEM [--cpu N] [--backend NAME]``."""
    system, opts = argv[0], dict(zip(argv[1::2], argv[2::2], strict=False))
    if "--cpu" in opts and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(opts["--cpu"])})  # first, before any thread starts
    if system == "rapidrpc":
        _serve_rapidrpc(opts.get("--backend", "cython"))
    elif system == "xmlrpc":
        _serve_xmlrpc()
    else:
        raise SystemExit(f"unknown system {system!r}")
    return 0


class _Child:
    """A running server child and the port it announced."""

    def __init__(self, system: str, cpu: int | None, backend: str) -> None:
        cmd = [sys.executable, "-m", "rapidrpc._cli_bench", system, "--backend", backend]
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        self.system = system
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.port = 0

    def wait_port(self) -> int:
        """Read the announced port (bounded wait); raises BenchError."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise BenchError(f"the {self.system} server did not start within 30 s")
            chunk = os.read(fd, 256)
            if not chunk:
                err = self._stderr()
                raise BenchError(f"the {self.system} server exited before listening:\n{err}")
            line += chunk
        self.port = int(line)
        return self.port

    def _stderr(self) -> str:
        try:
            _, err = self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            return ""
        return err.decode(errors="replace").strip()

    def stop(self) -> None:
        """Let go (stdin EOF), then terminate, then kill; always reaps the child."""
        proc = self.proc
        for step in (self._close_stdin, proc.terminate, proc.kill):
            if proc.poll() is not None:
                break
            step()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                continue
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    def _close_stdin(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass


# --- client side ---------------------------------------------------------------------------------


class _Transport(xmlrpc.client.Transport):
    """The stock transport with a socket timeout, so no call can hang the run."""

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        conn = super().make_connection(host)
        conn.timeout = _CALL_TIMEOUT
        return conn


def _calls(system: str, port: int, backend: str, payload: bytes) -> tuple[dict, Callable]:
    """``({workload: zero-arg call}, close)`` for a client of *system* on *port*."""
    if system == "rapidrpc":
        import rapidrpc

        client = rapidrpc.Client(("127.0.0.1", port), timeout=_CALL_TIMEOUT, backend=backend)
        add, echo = client.call, client.call
        return {
            "add": lambda: add("add", 1, 2),
            "echo": lambda: echo("echo", payload),
        }, client.close
    proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/", transport=_Transport())
    binary = xmlrpc.client.Binary(payload)
    return {
        "add": lambda: proxy.add(1, 2),
        "echo": lambda: proxy.echo(binary).data,
    }, proxy("close")


class _Progress:
    """A plain-text progress bar on stderr (``\\r``-redrawn), or nothing when disabled."""

    def __init__(self, total: float, stream: TextIO, enabled: bool) -> None:
        self.total = max(total, 1e-9)
        self.done = 0.0
        self.stream = stream
        self.enabled = enabled

    def show(self, elapsed: float, label: str) -> None:
        """Redraw with *elapsed* seconds of the current run done."""
        if not self.enabled:
            return
        frac = min(1.0, (self.done + elapsed) / self.total)
        filled = int(frac * 30)
        bar = "#" * filled + "-" * (30 - filled)
        self.stream.write(f"\r[{bar}] {frac * 100:3.0f}%  {label:<32}")
        self.stream.flush()

    def finish(self) -> None:
        """Erase the bar."""
        if self.enabled:
            self.stream.write("\r" + " " * 72 + "\r")
            self.stream.flush()


def _measure(call: Callable[[], Any], seconds: float, label: str, progress: _Progress) -> tuple:
    """Run *call* back to back for *seconds*; ``(count, elapsed, sorted latencies)``."""
    perf = time.perf_counter
    warm_end = perf() + min(0.2, seconds / 4)
    while perf() < warm_end:
        call()
    samples: list[float] = []
    append = samples.append
    start = t0 = perf()
    end = start + seconds
    next_draw = start
    while True:
        call()
        t1 = perf()
        append(t1 - t0)
        if t1 >= end:
            break
        if t1 >= next_draw:
            progress.show(t1 - start, label)
            next_draw = t1 + 0.1
        t0 = t1
    progress.done += seconds
    samples.sort()
    return len(samples), t1 - start, samples


def _percentile(sorted_samples: list[float], q: float) -> float:
    index = min(len(sorted_samples) - 1, max(0, round(q * (len(sorted_samples) - 1))))
    return sorted_samples[index]


def _check(system: str, calls: dict[str, Callable[[], Any]], payload: bytes) -> None:
    """A run only counts if the answers are right."""
    if calls["add"]() != 3:
        raise BenchError(f"{system}: add(1, 2) did not return 3")
    if calls["echo"]() != payload:
        raise BenchError(f"{system}: echo returned something else than its argument")


def _titles(backend: str, payload: int) -> tuple[dict[str, str], dict[str, str]]:
    systems = {"rapidrpc": f"rapidrpc ({backend})", "xmlrpc": "stdlib xmlrpc"}
    size = f"{payload // 1024} KiB" if payload and payload % 1024 == 0 else f"{payload} B"
    workloads = {"add": "add(1, 2)", "echo": f"echo {size}"}
    return systems, workloads


def measure_all(
    seconds: float, payload: int, backend: str, placement: Placement, progress: _Progress
) -> list[Result]:
    """Start the server children, run every workload against each, stop them."""
    data = os.urandom(payload)
    per_run = seconds / (len(SYSTEMS) * 2)
    systems, workloads = _titles(backend, payload)
    children = [_Child(s, placement.server_cpu, backend) for s in SYSTEMS]  # start in parallel
    saved_cpus = os.sched_getaffinity(0) if placement.client_cpu is not None else None
    results: list[Result] = []
    try:
        ports = [c.wait_port() for c in children]
        if placement.client_cpu is not None:
            os.sched_setaffinity(0, {placement.client_cpu})
        for workload in ("add", "echo"):
            for system, port in zip(SYSTEMS, ports, strict=True):
                calls, close = _calls(system, port, backend, data)
                try:
                    _check(system, calls, data)
                    label = f"{systems[system]} {workloads[workload]}"
                    n, elapsed, lat = _measure(calls[workload], per_run, label, progress)
                finally:
                    close()
                results.append(
                    Result(
                        workload=workload,
                        system=system,
                        calls=n,
                        seconds=round(elapsed, 3),
                        calls_per_s=n / elapsed,
                        p50_us=_percentile(lat, 0.50) * 1e6,
                        p99_us=_percentile(lat, 0.99) * 1e6,
                    )
                )
    finally:
        progress.finish()
        if saved_cpus is not None:
            os.sched_setaffinity(0, saved_cpus)
        for child in children:
            child.stop()
    return results


def speedups(results: list[Result]) -> dict[str, float]:
    """rapidrpc calls/s over stdlib xmlrpc calls/s, per workload."""
    by = {(r.workload, r.system): r.calls_per_s for r in results}
    return {
        w: by[(w, "rapidrpc")] / by[(w, "xmlrpc")]
        for w in ("add", "echo")
        if (w, "rapidrpc") in by and by.get((w, "xmlrpc"))
    }


def format_table(
    results: list[Result], backend: str, payload: int, seconds: float, placement: Placement
) -> str:
    """The human-readable report."""
    import rapidrpc

    systems, workloads = _titles(backend, payload)
    ratio = speedups(results)
    per_run = seconds / (len(SYSTEMS) * 2)
    lines = [
        f"rapidrpc bench: sequential round trips on 127.0.0.1, {per_run:.2g} s per run; "
        f"{placement.note}",
        f"rapidrpc {rapidrpc.__version__} (backend {backend}), Python {sys.version.split()[0]}",
        "",
        f"{'workload':<14}{'system':<20}{'calls/s':>10}{'p50 us':>10}{'p99 us':>10}"
        f"{'speed-up':>10}",
    ]
    base = {r.workload: r.calls_per_s for r in results if r.system == "xmlrpc"}
    previous = None
    for r in results:
        name = workloads[r.workload] if r.workload != previous else ""
        previous = r.workload
        up = f"{r.calls_per_s / base[r.workload]:.2f}x" if base.get(r.workload) else "-"
        lines.append(
            f"{name:<14}{systems[r.system]:<20}{r.calls_per_s:>10,.0f}{r.p50_us:>10.1f}"
            f"{r.p99_us:>10.1f}{up:>10}"
        )
    if ratio:
        parts = [f"{ratio[w]:.1f}x on {workloads[w]}" for w in ratio]
        lines += ["", f"rapidrpc vs stdlib xmlrpc: {', '.join(parts)} (calls/s ratio)"]
    return "\n".join(lines)


def run(
    seconds: float = 7.0,
    payload: int = 1024,
    as_json: bool = False,
    progress: bool | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """The ``bench`` command; returns the exit code.

    *seconds* is the total measuring time, split evenly over the four runs.  *progress*
    None shows the bar only when *err* is a terminal.
    """
    from . import _backend

    out = out or sys.stdout
    err = err or sys.stderr
    backend = _backend.active()
    placement = Placement.detect()
    if progress is None:
        progress = err.isatty()
    bar = _Progress(seconds, err, progress)
    try:
        results = measure_all(seconds, payload, backend, placement, bar)
    except BenchError as exc:
        err.write(f"rapidrpc bench: {exc}\n")
        return 1
    if as_json:
        import rapidrpc

        doc = {
            "rapidrpc": rapidrpc.__version__,
            "backend": backend,
            "python": sys.version.split()[0],
            "placement": asdict(placement),
            "seconds": seconds,
            "payload": payload,
            "results": [asdict(r) for r in results],
            "speedup": speedups(results),
        }
        out.write(json.dumps(doc, indent=2) + "\n")
    else:
        out.write(format_table(results, backend, payload, seconds, placement) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":  # a server child (see _Child)
    raise SystemExit(_child_main(sys.argv[1:]))
