"""The method table: names to handlers, argument checks, exceptions to error triples.

A :class:`Dispatcher` is shared by every driver (the epoll loops, the asyncio server, the
HTTP gateways).  It never touches bytes: drivers look a method up, call it (inline, in a
thread pool, or awaited), and turn whatever it raised into an error with :func:`error_info`.

Naming rules: a method name is one or more dot-separated segments (``add``,
``calc.add``); no segment may start with ``_``, so private attributes are never callable,
not even through a dotted path.  The ``rpc.`` prefix is reserved for built-ins
(``rpc.methods``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar, overload

from ..errors import InvalidParams, MethodNotFound, RemoteError, StatusCode

__all__ = ["BUILTIN_PREFIX", "Dispatcher", "Method", "Registrar", "error_info", "export"]

F = TypeVar("F", bound=Callable[..., Any])

BUILTIN_PREFIX = "rpc."
_EXPORT_ATTR = "__rapidrpc_export__"  # (name, blocking) set by the bare `export` decorator


class Method(NamedTuple):
    """One registered method (a tuple: cheap to look up and unpack on the hot path)."""

    func: Callable[..., Any]
    name: str
    blocking: bool  # run in the server's thread pool instead of inline on the loop
    is_async: bool  # an ``async def`` handler: only the asyncio server may await it
    signature: inspect.Signature | None  # None when Python cannot introspect the callable


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"method name must be a non-empty str, got {name!r}")
    for segment in name.split("."):
        if not segment or segment.startswith("_"):
            raise ValueError(
                f"invalid method name {name!r}: segments must be non-empty and must not "
                "start with '_' (private names are never callable)"
            )
    return name


def _signature(func: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(func)
    except (TypeError, ValueError):  # some builtins have no introspectable signature
        return None


def _is_async(func: Callable[..., Any]) -> bool:
    target = inspect.unwrap(func)
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004 - async callable objects count too
    )


@overload
def export(func: F, /) -> F: ...
@overload
def export(*, name: str | None = None, blocking: bool = False) -> Callable[[F], F]: ...


def export(
    func: Callable[..., Any] | None = None, /, *, name: str | None = None, blocking: bool = False
) -> Any:
    """Mark a function or method for export without registering it anywhere yet.

    Usable bare (``@export``) or with options (``@export(name="calc.add", blocking=True)``).
    :meth:`Dispatcher.register_instance` honours the marks of an object's methods, and
    :meth:`Dispatcher.register` uses them as defaults.
    """

    def mark(f: F) -> F:
        if name is not None:
            _check_name(name)
        setattr(f, _EXPORT_ATTR, (name, blocking))
        return f

    return mark(func) if func is not None else mark


def _bind_fails(
    sig: inspect.Signature, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]
) -> bool:
    """True when *args*/*kwargs* do not fit *sig* (so the TypeError was a binding error)."""
    try:
        sig.bind(*args, **kwargs)
    except TypeError:
        return True
    return False


def error_info(exc: BaseException) -> tuple[int, str, str, Any]:
    """The error triple (plus details) sent for *exc*: ``(code, message, type, details)``.

    A :class:`~rapidrpc.RemoteError` keeps its code, message, remote type and details (so a
    handler can raise ``InvalidParams`` or forward a remote failure); any other exception is
    ``UNKNOWN`` with ``str(exc)`` and the exception's class name.
    """
    if isinstance(exc, RemoteError):
        return exc.code, exc.message, exc.remote_type or type(exc).__name__, exc.details
    return StatusCode.UNKNOWN, str(exc), type(exc).__name__, None


class Dispatcher:
    """A method table.

    ``allow_async=False`` (the epoll servers) refuses ``async def`` handlers at registration
    with an error pointing to :class:`rapidrpc.aio.Server`, which creates its dispatcher
    with ``allow_async=True`` and awaits them.
    """

    def __init__(self, *, allow_async: bool = False) -> None:
        self.allow_async = allow_async
        self._methods: dict[str, Method] = {}
        self._builtin(self._rpc_methods, "rpc.methods")

    # --- registration -----------------------------------------------------------------

    def _builtin(self, func: Callable[..., Any], name: str) -> None:
        self._methods[name] = Method(func, name, False, False, _signature(func))

    def register(self, func: F, name: str | None = None, blocking: bool | None = None) -> F:
        """Register *func* under *name* (default: an ``@export`` name, else ``__name__``).

        ``blocking=True`` asks the server to run it in its thread pool.  Registering a name
        twice replaces the earlier handler.  Returns *func* unchanged.
        """
        if not callable(func):
            raise TypeError(f"handler must be callable, got {type(func).__name__}")
        marked_name, marked_blocking = getattr(func, _EXPORT_ATTR, (None, False))
        if name is None:
            name = marked_name or getattr(func, "__name__", None)
            if name is None:
                raise ValueError(f"{func!r} has no __name__: pass name=...")
        _check_name(name)
        if name.startswith(BUILTIN_PREFIX):
            raise ValueError(f"method names starting with {BUILTIN_PREFIX!r} are reserved")
        if blocking is None:
            blocking = marked_blocking
        is_async = _is_async(func)
        if is_async and not self.allow_async:
            raise TypeError(
                f"{name!r} is an async def handler: this server runs plain functions on an "
                "epoll loop and cannot await it. Serve it with rapidrpc.aio.Server, or make "
                "it a plain function (blocking=True runs it in a thread pool)."
            )
        self._methods[name] = Method(func, name, bool(blocking), is_async, _signature(func))
        return func

    def register_instance(self, obj: object, prefix: str | None = None) -> None:
        """Register every public callable attribute of *obj* (``prefix.name`` if *prefix*).

        Names starting with ``_`` are skipped; methods marked with :func:`export` keep their
        ``blocking`` option and may rename themselves (the prefix still applies).
        """
        if prefix is not None:
            _check_name(prefix)
        for attr in dir(obj):
            if attr.startswith("_"):
                continue
            member = getattr(obj, attr)
            if not callable(member) or inspect.isclass(member):
                continue
            marked_name, marked_blocking = getattr(member, _EXPORT_ATTR, (None, False))
            base = marked_name or attr
            self.register(member, f"{prefix}.{base}" if prefix else base, marked_blocking)

    @overload
    def export(self, func: F, /) -> F: ...
    @overload
    def export(self, *, name: str | None = None, blocking: bool = False) -> Callable[[F], F]: ...

    def export(
        self,
        func: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        blocking: bool = False,
    ) -> Any:
        """Decorator: ``@d.export`` or ``@d.export(name=..., blocking=...)`` registers."""
        if func is not None:
            return self.register(func)

        def deco(f: F) -> F:
            return self.register(f, name, blocking)

        return deco

    # --- lookup and calls ---------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self._methods

    def __len__(self) -> int:
        return len(self._methods)

    @property
    def table(self) -> dict[str, Method]:
        """The live name -> :class:`Method` mapping, for drivers' fast paths.

        It is the same dict for the dispatcher's whole life, so a driver may keep it and
        still see later registrations.  Read it only; register through the methods above.
        """
        return self._methods

    def lookup(self, name: str) -> Method:
        """The :class:`Method` registered as *name*; raises MethodNotFound."""
        try:
            return self._methods[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name from a hostile peer
            raise MethodNotFound(f"method {name!r} not found") from None

    def invoke(
        self,
        method: Method,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        """Call *method*; arguments that do not fit its signature raise InvalidParams.

        A TypeError raised inside the handler body propagates unchanged (it is an ordinary
        handler error).  For ``async def`` handlers this returns the coroutine.
        """
        try:
            if kwargs:
                return method.func(*args, **kwargs)
            return method.func(*args)
        except TypeError as exc:
            invalid = self.argument_error(method, args, kwargs, exc)
            if invalid is not None:
                raise invalid from None
            raise

    def argument_error(
        self,
        method: Method,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any] | None,
        exc: TypeError,
    ) -> InvalidParams | None:
        """The InvalidParams for *exc* when it came from binding *args*/*kwargs* to *method*;
        None when the handler body raised it (an ordinary handler error).

        *exc* must have been caught in the frame that called ``method.func`` (as
        :meth:`invoke` does): drivers that call handlers themselves, like a compiled fast
        path, use this to apply the same rule.
        """
        if method.signature is not None:
            invalid = _bind_fails(method.signature, args, kwargs or {})
        else:
            # No signature to check: a TypeError from binding is raised before the
            # handler has a frame, so only the caller's frame is on the traceback.
            tb = exc.__traceback__
            invalid = tb is None or tb.tb_next is None
        return InvalidParams(f"{method.name}(): {exc}") if invalid else None

    def call(
        self,
        name: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        """Look up and invoke in one step (drivers that need ``blocking`` use lookup+invoke)."""
        return self.invoke(self.lookup(name), args, kwargs)

    # --- introspection ------------------------------------------------------------------

    def methods(self) -> list[dict[str, str]]:
        """Name, signature string and docstring of every method, sorted by name."""
        out = []
        for name in sorted(self._methods):
            m = self._methods[name]
            out.append(
                {
                    "name": name,
                    "signature": str(m.signature) if m.signature is not None else "(...)",
                    "doc": inspect.getdoc(m.func) or "",
                }
            )
        return out

    def _rpc_methods(self) -> list[dict[str, str]]:
        """List every method with its signature and docstring."""
        return self.methods()


class Registrar:
    """Registration methods for a face that owns a :class:`Dispatcher` as ``self.dispatcher``.

    Shared by :class:`rapidrpc.Server` and :class:`rapidrpc.aio.Server`, so both offer the same
    ``register`` / ``register_instance`` / ``export`` surface.
    """

    dispatcher: Dispatcher

    def register(self, func: F, name: str | None = None, blocking: bool | None = None) -> F:
        """Register *func* as *name* (default ``func.__name__``); see :class:`Dispatcher`.

        ``async def`` functions are accepted by :class:`rapidrpc.aio.Server` only.
        """
        return self.dispatcher.register(func, name, blocking)

    def register_instance(self, obj: object, prefix: str | None = None) -> None:
        """Register the public methods of *obj*, as ``prefix.method`` when *prefix* is given."""
        self.dispatcher.register_instance(obj, prefix)

    def export(
        self,
        func: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        blocking: bool = False,
    ) -> Any:
        """Decorator: ``@server.export`` or ``@server.export(name="calc.add", blocking=True)``."""
        if func is not None:
            return self.dispatcher.export(func)
        return self.dispatcher.export(name=name, blocking=blocking)
