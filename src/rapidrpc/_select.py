"""Pick one twin module (compiled or pure) for a face, following the one backend switch.

Used by the face modules in wire/ (and later transport/) so the selection logic exists once.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from . import _backend


def pick(package: str, compiled: str, pure: str) -> tuple[ModuleType, dict[str, ModuleType]]:
    """Return (active module, {"python": pure, "cython": compiled-if-loaded}).

    *compiled* and *pure* are module names relative to *package*.  When the compiled module
    is expected but missing, :func:`rapidrpc._backend.extension_missing` warns once (or
    raises ImportError under ``RAPIDRPC_REQUIRE_EXTENSION=1``).
    """
    pure_mod = importlib.import_module(f"{package}.{pure}")
    impls = {"python": pure_mod}
    if _backend.use_extension():
        try:
            impls["cython"] = importlib.import_module(f"{package}.{compiled}")
        except ImportError as exc:
            _backend.extension_missing(f"{package}.{compiled}", exc)
    active = impls.get("cython", pure_mod)
    return active, impls
