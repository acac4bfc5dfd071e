"""Framing benchmarks: parse and encode, one group per workload, every system side by side.

    pytest benchmarks/bench_framing.py --benchmark-only    # measured run
    pytest benchmarks/bench_framing.py                     # smoke: each runs once

Systems: ``rapidrpc-cython`` and ``rapidrpc-python`` (the two backends of
rapidrpc.wire.framing) and ``struct-reference``: the parser and encoder a user would write by
hand with ``struct`` (a bytearray buffer, ``unpack_from``, ``del`` of the consumed prefix,
tuples out, no validation).  Each benchmark checks its result once before timing it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest

from rapidrpc.wire.constants import HEADER_SIZE, KIND_REQUEST, KIND_RESPONSE
from testsupport import load_backend

SMALL_COUNT = 10_000
SMALL_BODY = b"\x93\xa3add\x92\x01\x02\x80" + b"\x00" * 11  # 20 bytes
BIG_BODY = bytes(range(256)) * 4096  # 1 MiB
CHUNK = 64 * 1024

_HEADER = struct.Struct(">IBBHI")


class StructReferenceParser:
    """The hand-written baseline: buffer everything, cut frames, return tuples."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, int, bytes]]:
        buf = self._buf
        buf += data
        out = []
        while len(buf) >= HEADER_SIZE:
            length, kind, flags, _, request_id = _HEADER.unpack_from(buf)
            end = HEADER_SIZE + length
            if len(buf) < end:
                break
            out.append((kind, flags, request_id, bytes(buf[HEADER_SIZE:end])))
            del buf[:end]
        return out


def reference_encode(frames: list[tuple[int, int, bytes]]) -> bytes:
    """The hand-written baseline encoder."""
    pack = _HEADER.pack
    parts = []
    for kind, request_id, body in frames:
        parts.append(pack(len(body), kind, 0, 0, request_id))
        parts.append(body)
    return b"".join(parts)


SYSTEMS = ("rapidrpc-cython", "rapidrpc-python", "struct-reference")


def _framing(system: str) -> Any:
    return load_backend(system.removeprefix("rapidrpc-")).framing


def _parser_factory(system: str) -> Callable[[], Any]:
    if system == "struct-reference":
        return StructReferenceParser
    framing = _framing(system)
    return lambda: framing.FrameParser(expect_preface=False)


def _body(frame: Any) -> Any:
    return frame[3] if isinstance(frame, tuple) else frame.body


SMALL_ITEMS = [(KIND_REQUEST, i + 1, SMALL_BODY) for i in range(SMALL_COUNT)]
SMALL_STREAM = reference_encode(SMALL_ITEMS)
BIG_STREAM = reference_encode([(KIND_RESPONSE, 1, BIG_BODY)])
BIG_CHUNKS = [BIG_STREAM[i : i + CHUNK] for i in range(0, len(BIG_STREAM), CHUNK)]


@pytest.mark.benchmark(group="framing parse: 10k frames x 20 B body, one buffer")
@pytest.mark.parametrize("system", SYSTEMS)
def bench_parse_many_small_frames(benchmark, system):
    new_parser = _parser_factory(system)

    def run():
        return new_parser().feed(SMALL_STREAM)

    frames = run()
    assert len(frames) == SMALL_COUNT and bytes(_body(frames[-1])) == SMALL_BODY
    benchmark.extra_info["frames"] = SMALL_COUNT
    benchmark(run)


@pytest.mark.benchmark(group="framing parse: 1 MiB body fed in 64 KiB chunks")
@pytest.mark.parametrize("system", SYSTEMS)
def bench_parse_large_frame_in_chunks(benchmark, system):
    new_parser = _parser_factory(system)

    def run():
        parser = new_parser()
        out = []
        for chunk in BIG_CHUNKS:
            out += parser.feed(chunk)
        return out

    (frame,) = run()
    assert _body(frame) == BIG_BODY
    benchmark.extra_info["bytes"] = len(BIG_STREAM)
    benchmark(run)


@pytest.mark.benchmark(group="framing parse: 1 MiB body in one piece")
@pytest.mark.parametrize("system", SYSTEMS)
def bench_parse_large_frame_whole(benchmark, system):
    new_parser = _parser_factory(system)

    def run():
        return new_parser().feed(BIG_STREAM)

    (frame,) = run()
    assert _body(frame) == BIG_BODY
    benchmark.extra_info["bytes"] = len(BIG_STREAM)
    benchmark(run)


@pytest.mark.benchmark(group="framing encode: 10k frames x 20 B body, one buffer")
@pytest.mark.parametrize("system", SYSTEMS)
def bench_encode_many_small_frames(benchmark, system):
    encode = reference_encode if system == "struct-reference" else _framing(system).encode_frames
    assert encode(SMALL_ITEMS) == SMALL_STREAM
    benchmark.extra_info["frames"] = SMALL_COUNT
    benchmark(encode, SMALL_ITEMS)


@pytest.mark.benchmark(group="framing encode: one 20 B frame")
@pytest.mark.parametrize("system", SYSTEMS)
def bench_encode_one_small_frame(benchmark, system):
    if system == "struct-reference":
        pack = _HEADER.pack

        def encode(kind, request_id, body):
            return pack(len(body), kind, 0, 0, request_id) + body

    else:
        encode = _framing(system).encode_frame

    assert encode(KIND_REQUEST, 1, SMALL_BODY) == SMALL_STREAM[: HEADER_SIZE + len(SMALL_BODY)]
    benchmark(encode, KIND_REQUEST, 1, SMALL_BODY)
