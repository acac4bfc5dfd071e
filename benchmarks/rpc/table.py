"""Markdown tables of results: one table per workload, ratios vs the C reference and the
hand-written asyncio+msgpack baseline, and the targets of issue 3 checked against them."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata

from .stats import Summary
from .systems import BASELINE, BY_KEY, REFERENCE
from .workloads import ALL as WORKLOADS

Results = Mapping[tuple[str, str], Summary | str]  # (system, workload) -> summary or note


@dataclass(frozen=True)
class Target:
    """``subject`` must reach ``ratio`` x ``versus`` calls/s on ``workload`` (issue 3)."""

    workload: str
    subject: str
    versus: str
    ratio: float


TARGETS = (
    Target("seq-add", "rapidrpc-cython", "c-reference", 0.8),
    Target("seq-add", "rapidrpc-cython", "asyncio-msgpack", 1.4),
    Target("seq-add", "rapidrpc-cython", "grpc-sync", 5.0),
    Target("seq-add", "rapidrpc-cython", "xmlrpc", 5.0),
    Target("inflight-64", "rapidrpc-cython", "c-reference", 0.3),
    Target("inflight-64", "rapidrpc-cython", "asyncio-msgpack", 3.0),
    Target("echo-1m", "rapidrpc-cython", "c-reference", 0.7),
)


def _title(key: str) -> str:
    cls = BY_KEY.get(key)
    return cls.display_title() if cls else key


def _ratio(results: Results, system: str, versus: str, workload: str) -> float | None:
    a, b = results.get((system, workload)), results.get((versus, workload))
    if isinstance(a, Summary) and isinstance(b, Summary):
        return a.calls_per_s / b.calls_per_s
    return None


def _fmt_ratio(r: float | None) -> str:
    return "—" if r is None else f"{r:.2f}x"


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def workload_table(results: Results, workload: str, systems: Iterable[str]) -> list[str]:
    """Markdown lines for one workload."""
    wl = next(w for w in WORKLOADS if w.key == workload)
    rows = [
        f"#### {wl.title}",
        "",
        f"| system | calls/s | {'MB/s | ' if wl.payload else ''}p50 µs | p99 µs | "
        f"vs C | vs {_title(BASELINE)} |",
        f"|---|---:|{'---:|' if wl.payload else ''}---:|---:|---:|---:|",
    ]
    for key in systems:
        cell = results.get((key, workload))
        if cell is None:
            continue
        if isinstance(cell, str):  # skipped / not applicable / failed: the note says why
            blanks = " — |" * (5 if wl.payload else 4)
            rows.append(f"| {_title(key)} | {cell} |{blanks}")
            continue
        mb = f" {cell.bytes_per_s / 1e6:,.0f} |" if wl.payload else ""
        rows.append(
            f"| {_title(key)} | {_fmt_rate(cell.calls_per_s)} |{mb} {cell.p50_us:,.1f} | "
            f"{cell.p99_us:,.1f} | {_fmt_ratio(_ratio(results, key, REFERENCE, workload))} | "
            f"{_fmt_ratio(_ratio(results, key, BASELINE, workload))} |"
        )
    return [*rows, ""]


def targets_table(results: Results) -> list[str]:
    """Markdown lines checking the targets of issue 3 (empty when rapidrpc was not measured)."""
    rows = []
    for t in TARGETS:
        r = _ratio(results, t.subject, t.versus, t.workload)
        if r is None:
            continue
        ok = "met" if r >= t.ratio else "**not met**"
        rows.append(
            f"| {t.workload} | {_title(t.subject)} vs {_title(t.versus)} | ≥ {t.ratio:g}x | "
            f"{r:.2f}x | {ok} |"
        )
    if not rows:
        return []
    head = ["#### Targets (issue 3)", "", "| workload | ratio | target | measured | |"]
    return [*head, "|---|---|---:|---:|---|", *rows, ""]


def machine_lines(placement_note: str, load_before: tuple[float, ...] | None) -> list[str]:
    """What the numbers were measured on: CPU, kernel, Python, placement, load."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                model,
            )
    except OSError:
        pass
    load_now = os.getloadavg() if hasattr(os, "getloadavg") else None
    load = ""
    if load_before and load_now:
        load = f"; load average {load_before[0]:.2f} before, {load_now[0]:.2f} after"
    return [
        f"Machine: {model}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}; "
        f"Python {sys.version.split()[0]}; {placement_note}{load}.",
        "",
        f"Versions: {_versions()}.",
        "",
    ]


def _versions() -> str:
    """Installed versions of the packages under test (metadata only: nothing is imported)."""
    found = []
    for dist in ("rapidrpc", "grpcio", "msgpack", "uvloop"):
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            found.append(f"{dist} not installed")
    return ", ".join(found)


def render(
    results: Results,
    systems: Iterable[str],
    placement_note: str,
    load_before: tuple[float, ...] | None = None,
) -> str:
    """The whole markdown report."""
    systems = list(systems)
    lines = machine_lines(placement_note, load_before)
    for w in WORKLOADS:
        if any((s, w.key) in results for s in systems):
            lines += workload_table(results, w.key, systems)
    lines += targets_table(results)
    return "\n".join(lines)
