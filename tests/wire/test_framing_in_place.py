"""FrameParser.feed_in_place: whole frames cut out of a caller-owned buffer, nothing kept.

Every test runs once per backend.  The reference is ``feed``: the same stream, presented
the way a driver with its own receive buffer presents it (unconsumed bytes again, followed
by what arrived since), must give the same frames and raise the same errors.
"""

from __future__ import annotations

from types import ModuleType

import pytest

from rapidrpc import FrameError
from rapidrpc.wire import constants as C

REQ = C.KIND_REQUEST
BIG = C.ZERO_COPY_MIN_BODY


@pytest.fixture
def fr(backend) -> ModuleType:
    return backend.framing


def stream(fr: ModuleType) -> bytes:
    frames = [
        (REQ, 1, b"\x91\x01"),
        (C.KIND_PING, 0, b"\x05"),
        (REQ, 2, b"x" * BIG),  # large: a view when parsed in place
        (REQ, 3, b"y" * (BIG - 1)),
        (C.KIND_NOTIFICATION, 0, b"\x90"),
    ]
    return C.PREFACE + fr.encode_frames(frames)


def drive_in_place(parser, chunks) -> list:
    """Present *chunks* as a driver with its own buffer does; return the frames."""
    buf = bytearray()
    out = []
    for chunk in chunks:
        buf += chunk
        frames, used = parser.feed_in_place(memoryview(buf))
        out += [(f.kind, f.request_id, f.flags, bytes(f.body)) for f in frames]
        del frames
        del buf[:used]  # (no view of buf is alive any more)
    assert not buf
    return out


def test_same_frames_as_feed_at_every_split(fr) -> None:
    data = stream(fr)
    whole = fr.FrameParser().feed(data)
    expected = [(f.kind, f.request_id, f.flags, bytes(f.body)) for f in whole]
    for cut in range(len(data) + 1):
        got = drive_in_place(fr.FrameParser(), [data[:cut], data[cut:]])
        assert got == expected, cut


def test_one_byte_at_a_time(fr) -> None:
    data = stream(fr)
    expected = [(f.kind, f.request_id, f.flags, bytes(f.body)) for f in fr.FrameParser().feed(data)]
    parser = fr.FrameParser()
    assert drive_in_place(parser, [data[i : i + 1] for i in range(len(data))]) == expected
    assert parser.buffered == 0


def test_used_stops_at_the_unfinished_frame(fr) -> None:
    data = stream(fr)
    parser = fr.FrameParser()
    cut = len(data) - 3  # inside the last frame's header... or body
    frames, used = parser.feed_in_place(bytearray(data[:cut]))
    last = fr.encode_frame(C.KIND_NOTIFICATION, 0, b"\x90")
    assert used == len(data) - len(last)
    assert len(frames) == 4
    assert parser.buffered == 0  # nothing kept: the caller holds the tail


def test_large_bodies_are_read_only_views_of_the_buffer(fr) -> None:
    data = bytearray(stream(fr))
    frames, used = fr.FrameParser().feed_in_place(data)
    assert used == len(data)
    big = frames[2].body
    assert type(big) is memoryview and big.readonly and big.obj is data
    assert type(frames[3].body) is bytes  # below ZERO_COPY_MIN_BODY: a copy
    with pytest.raises(TypeError):
        big[0] = 0
    data[-BIG - 200] = ord("z")  # the view sees the buffer: the caller must not change it
    assert bytes(big).count(b"z") == 1


def test_huge_declared_length_refused_from_a_partial_header(fr) -> None:
    parser = fr.FrameParser(max_frame_size=1 << 20)
    head = C.PREFACE + (0xFFFFFFFF).to_bytes(4, "big")  # 4 bytes of a header
    with pytest.raises(FrameError, match="exceeds") as info:
        parser.feed_in_place(bytearray(head))
    with pytest.raises(FrameError):  # poisoned, like feed
        parser.feed_in_place(bytearray(b"\0"))
    ref = fr.FrameParser(max_frame_size=1 << 20)
    with pytest.raises(FrameError) as expected:
        ref.feed(head)
    assert str(info.value) == str(expected.value)


def test_error_offsets_count_consumed_bytes_only(fr) -> None:
    good = C.PREFACE + fr.encode_frame(REQ, 1, b"\x90")
    bad = bytes(12)  # length 0
    parser = fr.FrameParser()
    frames, used = parser.feed_in_place(bytearray(good + bad[:2]))
    assert used == len(good) and len(frames) == 1
    with pytest.raises(FrameError) as info:
        parser.feed_in_place(bytearray(bad))
    with pytest.raises(FrameError) as expected:
        fr.FrameParser().feed(good + bad)
    assert str(info.value) == str(expected.value)


def test_modes_do_not_mix_mid_frame(fr) -> None:
    parser = fr.FrameParser()
    parser.feed(C.PREFACE + fr.encode_frame(REQ, 1, b"\x90")[:5])
    with pytest.raises(RuntimeError, match="one mode"):
        parser.feed_in_place(bytearray(b"\0"))


def test_bad_preface_raises_like_feed(fr) -> None:
    with pytest.raises(FrameError) as info:
        fr.FrameParser().feed_in_place(bytearray(b"GET / HTTP/1.1\r\n"))
    with pytest.raises(FrameError) as expected:
        fr.FrameParser().feed(b"GET / HTTP/1.1\r\n")
    assert str(info.value) == str(expected.value)
