"""Helpers for socket-level tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from rapidrpc.core.protocol import ClientConnection, ServerConnection
from rapidrpc.wire import constants as C


def fd_count() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def thread_ids() -> set[int]:
    """Identifiers of the live threads."""
    return {t.ident for t in threading.enumerate() if t.is_alive() and t.ident is not None}


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, step: float = 0.005) -> bool:
    """Poll *predicate* until true or *timeout*; returns its last value (bounded loop)."""
    end = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= end:
            return predicate()
        time.sleep(step)


def wire_of(backend_name: str) -> dict[str, Any]:
    """Protocol keyword arguments selecting *backend_name*'s wire modules."""
    from rapidrpc.wire import framing, serializer

    return {
        "serializer": serializer.IMPLEMENTATIONS[backend_name],
        "framing": framing.IMPLEMENTATIONS[backend_name],
    }


class RawPeer:
    """A client socket driven by hand (with a sans-IO ClientConnection for encoding)."""

    def __init__(self, address: tuple[str, int], backend_name: str, handshake: bool = True):
        self.sock = socket.create_connection(address, timeout=5)
        self.proto = ClientConnection(**wire_of(backend_name))
        if handshake:
            self.proto.initiate()
            self.sock.sendall(self.proto.data_to_send())
            while not self.proto.handshake_complete:
                data = self.recv_some()
                assert data, "server closed during the handshake"
                self.proto.receive_data(data)

    def recv_some(self, timeout: float = 5.0) -> bytes:
        """One recv with *timeout* (raises TimeoutError)."""
        self.sock.settimeout(timeout)
        return self.sock.recv(1 << 20)

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection within *timeout* (data is drained)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if not self.recv_some(max(0.01, end - time.monotonic())):
                    return True
            except TimeoutError:
                return False
            except OSError:  # ECONNRESET counts as closed
                return True
        return False

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


class ScriptedServer:
    """A hand-driven server for client tests: accepts connections one at a time and runs
    *script(self, conn_socket, ServerConnection)* for each, in a thread.  It plays the
    silent, lying or crashing server a real rapidrpc.Server never is."""

    def __init__(self, backend_name: str, script: Callable[..., None]):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.address = self.listener.getsockname()[:2]
        self.backend_name = backend_name
        self.script = script
        self.events: list[Any] = []  # every protocol event the scripted server received
        self.connections = 0
        self.current: socket.socket | None = None
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scripted-server", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self.current = sock
            with sock:
                proto = ServerConnection(**wire_of(self.backend_name))
                try:
                    self.script(self, sock, proto)
                except OSError:
                    pass

    def handshake(self, sock: socket.socket, proto: ServerConnection) -> None:
        """Read until the client's preface + settings arrived; answer with ours."""
        sock.settimeout(5)
        while not proto.handshake_complete:
            data = sock.recv(65536)
            if not data:
                return
            self.events += proto.receive_data(data)
        sock.sendall(proto.data_to_send())

    def read_events(
        self, sock: socket.socket, proto: ServerConnection, seconds: float, answer: bool = True
    ) -> None:
        """Record events for *seconds* or until the client closes; *answer* pings or not."""
        until = time.monotonic() + seconds
        while time.monotonic() < until and not self.stopping.is_set():
            sock.settimeout(max(0.01, min(0.05, until - time.monotonic())))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return
            self.events += proto.receive_data(data)
            out = proto.data_to_send()
            if answer and out:
                sock.sendall(out)

    def close(self) -> None:
        """Stop accepting and wait for the script thread (shutdown wakes blocked calls)."""
        self.stopping.set()
        for sock in (self.listener, self.current):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._thread.join(10)
        self.listener.close()


def header(length: int, kind: int, flags: int = 0, reserved: int = 0, rid: int = 1) -> bytes:
    """A frame header built by hand (to send invalid ones)."""
    return struct.pack(">IBBHI", length, kind, flags, reserved, rid)


# Hostile inputs shared by every server's tests (blocking loops and aio), so the lists
# cannot drift apart.  HOSTILE 6: not our protocol at all.
NON_NATIVE_INPUTS = [
    pytest.param(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi", id="http"),
    pytest.param(bytes.fromhex("160301020001000200fc0303") + b"\x00" * 500, id="tls"),
    pytest.param(os.urandom(4096), id="random"),
    pytest.param(b"\x00" * 100_000, id="zeros"),
]

# HOSTILE 1, 2 and 23: a bad frame after the handshake -> goaway (INTERNAL), then close.
_REQ, _RESP = C.KIND_REQUEST, C.KIND_RESPONSE
BAD_FRAMES = [
    pytest.param(header(0xFFFFFFFF, _REQ), id="length-4GiB"),
    pytest.param(header(C.DEFAULT_MAX_FRAME_SIZE + 1, _REQ), id="length-over-limit"),
    pytest.param(header(0, _REQ), id="length-zero"),
    pytest.param(header(1, 0) + b"\xc0", id="kind-0"),
    pytest.param(header(1, 0x7F) + b"\xc0", id="kind-unknown"),
    pytest.param(header(1, _REQ, reserved=0x100) + b"\xc0", id="reserved"),
    pytest.param(header(1, _REQ, flags=0x40) + b"\xc0", id="flags"),
    pytest.param(header(1, _REQ) + b"\xc1", id="undecodable-body"),
    pytest.param(header(1, _RESP) + b"\xc0", id="client-sends-response"),
]
