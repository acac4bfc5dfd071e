"""CPU placement: server on one CPU, client on another.

On small VMs placement alone changes round-trip time several-fold (server and client fighting
over one CPU, or bouncing between two), so every run pins both sides and says how.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def _tids() -> list[int]:
    """Thread ids of this process (affinity is per thread on Linux)."""
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


@dataclass(frozen=True)
class Placement:
    """Which CPU the server and the client run on (``None``: not pinned)."""

    server_cpu: int | None
    client_cpu: int | None
    note: str

    @classmethod
    def detect(cls) -> Placement:
        """Server on the first allowed CPU, client on the second; unpinned with only one."""
        if not hasattr(os, "sched_setaffinity"):
            return cls(None, None, "no sched_setaffinity here: processes are not pinned")
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return cls(None, None, "one CPU available: server and client share it (not pinned)")
        server, client = cpus[0], cpus[1]
        return cls(server, client, f"server pinned to CPU {server}, client to CPU {client}")

    def pin_client(self) -> ClientPin:
        """Pins every thread of this process to the client CPU until the pin is released."""
        return ClientPin(self.client_cpu)


class ClientPin:
    """Pins all current threads of this process (new threads inherit); restores on release."""

    def __init__(self, cpu: int | None) -> None:
        self._saved: dict[int, set[int]] = {}
        if cpu is None:
            return
        for tid in _tids():
            try:
                self._saved[tid] = os.sched_getaffinity(tid)
                os.sched_setaffinity(tid, {cpu})
            except OSError:  # the thread ended meanwhile
                self._saved.pop(tid, None)

    def release(self) -> None:
        """Gives every pinned thread that still exists its previous CPU set back."""
        for tid, cpus in self._saved.items():
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                pass
        self._saved.clear()


def pin_self(cpu: int | None) -> None:
    """Pins the calling process (call first thing in a server child, before any thread)."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
