"""Backend selection helpers shared by tests/ and benchmarks/ (imported by name: the repo
root is on sys.path under pytest because of the root conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import pytest

BACKENDS = ("cython", "python")


@dataclass(frozen=True)
class Backend:
    """The implementation modules of one backend, for tests that target it directly."""

    name: str
    serializer: ModuleType
    framing: ModuleType


def load_backend(name: str) -> Backend:
    """The modules of backend *name*; fails when the extension was expected but missing."""
    from rapidrpc import _backend
    from rapidrpc.wire import framing, serializer

    if name == "cython" and _backend.PURE_PYTHON:
        pytest.skip("RAPIDRPC_PURE_PYTHON=1: the Cython backend is deliberately off")
    try:
        return Backend(name, serializer.IMPLEMENTATIONS[name], framing.IMPLEMENTATIONS[name])
    except KeyError:
        pytest.fail(
            f"the {name} backend was expected but is not loaded: build the extension "
            "(pip install .) or run with RAPIDRPC_PURE_PYTHON=1"
        )
