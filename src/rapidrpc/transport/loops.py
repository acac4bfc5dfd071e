"""The server loop face: the compiled epoll loop or the pure-Python one, by the one switch.

``rapidrpc.transport._eventloop_c`` (cext/eventloop.pyx) and
:mod:`rapidrpc.transport.eventloop` have the same API (``EventLoop(listener, dispatcher,
config)`` with ``run``/``stop``/``wait_running``/``join``, ``connection_count``, ``stats``,
``poller_kind``; ``serve(...)``) and the same behaviour; the compiled one also fuses the
common request into one C path.  Both stay addressable through ``IMPLEMENTATIONS`` so
tests and benchmarks can target each; a missing compiled loop warns once like the wire
modules, and ``rapidrpc.BACKEND`` is ``"cython"`` only when it loaded.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from .._select import pick
from .eventloop import ServerConfig

__all__ = ["IMPLEMENTATIONS", "LOOP_TYPES", "EventLoop", "ServerConfig", "loop_class", "serve"]

_active, IMPLEMENTATIONS = pick("rapidrpc.transport", "_eventloop_c", "eventloop")

#: The active implementation's loop class and entry point.
EventLoop: Any = _active.EventLoop
serve = _active.serve

#: Every loaded loop class (for isinstance checks on a running server's loop).
LOOP_TYPES: tuple[type, ...] = tuple(mod.EventLoop for mod in IMPLEMENTATIONS.values())


def loop_class(backend: str) -> Any:
    """The loop class of *backend*: ``"cython"`` -> the compiled loop, ``"python"`` -> pure."""
    module: ModuleType | None = IMPLEMENTATIONS.get(backend)
    if module is None:
        raise ValueError(
            f"backend {backend!r} has no server loop (loaded: "
            f"{', '.join(sorted(IMPLEMENTATIONS))}); build the extension or use backend='python'"
        )
    return module.EventLoop
