"""Runs the RPC benchmark matrix without pytest and prints a markdown report.

    python benchmarks/rpc/report.py [--seconds 2.0] [--rounds 5] [--systems KEY,...]
                                    [--workloads KEY,...]

Every system's server runs in a child process pinned to one CPU, the client in this process
pinned to another (see docs/benchmarks-method.md).  All systems are started first, then each
workload is measured in --rounds turns of every system (--seconds per system and workload in
all), so that the machine's drift weighs on every system alike.  Progress goes to stderr, the
report to stdout, ready to paste into docs/benchmarks.md.  A full run takes about two minutes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `rpc` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rpc.affinity import Placement
from rpc.runner import run_interleaved
from rpc.stats import Summary
from rpc.systems import ALL, BY_KEY
from rpc.table import render
from rpc.workloads import ALL as WORKLOADS
from rpc.workloads import BY_KEY as WORKLOADS_BY_KEY


def _keys(text: str | None, known: dict, what: str) -> list[str] | None:
    if not text:
        return None
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return keys


def main(argv: list[str] | None = None) -> int:
    """Parses options, runs the matrix, prints the report; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="measuring time per system and workload"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="turns of all systems per workload (interleaved)"
    )
    parser.add_argument("--systems", help=f"comma-separated subset of: {', '.join(BY_KEY)}")
    parser.add_argument(
        "--workloads", help=f"comma-separated subset of: {', '.join(WORKLOADS_BY_KEY)}"
    )
    args = parser.parse_args(argv)
    system_keys = _keys(args.systems, BY_KEY, "systems") or list(BY_KEY)
    workload_keys = _keys(args.workloads, WORKLOADS_BY_KEY, "workloads") or list(WORKLOADS_BY_KEY)
    workloads = [w for w in WORKLOADS if w.key in workload_keys]

    placement = Placement.detect()
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    results: dict[tuple[str, str], Summary | str] = {}
    pin = placement.pin_client()
    try:
        classes = [cls for cls in ALL if cls.key in system_keys]
        cells = run_interleaved(
            classes, workloads, placement, args.seconds, max(args.rounds, 1), _progress
        )
        for cell in cells:
            results[(cell.system, cell.workload)] = cell.summary or cell.note
    finally:
        pin.release()
    print(
        render(results, [c.key for c in ALL if c.key in system_keys], placement.note, load_before)
    )
    return 0


def _progress(message: str) -> None:
    print(f"  … {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
