"""The physical limit: benchmarks/c/echo_server.c driven by benchmarks/c/echo_client.c.

Both are compiled at start with the system compiler.  The C client runs as a child of the
harness (pinned to the client CPU) and measures batches on request over one connection, so
no Python runs on the measured path.  ``add(1, 2)`` workloads echo a body of
:data:`ADD_BODY_SIZE` bytes, about the size of a msgpack-encoded add request.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
from array import array

from ..affinity import Placement
from ..cbuild import BuildDir, BuildUnavailable, compiler_command, load_wire_constants
from ..proc import LIFETIME_S, ServerProcess, read_json_line
from ..stats import Batch
from ..timing import BATCH_TIMEOUT_S, CALL_TIMEOUT_S
from ..workloads import Workload
from .base import System, Unsupported, check_result

ADD_BODY_SIZE = 16


def decode_latencies(hex_text: str) -> array:
    """Decodes the client's ``lat_u32be_hex`` field into an array of nanoseconds."""
    lat = array("I", bytes.fromhex(hex_text))
    if lat.itemsize != 4:  # pragma: no cover - every Linux ABI has a 4-byte unsigned int
        raise RuntimeError("array('I') is not 32-bit here")
    if sys.byteorder == "little":
        lat.byteswap()
    return lat


class CReference(System):
    """C epoll echo server + C client: no RPC can do less per call on this machine."""

    key = "c-reference"
    title = "C epoll reference"

    def __init__(self, placement: Placement) -> None:
        super().__init__(placement)
        self.build: BuildDir | None = None
        self.client: subprocess.Popen[bytes] | None = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            compiler_command()
        except BuildUnavailable as exc:
            return str(exc)
        return None

    def _cpu_args(self, cpu: int | None) -> list[str]:
        return [] if cpu is None else ["-c", str(cpu)]

    def start(self) -> None:
        self.build = BuildDir()
        bins = self.build.binaries
        self.server = ServerProcess(
            [
                str(bins.server),
                "-w",
                "-t",
                str(LIFETIME_S),
                *self._cpu_args(self.placement.server_cpu),
            ],
            "C echo server",
        )
        self.client = subprocess.Popen(
            [
                str(bins.client),
                "-p",
                str(self.server.port),
                "-T",
                str(int(CALL_TIMEOUT_S)),
                "-l",
                "-i",
                *self._cpu_args(self.placement.client_cpu),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def close(self) -> None:
        if self.client is not None:
            try:
                assert self.client.stdin is not None
                self.client.stdin.close()
                self.client.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.client.kill()
                self.client.wait()
            if self.client.stdout is not None:
                self.client.stdout.close()
            self.client = None
        self._stop_server()
        if self.build is not None:
            self.build.cleanup()
            self.build = None

    def _ask(self, command: str) -> Batch:
        """Has the C client run one batch (``seq N SIZE`` / ``inflight K N SIZE``)."""
        assert self.client is not None and self.client.stdin is not None, "start() first"
        self.client.stdin.write(command.encode() + b"\n")
        self.client.stdin.flush()
        answer = read_json_line(self.client, BATCH_TIMEOUT_S + 5, "C echo client")
        if "error" in answer:
            raise RuntimeError(f"C echo client: {answer['error']}")
        return Batch(answer["calls"], answer["seconds"], decode_latencies(answer["lat_u32be_hex"]))

    def run_sequential(self, workload: Workload, n: int) -> Batch:
        return self._ask(f"seq {n} {workload.payload or ADD_BODY_SIZE}")

    def run_inflight(self, k: int, n: int) -> Batch:
        return self._ask(f"inflight {k} {n} {ADD_BODY_SIZE}")

    def call_add(self) -> object:
        raise Unsupported("the C reference only echoes frames; add workloads echo 16 bytes")

    def echo(self, data: bytes) -> bytes:
        """One frame through the C server from a Python socket (checks the server itself)."""
        assert self.server is not None, "start() first"
        const = load_wire_constants()
        header = struct.Struct(">IBBHI")
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=30) as sock:
            sock.sendall(header.pack(len(data), const.KIND_REQUEST, 0, 0, 7) + data)
            reply = b""
            while len(reply) < const.HEADER_SIZE + len(data):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionError("C echo server closed the connection")
                reply += chunk
        length, kind, _flags, _reserved, request_id = header.unpack_from(reply)
        if (length, kind, request_id) != (len(data), const.KIND_RESPONSE, 7):
            raise RuntimeError(f"C echo server: unexpected reply header {reply[:12].hex()}")
        return reply[const.HEADER_SIZE :]

    def verify(self) -> None:
        data = bytes(range(256)) * 4
        check_result(self.key, self.echo(data), data)
        self._ask(f"seq 1 {ADD_BODY_SIZE}")  # the C client is connected and answering
