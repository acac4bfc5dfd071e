"""Runs the matrix (systems x workloads) without pytest: one warm-up batch, then timed batches."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .affinity import Placement
from .cbuild import BuildUnavailable
from .stats import Summary
from .systems import System, Unsupported
from .workloads import Workload

MIN_BATCHES = 3
MAX_BATCHES = 1000


@dataclass(frozen=True)
class Cell:
    """The outcome for one system on one workload: a summary, or why there is none."""

    system: str
    workload: str
    summary: Summary | None = None
    note: str = ""


def measure(
    system: System, workload: Workload, seconds: float, batch: int | None = None
) -> Summary:
    """One discarded warm-up batch, then batches until *seconds* pass (3 to 1000 batches)."""
    n = batch or workload.batch
    system.run(workload, n)
    batches = []
    end = time.monotonic() + seconds
    while len(batches) < MIN_BATCHES or (time.monotonic() < end and len(batches) < MAX_BATCHES):
        batches.append(system.run(workload, n))
    return Summary.of(batches, workload.payload)


def run_system(
    cls: type[System],
    workloads: Iterable[Workload],
    placement: Placement,
    seconds: float,
    progress: Callable[[str], None] = lambda _: None,
) -> list[Cell]:
    """Starts one system, measures every workload, stops it; failures become notes."""
    workloads = list(workloads)

    def all_cells(note: str) -> list[Cell]:
        return [Cell(cls.key, w.key, note=note) for w in workloads]

    reason = cls.unavailable_reason()
    if reason:
        return all_cells(f"skipped: {reason}")
    system = cls(placement)
    cells = []
    try:
        progress(f"{cls.display_title()}: starting")
        system.start()
        system.verify()
        for w in workloads:
            progress(f"{cls.display_title()}: {w.title}")
            try:
                cells.append(Cell(cls.key, w.key, measure(system, w, seconds)))
            except Unsupported as exc:
                cells.append(Cell(cls.key, w.key, note=f"n/a: {exc}"))
    except BuildUnavailable as exc:
        return all_cells(f"skipped: {exc}")
    except Exception as exc:
        done = {c.workload for c in cells}
        failed = f"failed: {type(exc).__name__}: {exc}"
        cells += [Cell(cls.key, w.key, note=failed) for w in workloads if w.key not in done]
    finally:
        system.close()
    return cells
