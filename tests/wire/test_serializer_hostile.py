"""Hostile input (HOSTILE.md items 12-22): both backends fail the same way, fast and bounded."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from serializer_helpers import BAD_INPUTS, rich_values

from rapidrpc.errors import SerializationError
from rapidrpc.wire import serializer


def _outcome(impl, data, kw):
    try:
        impl.loads(data, **kw)
    except Exception as exc:  # the point is to compare whatever is raised
        return type(exc), str(exc), getattr(exc, "offset", None)
    return None


@pytest.mark.parametrize(
    ("data", "kw", "fragment", "offset"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUTS],
)
def test_bad_input_same_error_in_both_backends(backend, data, kw, fragment, offset):
    with pytest.raises(SerializationError) as info:
        backend.serializer.loads(data, **kw)
    assert fragment in str(info.value)
    assert info.value.offset == offset
    assert f"(at offset {offset})" in str(info.value)
    # Identical class, message and offset from every loaded backend.
    outcomes = {_outcome(impl, data, kw) for impl in serializer.IMPLEMENTATIONS.values()}
    assert len(outcomes) == 1, outcomes


def test_serialization_error_is_a_value_error():
    assert issubclass(SerializationError, ValueError)


VALID_MESSAGES = [
    {"jsonrpc": "2.0", "id": 7, "method": "add", "params": [1, 2.5, "x" * 40, b"\x00" * 300]},
    [None, True, -1, 2**40, -(2**40), 2**70, 1.5, {"k": [[], {}]}],
    "é" * 100,
]


@pytest.mark.parametrize("value", VALID_MESSAGES, ids=["request", "mixed", "str"])
def test_every_truncation_is_an_error(backend, value):
    data = backend.serializer.dumps(value)
    outcomes = {}
    for cut in range(len(data)):
        with pytest.raises(SerializationError, match="truncated input") as info:
            backend.serializer.loads(data[:cut])
        outcomes[cut] = str(info.value)
    # the other backend says exactly the same at every cut
    for impl in serializer.IMPLEMENTATIONS.values():
        for cut, message in outcomes.items():
            with pytest.raises(SerializationError) as info:
                impl.loads(data[:cut])
            assert str(info.value) == message


HUGE_DECLARATIONS = [
    b"\xdd\xff\xff\xff\xff",  # array32 of 2**32-1 elements
    b"\xdf\xff\xff\xff\xff",  # map32 of 2**32-1 entries
    b"\xdb\xff\xff\xff\xff",  # str32 of 4 GiB
    b"\xc6\xff\xff\xff\xff",  # bin32 of 4 GiB
    b"\xc9\xff\xff\xff\xff\x05",  # ext32 of 4 GiB
    b"\xdd\x00\x10\x00\x00" + b"\x00" * 100,  # 1M elements announced, 100 present
]


@pytest.mark.parametrize("data", HUGE_DECLARATIONS)
def test_huge_declared_sizes_fail_fast_with_bounded_memory(backend, data):
    unlimited = {
        "max_str_len": 2**40,
        "max_bin_len": 2**40,
        "max_ext_len": 2**40,
        "max_array_len": 2**40,
        "max_map_len": 2**40,
    }
    tracemalloc.start()
    try:
        with pytest.raises(SerializationError, match="truncated input"):
            backend.serializer.loads(data, **unlimited)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # memory proportional to the real input, never to the declared size
    assert peak < 64 * 1024


def test_deep_nesting_never_overflows_the_stack(backend):
    loads = backend.serializer.loads
    # far beyond any C or Python stack when decoded recursively
    with pytest.raises(SerializationError, match="max_depth=100000"):
        loads(b"\x91" * 200_000 + b"\x00", max_depth=100_000)
    nested = loads(b"\x91" * 50_000 + b"\x00", max_depth=50_000)
    for _ in range(49_999):
        nested = nested[0]
    assert nested == [0]


def test_hook_exceptions_propagate(backend):
    def hook(code, data):
        raise LookupError("hook says no")

    with pytest.raises(LookupError, match="hook says no"):
        backend.serializer.loads(b"\x92\x01\xd4\x05\x00", ext_hook=hook)
    # and the next call is unaffected
    assert backend.serializer.loads(b"\x92\x01\x02") == [1, 2]


def test_loads_works_after_every_kind_of_error(backend):
    for case in BAD_INPUTS:
        with pytest.raises(SerializationError):
            backend.serializer.loads(case[1], **case[2])
        assert backend.serializer.loads(b"\x81\xa1a\x91\x01") == {"a": [1]}


def test_released_memoryview_is_refused(backend):
    view = memoryview(b"\x01")
    view.release()
    with pytest.raises(ValueError):
        backend.serializer.loads(view)
    with pytest.raises(ValueError):
        backend.serializer.dumps(view)


def test_hook_cannot_resize_the_input_while_it_is_decoded(backend):
    data = bytearray(b"\x92\xd4\x05\x00\xa3abc")

    def hook(code, payload):
        data.clear()  # would free the bytes under the decoder
        return code

    with pytest.raises(BufferError):
        backend.serializer.loads(data, ext_hook=hook)
    assert data == bytearray(b"\x92\xd4\x05\x00\xa3abc")


def _same_everywhere(data: bytes):
    outcomes = []
    for impl in serializer.IMPLEMENTATIONS.values():
        try:
            outcomes.append(("ok", repr(impl.loads(data))))
        except SerializationError as exc:
            outcomes.append(("error", str(exc)))
    assert len(set(outcomes)) == 1, outcomes


@given(data=st.binary(max_size=64))
@settings(max_examples=300, deadline=None)
def test_fuzz_random_bytes(data):
    _same_everywhere(data)


@given(
    value=rich_values,
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(1, 255)), max_size=3),
    cut=st.integers(min_value=0, max_value=8),
)
@settings(max_examples=300, deadline=None)
def test_fuzz_mutated_messages(value, flips, cut):
    data = bytearray(serializer.dumps(value))
    for position, mask in flips:
        data[position % len(data)] ^= mask
    _same_everywhere(bytes(data[: len(data) - cut]))


@given(data=st.binary(max_size=64), chunk=st.integers(min_value=1, max_value=9))
@settings(max_examples=200, deadline=None)
def test_fuzz_stream_same_everywhere(data, chunk):
    outcomes = set()
    for impl in serializer.IMPLEMENTATIONS.values():
        unpacker = impl.Unpacker()
        events = []
        try:
            for i in range(0, len(data), chunk):
                unpacker.feed(data[i : i + chunk])
                events += [repr(v) for v in unpacker]
        except SerializationError as exc:
            events.append(str(exc))
        outcomes.add(tuple(events))
    assert len(outcomes) == 1, outcomes
