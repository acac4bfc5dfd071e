"""Shared by the serializer tests: hypothesis strategies, normalization, bad inputs."""

from __future__ import annotations

import math
import struct
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from rapidrpc.wire.serializer import ExtType

# Values msgpack-python's packb encodes exactly like us (no ext types of ours).
plain_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.binary(max_size=40),
)

plain_keys = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.text(max_size=20),
    st.binary(max_size=20),
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(plain_keys, children, max_size=6),
    )


plain_values = st.recursive(plain_scalars, _containers, max_leaves=30)

aware_datetimes = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from(
        [timezone.utc, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
    ),
)

# Everything both backends can pack, including our ext types and tuples/tuple keys.
rich_scalars = st.one_of(
    plain_scalars,
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=True, allow_infinity=True),
    aware_datetimes,
    st.builds(ExtType, st.integers(min_value=2, max_value=127), st.binary(max_size=20)),
)

rich_keys = st.recursive(plain_keys, lambda children: st.tuples(children, children), max_leaves=4)


def _rich_containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=6),
        st.lists(children, max_size=6).map(tuple),
        st.dictionaries(rich_keys, children, max_size=6),
    )


rich_values = st.recursive(rich_scalars, _rich_containers, max_leaves=30)


def normalized(value: Any) -> Any:
    """What loads(dumps(value)) gives: tuples -> lists (except inside keys), UTC datetimes
    truncated to microseconds, floats compared by bit pattern (for NaN)."""
    if isinstance(value, float):
        return ("float", struct.pack(">d", value))
    if isinstance(value, tuple) and not isinstance(value, ExtType):
        return [normalized(v) for v in value]
    if isinstance(value, list):
        return [normalized(v) for v in value]
    if isinstance(value, dict):
        return {_key(k): normalized(v) for k, v in value.items()}
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc)
    return value


def _key(key: Any) -> Any:
    if isinstance(key, float):
        return ("float", struct.pack(">d", key))
    if isinstance(key, tuple) and not isinstance(key, ExtType):
        return tuple(_key(k) for k in key)
    return key


def is_nan(value: Any) -> bool:
    """True for a float NaN."""
    return isinstance(value, float) and math.isnan(value)


# (id, bad bytes, loads keyword arguments, expected message fragment, expected offset)
BAD_INPUTS = [
    ("empty", b"", {}, "truncated input", 0),
    ("reserved-c1", b"\xc1", {}, "reserved byte 0xc1", 0),
    ("reserved-c1-nested", b"\x92\x01\xc1", {}, "reserved byte 0xc1", 2),
    ("trailing", b"\x01\x02", {}, "trailing data: 1 bytes", 1),
    ("trailing-many", b"\x90" + b"\x00" * 10, {}, "trailing data: 10 bytes", 1),
    ("truncated-uint16", b"\xcd\x01", {}, "truncated input", 0),
    ("truncated-float64", b"\xcb\x00\x00", {}, "truncated input", 0),
    ("truncated-str-header", b"\xda\x00", {}, "truncated input", 0),
    ("truncated-str-body", b"\xa5abc", {}, "needs at least 6 bytes, 4 remain", 0),
    ("truncated-bin-body", b"\xc4\x05ab", {}, "needs at least 7 bytes", 0),
    ("truncated-ext-header", b"\xc7\x03", {}, "truncated input", 0),
    ("truncated-ext-body", b"\xd6\x05\x00", {}, "needs at least 6 bytes", 0),
    ("truncated-array", b"\x93\x01\x02", {}, "needs at least 4 bytes", 0),
    ("truncated-map", b"\x82\x01\x02\x03", {}, "needs at least 5 bytes", 0),
    ("truncated-nested", b"\x91\x91\x92\x01", {}, "truncated input", 2),
    ("truncated-map-value", b"\x91\x81\xa1k", {}, "needs at least 1 bytes, 0 remain", 4),
    (
        "huge-array32",
        b"\xdd\xff\xff\xff\xff",
        {},
        "array of 4294967295 elements exceeds max_array_len",
        0,
    ),
    ("huge-map32", b"\xdf\xff\xff\xff\xff", {}, "map of 4294967295 entries exceeds max_map_len", 0),
    ("huge-str32", b"\xdb\xff\xff\xff\xff", {}, "str of 4294967295 bytes exceeds max_str_len", 0),
    ("huge-bin32", b"\xc6\xff\xff\xff\xff", {}, "bin of 4294967295 bytes exceeds max_bin_len", 0),
    (
        "huge-ext32",
        b"\xc9\xff\xff\xff\xff\x05",
        {},
        "ext of 4294967295 bytes exceeds max_ext_len",
        0,
    ),
    ("str-limit", b"\xd9\x05hello", {"max_str_len": 4}, "str of 5 bytes exceeds max_str_len=4", 0),
    ("bin-limit", b"\xc4\x03abc", {"max_bin_len": 2}, "bin of 3 bytes exceeds max_bin_len=2", 0),
    ("ext-limit", b"\xd6\x05abcd", {"max_ext_len": 3}, "ext of 4 bytes exceeds max_ext_len=3", 0),
    (
        "array-limit",
        b"\x93\x01\x02\x03",
        {"max_array_len": 2},
        "array of 3 elements exceeds max_array_len=2",
        0,
    ),
    ("map-limit", b"\x81\x01\x02", {"max_map_len": 0}, "map of 1 entries exceeds max_map_len=0", 0),
    ("depth-limit", b"\x91\x91\x91\x00", {"max_depth": 2}, "nesting depth exceeds max_depth=2", 2),
    ("depth-empty", b"\x91\x90", {"max_depth": 1}, "max_depth=1", 1),
    ("deep-100k", b"\x91" * 100_000, {}, "nesting depth exceeds max_depth=512", 512),
    ("deep-maps", b"\x81\x00" * 100_000, {}, "max_depth=512", 1024),
    ("utf8-invalid-start", b"\xa2\xff\xfe", {}, "invalid UTF-8 in str: invalid start byte", 1),
    ("utf8-surrogate", b"\xa3\xed\xa0\x80", {}, "invalid UTF-8", 1),
    ("utf8-overlong", b"\xa2\xc0\x80", {}, "invalid UTF-8", 1),
    ("utf8-cut", b"\xa2a\xe2", {}, "invalid UTF-8 in str: unexpected end of data", 2),
    ("utf8-in-key", b"\x81\xa1\xff\x01", {}, "invalid UTF-8", 2),
    ("duplicate-key", b"\x82\xa1a\x01\xa1a\x02", {}, "duplicate map key 'a'", 4),
    ("duplicate-equal-keys", b"\x82\x01\x00\xc3\x00", {}, "duplicate map key True", 3),
    ("unhashable-map-key", b"\x81\x80\x01", {}, "unhashable map key of type dict", 1),
    ("unhashable-nested-key", b"\x81\x91\x80\x01", {}, "unhashable map key of type tuple", 1),
    ("timestamp-length", b"\xd5\xff\x00\x00", {}, "expected 4, 8 or 12", 0),
    ("timestamp-empty", b"\xc7\x00\xff", {}, "timestamp ext -1 has 0 bytes", 0),
    (
        "timestamp-ns64",
        b"\xd7\xff" + struct.pack(">Q", 1_000_000_000 << 34),
        {},
        "nanoseconds 1000000000 out of range",
        0,
    ),
    ("timestamp-ns96", b"\xc7\x0c\xff" + struct.pack(">Iq", 10**9, 0), {}, "out of range", 0),
    (
        "timestamp-range",
        b"\xc7\x0c\xff" + struct.pack(">Iq", 0, 2**62),
        {},
        "outside the range of datetime",
        0,
    ),
    ("bigint-empty", b"\xc7\x00\x01", {}, "empty payload for big int", 0),
]
