"""Framing under hostile input (HOSTILE.md items 1, 2, 4-6, 20): both backends.

Each case asserts the error is raised as soon as the offending bytes are available, that
it names the stream offset, that the parser stays poisoned, and that memory is bounded by
what actually arrived, never by what a header declared.
"""

from __future__ import annotations

import gc
import itertools
import sys
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rapidrpc import FrameError, ProtocolError
from rapidrpc.wire import constants
from testsupport import load_backend

MiB = 1024 * 1024


def header(length: int, kind: int = 1, flags: int = 0, reserved: int = 0, rid: int = 1) -> bytes:
    """A raw header, with no validation, to build bad ones."""
    return (
        length.to_bytes(4, "big")
        + bytes([kind, flags])
        + reserved.to_bytes(2, "big")
        + rid.to_bytes(4, "big")
    )


def feed_bytewise_until_error(parser, data: bytes) -> tuple[int, FrameError]:
    """Feed one byte at a time; return (index of the byte that raised, the error)."""
    for i in range(len(data)):
        try:
            assert parser.feed(data[i : i + 1]) == []
        except FrameError as exc:
            return i, exc
    raise AssertionError("no FrameError raised")


# --- preface (HOSTILE 6) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "hint"),
    [
        (b"POST / HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP request"),
        (b"GET / HTTP/1.1\r\n\r\n", "HTTP request"),
        (bytes.fromhex("160301020001") + b"\x00" * 100, "TLS"),
        (b"\x00\x00\x00\x10garbage", "does not speak"),
        (b"\x93\xa3add\x92\x01\x02", "does not speak"),
    ],
)
def test_foreign_protocols_are_refused_on_their_first_byte(backend, data, hint):
    parser = backend.framing.FrameParser()
    with pytest.raises(FrameError, match=hint) as info:
        parser.feed(data[:1])
    assert "stream offset 0" in str(info.value)
    assert isinstance(info.value, ProtocolError) and isinstance(info.value, ValueError)
    with pytest.raises(FrameError):  # same outcome when it all arrives at once
        backend.framing.FrameParser().feed(data)


@pytest.mark.parametrize("position", [0, 1, 2, 3, 4, 6, 7])
def test_each_wrong_preface_byte_is_caught_exactly_where_it_is(backend, position):
    bad = bytearray(constants.PREFACE)
    bad[position] ^= 0xFF
    index, exc = feed_bytewise_until_error(backend.framing.FrameParser(), bytes(bad) + b"\x00" * 20)
    assert index == position
    assert f"stream offset {position}" in str(exc)
    assert index < constants.PREFACE_SIZE


def test_other_protocol_version_names_both_versions(backend):
    other = (constants.PROTOCOL_VERSION + 1) % 256
    data = constants.PREFACE_MAGIC + bytes([other]) + b"\r\n"
    index, exc = feed_bytewise_until_error(backend.framing.FrameParser(), data)
    assert index == len(constants.PREFACE_MAGIC)
    assert f"version {other}" in str(exc)
    assert f"version {constants.PROTOCOL_VERSION}" in str(exc)


# --- headers (HOSTILE 1, 2) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "bad_byte", "words"),
    [
        (header(0), 3, "body length 0"),
        (header(0xFFFFFFFF), 3, "exceeds the frame size limit of 16777216"),
        (header(constants.DEFAULT_MAX_FRAME_SIZE + 1), 3, "max_frame_size"),
        (header(5, kind=0), 4, "unknown frame kind 0"),
        (header(5, kind=0xFF), 4, "unknown frame kind 255"),
        (header(5, kind=constants.MAX_KIND + 1), 4, "unknown frame kind"),
        (header(5, flags=0x02), 5, "unknown flag bits 0x02"),
        (header(5, flags=0x81), 5, "unknown flag bits 0x80"),
        (header(5, reserved=1), 7, "reserved header field is 0x0001"),
        (header(5, reserved=0x8000), 7, "reserved header field is 0x8000"),
    ],
)
def test_bad_header_fields_are_refused_as_soon_as_their_bytes_arrive(backend, raw, bad_byte, words):
    fr = backend.framing
    good = fr.encode_frames([(1, 1, b"\x90"), (2, 1, b"\xc0")])
    offset = constants.PREFACE_SIZE + len(good)
    stream = fr.PREFACE + good + raw + b"\x00" * 64
    parser = fr.FrameParser()
    assert len(parser.feed(stream[:offset])) == 2
    index, exc = feed_bytewise_until_error(parser, stream[offset:])
    assert index == bad_byte  # not one byte later, and no body byte was needed
    assert words in str(exc)
    assert f"stream offset {offset}" in str(exc)
    # The same stream in one piece fails identically (and returns no partial frames).
    with pytest.raises(FrameError) as whole:
        fr.FrameParser().feed(stream)
    assert str(whole.value) == str(exc)


def test_huge_declared_length_is_refused_before_any_body_byte(backend):
    parser = backend.framing.FrameParser(max_frame_size=16 * MiB, expect_preface=False)
    with pytest.raises(FrameError, match="4294967295"):
        parser.feed(header(0xFFFFFFFF))
    assert parser.buffered == 0


# --- poisoning ---------------------------------------------------------------------------------


def test_parser_is_poisoned_after_an_error(backend):
    fr = backend.framing
    parser = fr.FrameParser()
    assert parser.feed(fr.PREFACE + fr.encode_frame(1, 1, b"\x90")[:6]) == []
    with pytest.raises(FrameError) as first:
        parser.feed(b"\x00\x00" + header(0))
    assert parser.buffered == 0
    assert parser.preface_received
    for _ in range(2):
        with pytest.raises(FrameError) as again:
            parser.feed(fr.encode_frame(1, 2, b"\x90"))  # valid bytes: still refused
        assert str(first.value) in str(again.value)
    with pytest.raises(FrameError):
        parser.feed(b"")


def test_poisoned_during_the_preface(backend):
    parser = backend.framing.FrameParser()
    with pytest.raises(FrameError):
        parser.feed(b"\xc1RX")
    assert not parser.preface_received
    with pytest.raises(FrameError, match="unusable"):
        parser.feed(constants.PREFACE)


# --- memory bounded by what arrived (HOSTILE 1, 12) ----------------------------------------------


def _peak_during(func) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        func()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_declared_16_mib_with_a_few_bytes_allocates_almost_nothing(backend):
    fr = backend.framing
    parser = fr.FrameParser(max_frame_size=16 * MiB, expect_preface=False)

    def run():
        assert parser.feed(header(16 * MiB)) == []
        for _ in range(10):
            assert parser.feed(b"\x00" * 100) == []

    peak = _peak_during(run)
    assert parser.buffered == 12 + 1000
    assert peak < 64 * 1024, peak


def test_memory_grows_with_arrived_bytes_not_declared_length(backend):
    fr = backend.framing
    parser = fr.FrameParser(max_frame_size=16 * MiB, expect_preface=False)
    chunk = b"\x00" * (64 * 1024)

    def run():
        assert parser.feed(header(16 * MiB)) == []
        for _ in range(16):  # 1 MiB of a 16 MiB body
            assert parser.feed(chunk) == []

    peak = _peak_during(run)
    assert parser.buffered == 12 + MiB
    assert peak < 3 * MiB, peak  # whole bytes chunks are kept without copies


def test_mutable_chunks_of_a_pending_body_are_copied_once_each(backend):
    fr = backend.framing
    parser = fr.FrameParser(max_frame_size=16 * MiB, expect_preface=False)
    chunk = bytearray(64 * 1024)

    def run():
        assert parser.feed(header(16 * MiB)) == []
        for _ in range(8):
            assert parser.feed(chunk) == []

    peak = _peak_during(run)
    assert 512 * 1024 <= peak < 2 * MiB, peak


# --- re-entrancy (HOSTILE 20) --------------------------------------------------------------------


def test_feed_reentered_from_inside_feed_raises_runtime_error(backend):
    """Re-entry happens for real when the cyclic GC runs a callback/finalizer mid-feed.

    Neither backend calls user code from feed(), but any allocation inside feed() may start a
    GC pass, and gc callbacks (or __del__ of collected objects) are arbitrary Python code.
    With a threshold of 1 a pass is certain while feed() allocates (big bodies make GC-tracked
    memoryviews), so the callback below runs inside feed() and tries to feed the parser.
    """
    fr = backend.framing
    parser = fr.FrameParser(expect_preface=False)
    stream = fr.encode_frames([(1, i, b"\x01" * constants.ZERO_COPY_MIN_BODY) for i in range(20)])
    inner: list[BaseException | None] = []
    armed = False

    def reenter(phase, info):
        nonlocal armed
        if armed and phase == "start":
            armed = False
            try:
                parser.feed(fr.encode_frame(1, 1, b"\x02"))
                inner.append(None)
            except BaseException as exc:
                inner.append(exc)

    old = gc.get_threshold()
    gc.callbacks.append(reenter)
    try:
        feed = parser.feed
        gc.set_threshold(1)
        armed = True
        frames = feed(stream)
    finally:
        gc.set_threshold(*old)
        gc.callbacks.remove(reenter)
        armed = False
    if not inner and sys.version_info >= (3, 12):
        pytest.skip("this Python defers GC passes out of C code; no re-entry point reached")
    assert len(inner) == 1 and isinstance(inner[0], RuntimeError), inner
    assert "re-entered" in str(inner[0])
    assert len(frames) == 20  # the outer feed was not disturbed
    assert parser.feed(fr.encode_frame(1, 1, b"\x03"))[0].body == b"\x03"


# --- differential ------------------------------------------------------------------------------


BAD_STREAMS = [
    b"POST / HTTP/1.1\r\n",
    bytes.fromhex("160301"),
    constants.PREFACE_MAGIC + b"\x07\r\n",
    constants.PREFACE[:6] + b"\n\r",
    constants.PREFACE + header(0),
    constants.PREFACE + header(2**32 - 1),
    constants.PREFACE + header(3, kind=0),
    constants.PREFACE + header(3, kind=200),
    constants.PREFACE + header(3, flags=0xFE),
    constants.PREFACE + header(3, reserved=0x0100),
    constants.PREFACE + header(1) + b"\x90" + header(1, kind=12),
]


@pytest.mark.parametrize("stream", BAD_STREAMS)
def test_backends_raise_identical_errors(stream):
    cy, py = load_backend("cython").framing, load_backend("python").framing
    messages = []
    for fr in (cy, py):
        for chunking in (1, 3, len(stream)):
            parser = fr.FrameParser()
            with pytest.raises(FrameError) as info:
                for i in range(0, len(stream), chunking):
                    parser.feed(stream[i : i + chunking])
            messages.append(str(info.value))
    assert len(set(messages)) == 1, messages


def _outcome(fr, chunks):
    parser = fr.FrameParser(max_frame_size=64)
    frames = []
    try:
        for chunk in chunks:
            frames += [(f.kind, f.request_id, f.flags, bytes(f.body)) for f in parser.feed(chunk)]
    except FrameError as exc:
        return frames, str(exc), parser.buffered, parser.preface_received
    return frames, None, parser.buffered, parser.preface_received


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    prefix=st.sampled_from([b"", constants.PREFACE, constants.PREFACE[:5]]),
    noise=st.lists(
        st.one_of(
            st.binary(max_size=20),  # garbage
            st.builds(  # near-valid headers: small lengths, edge kinds/flags/reserved
                header,
                st.integers(0, 70),
                st.integers(0, constants.MAX_KIND + 1),
                st.integers(0, 3),
                st.sampled_from([0, 0, 0, 1]),
                st.integers(0, 2**32 - 1),
            ),
        ),
        max_size=8,
    ).map(b"".join),
    cuts=st.lists(st.integers(0, 300), max_size=5),
)
def test_backends_agree_on_arbitrary_bytes(prefix, noise, cuts):
    """Garbage or near-valid streams, chunked anyhow: same frames, error and state."""
    stream = prefix + noise
    bounds = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in itertools.pairwise([0, *bounds, len(stream)])]
    cy, py = load_backend("cython").framing, load_backend("python").framing
    assert _outcome(cy, chunks) == _outcome(py, chunks)
