"""JSON on the command line: arguments in, results out (``rapidrpc call``).

Arguments: each is parsed as a JSON literal (``3``, ``2.5``, ``true``, ``null``,
``"text"``, ``[1, 2]``, ``{"a": 1}``); anything that is not valid JSON is sent as the plain
string it is (``hello``).  An unquoted argument ``b64:<base64>`` is sent as bytes; quote it
as a JSON string (``'"b64:..."'``) to send the text itself.

Results: printed as JSON.  Values JSON lacks are written as: bytes -> ``"b64:<base64>"``
(the same notation as arguments), tuples -> arrays, sets -> arrays (sorted when the items
allow), date/time -> ISO 8601 strings, extension values -> ``{"ext": code, "data":
"b64:..."}``, dict keys that are not strings -> their JSON text, and anything else ->
``repr()``.  Non-finite floats print as ``NaN``/``Infinity`` (what Python's json does).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
from typing import Any

from .wire.serializer import ExtType

__all__ = ["B64_PREFIX", "dumps_result", "parse_arg", "parse_kwarg", "to_jsonable"]

#: Marks bytes written as text, in arguments and in results.
B64_PREFIX = "b64:"


def parse_arg(text: str) -> Any:
    """One command-line argument -> a value (JSON literal, ``b64:`` bytes, or the string)."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    if text.startswith(B64_PREFIX):
        try:
            return base64.b64decode(text[len(B64_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"invalid base64 after {B64_PREFIX!r} in {text!r}") from None
    return text


def parse_kwarg(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` -> ``(name, parse_arg(value))``."""
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise ValueError(f"keyword arguments look like NAME=VALUE, got {text!r}")
    return name, parse_arg(value)


def _b64(data: bytes | bytearray | memoryview) -> str:
    return B64_PREFIX + base64.b64encode(bytes(data)).decode("ascii")


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, (bytes, bytearray, memoryview)):
        return _b64(key)
    return json.dumps(to_jsonable(key), ensure_ascii=False)


def to_jsonable(value: Any) -> Any:
    """*value* with every part JSON cannot express replaced (see the module docstring)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _b64(value)
    if isinstance(value, ExtType):  # before tuple: ExtType is a named tuple
        return {"ext": value.code, "data": _b64(value.data)}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {_key(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        items = [to_jsonable(v) for v in value]
        try:
            items.sort()
        except TypeError:  # mixed types: keep the set's own order
            pass
        return items
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    return repr(value)


def dumps_result(value: Any, indent: int | None = None) -> str:
    """The JSON text printed for a call's result."""
    return json.dumps(to_jsonable(value), ensure_ascii=False, indent=indent)
