"""``rapidrpc serve MODULE[:OBJECT]``: find what to serve and register it.

MODULE is a dotted module name (imported with the current directory on ``sys.path``, like
``python -m``) or a path to a ``.py`` file (its directory goes on ``sys.path`` so sibling
imports work).  Without OBJECT, the module's public functions are served: callables
*defined in that module* (not imported names, not classes), whose names do not start with
``_``.  With OBJECT (a dotted attribute path inside MODULE): a class is instantiated with no
arguments and its public methods served; a function is served alone; a module is served
like MODULE; any other object has its public methods served.

``async def`` callables are skipped with a note (the epoll server cannot await them).
Names come from the attribute (or an ``export(name=...)`` mark when the attribute keeps the
function's own name).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["TargetError", "load_target", "public_callables", "register_target"]


class TargetError(Exception):
    """The serve target cannot be imported or has nothing to serve."""


def _import_path(path: Path) -> ModuleType:
    if path.is_dir():
        init = path / "__init__.py"
        if not init.is_file():
            raise TargetError(f"{str(path)!r} is a directory without __init__.py")
        name, file, search = path.name, init, [str(path)]
    else:
        name, file, search = path.stem, path, None
    if not file.is_file():
        raise TargetError(f"no such file: {str(file)!r}")
    if name in sys.modules or not name.isidentifier():
        name = f"_rapidrpc_serve_{abs(hash(str(file)))}"  # never shadow an imported module
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, file, submodule_search_locations=search)
    if spec is None or spec.loader is None:
        raise TargetError(f"cannot load {str(file)!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _import(spec: str) -> ModuleType:
    looks_like_path = spec.endswith(".py") or os.sep in spec or spec.startswith(".")
    if looks_like_path or (os.path.exists(spec) and not spec.isidentifier()):
        return _import_path(Path(spec).resolve())
    # Like `python -m`: modules in the current directory are importable.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name is not None and spec.startswith(exc.name):
            raise TargetError(f"no module named {spec!r} (from {os.getcwd()})") from None
        raise


def load_target(target: str) -> Any:
    """Import *target* (``MODULE[:OBJECT]``) and return the module or the resolved object.

    Errors raised while the module itself runs propagate unchanged (with their traceback).
    """
    module_part, sep, obj_part = target.rpartition(":")
    if not sep or not all(p.isidentifier() for p in obj_part.split(".")):
        module_part, obj_part = target, ""
    if not module_part:
        raise TargetError(f"expected MODULE[:OBJECT], got {target!r}")
    obj: Any = _import(module_part)
    for attr in obj_part.split(".") if obj_part else ():
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise TargetError(f"{module_part!r} has no attribute {obj_part!r}") from None
    if inspect.isclass(obj):
        try:
            obj = obj()
        except Exception as exc:
            raise TargetError(
                f"cannot instantiate {obj_part}() with no arguments: {exc}; serve an "
                f"instance instead ({module_part}:some_instance)"
            ) from exc
    return obj


def _is_async(func: Any) -> bool:
    target = inspect.unwrap(func)
    return inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target)


def public_callables(obj: Any) -> list[tuple[str, Callable[..., Any]]]:
    """``(attribute name, callable)`` pairs that ``serve`` exposes for *obj*, sorted."""
    if inspect.ismodule(obj):
        found = [
            (name, value)
            for name, value in vars(obj).items()
            if not name.startswith("_")
            and callable(value)
            and not inspect.isclass(value)
            and getattr(value, "__module__", None) == obj.__name__
        ]
    elif inspect.isroutine(obj):
        found = [(obj.__name__, obj)]
    else:
        found = []
        for name in dir(obj):
            if name.startswith("_"):
                continue
            value = getattr(obj, name)
            if callable(value) and not inspect.isclass(value):
                found.append((name, value))
    return sorted(found, key=lambda pair: pair[0])


def register_target(
    server: Any, obj: Any, *, blocking: bool = False
) -> tuple[list[str], list[str]]:
    """Register *obj*'s public callables on *server*; returns ``(served, skipped)`` names.

    Raises TargetError when nothing can be served.
    """
    served: list[str] = []
    skipped: list[str] = []
    for attr, func in public_callables(obj):
        if _is_async(func):
            skipped.append(attr)
            continue
        # Keep an export(name=...) mark only when the attribute is the function's own name.
        name = None if getattr(func, "__name__", None) == attr else attr
        server.register(func, name, True if blocking else None)
        served.append(attr)
    if not served:
        what = "functions defined there" if inspect.ismodule(obj) else "methods"
        raise TargetError(f"nothing to serve: {obj!r} has no public {what}")
    return served, skipped
