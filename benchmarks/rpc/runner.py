"""Runs the matrix (systems x workloads) without pytest: one warm-up batch, then timed batches.

:func:`run_interleaved` (what report.py uses) starts every system at once and measures them in
turns, a few rounds per workload, so that a slow drift of this shared machine (its speed
moves by 20 % within minutes) weighs on every system alike instead of on whichever ran
during it: the ratios between systems are what the targets are about.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .affinity import Placement
from .cbuild import BuildUnavailable
from .stats import Batch, Summary
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


def measure_batches(
    system: System, workload: Workload, seconds: float, batch: int | None = None
) -> list[Batch]:
    """One discarded warm-up batch, then batches until *seconds* pass (3 to 1000 batches)."""
    n = batch or workload.batch
    system.run(workload, n)
    batches: list[Batch] = []
    end = time.monotonic() + seconds
    while len(batches) < MIN_BATCHES or (time.monotonic() < end and len(batches) < MAX_BATCHES):
        batches.append(system.run(workload, n))
    return batches


def measure(
    system: System, workload: Workload, seconds: float, batch: int | None = None
) -> Summary:
    """:func:`measure_batches`, summarised."""
    return Summary.of(measure_batches(system, workload, seconds, batch), workload.payload)


def run_interleaved(
    classes: Iterable[type[System]],
    workloads: Iterable[Workload],
    placement: Placement,
    seconds: float,
    rounds: int = 5,
    progress: Callable[[str], None] = lambda _: None,
) -> list[Cell]:
    """Starts every system, then measures each workload in *rounds* turns of all systems
    (*seconds* / *rounds* each, after a warm-up batch); stops them all.

    A system that cannot start, or fails, gets notes for its cells; the others go on.
    """
    workloads = list(workloads)
    cells: dict[tuple[str, str], Cell] = {}
    running: list[System] = []
    try:
        for cls in classes:
            reason = cls.unavailable_reason()
            if reason:
                for w in workloads:
                    cells[(cls.key, w.key)] = Cell(cls.key, w.key, note=f"skipped: {reason}")
                continue
            system = cls(placement)
            progress(f"{cls.display_title()}: starting")
            try:
                system.start()
                system.verify()
            except BuildUnavailable as exc:
                system.close()
                for w in workloads:
                    cells[(cls.key, w.key)] = Cell(cls.key, w.key, note=f"skipped: {exc}")
                continue
            except Exception as exc:
                system.close()
                for w in workloads:
                    note = f"failed: {type(exc).__name__}: {exc}"
                    cells[(cls.key, w.key)] = Cell(cls.key, w.key, note=note)
                continue
            running.append(system)
        for w in workloads:
            batches: dict[str, list[Batch]] = {s.key: [] for s in running}
            for turn in range(rounds):
                progress(f"{w.title}: round {turn + 1} of {rounds}")
                for system in running:
                    key = (system.key, w.key)
                    if key in cells:  # unsupported or failed earlier: no more turns
                        continue
                    try:
                        batches[system.key] += measure_batches(system, w, seconds / rounds)
                    except Unsupported as exc:
                        cells[key] = Cell(system.key, w.key, note=f"n/a: {exc}")
                    except Exception as exc:
                        cells[key] = Cell(
                            system.key, w.key, note=f"failed: {type(exc).__name__}: {exc}"
                        )
            for system in running:
                key = (system.key, w.key)
                if key not in cells:
                    cells[key] = Cell(system.key, w.key, Summary.of(batches[system.key], w.payload))
    finally:
        for system in running:
            system.close()
    return list(cells.values())
