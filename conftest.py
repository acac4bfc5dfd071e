"""Shared pytest configuration for tests/ and benchmarks/.

* Plain ``pytest`` is a quick test run: benchmarks execute once each as smoke tests.
  ``pytest --benchmark-only`` (or ``--benchmark-enable``) runs them for real.
* The ``backend`` fixture runs a test once per backend: ``cython`` and ``python``.  The
  Cython run fails (it is not skipped) when the extension was expected but not loaded;
  it is skipped only under ``RAPIDRPC_PURE_PYTHON=1``.
"""

from __future__ import annotations

import pytest

from testsupport import BACKENDS, Backend, load_backend

__all__ = ["Backend", "load_backend"]


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    opt = config.option
    if not getattr(opt, "benchmark_only", False) and not getattr(opt, "benchmark_enable", False):
        opt.benchmark_disable = True


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each test using this fixture runs once per backend."""
    return load_backend(request.param)


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    """The backend name, for tests that pass it on (e.g. ``Server(backend=...)``)."""
    load_backend(request.param)
    return request.param
