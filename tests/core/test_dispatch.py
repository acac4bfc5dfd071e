"""The method table: registration rules, lookup, argument errors, error triples.

Dispatch never touches bytes, so these tests need no wire backend; the same dispatcher is
exercised over both backends by tests/core/test_protocol.py and the transport tests.
"""

from __future__ import annotations

import functools

import pytest

from rapidrpc.core.dispatch import Dispatcher, error_info, export
from rapidrpc.errors import (
    DeadlineExceeded,
    InvalidParams,
    MethodNotFound,
    RemoteError,
    StatusCode,
)


def add(a, b):
    """Add two numbers."""
    return a + b


class Calc:
    def __init__(self) -> None:
        self.secret = 42

    def mul(self, a, b=2):
        """Multiply."""
        return a * b

    def _private(self):
        return "never"

    def __len__(self):
        return 0

    @export(name="power", blocking=True)
    def pow_(self, a, b):
        return a**b

    class Inner:  # classes are not methods
        pass


@pytest.fixture
def d() -> Dispatcher:
    return Dispatcher()


def test_register_and_call(d: Dispatcher) -> None:
    assert d.register(add) is add
    assert d.call("add", [1, 2]) == 3
    assert d.call("add", (1,), {"b": 5}) == 6
    assert "add" in d
    m = d.lookup("add")
    assert (m.name, m.blocking, m.is_async) == ("add", False, False)


def test_register_with_name_and_blocking(d: Dispatcher) -> None:
    d.register(add, name="calc.add", blocking=True)
    assert d.lookup("calc.add").blocking is True
    assert "add" not in d


def test_reregistering_replaces(d: Dispatcher) -> None:
    d.register(add)
    d.register(lambda a, b: a - b, name="add")
    assert d.call("add", [5, 2]) == 3


def test_export_bare_and_with_arguments(d: Dispatcher) -> None:
    @d.export
    def hello(name):
        return f"hi {name}"

    @d.export(name="svc.slow", blocking=True)
    def slow():
        return 1

    assert hello("x") == "hi x"  # the decorator returns the function unchanged
    assert d.call("hello", ["bob"]) == "hi bob"
    assert d.lookup("svc.slow").blocking is True


def test_module_export_marks_are_register_defaults(d: Dispatcher) -> None:
    @export(name="marked.fn", blocking=True)
    def fn():
        return 7

    d.register(fn)
    m = d.lookup("marked.fn")
    assert m.blocking and d.invoke(m, ()) == 7
    d.register(fn, name="plain", blocking=False)
    assert d.lookup("plain").blocking is False


def test_register_instance_public_methods_only(d: Dispatcher) -> None:
    d.register_instance(Calc(), prefix="calc")
    names = {m["name"] for m in d.methods()}
    assert names == {"calc.mul", "calc.power", "rpc.methods"}
    assert d.call("calc.mul", [3]) == 6
    assert d.lookup("calc.power").blocking is True
    for hidden in ("calc._private", "calc.__len__", "calc.secret", "calc.Inner", "_private"):
        with pytest.raises(MethodNotFound):
            d.lookup(hidden)


def test_register_instance_without_prefix(d: Dispatcher) -> None:
    d.register_instance(Calc())
    assert d.call("mul", [2, 5]) == 10


@pytest.mark.parametrize(
    "name", ["", "_x", "a._b", "a..b", ".a", "a.", "svc.__class__", "rpc.methods", "rpc.mine"]
)
def test_bad_or_reserved_names_refused(d: Dispatcher, name: str) -> None:
    with pytest.raises(ValueError):
        d.register(add, name=name)


def test_bad_prefix_refused(d: Dispatcher) -> None:
    with pytest.raises(ValueError):
        d.register_instance(Calc(), prefix="_hidden")


def test_non_callable_refused(d: Dispatcher) -> None:
    with pytest.raises(TypeError):
        d.register(42)  # type: ignore[arg-type]


def test_unknown_method(d: Dispatcher) -> None:
    with pytest.raises(MethodNotFound) as ei:
        d.lookup("nope")
    assert ei.value.code == StatusCode.UNIMPLEMENTED
    assert "nope" in ei.value.message


def test_unhashable_name_is_method_not_found(d: Dispatcher) -> None:
    with pytest.raises(MethodNotFound):
        d.lookup(["a"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((), None), ((1, 2, 3), None), ((1,), {"c": 2}), ((1,), {"a": 1, "b": 2}), ((1, 2), {1: 2})],
)
def test_argument_binding_errors_are_invalid_params(d: Dispatcher, args, kwargs) -> None:
    d.register(add)
    with pytest.raises(InvalidParams) as ei:
        d.call("add", args, kwargs)
    assert ei.value.code == StatusCode.INVALID_ARGUMENT
    assert "add" in ei.value.message


def test_type_error_inside_handler_is_a_handler_error(d: Dispatcher) -> None:
    d.register(add)
    with pytest.raises(TypeError) as ei:
        d.call("add", [1, "x"])
    assert not isinstance(ei.value, InvalidParams)


def test_decorated_handler_binding_checked_against_wrapped_signature(d: Dispatcher) -> None:
    def logged(f):
        @functools.wraps(f)
        def wrapper(*a, **k):
            return f(*a, **k)

        return wrapper

    d.register(logged(add))
    with pytest.raises(InvalidParams):
        d.call("add", [1])
    with pytest.raises(TypeError) as ei:
        d.call("add", [1, "x"])
    assert not isinstance(ei.value, InvalidParams)


def test_builtin_without_signature(d: Dispatcher) -> None:
    d.register(len, name="length")
    assert d.call("length", [[1, 2]]) == 2
    # len() has a signature on modern CPython; either way, wrong arity is InvalidParams.
    with pytest.raises(InvalidParams):
        d.call("length", [])


def test_handler_remote_error_keeps_code(d: Dispatcher) -> None:
    def deny():
        raise DeadlineExceeded("too late", details={"waited": 1.5})

    d.register(deny)
    with pytest.raises(DeadlineExceeded) as ei:
        d.call("deny")
    assert error_info(ei.value) == (
        StatusCode.DEADLINE_EXCEEDED,
        "too late",
        "DeadlineExceeded",
        {"waited": 1.5},
    )


def test_error_info() -> None:
    assert error_info(ZeroDivisionError("division by zero")) == (
        StatusCode.UNKNOWN,
        "division by zero",
        "ZeroDivisionError",
        None,
    )
    assert error_info(RemoteError("x", code=13, remote_type="KeyError")) == (
        13,
        "x",
        "KeyError",
        None,
    )
    assert error_info(MethodNotFound("m")) == (
        StatusCode.UNIMPLEMENTED,
        "m",
        "MethodNotFound",
        None,
    )
    assert error_info(InvalidParams("p"))[0] == StatusCode.INVALID_ARGUMENT


def test_async_handlers_refused_by_sync_dispatcher(d: Dispatcher) -> None:
    async def coro():
        return 1

    with pytest.raises(TypeError, match=r"rapidrpc\.aio\.Server"):
        d.register(coro)
    with pytest.raises(TypeError, match=r"rapidrpc\.aio\.Server"):
        d.export(coro)
    assert "coro" not in d


def test_async_handlers_marked_for_async_dispatcher() -> None:
    import asyncio

    d = Dispatcher(allow_async=True)

    @d.export
    async def double(x):
        return 2 * x

    m = d.lookup("double")
    assert m.is_async
    assert asyncio.run(d.invoke(m, [21])) == 42


def test_introspection(d: Dispatcher) -> None:
    d.register(add, name="math.add")
    d.register_instance(Calc(), prefix="calc")
    listing = d.call("rpc.methods")
    assert [m["name"] for m in listing] == sorted(m["name"] for m in listing)
    by_name = {m["name"]: m for m in listing}
    assert by_name["math.add"] == {
        "name": "math.add",
        "signature": "(a, b)",
        "doc": "Add two numbers.",
    }
    assert by_name["calc.mul"]["signature"] == "(a, b=2)"
    assert by_name["calc.power"]["doc"] == ""
    assert "rpc.methods" in by_name
