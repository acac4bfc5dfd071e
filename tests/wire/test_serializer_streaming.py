"""Streaming Unpacker: any split point, limits, poisoning, re-entrancy, same errors as loads."""

from __future__ import annotations

import tracemalloc
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from serializer_helpers import BAD_INPUTS, normalized, rich_values

from rapidrpc.errors import SerializationError
from rapidrpc.wire import serializer
from rapidrpc.wire.serializer import ExtType

MESSAGES = [
    {"id": 1, "method": "ping", "params": []},
    [1, 2.5, "é" * 40, b"\x00" * 300, None, True],
    2**70,
    datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc),
    ExtType(7, b"abc"),
    "x" * 70_000,
    {(1, 2): {"nested": [[[]]]}},
    0,
]


def stream_bytes(backend):
    return b"".join(backend.serializer.dumps(m) for m in MESSAGES)


def expected_messages():
    return [normalized(m) for m in MESSAGES]


def drain(unpacker):
    return [normalized(v) for v in unpacker]


def test_one_chunk(backend):
    unpacker = backend.serializer.Unpacker()
    unpacker.feed(stream_bytes(backend))
    assert drain(unpacker) == expected_messages()
    assert list(unpacker) == []


def test_every_split_point(backend):
    data = b"".join(backend.serializer.dumps(m) for m in MESSAGES[:5])
    for cut in range(len(data) + 1):
        unpacker = backend.serializer.Unpacker()
        unpacker.feed(data[:cut])
        got = drain(unpacker)
        unpacker.feed(data[cut:])
        got += drain(unpacker)
        assert got == [normalized(m) for m in MESSAGES[:5]], cut


def test_one_byte_at_a_time(backend):
    data = stream_bytes(backend)
    unpacker = backend.serializer.Unpacker()
    got = []
    for i in range(len(data)):
        unpacker.feed(data[i : i + 1])
        got += drain(unpacker)
    assert got == expected_messages()


def test_values_are_yielded_as_soon_as_complete(backend):
    data = backend.serializer.dumps([1, 2, 3])
    unpacker = backend.serializer.Unpacker()
    for i, byte in enumerate(data):
        unpacker.feed(bytes([byte]))
        assert list(unpacker) == ([] if i < len(data) - 1 else [[1, 2, 3]])


def test_feed_accepts_any_buffer(backend):
    data = backend.serializer.dumps({"k": [1, 2]})
    unpacker = backend.serializer.Unpacker()
    unpacker.feed(bytearray(data[:2]))
    unpacker.feed(memoryview(data)[2:4])
    spaced = bytes(b for byte in data[4:] for b in (byte, 0))
    unpacker.feed(memoryview(spaced)[::2])  # non-contiguous
    assert list(unpacker) == [{"k": [1, 2]}]
    with pytest.raises(TypeError):
        unpacker.feed("text")


@given(
    values=st.lists(rich_values, min_size=1, max_size=5),
    chunk=st.integers(min_value=1, max_value=17),
)
@settings(max_examples=60, deadline=None)
def test_hypothesis_random_chunks(values, chunk):
    for impl in serializer.IMPLEMENTATIONS.values():
        data = b"".join(impl.dumps(v) for v in values)
        unpacker = impl.Unpacker()
        got = []
        for i in range(0, len(data), chunk):
            unpacker.feed(data[i : i + chunk])
            got += [normalized(v) for v in unpacker]
        assert got == [normalized(v) for v in values]


# --- limits and errors --------------------------------------------------------------------------


def test_max_buffer_size(backend):
    unpacker = backend.serializer.Unpacker(max_buffer_size=10)
    unpacker.feed(b"\xa9" + b"x" * 8)  # 9 bytes of a 10-byte str: waiting
    assert list(unpacker) == []
    with pytest.raises(SerializationError, match="max_buffer_size=10"):
        unpacker.feed(b"yy")
    with pytest.raises(SerializationError, match="unusable after an error; call reset"):
        unpacker.feed(b"y")
    unpacker.reset()
    unpacker.feed(b"\x01\x02")
    assert list(unpacker) == [1, 2]


def test_consumed_bytes_do_not_count_against_the_buffer(backend):
    unpacker = backend.serializer.Unpacker(max_buffer_size=4)
    for _ in range(100):
        unpacker.feed(b"\x93\x01\x02\x03")
        assert list(unpacker) == [[1, 2, 3]]


@pytest.mark.parametrize(
    ("data", "kw", "fragment", "offset"),
    [
        pytest.param(*case[1:], id=case[0])
        for case in BAD_INPUTS
        # incomplete input is not an error for a stream, and trailing bytes are the next value
        if not case[0].startswith(("truncated", "trailing", "empty"))
    ],
)
def test_stream_errors_match_loads(backend, data, kw, fragment, offset):
    with pytest.raises(SerializationError) as from_loads:
        backend.serializer.loads(data, **kw)
    # whole, and in 1-byte pieces: the same message and offset as loads()
    for pieces in ([data], [data[i : i + 1] for i in range(len(data))]):
        unpacker = backend.serializer.Unpacker(**kw)
        with pytest.raises(SerializationError) as from_stream:
            for piece in pieces:
                unpacker.feed(piece)
                list(unpacker)
        assert str(from_stream.value) == str(from_loads.value)


def test_error_offsets_are_stream_offsets(backend):
    unpacker = backend.serializer.Unpacker()
    unpacker.feed(b"\x01\x02\x92\x03\xc1")
    assert next(unpacker) == 1
    assert next(unpacker) == 2
    with pytest.raises(SerializationError, match=r"0xc1 .*\(at offset 4\)"):
        next(unpacker)


def test_poisoned_after_error_until_reset(backend):
    unpacker = backend.serializer.Unpacker()
    unpacker.feed(b"\x05\xa2\xff\xfe\x06")
    assert next(unpacker) == 5
    with pytest.raises(SerializationError, match="invalid UTF-8"):
        next(unpacker)
    for _ in range(2):
        with pytest.raises(SerializationError, match="unusable after an error; call reset"):
            next(unpacker)
        with pytest.raises(SerializationError, match="unusable after an error; call reset"):
            unpacker.feed(b"\x01")
    unpacker.reset()
    assert list(unpacker) == []
    unpacker.feed(b"\x07")
    assert list(unpacker) == [7]


def test_structural_error_found_while_waiting(backend):
    # 0xc1 inside an array whose other elements have not arrived yet
    unpacker = backend.serializer.Unpacker()
    unpacker.feed(b"\x95\x01\xc1")
    with pytest.raises(SerializationError, match=r"reserved byte 0xc1.*offset 2"):
        next(unpacker)


def test_deep_nesting_in_pieces(backend):
    unpacker = backend.serializer.Unpacker()
    with pytest.raises(SerializationError, match=r"max_depth=512.*offset 512"):
        for _ in range(1000):
            unpacker.feed(b"\x91" * 100)
            list(unpacker)


def test_huge_declared_array_waits_without_allocating(backend):
    unpacker = backend.serializer.Unpacker(max_array_len=2**32)
    tracemalloc.start()
    try:
        unpacker.feed(b"\xdd\xff\xff\xff\xff")
        for _ in range(100):
            unpacker.feed(b"\x00")
            assert list(unpacker) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_ext_hook_error_poisons(backend):
    def hook(code, data):
        raise LookupError("nope")

    unpacker = backend.serializer.Unpacker(ext_hook=hook)
    unpacker.feed(b"\x01\xd4\x05\x00\x02")
    assert next(unpacker) == 1
    with pytest.raises(LookupError):
        next(unpacker)
    with pytest.raises(SerializationError, match="unusable"):
        next(unpacker)


@pytest.mark.parametrize("action", ["feed", "next", "reset"])
def test_reentrant_use_from_ext_hook(backend, action):
    seen = []

    def hook(code, data):
        with pytest.raises(RuntimeError, match="already decoding") as info:
            if action == "feed":
                unpacker.feed(b"\x00" * 100_000)  # would move the buffer under the decoder
            elif action == "next":
                next(unpacker)
            else:
                unpacker.reset()
        seen.append(info.value)
        return code

    unpacker = backend.serializer.Unpacker(ext_hook=hook)
    unpacker.feed(b"\x92\xd4\x05\x00\xa2ok\x03")
    assert list(unpacker) == [[5, "ok"], 3]
    assert len(seen) == 1
    # the swallowed RuntimeError left the Unpacker intact
    unpacker.feed(b"\x04")
    assert list(unpacker) == [4]


def test_reentrant_error_propagating_poisons(backend):
    def hook(code, data):
        unpacker.feed(b"\x00")  # RuntimeError escapes the hook

    unpacker = backend.serializer.Unpacker(ext_hook=hook)
    unpacker.feed(b"\xd4\x05\x00")
    with pytest.raises(RuntimeError):
        next(unpacker)
    with pytest.raises(SerializationError, match="unusable"):
        next(unpacker)
    unpacker.reset()
    unpacker.feed(b"\x01")
    assert list(unpacker) == [1]


def test_arguments_are_validated(backend):
    Unpacker = backend.serializer.Unpacker
    with pytest.raises(TypeError, match="ext_hook must be callable"):
        Unpacker(ext_hook=3)
    with pytest.raises(ValueError, match="max_buffer_size must be >= 0"):
        Unpacker(max_buffer_size=-1)
    with pytest.raises(ValueError, match="max_depth must be >= 0"):
        Unpacker(max_depth=-5)
    with pytest.raises(TypeError):
        Unpacker(max_str_len=1.5)
    with pytest.raises(TypeError):
        Unpacker(1)  # keyword-only
