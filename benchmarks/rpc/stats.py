"""Measured batches of calls and their summary (throughput, nearest-rank percentiles)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Batch:
    """One timed run of *calls* calls: wall time in seconds and per-call latencies in ns."""

    calls: int
    seconds: float
    latencies_ns: Sequence[int]


def percentile(sorted_values: Sequence[int], p: float) -> int:
    """Nearest-rank percentile (the C client uses the same definition)."""
    if not sorted_values:
        raise ValueError("no values")
    rank = math.ceil(len(sorted_values) * p / 100)
    return sorted_values[max(rank, 1) - 1]


@dataclass(frozen=True)
class Summary:
    """Several batches of one system on one workload, folded together."""

    calls: int
    seconds: float
    p50_us: float
    p99_us: float
    payload: int  # body bytes per call, for bytes/s

    @classmethod
    def of(cls, batches: Iterable[Batch], payload: int) -> Summary:
        """Throughput over all batches (total calls / total time), percentiles over all calls."""
        batches = list(batches)
        if not batches:
            raise ValueError("no batches")
        ordered: list[int] = []
        for b in batches:
            ordered.extend(b.latencies_ns)
        ordered.sort()
        return cls(
            calls=sum(b.calls for b in batches),
            seconds=sum(b.seconds for b in batches),
            p50_us=percentile(ordered, 50) / 1e3,
            p99_us=percentile(ordered, 99) / 1e3,
            payload=payload,
        )

    @property
    def calls_per_s(self) -> float:
        """Completed calls per second."""
        return self.calls / self.seconds

    @property
    def bytes_per_s(self) -> float:
        """Body bytes echoed per second, one direction (0 for workloads without a body)."""
        return self.calls_per_s * self.payload

    def as_dict(self) -> dict[str, float]:
        """Plain numbers, for pytest-benchmark's extra_info and JSON output."""
        return {
            "calls": self.calls,
            "calls_per_s": round(self.calls_per_s, 1),
            "p50_us": round(self.p50_us, 2),
            "p99_us": round(self.p99_us, 2),
            "bytes_per_s": round(self.bytes_per_s, 1),
        }
