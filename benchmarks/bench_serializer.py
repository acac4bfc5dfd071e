"""Serializer benchmarks: dumps and loads per payload, every system side by side.

    pytest benchmarks/bench_serializer.py --benchmark-only -q --benchmark-min-time=0.1
    pytest benchmarks/bench_serializer.py        # smoke: each runs once, round trips checked

One pytest-benchmark group per (operation, payload); the payloads are fixed
(benchmarks/payloads.py).  Systems:

* ``rapidrpc-cython`` / ``rapidrpc-python``: the two backends' ``dumps``/``loads``;
* ``msgpack``: the C extension, a reused ``msgpack.Packer().pack`` and ``msgpack.unpackb``;
* ``msgpack-fallback``: msgpack's pure-Python ``fallback.Packer().pack`` / ``fallback.unpackb``;
* ``ormsgpack``: ``packb`` / ``unpackb``;
* ``pickle`` (protocol 5), ``marshal``, and ``json`` (compact separators, UTF-8 bytes; skipped
  for payloads JSON cannot hold).

Peers that are not installed are skipped.  Every benchmark first checks that the system
round-trips the payload, so a smoke run is a real check.
"""

from __future__ import annotations

import json
import marshal
import pickle
from collections.abc import Callable
from typing import Any

import pytest
from payloads import NOT_JSONABLE, PAYLOADS

from testsupport import load_backend

SYSTEMS = (
    "rapidrpc-cython",
    "rapidrpc-python",
    "msgpack",
    "msgpack-fallback",
    "ormsgpack",
    "pickle",
    "marshal",
    "json",
)

Codec = tuple[Callable[[Any], bytes], Callable[[bytes], Any]]


def _json_dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _codec(system: str, payload: str) -> Codec:
    """(dumps, loads) of *system*; skips when it is not installed or cannot hold *payload*."""
    if system.startswith("rapidrpc-"):
        impl = load_backend(system.removeprefix("rapidrpc-")).serializer
        return impl.dumps, impl.loads
    if system == "msgpack":
        msgpack = pytest.importorskip("msgpack")
        return msgpack.Packer().pack, msgpack.unpackb
    if system == "msgpack-fallback":
        fallback = pytest.importorskip("msgpack.fallback")
        return fallback.Packer().pack, fallback.unpackb
    if system == "ormsgpack":
        ormsgpack = pytest.importorskip("ormsgpack")
        return ormsgpack.packb, ormsgpack.unpackb
    if system == "pickle":
        return (lambda obj: pickle.dumps(obj, protocol=5)), pickle.loads
    if system == "marshal":
        return marshal.dumps, marshal.loads
    if payload in NOT_JSONABLE:
        pytest.skip(f"JSON cannot hold {payload}")
    return _json_dumps, json.loads


@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize("system", SYSTEMS)
def bench_dumps(benchmark, system, payload):
    dumps, loads = _codec(system, payload)
    value = PAYLOADS[payload]
    assert loads(dumps(value)) == value
    benchmark.group = f"dumps {payload}"
    benchmark.extra_info["system"] = system
    benchmark(dumps, value)


@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize("system", SYSTEMS)
def bench_loads(benchmark, system, payload):
    dumps, loads = _codec(system, payload)
    value = PAYLOADS[payload]
    data = dumps(value)
    assert loads(data) == value
    benchmark.group = f"loads {payload}"
    benchmark.extra_info["system"] = system
    benchmark.extra_info["bytes"] = len(data)
    benchmark(loads, data)
