"""Round trips for every supported type, on both backends, plus identical bytes across them."""

from __future__ import annotations

import array
import enum
import math
import struct
import time
from collections import OrderedDict, defaultdict, namedtuple
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from serializer_helpers import normalized, rich_values

from rapidrpc.errors import SerializationError
from rapidrpc.wire import serializer
from rapidrpc.wire._ext import decode_bigint, encode_bigint
from rapidrpc.wire.serializer import ExtType

UTC = timezone.utc


def roundtrip(backend, value, **kw):
    return backend.serializer.loads(backend.serializer.dumps(value), **kw)


# --- scalars -------------------------------------------------------------------------------

INT_BOUNDARIES = sorted(
    {
        v
        for b in (0, 7, 8, 15, 16, 31, 32, 63, 64)
        for v in (2**b - 1, 2**b, 2**b + 1, -(2**b) - 1, -(2**b), -(2**b) + 1)
    }
    | {-32, -33, 127, 128, 255, 256, 2**64 - 1, -(2**63), 2**64, -(2**63) - 1, 2**300}
)


@pytest.mark.parametrize("value", INT_BOUNDARIES)
def test_int_boundaries(backend, value):
    out = roundtrip(backend, value)
    assert out == value and type(out) is int


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\xcc\x80"),
        (-1, b"\xff"),
        (-32, b"\xe0"),
        (-33, b"\xd0\xdf"),
        (2**16, b"\xce\x00\x01\x00\x00"),
        (2**64 - 1, b"\xcf" + b"\xff" * 8),
        # outside [-2**63, 2**64): ext 1, minimal big-endian two's complement
        (2**64, b"\xc7\x09\x01\x01" + b"\x00" * 8),
        (-(2**63) - 1, b"\xc7\x09\x01\xff\x7f" + b"\xff" * 7),
        (2**127 - 1, b"\xd8\x01\x7f" + b"\xff" * 15),
        (-(2**127), b"\xd8\x01\x80" + b"\x00" * 15),
    ],
)
def test_int_encodings(backend, value, encoded):
    assert backend.serializer.dumps(value) == encoded
    assert backend.serializer.loads(encoded) == value


@given(value=st.integers())
@settings(max_examples=200, deadline=None)
def test_bigint_payload_is_minimal(value):
    payload = encode_bigint(value)
    assert decode_bigint(payload, 0) == value
    # one byte shorter can no longer hold the value
    assert len(payload) == 1 or decode_bigint(payload[1:], 0) != value


def test_bool_is_not_int(backend):
    assert backend.serializer.dumps(True) == b"\xc3"
    assert backend.serializer.dumps(False) == b"\xc2"
    assert backend.serializer.dumps(None) == b"\xc0"
    assert roundtrip(backend, [True, False, None, 1, 0]) == [True, False, None, 1, 0]
    assert type(roundtrip(backend, True)) is bool


@pytest.mark.parametrize(
    "bits",
    [
        0x0000000000000000,  # 0.0
        0x8000000000000000,  # -0.0
        0x7FF0000000000000,  # inf
        0xFFF0000000000000,  # -inf
        0x7FF8000000000000,  # quiet nan
        0x7FF8000000000123,  # nan with payload
        0xFFF8DEADBEEF0001,  # negative nan with payload
        0x7FF0000000000001,  # signalling nan
        0x0000000000000001,  # smallest subnormal
        0x7FEFFFFFFFFFFFFF,  # max
    ],
)
def test_float_bit_exact(backend, bits):
    value = struct.unpack(">d", struct.pack(">Q", bits))[0]
    encoded = backend.serializer.dumps(value)
    assert encoded == b"\xcb" + struct.pack(">Q", bits)
    out = backend.serializer.loads(encoded)
    assert struct.pack(">d", out) == struct.pack(">Q", bits)


@pytest.mark.parametrize("value", [1.5, -0.0, 2.0**100, float("inf")])
def test_float32_decodes(backend, value):
    assert backend.serializer.loads(b"\xca" + struct.pack(">f", value)) == value
    assert math.copysign(1, backend.serializer.loads(b"\xca" + struct.pack(">f", -0.0))) == -1


@pytest.mark.parametrize("size", [0, 1, 31, 32, 255, 256, 65535, 65536, 70000])
def test_str_sizes(backend, size):
    value = ("aé€😀" * size)[:size]
    assert roundtrip(backend, value) == value
    ascii_value = "x" * size
    assert roundtrip(backend, ascii_value) == ascii_value


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536])
def test_bin_sizes(backend, size):
    value = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert roundtrip(backend, value) == value
    assert type(roundtrip(backend, value)) is bytes


def test_bytes_like_pack_as_bin(backend):
    dumps = backend.serializer.dumps
    assert dumps(bytearray(b"abc")) == dumps(b"abc") == b"\xc4\x03abc"
    assert dumps(memoryview(b"abc")) == b"\xc4\x03abc"
    # non-contiguous and multi-dimensional views: their bytes in logical (C) order
    assert dumps(memoryview(b"abcdef")[::2]) == b"\xc4\x03ace"
    grid = memoryview(bytes(range(6))).cast("B", (2, 3))
    assert dumps(grid) == b"\xc4\x06" + bytes(range(6))
    assert (
        dumps(memoryview(array.array("H", [1, 2])))
        == b"\xc4\x04" + array.array("H", [1, 2]).tobytes()
    )


def test_lone_surrogate_is_rejected(backend):
    with pytest.raises(SerializationError, match="surrogates not allowed"):
        backend.serializer.dumps("ok \ud800 not ok")
    # the same call works afterwards
    assert backend.serializer.dumps("fine") == b"\xa4fine"


# --- containers ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 15, 16, 65535, 65536])
def test_array_and_map_sizes(backend, size):
    values = list(range(size))
    assert roundtrip(backend, values) == values
    mapping = {i: -i for i in range(size)}
    assert roundtrip(backend, mapping) == mapping


def test_tuple_packs_as_array(backend):
    assert backend.serializer.dumps((1, 2)) == backend.serializer.dumps([1, 2]) == b"\x92\x01\x02"
    assert roundtrip(backend, (1, (2, 3))) == [1, [2, 3]]


def test_tuple_keys_roundtrip(backend):
    value = {(1, 2): "a", (1, (2, (3,))): "b", (): "empty", "plain": [(4, 5)]}
    out = roundtrip(backend, value)
    assert out == {(1, 2): "a", (1, (2, (3,))): "b", (): "empty", "plain": [[4, 5]]}
    assert all(type(k) in (tuple, str) for k in out)


def test_nested_structures(backend):
    value = {"a": [1, {"b": [None, True, {"c": b"\x00"}]}], "d": {}, "e": [], "f": [[[]]]}
    assert roundtrip(backend, value) == value


def test_depth_limit_when_packing(backend):
    dumps = backend.serializer.dumps
    ok = []
    for _ in range(511):
        ok = [ok]
    assert roundtrip(backend, ok) is not None  # 512 levels: the limit itself is fine
    deep: list = []
    for _ in range(600):
        deep = [deep]
    with pytest.raises(SerializationError, match="max_depth=512"):
        dumps(deep)
    loop: list = []
    loop.append(loop)
    with pytest.raises(SerializationError, match="self-referential"):
        dumps(loop)
    cyclic: dict = {}
    cyclic["self"] = cyclic
    with pytest.raises(SerializationError):
        dumps(cyclic)
    with pytest.raises(SerializationError):
        backend.serializer.Packer().pack(cyclic)
    assert dumps([1, 2]) == b"\x92\x01\x02"


# --- subclasses ---------------------------------------------------------------------------------


class Color(enum.IntEnum):
    RED = 1
    BIG = 2**70


class LoudStr(str):
    def encode(self, *args, **kwargs):  # must not be used
        raise AssertionError("subclass method called")


class LoudList(list):
    def __iter__(self):  # must not be used
        raise AssertionError("subclass method called")


Point = namedtuple("Point", "x y")


def test_subclasses_pack_like_their_base(backend):
    dumps = backend.serializer.dumps
    assert dumps(Color.RED) == dumps(1)
    assert dumps(Color.BIG) == dumps(2**70)
    assert dumps(LoudStr("hé")) == dumps("hé")
    assert dumps(LoudList([1, 2])) == dumps([1, 2])
    assert dumps(Point(1, 2)) == dumps([1, 2])
    assert dumps(type("F", (float,), {})(2.5)) == dumps(2.5)
    assert dumps(type("B", (bytes,), {})(b"xy")) == dumps(b"xy")
    assert dumps(defaultdict(list, a=[1])) == dumps({"a": [1]})


def test_ordered_dict_keeps_its_own_order(backend):
    od = OrderedDict([("a", 1), ("b", 2), ("c", 3)])
    od.move_to_end("a")
    assert backend.serializer.dumps(od) == backend.serializer.dumps({"b": 2, "c": 3, "a": 1})


# --- datetimes -------------------------------------------------------------------------------

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "payload_size"),
    [
        (EPOCH, 4),
        (EPOCH + timedelta(seconds=2**32 - 1), 4),
        (EPOCH + timedelta(seconds=2**32), 8),
        (EPOCH + timedelta(microseconds=1), 8),
        (EPOCH + timedelta(seconds=2**34 - 1, microseconds=999999), 8),
        (EPOCH + timedelta(seconds=2**34), 12),
        (EPOCH - timedelta(microseconds=1), 12),
        (datetime(1, 1, 1, tzinfo=UTC), 12),
        (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), 12),
    ],
)
def test_timestamp_sizes(backend, value, payload_size):
    encoded = backend.serializer.dumps(value)
    header = {4: b"\xd6\xff", 8: b"\xd7\xff", 12: b"\xc7\x0c\xff"}[payload_size]
    assert encoded.startswith(header) and len(encoded) == len(header) + payload_size
    out = backend.serializer.loads(encoded)
    assert out == value and out.tzinfo is UTC


def test_datetime_in_other_zone_decodes_as_utc(backend):
    value = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=-3)))
    out = roundtrip(backend, value)
    assert out == value and out.utcoffset() == timedelta(0)
    assert out.hour == 10


def test_naive_datetime_is_refused(backend):
    with pytest.raises(TypeError, match=r"naive datetime.*tzinfo"):
        backend.serializer.dumps(datetime(2024, 1, 1))


def test_sub_microsecond_nanoseconds_are_truncated(backend):
    # ts64: 1999 ns -> 1 microsecond
    encoded = b"\xd7\xff" + struct.pack(">Q", (1999 << 34) | 10)
    assert backend.serializer.loads(encoded) == EPOCH + timedelta(seconds=10, microseconds=1)


# --- ext ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 8, 16, 17, 255, 256, 65536])
def test_ext_roundtrip_and_fixext(backend, size):
    value = ExtType(42, b"z" * size)
    encoded = backend.serializer.dumps(value)
    fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
    if size in fixed:
        assert encoded[:2] == bytes([fixed[size], 42])
    out = backend.serializer.loads(encoded)
    assert out == value and type(out) is ExtType


def test_ext_hook(backend):
    calls = []

    def hook(code, data):
        calls.append((code, data))
        return ("decoded", code, data)

    encoded = backend.serializer.dumps([ExtType(5, b"ab"), ExtType(-7, b""), EPOCH, 2**70])
    out = backend.serializer.loads(encoded, ext_hook=hook)
    # timestamp (-1) and big int (1) are ours; only the others reach the hook
    assert out == [("decoded", 5, b"ab"), ("decoded", -7, b""), EPOCH, 2**70]
    assert calls == [(5, b"ab"), (-7, b"")]


def test_ext_validation(backend):
    dumps = backend.serializer.dumps
    with pytest.raises(SerializationError, match=r"outside -128\.\.127"):
        dumps(ExtType(128, b""))
    with pytest.raises(TypeError, match="data must be bytes"):
        dumps(ExtType(1, "text"))
    with pytest.raises(TypeError, match="code must be int"):
        dumps(ExtType("1", b""))
    assert dumps(ExtType(-128, bytearray(b"x"))) == b"\xd4\x80x"


# --- default hook ----------------------------------------------------------------------------


class Money:
    def __init__(self, cents):
        self.cents = cents


def test_default_hook_converts_and_recurses(backend):
    def default(obj):
        if isinstance(obj, Money):
            return {"cents": obj.cents, "nested": [Money(1)] if obj.cents > 1 else []}
        if isinstance(obj, set):
            return sorted(obj)
        raise TypeError(obj)

    value = {"total": Money(5), "ids": {3, 1, 2}}
    encoded = backend.serializer.dumps(value, default=default)
    out = backend.serializer.loads(encoded)
    assert out == {"total": {"cents": 5, "nested": [{"cents": 1, "nested": []}]}, "ids": [1, 2, 3]}
    assert backend.serializer.Packer(default=default).pack(value) == encoded


def test_unsupported_type_without_default(backend):
    with pytest.raises(TypeError, match="type Money"):
        backend.serializer.dumps([1, Money(3)])
    with pytest.raises(TypeError, match="type set"):
        backend.serializer.Packer().pack({1})


def test_default_returning_its_argument_ends_in_depth_error(backend):
    with pytest.raises(SerializationError, match="max_depth"):
        backend.serializer.dumps(Money(1), default=lambda obj: obj)


def test_default_hook_raising_leaves_packer_reusable(backend):
    def default(obj):
        raise ValueError("no thanks")

    packer = backend.serializer.Packer(default=default)
    big = ["x" * 1000] * 100 + [Money(1)]  # fails after the buffer has grown
    for _ in range(3):
        with pytest.raises(ValueError, match="no thanks"):
            packer.pack(big)
        assert packer.pack([1, "two"]) == serializer.dumps([1, "two"])
        with pytest.raises(ValueError, match="no thanks"):
            backend.serializer.dumps(big, default=default)
        assert backend.serializer.dumps({"a": 1}) == b"\x81\xa1a\x01"


def test_packer_reentrant_from_default_hook(backend):
    packer = None

    def default(obj):
        # packs with the same Packer while it is busy: gets its own buffer
        return ExtType(9, packer.pack({"inner": obj.cents}))

    packer = backend.serializer.Packer(default=default)
    encoded = packer.pack(["before", Money(7), "after"])
    inner = backend.serializer.dumps({"inner": 7})
    assert backend.serializer.loads(encoded) == ["before", ExtType(9, inner), "after"]
    assert packer.pack([1]) == b"\x91\x01"


def test_default_hook_mutating_the_container_is_detected(backend):
    victim = [Money(1), 2, 3]

    def shrink(obj):
        victim.clear()
        return 0

    with pytest.raises(RuntimeError, match="changed size"):
        backend.serializer.dumps(victim, default=shrink)
    mapping = {"a": Money(1), "b": 2}

    def grow(obj):
        mapping["c"] = 3
        return 0

    with pytest.raises(RuntimeError, match="changed size"):
        backend.serializer.dumps(mapping, default=grow)


def test_packer_reuses_buffer_across_sizes(backend):
    packer = backend.serializer.Packer()
    for value in [1, "x" * 10_000, [1] * 5, b"y" * (3 << 20), {"k": "v"}, None]:
        assert packer.pack(value) == backend.serializer.dumps(value)


# --- input buffer types for loads -------------------------------------------------------------


def test_loads_accepts_any_buffer(backend):
    loads = backend.serializer.loads
    encoded = backend.serializer.dumps({"a": [1, 2, "three"]})
    expected = {"a": [1, 2, "three"]}
    assert loads(bytearray(encoded)) == expected
    assert loads(memoryview(encoded)) == expected
    assert loads(array.array("B", encoded)) == expected
    # a non-contiguous view decodes its logical bytes
    spaced = bytes(b for byte in encoded for b in (byte, 0))
    assert loads(memoryview(spaced)[::2]) == expected
    # multi-byte items: the raw bytes
    assert loads(array.array("H", [0x9192, 0x0100])) == loads(
        array.array("H", [0x9192, 0x0100]).tobytes()
    )
    with pytest.raises(TypeError):
        loads("not bytes")


@given(value=rich_values)
@settings(max_examples=150, deadline=None)
def test_hypothesis_roundtrip_identical_bytes(value):
    impls = serializer.IMPLEMENTATIONS
    encoded = {name: impl.dumps(value) for name, impl in impls.items()}
    assert len(set(encoded.values())) == 1, "backends disagree"
    data = next(iter(encoded.values()))
    for impl in impls.values():
        assert normalized(impl.loads(data)) == normalized(value)


def test_dumps_reentrant_and_thread_safe(backend):
    impl = backend.serializer

    def default(obj):
        time.sleep(0)  # let other threads run mid-pack
        # re-entrant: a nested dumps while this one is in progress
        return {"inner": impl.dumps([obj.cents] * 50), "cents": obj.cents}

    def work(n):
        value = [{"n": n, "money": Money(n), "pad": "x" * (n * 100)} for _ in range(20)]
        expected = impl.dumps(value, default=default)
        for _ in range(30):
            assert impl.dumps(value, default=default) == expected
        return expected

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(8)))
    assert len(set(results)) == 8
    decoded = impl.loads(results[3])
    assert decoded[0]["money"] == {"inner": impl.dumps([3] * 50), "cents": 3}
