"""Interoperability: our bytes are msgpack-python's bytes, and each side reads the other."""

from __future__ import annotations

import struct
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from serializer_helpers import normalized, plain_values

from rapidrpc.wire.serializer import ExtType

msgpack = pytest.importorskip("msgpack")

UTC = timezone.utc

PLAIN = [
    None,
    True,
    False,
    *(2**b + d for b in (0, 5, 7, 8, 15, 16, 31, 32, 63) for d in (-1, 0, 1)),
    *(-(2**b) + d for b in (0, 5, 7, 8, 15, 16, 31, 32) for d in (-1, 0, 1)),
    -(2**63),
    2**64 - 1,
    0.0,
    -0.0,
    1.5,
    float("inf"),
    "",
    "a" * 31,
    "a" * 32,
    "é" * 128,
    "z" * 65536,
    b"",
    b"x" * 255,
    b"x" * 256,
    b"x" * 65536,
    [],
    list(range(15)),
    list(range(16)),
    list(range(65536)),
    {},
    {i: str(i) for i in range(15)},
    {i: str(i) for i in range(16)},
    {"nested": {"list": [1, [2, [3, {"x": None}]]]}},
]


@pytest.mark.parametrize("value", PLAIN, ids=lambda v: repr(v)[:30])
def test_plain_values_match_msgpack_packb(backend, value):
    assert backend.serializer.dumps(value) == msgpack.packb(value)


@given(value=plain_values)
@settings(max_examples=150, deadline=None)
def test_hypothesis_plain_values_match_msgpack(value):
    from rapidrpc.wire import serializer

    expected = msgpack.packb(value)
    for impl in serializer.IMPLEMENTATIONS.values():
        assert impl.dumps(value) == expected
        assert normalized(impl.loads(expected)) == normalized(value)


def _msgpack_ext_hook(code, data):
    return ExtType(code, data)


def test_msgpack_reads_everything_we_emit(backend):
    value = {
        "ints": [0, -1, 2**63, -(2**63)],
        "big": 2**100,
        "floats": [1.5, float("-inf")],
        "text": "héllo",
        "bin": b"\x00\xff",
        "tuple": (1, 2),
        "when": datetime(2024, 2, 29, 12, 0, 0, 250000, tzinfo=UTC),
        "ext": ExtType(42, b"payload"),
        (1, 2): "tuple key",
    }
    data = backend.serializer.dumps(value)
    out = msgpack.unpackb(
        data, timestamp=3, strict_map_key=False, use_list=False, ext_hook=_msgpack_ext_hook
    )
    assert out["ints"] == (0, -1, 2**63, -(2**63))
    # our big-int ext (code 1) is a plain ext for others: minimal two's complement bytes
    assert out["big"] == ExtType(1, (2**100).to_bytes(13, "big", signed=True))
    assert out["floats"] == (1.5, float("-inf"))
    assert out["text"] == "héllo" and out["bin"] == b"\x00\xff"
    assert out["tuple"] == (1, 2)
    assert out["when"] == value["when"]
    assert out["ext"] == ExtType(42, b"payload")
    assert out[(1, 2)] == "tuple key"


def test_we_read_everything_msgpack_emits(backend):
    loads = backend.serializer.loads
    assert loads(msgpack.packb(1.5, use_single_float=True)) == 1.5
    assert loads(msgpack.packb([0.25, -2.0], use_single_float=True)) == [0.25, -2.0]
    assert loads(msgpack.packb(msgpack.ExtType(5, b"xyz"))) == ExtType(5, b"xyz")
    for seconds, nanoseconds in [(0, 0), (1, 0), (2**32, 0), (5, 123456789), (2**34, 1), (-1, 0)]:
        stamp = msgpack.Timestamp(seconds, nanoseconds)
        expected = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
            seconds=seconds, microseconds=nanoseconds // 1000
        )
        assert loads(msgpack.packb(stamp)) == expected
    dt = datetime(2030, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    assert loads(msgpack.packb(dt, datetime=True)) == dt
    assert loads(msgpack.packb({b"bin-key": [b"v"]})) == {b"bin-key": [b"v"]}


def test_msgpack_timestamps_match_ours_byte_for_byte(backend):
    for seconds, nanoseconds in [
        (0, 0),
        (2**32 - 1, 0),
        (2**32, 0),
        (7, 1000),
        (2**34, 0),
        (-5, 0),
    ]:
        dt = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
            seconds=seconds, microseconds=nanoseconds // 1000
        )
        assert backend.serializer.dumps(dt) == msgpack.packb(
            msgpack.Timestamp(seconds, nanoseconds)
        )


def test_float32_payloads_are_read_exactly(backend):
    for bits in (0x3F800000, 0x80000000, 0x7F800000, 0x00000001):
        data = b"\xca" + struct.pack(">I", bits)
        expected = struct.unpack(">f", struct.pack(">I", bits))[0]
        assert struct.pack(">d", backend.serializer.loads(data)) == struct.pack(">d", expected)


def test_ormsgpack_reads_our_bytes(backend):
    ormsgpack = pytest.importorskip("ormsgpack")
    value = {"a": [1, 2.5, "x", None, True], "b": {"c": -(2**40)}}
    assert ormsgpack.unpackb(backend.serializer.dumps(value)) == value
    assert backend.serializer.loads(ormsgpack.packb(value)) == value
