"""End-to-end RPC benchmarks (issue 3): every system side by side, one group per workload.

    pytest benchmarks/bench_rpc.py --benchmark-only    # measured run, a few minutes
    pytest benchmarks/bench_rpc.py                     # smoke: one small batch per cell

Each system's server runs in a child process pinned to one CPU; this process (the client) is
pinned to another.  Servers start once per system (module-scoped fixture).  One pytest-benchmark
round is one batch of ``workload.batch`` calls; calls/s, p50/p99 latency and the ratio to the
C reference land in ``extra_info``, and a markdown summary with all ratios is printed at the
end of a measured run.  Method: docs/benchmarks-method.md.
"""

from __future__ import annotations

import json
import math
import random
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

if str(Path(__file__).resolve().parent) not in sys.path:  # the `rpc` helper package
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from rpc.affinity import Placement
from rpc.cbuild import BuildDir, BuildUnavailable, CBinaries, load_wire_constants
from rpc.proc import ServerProcess
from rpc.stats import Batch, Summary, percentile
from rpc.systems import ALL, BY_KEY, REFERENCE, System, Unsupported
from rpc.systems.c_reference import decode_latencies
from rpc.table import render
from rpc.workloads import ECHO_1K, ECHO_1M, INFLIGHT_64, SEQ_ADD, Workload

TARGET_SECONDS = 1.0  # measuring time per benchmark, after one warm-up batch
MIN_ROUNDS, MAX_ROUNDS = 3, 200

# (system key, workload key) -> summary, or the reason there is none; read by the summary.
RESULTS: dict[tuple[str, str], Summary | str] = {}


class _SummaryPlugin:
    """Prints the markdown table (with ratios) once the whole run is over."""

    def __init__(self, placement: Placement) -> None:
        self.placement = placement

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not any(isinstance(v, Summary) for v in RESULTS.values()):
            return  # smoke run: nothing measured
        terminalreporter.write_sep("-", "RPC benchmarks: calls/s, latency, ratios")
        for line in render(RESULTS, BY_KEY, self.placement.note).splitlines():
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def placement(request: pytest.FixtureRequest) -> Iterator[Placement]:
    """CPU placement for the module; pins this (client) process until the module ends."""
    chosen = Placement.detect()
    manager = request.config.pluginmanager
    if not manager.has_plugin("rapidrpc-rpc-summary"):
        manager.register(_SummaryPlugin(chosen), "rapidrpc-rpc-summary")
    pin = chosen.pin_client()
    yield chosen
    pin.release()


@pytest.fixture(scope="module", params=[cls.key for cls in ALL])
def system(request: pytest.FixtureRequest, placement: Placement) -> Iterator[System]:
    """One started and verified system (server child + client), shared by its benchmarks."""
    cls = BY_KEY[request.param]
    reason = cls.unavailable_reason()
    if reason:
        pytest.skip(reason)
    started = cls(placement)
    try:
        started.start()
        started.verify()
    except BuildUnavailable as exc:
        started.close()
        pytest.skip(str(exc))
    except BaseException:
        started.close()
        raise
    yield started
    started.close()


def _run_checked(system: System, workload: Workload, n: int) -> Batch:
    try:
        batch = system.run(workload, n)
    except Unsupported as exc:
        RESULTS[(system.key, workload.key)] = f"n/a: {exc}"
        pytest.skip(str(exc))
    assert batch.calls == n and len(batch.latencies_ns) == n and batch.seconds > 0
    return batch


def _bench(benchmark: BenchmarkFixture, system: System, workload: Workload) -> None:
    if benchmark.disabled:  # plain `pytest`: one small batch proves the cell works
        benchmark.pedantic(_run_checked, args=(system, workload, workload.smoke_batch))
        return
    warm = _run_checked(system, workload, workload.batch)
    rounds = min(MAX_ROUNDS, max(MIN_ROUNDS, math.ceil(TARGET_SECONDS / warm.seconds)))
    batches: list[Batch] = []

    def one_batch() -> None:
        batches.append(_run_checked(system, workload, workload.batch))

    benchmark.pedantic(one_batch, rounds=rounds, iterations=1)
    summary = Summary.of(batches, workload.payload)
    RESULTS[(system.key, workload.key)] = summary
    info = benchmark.extra_info
    info.update(summary.as_dict())
    info.update(system=system.display_title(), calls_per_round=workload.batch)
    info["placement"] = system.placement.note
    reference = RESULTS.get((REFERENCE, workload.key))
    if isinstance(reference, Summary):
        info["ratio_vs_c"] = round(summary.calls_per_s / reference.calls_per_s, 3)


@pytest.mark.benchmark(group=SEQ_ADD.group)
def bench_seq_add(benchmark: BenchmarkFixture, system: System) -> None:
    """Sequential add(1, 2): round-trip latency of the smallest call."""
    _bench(benchmark, system, SEQ_ADD)


@pytest.mark.benchmark(group=ECHO_1K.group)
def bench_echo_1k(benchmark: BenchmarkFixture, system: System) -> None:
    """Sequential 1 KiB bytes echo."""
    _bench(benchmark, system, ECHO_1K)


@pytest.mark.benchmark(group=ECHO_1M.group)
def bench_echo_1m(benchmark: BenchmarkFixture, system: System) -> None:
    """Sequential 1 MiB bytes echo: bulk throughput."""
    _bench(benchmark, system, ECHO_1M)


@pytest.mark.benchmark(group=INFLIGHT_64.group)
def bench_inflight_64(benchmark: BenchmarkFixture, system: System) -> None:
    """add(1, 2) with 64 calls in flight from one client: pipelining and multiplexing."""
    _bench(benchmark, system, INFLIGHT_64)


# --- the harness checks itself: a wrong reference or wrong percentiles would skew every ratio ---


@pytest.fixture(scope="module")
def c_build() -> Iterator[CBinaries]:
    """The C reference binaries, built once for the self-checks below."""
    try:
        build = BuildDir()
    except BuildUnavailable as exc:
        pytest.skip(str(exc))
    yield build.binaries
    build.cleanup()


@pytest.fixture(scope="module")
def c_port(c_build: CBinaries) -> Iterator[int]:
    """Port of a C echo server (unpinned) for the self-checks."""
    server = ServerProcess([str(c_build.server), "-w", "-t", "300"], "C echo server")
    yield server.port
    server.stop()


def _frame(kind: int, request_id: int, body: bytes, flags: int = 0) -> bytes:
    return struct.pack(">IBBHI", len(body), kind, flags, 0, request_id) + body


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_c_reference_echoes_pipelined_frames_split_anywhere(c_port: int) -> None:
    """Every frame of a pipelined burst, delivered in arbitrary pieces, comes back in order
    with kind=response and the same flags, id and body."""
    const = load_wire_constants()
    bodies = [b"\x01", bytes(range(256)) * 4, bytes(70_000), b"last"]
    requests = b"".join(
        _frame(const.KIND_REQUEST, 1000 + i, b, flags=i & 1) for i, b in enumerate(bodies)
    )
    replies = b"".join(
        _frame(const.KIND_RESPONSE, 1000 + i, b, flags=i & 1) for i, b in enumerate(bodies)
    )
    rng = random.Random(20)
    with socket.create_connection(("127.0.0.1", c_port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(const.HEADER_SIZE + 1):  # the first header one byte at a time
            sock.sendall(requests[i : i + 1])
            time.sleep(0.001)
        pos = const.HEADER_SIZE + 1
        while pos < len(requests):
            step = rng.randint(1, 9000)
            sock.sendall(requests[pos : pos + step])
            pos += step
        assert _recv_exactly(sock, len(replies)) == replies


def test_c_reference_closes_only_the_violating_connection(c_port: int) -> None:
    """A zero-length frame closes that connection; another connection is still served."""
    const = load_wire_constants()
    with socket.create_connection(("127.0.0.1", c_port), timeout=10) as bad:
        bad.sendall(struct.pack(">IBBHI", 0, const.KIND_REQUEST, 0, 0, 1))
        assert bad.recv(100) == b""
    with socket.create_connection(("127.0.0.1", c_port), timeout=10) as good:
        good.sendall(_frame(const.KIND_REQUEST, 9, b"ok"))
        assert _recv_exactly(good, const.HEADER_SIZE + 2) == _frame(const.KIND_RESPONSE, 9, b"ok")


@pytest.mark.parametrize("mode", [["seq", "300", "16"], ["inflight", "8", "300", "16"]])
def test_c_client_percentiles_match_the_harness(
    c_build: CBinaries, c_port: int, mode: list[str]
) -> None:
    """The C client's p50/p99 and the harness's nearest-rank percentiles of the same
    latencies agree, so C and Python rows of one table are computed alike."""
    out = subprocess.run(
        [str(c_build.client), "-p", str(c_port), "-l", *mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    answer = json.loads(out.stdout)
    lat = sorted(decode_latencies(answer["lat_u32be_hex"]))
    assert answer["calls"] == len(lat) == 300
    assert answer["p50_us"] == pytest.approx(percentile(lat, 50) / 1e3, abs=1e-3)
    assert answer["p99_us"] == pytest.approx(percentile(lat, 99) / 1e3, abs=1e-3)


def test_percentile_is_nearest_rank() -> None:
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    values = list(range(1, 101))
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (
        50,
        99,
        100,
    )
    assert percentile([7], 50) == percentile([7], 99) == 7
    assert percentile([1, 2, 3], 50) == 2
