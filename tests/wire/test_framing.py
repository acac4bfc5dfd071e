"""Framing: encoders, Frame, and FrameParser behaviour on both backends.

Hostile input (bad prefaces/headers, poisoning, memory bounds, re-entrancy) lives in
test_framing_hostile.py.  Every behaviour test runs once per backend (``backend`` fixture);
the differential tests at the end run both backends on the same input.
"""

from __future__ import annotations

import array
import itertools
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rapidrpc import FrameError
from rapidrpc.wire import constants, framing
from testsupport import load_backend

KINDS = sorted(constants.KIND_NAMES)
FLAG_VALUES = (0, constants.FLAG_END_STREAM)
ZC = constants.ZERO_COPY_MIN_BODY


def as_tuple(frame) -> tuple:
    """A backend-neutral view of a frame, including the body's type."""
    return (frame.kind, frame.request_id, frame.flags, bytes(frame.body), type(frame.body))


def parse_all(fr: ModuleType, chunks, **kw) -> list:
    parser = fr.FrameParser(**kw)
    out = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    assert parser.buffered == 0
    return out


@pytest.fixture
def both() -> tuple[ModuleType, ModuleType]:
    """(cython, python) framing modules, for differential tests."""
    return load_backend("cython").framing, load_backend("python").framing


# --- surface -------------------------------------------------------------------------------


def test_public_api_is_exported_by_every_backend(backend):
    for name in framing.PUBLIC_API:
        assert hasattr(backend.framing, name), name
    assert set(backend.framing.__all__) == set(framing.PUBLIC_API)


def test_face_reexports_the_active_backend():
    active = framing.IMPLEMENTATIONS.get("cython", framing.IMPLEMENTATIONS["python"])
    for name in framing.PUBLIC_API:
        assert getattr(framing, name) is getattr(active, name), name


def test_constants_are_the_ones_from_constants_py(backend):
    for name in framing.PUBLIC_API:
        if hasattr(constants, name):
            assert getattr(backend.framing, name) == getattr(constants, name), name
    assert backend.framing.encode_preface() == constants.PREFACE


# --- encoding ------------------------------------------------------------------------------


def test_encode_frame_layout_byte_by_byte(backend):
    fr = backend.framing
    data = fr.encode_frame(constants.KIND_RESPONSE, 0x01020304, b"\x93\x01\x02\x03", flags=1)
    assert data == bytes.fromhex("00000004020100000102030493010203")


def test_encode_header_is_the_prefix_of_encode_frame(backend):
    fr = backend.framing
    body = b"\xa5hello"
    header = fr.encode_header(constants.KIND_REQUEST, 7, len(body))
    assert len(header) == constants.HEADER_SIZE
    assert header + body == fr.encode_frame(constants.KIND_REQUEST, 7, body)


def test_encode_frames_is_the_concatenation_and_accepts_every_item_form(backend):
    fr = backend.framing
    py = load_backend("python").framing
    items = [
        (constants.KIND_REQUEST, 1, b"\x91\xa1a"),
        (constants.KIND_STREAM_ITEM, 2, bytearray(b"\x01"), constants.FLAG_END_STREAM),
        fr.Frame(constants.KIND_PING, 0, memoryview(b"\x05")),
        py.Frame(constants.KIND_PONG, 0, b"\x05"),  # a Frame of the other backend works too
    ]
    expected = b"".join(
        fr.encode_frame(f.kind, f.request_id, f.body, f.flags)
        if isinstance(f, (fr.Frame, py.Frame))
        else fr.encode_frame(*f)
        for f in items
    )
    assert fr.encode_frames(items) == expected
    assert fr.encode_frames(iter(items)) == expected
    assert fr.encode_frames([]) == b""


def test_encode_accepts_any_contiguous_bytes_like_body(backend):
    fr = backend.framing
    raw = bytes(range(16))
    for body in (raw, bytearray(raw), memoryview(raw), array.array("I", raw)):
        assert fr.encode_frame(1, 1, body) == fr.encode_frame(1, 1, raw)


@pytest.mark.parametrize(
    ("args", "exc"),
    [
        ((0, 1, b"x"), FrameError),  # kind 0
        ((constants.MAX_KIND + 1, 1, b"x"), FrameError),
        ((-1, 1, b"x"), FrameError),
        ((2**70, 1, b"x"), FrameError),
        ((1.0, 1, b"x"), TypeError),
        ((1, -1, b"x"), FrameError),
        ((1, constants.MAX_REQUEST_ID + 1, b"x"), FrameError),
        ((1, "1", b"x"), TypeError),
        ((1, 1, b"x", 0x02), FrameError),  # unknown flag
        ((1, 1, b"x", 0x100), FrameError),
        ((1, 1, b"x", -1), FrameError),
        ((1, 1, b""), FrameError),  # empty body
        ((1, 1, bytearray()), FrameError),
        ((1, 1, "text"), TypeError),
        ((1, 1, None), TypeError),
        ((1, 1, memoryview(b"abcd")[::2]), TypeError),  # not contiguous
    ],
)
def test_encode_frame_argument_errors(backend, args, exc):
    fr = backend.framing
    with pytest.raises(exc):
        fr.encode_frame(*args)
    with pytest.raises(exc):
        fr.encode_frames([args])
    with pytest.raises(exc):
        fr.Frame(args[0], args[1], args[2], *args[3:])


def test_encode_enforces_the_size_limit(backend):
    fr = backend.framing
    assert len(fr.encode_frame(1, 1, b"abcd", max_frame_size=4)) == 16
    with pytest.raises(FrameError, match="max_frame_size"):
        fr.encode_frame(1, 1, b"abcde", max_frame_size=4)
    with pytest.raises(FrameError, match="max_frame_size"):
        fr.encode_frames([(1, 1, b"abcde")], max_frame_size=4)
    with pytest.raises(FrameError, match="max_frame_size"):
        fr.encode_header(1, 1, constants.DEFAULT_MAX_FRAME_SIZE + 1)
    assert len(fr.encode_header(1, 1, 2**32 - 1, max_frame_size=2**40)) == 12
    for length in (0, -1, 2**32, 2**80):
        with pytest.raises(FrameError):
            fr.encode_header(1, 1, length, max_frame_size=2**40)


def test_encode_frames_rejects_malformed_items(backend):
    fr = backend.framing
    for bad in ([(1, 2)], [(1, 2, b"x", 0, 0)], [b"\x01"], [42]):
        with pytest.raises(TypeError):
            fr.encode_frames(bad)


def test_encode_frames_error_midway_releases_pinned_bodies(backend):
    fr = backend.framing
    body = bytearray(b"abc")
    with pytest.raises(FrameError):
        fr.encode_frames([(1, 1, body), (1, 1, body), (99, 1, b"x")])
    body.extend(b"more")  # would raise BufferError if a buffer export had leaked


# --- Frame ---------------------------------------------------------------------------------


def test_frame_value_semantics(backend):
    fr = backend.framing
    a = fr.Frame(constants.KIND_REQUEST, 9, b"\x90")
    assert (a.kind, a.request_id, a.body, a.flags) == (constants.KIND_REQUEST, 9, b"\x90", 0)
    assert a == fr.Frame(constants.KIND_REQUEST, 9, memoryview(b"\x90"))
    assert (a != fr.Frame(constants.KIND_REQUEST, 9, b"\x90")) is False
    assert a != fr.Frame(constants.KIND_REQUEST, 9, b"\x90", constants.FLAG_END_STREAM)
    assert a != fr.Frame(constants.KIND_REQUEST, 8, b"\x90")
    assert a != fr.Frame(constants.KIND_RESPONSE, 9, b"\x90")
    assert a != fr.Frame(constants.KIND_REQUEST, 9, b"\x91")
    assert a != (constants.KIND_REQUEST, 9, b"\x90", 0)
    with pytest.raises(TypeError):
        hash(a)
    for name in ("kind", "request_id", "body", "flags"):
        with pytest.raises(AttributeError):
            setattr(a, name, 1)


def test_frame_repr_names_the_kind(backend):
    fr = backend.framing
    assert repr(fr.Frame(constants.KIND_PING, 0, b"\x07")) == (
        "Frame(ping, request_id=0, flags=0x00, body=b'\\x07')"
    )
    long = repr(fr.Frame(constants.KIND_RESPONSE, 3, b"a" * 100))
    assert long.startswith("Frame(response, request_id=3, flags=0x00, body=b'aaaa")
    assert long.endswith("... (100 bytes))")


def test_frame_keeps_plain_buffers_and_copies_other_exporters(backend):
    fr = backend.framing
    raw = b"\x01\x02\x03\x04"
    for body in (raw, bytearray(raw), memoryview(raw), memoryview(bytearray(raw))):
        assert fr.Frame(1, 1, body).body is body
    copied = fr.Frame(1, 1, array.array("B", raw)).body
    assert type(copied) is bytes and copied == raw


# --- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("flags", FLAG_VALUES)
def test_round_trip_every_kind_and_flag(backend, kind, flags):
    fr = backend.framing
    body = bytes([0x92, kind, flags])
    stream = fr.PREFACE + fr.encode_frame(kind, 0xFFFFFFFF, body, flags)
    (frame,) = parse_all(fr, [stream])
    assert frame == fr.Frame(kind, 0xFFFFFFFF, body, flags)
    assert as_tuple(frame) == (kind, 0xFFFFFFFF, flags, body, bytes)


def test_preface_is_optional_and_reported(backend):
    fr = backend.framing
    frame = fr.encode_frame(1, 1, b"\xc0")
    parser = fr.FrameParser(expect_preface=False)
    assert parser.preface_received
    assert len(parser.feed(frame)) == 1
    parser = fr.FrameParser()
    assert not parser.preface_received
    assert parser.feed(fr.PREFACE[:3]) == []
    assert not parser.preface_received and parser.buffered == 3
    assert len(parser.feed(fr.PREFACE[3:] + frame)) == 1
    assert parser.preface_received and parser.buffered == 0


def test_buffered_counts_a_partial_header_and_body(backend):
    fr = backend.framing
    data = fr.encode_frame(1, 1, b"x" * 100)
    parser = fr.FrameParser(expect_preface=False)
    assert parser.feed(data[:5]) == [] and parser.buffered == 5
    assert parser.feed(data[5:50]) == [] and parser.buffered == 50
    assert len(parser.feed(data[50:])) == 1 and parser.buffered == 0


def test_max_frame_size_is_exact(backend):
    fr = backend.framing
    parser = fr.FrameParser(max_frame_size=10, expect_preface=False)
    assert parser.max_frame_size == 10
    assert len(parser.feed(fr.encode_frame(1, 1, b"x" * 10, max_frame_size=10))) == 1
    with pytest.raises(FrameError, match="max_frame_size"):
        parser.feed(fr.encode_frame(1, 1, b"x" * 11, max_frame_size=11))


@pytest.mark.parametrize("bad", [0, -1, 2**32, 2**64])
def test_parser_rejects_bad_limits(backend, bad):
    with pytest.raises(ValueError):
        backend.framing.FrameParser(max_frame_size=bad)


def test_ten_thousand_pipelined_frames_in_one_feed(backend):
    fr = backend.framing
    count = 10**4
    stream = fr.PREFACE + fr.encode_frames(
        (constants.KIND_REQUEST, i + 1, i.to_bytes(4, "big")) for i in range(count)
    )
    frames = fr.FrameParser().feed(stream)
    assert len(frames) == count
    assert [f.request_id for f in frames] == list(range(1, count + 1))
    assert all(int.from_bytes(f.body, "big") == f.request_id - 1 for f in frames)


def test_every_split_point_and_byte_by_byte_give_the_same_frames(backend):
    fr = backend.framing
    stream = fr.PREFACE + fr.encode_frames(
        [(1, 1, b"\x90"), (2, 1, b"\xa3abc"), (6, 0, b"\x2a"), (11, 5, b"\xc0", 1)]
    )
    whole = [as_tuple(f) for f in parse_all(fr, [stream])]
    assert len(whole) == 4
    for cut in range(len(stream) + 1):
        assert [as_tuple(f) for f in parse_all(fr, [stream[:cut], stream[cut:]])] == whole
    one_by_one = [stream[i : i + 1] for i in range(len(stream))]
    assert [as_tuple(f) for f in parse_all(fr, one_by_one)] == whole
    as_bytearrays = [bytearray(c) for c in one_by_one]
    assert [as_tuple(f) for f in parse_all(fr, as_bytearrays)] == whole


frame_specs = st.lists(
    st.tuples(
        st.sampled_from(KINDS),
        st.integers(0, constants.MAX_REQUEST_ID),
        st.binary(min_size=1, max_size=40),
        st.sampled_from(FLAG_VALUES),
    ),
    max_size=8,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(specs=frame_specs, cuts=st.lists(st.integers(0, 400), max_size=6), data=st.data())
def test_any_chunking_gives_the_same_frames(backend, specs, cuts, data):
    fr = backend.framing
    stream = fr.PREFACE + fr.encode_frames(specs)
    bounds = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in itertools.pairwise([0, *bounds, len(stream)])]
    mutable = data.draw(st.booleans())
    if mutable:
        chunks = [bytearray(c) for c in chunks]
    frames = parse_all(fr, chunks)
    assert [(f.kind, f.request_id, bytes(f.body), f.flags) for f in frames] == list(specs)
    assert all(type(f.body) is bytes for f in frames)


# --- the zero-copy rule ----------------------------------------------------------------------


def test_big_body_inside_one_bytes_chunk_is_a_readonly_view_of_it(backend):
    fr = backend.framing
    body = bytes(range(256)) * (ZC // 256)
    stream = fr.PREFACE + fr.encode_frames([(1, 1, b"\x01"), (2, 1, body), (1, 2, b"\x02")])
    small1, big, small2 = fr.FrameParser().feed(stream)
    assert type(big.body) is memoryview
    assert big.body.readonly and big.body.obj is stream and big.body.nbytes == len(body)
    assert big.body == body
    assert type(small1.body) is bytes and type(small2.body) is bytes


def test_body_just_below_the_threshold_is_bytes(backend):
    fr = backend.framing
    (frame,) = fr.FrameParser(expect_preface=False).feed(fr.encode_frame(1, 1, b"x" * (ZC - 1)))
    assert type(frame.body) is bytes


def test_header_in_one_chunk_and_whole_body_in_the_next_is_zero_copy(backend):
    fr = backend.framing
    body = b"y" * ZC
    data = fr.encode_frame(1, 1, body)
    parser = fr.FrameParser(expect_preface=False)
    assert parser.feed(data[:5]) == []
    assert parser.feed(data[5:12]) == []
    rest = data[12:]
    (frame,) = parser.feed(rest)
    assert type(frame.body) is memoryview and frame.body.obj is rest


def test_big_body_split_across_chunks_is_one_bytes(backend):
    fr = backend.framing
    body = bytes(range(256)) * (4 * ZC // 256)
    data = fr.encode_frame(1, 1, body)
    step = 16 * 1024
    frames = parse_all(
        fr, [data[i : i + step] for i in range(0, len(data), step)], expect_preface=False
    )
    assert len(frames) == 1 and type(frames[0].body) is bytes and frames[0].body == body


@pytest.mark.parametrize("wrap", [bytearray, memoryview, lambda b: memoryview(bytearray(b))])
def test_mutable_input_is_copied_and_safe_to_reuse(backend, wrap):
    fr = backend.framing
    big = b"z" * ZC
    raw = fr.encode_frames([(1, 1, big), (1, 2, b"small")])
    chunk = wrap(raw)
    frames = fr.FrameParser(expect_preface=False).feed(chunk)
    assert [type(f.body) for f in frames] == [bytes, bytes]
    target = chunk
    if isinstance(chunk, memoryview):
        target = chunk.obj
        chunk.release()  # our own view; the parser must hold none
    if isinstance(target, bytearray):
        target[:] = b"\x00" * len(target)
        target.extend(b"grow")  # BufferError if the parser still held an export
    assert frames[0].body == big and frames[1].body == b"small"


def test_odd_buffers(backend):
    fr = backend.framing
    raw = fr.encode_frame(1, 1, b"abcd")  # 16 bytes: fits an array of u32 exactly
    (frame,) = fr.FrameParser(expect_preface=False).feed(array.array("I", raw))
    assert frame.body == b"abcd" and type(frame.body) is bytes
    with pytest.raises(TypeError):
        fr.FrameParser(expect_preface=False).feed(memoryview(raw)[::2])
    for bad in ("text", None, 5):
        with pytest.raises(TypeError):
            fr.FrameParser().feed(bad)


# --- differential: both backends, same input -------------------------------------------------


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(specs=frame_specs)
def test_backends_encode_identical_bytes_and_parse_equal_frames(both, specs):
    cy, py = both
    encoded = cy.encode_frames(specs)
    assert encoded == py.encode_frames(specs)
    assert encoded == b"".join(py.encode_frame(*s) for s in specs)
    assert encoded == b"".join(cy.encode_frame(*s) for s in specs)
    assert b"".join(cy.encode_header(k, r, len(b), f) for k, r, b, f in specs) == b"".join(
        py.encode_header(k, r, len(b), f) for k, r, b, f in specs
    )
    stream = cy.PREFACE + encoded
    cy_frames = [as_tuple(f)[:4] for f in cy.FrameParser().feed(stream)]
    py_frames = [as_tuple(f)[:4] for f in py.FrameParser().feed(stream)]
    assert cy_frames == py_frames
    assert [repr(f) for f in cy.FrameParser().feed(stream)] == [
        repr(f) for f in py.FrameParser().feed(stream)
    ]


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kind=st.one_of(st.integers(-2, 300), st.just(2**64)),
    request_id=st.one_of(st.integers(-1, 3), st.integers(2**32 - 2, 2**32 + 1)),
    flags=st.integers(-1, 3),
    body=st.sampled_from([b"", b"x", "x", None, bytearray(b"xy")]),
)
def test_backends_agree_on_encode_errors(both, kind, request_id, flags, body):
    outcomes = []
    for fr in both:
        try:
            outcomes.append(("ok", fr.encode_frame(kind, request_id, body, flags)))
        except (TypeError, ValueError) as exc:
            outcomes.append((type(exc), str(exc) if isinstance(exc, FrameError) else ""))
    assert outcomes[0] == outcomes[1]


def test_skip_counts_bytes_the_caller_took_in_later_error_offsets(backend):
    """skip(n): frames a driver handled itself still count in the offsets errors name."""
    fr = backend.framing
    frame = fr.encode_frame(2, 1, b"\xc0")
    parser = fr.FrameParser()
    assert len(parser.feed(fr.PREFACE + frame)) == 1
    parser.skip(len(frame) * 2)  # two frames went by without the parser
    parser.skip(0)
    at = len(fr.PREFACE) + 3 * len(frame)
    with pytest.raises(FrameError, match=f"stream offset {at}:"):
        parser.feed(b"\x00\x00\x00\x01\x63" + b"\x00" * 7)  # kind 99: no such kind


def test_skip_only_between_frames(backend):
    fr = backend.framing
    data = fr.encode_frame(2, 1, b"x" * 100)
    parser = fr.FrameParser()
    with pytest.raises(RuntimeError, match="between frames"):
        parser.skip(1)  # the preface has not arrived
    parser = fr.FrameParser(expect_preface=False)
    with pytest.raises(ValueError, match=">= 0"):
        parser.skip(-1)
    with pytest.raises(TypeError):
        parser.skip(1.5)
    parser.feed(data[:5])
    with pytest.raises(RuntimeError, match="between frames"):
        parser.skip(1)  # part of a header
    parser.feed(data[5:20])
    with pytest.raises(RuntimeError, match="between frames"):
        parser.skip(1)  # part of a body
    assert len(parser.feed(data[20:])) == 1
    parser.skip(1)
    with pytest.raises(FrameError):
        parser.feed(b"\x00\x00\x00\x00" + b"\x00" * 8)
    with pytest.raises(FrameError, match="unusable"):
        parser.skip(1)
