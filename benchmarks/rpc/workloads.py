"""The four workloads of issue 3, with batch sizes that keep every system's run short."""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class Workload:
    """One workload: what a call does, how many run concurrently, and batch sizes."""

    key: str
    title: str
    payload: int  # bytes echoed per call; 0 means add(1, 2)
    inflight: int  # calls kept in flight from one client (1 = sequential)
    batch: int  # calls per measured batch
    smoke_batch: int  # calls in the single smoke batch of plain `pytest`

    @property
    def group(self) -> str:
        """pytest-benchmark group: every system of one workload side by side."""
        return f"rpc {self.key}: {self.title}, {self.batch} calls per round"

    @property
    def is_add(self) -> bool:
        """True for add(1, 2) workloads, False for bytes echo."""
        return self.payload == 0

    def body(self) -> bytes:
        """The bytes echoed by each call (the byte pattern the C client uses too)."""
        pattern = bytes((i * 31 + 7) & 0xFF for i in range(256))
        return (pattern * (self.payload // 256 + 1))[: self.payload]


SEQ_ADD = Workload("seq-add", "sequential add(1, 2)", 0, 1, batch=500, smoke_batch=5)
ECHO_1K = Workload("echo-1k", "sequential 1 KiB bytes echo", KIB, 1, batch=500, smoke_batch=5)
ECHO_1M = Workload("echo-1m", "sequential 1 MiB bytes echo", MIB, 1, batch=10, smoke_batch=2)
INFLIGHT_64 = Workload(
    "inflight-64", "add(1, 2), 64 calls in flight", 0, 64, batch=4096, smoke_batch=128
)

ALL: tuple[Workload, ...] = (SEQ_ADD, ECHO_1K, ECHO_1M, INFLIGHT_64)
BY_KEY = {w.key: w for w in ALL}
