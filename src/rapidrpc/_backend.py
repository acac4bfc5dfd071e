"""Which backend is active: the one switch, read once at import.

``RAPIDRPC_PURE_PYTHON=1`` forces the pure-Python backend, and so does a package installed
with ``RAPIDRPC_PURE_PYTHON=1 pip install .`` (it carries a ``_PURE_INSTALL`` marker).
When the compiled extension is
expected but cannot be imported, rapidrpc warns once and runs on the pure-Python backend;
``RAPIDRPC_REQUIRE_EXTENSION=1`` turns that into an ImportError.

This module imports nothing of ours, so any module can import it without closing a circle.
"""

from __future__ import annotations

import os
import warnings

__all__ = [
    "PURE_INSTALL",
    "PURE_PYTHON",
    "REQUIRE_EXTENSION",
    "active",
    "extension_missing",
    "use_extension",
]


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


# Written by setup.py into a package installed with RAPIDRPC_PURE_PYTHON=1.
PURE_INSTALL: bool = os.path.exists(os.path.join(os.path.dirname(__file__), "_PURE_INSTALL"))
PURE_PYTHON: bool = _flag("RAPIDRPC_PURE_PYTHON") or PURE_INSTALL
REQUIRE_EXTENSION: bool = _flag("RAPIDRPC_REQUIRE_EXTENSION")

if PURE_INSTALL and REQUIRE_EXTENSION:
    raise ImportError(
        "rapidrpc: RAPIDRPC_REQUIRE_EXTENSION=1, but this copy of rapidrpc was installed without "
        "its extension (RAPIDRPC_PURE_PYTHON=1 pip install). Reinstall with a C compiler."
    )

# Names of the compiled modules that failed to import (empty when all loaded or pure forced).
_missing: list[str] = []
_warned = False


def use_extension() -> bool:
    """True when faces should try their compiled implementation."""
    return not PURE_PYTHON


def extension_missing(module: str, exc: BaseException) -> None:
    """Record that compiled *module* could not be imported; warn once or raise.

    Raises ImportError when ``RAPIDRPC_REQUIRE_EXTENSION`` is set.
    """
    global _warned
    _missing.append(module)
    if REQUIRE_EXTENSION:
        raise ImportError(
            f"rapidrpc: compiled module {module} is required (RAPIDRPC_REQUIRE_EXTENSION=1) "
            f"but could not be imported: {exc}. Reinstall with a C compiler available "
            "(pip install --force-reinstall --no-cache-dir rapidrpc)."
        ) from exc
    if not _warned:
        _warned = True
        warnings.warn(
            f"rapidrpc: compiled module {module} could not be imported ({exc}); running on the "
            "much slower pure-Python backend. Set RAPIDRPC_PURE_PYTHON=1 to silence this, or "
            "RAPIDRPC_REQUIRE_EXTENSION=1 to make it an error.",
            RuntimeWarning,
            stacklevel=3,
        )


def active() -> str:
    """``"cython"`` when every compiled module loaded, else ``"python"``."""
    if PURE_PYTHON or _missing:
        return "python"
    return "cython"
