"""Frames of the rapidrpc wire protocol: encoders and the incremental FrameParser.

This face picks the compiled twin (``rapidrpc.wire._framing_c``, from cext/framing.pyx) or
the pure-Python one (``rapidrpc.wire._framing_py``) by the one backend switch
(``RAPIDRPC_PURE_PYTHON=1`` forces pure).  Both export exactly ``PUBLIC_API``; both stay
addressable through ``IMPLEMENTATIONS`` so tests and benchmarks can target each.

Format (docs/protocol.md has it byte by byte): an 8-byte preface once per direction, then
frames of a 12-byte big-endian header -- body_length u32, kind u8, flags u8, reserved u16,
request_id u32 -- and a non-empty body.

Zero-copy rule (both backends): a parsed body lying entirely inside one fed ``bytes`` object
and at least ``ZERO_COPY_MIN_BODY`` bytes long is a read-only ``memoryview`` of it; every
other body is ``bytes``.  ``bytearray``/``memoryview`` input is never referenced after
``feed()`` returns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._select import pick

__all__ = [  # == PUBLIC_API; a literal so tools can read it
    "DEFAULT_MAX_FRAME_SIZE",
    "FLAG_END_STREAM",
    "HEADER_SIZE",
    "IMPLEMENTATIONS",
    "KIND_CANCEL",
    "KIND_ERROR",
    "KIND_GOAWAY",
    "KIND_NAMES",
    "KIND_NOTIFICATION",
    "KIND_PING",
    "KIND_PONG",
    "KIND_REQUEST",
    "KIND_RESPONSE",
    "KIND_SETTINGS",
    "KIND_STREAM_END",
    "KIND_STREAM_ITEM",
    "KNOWN_FLAGS",
    "MAX_KIND",
    "MAX_REQUEST_ID",
    "PREFACE",
    "PREFACE_SIZE",
    "PROTOCOL_VERSION",
    "PUBLIC_API",
    "ZERO_COPY_MIN_BODY",
    "Frame",
    "FrameParser",
    "encode_frame",
    "encode_frames",
    "encode_header",
    "encode_preface",
]

# The names every backend module must export; the face re-exports them from the active one.
PUBLIC_API: tuple[str, ...] = tuple(
    name for name in __all__ if name not in ("IMPLEMENTATIONS", "PUBLIC_API")
)

if TYPE_CHECKING:  # static tools see the pure twin's signatures
    from ._framing_py import (
        DEFAULT_MAX_FRAME_SIZE,
        FLAG_END_STREAM,
        HEADER_SIZE,
        KIND_CANCEL,
        KIND_ERROR,
        KIND_GOAWAY,
        KIND_NAMES,
        KIND_NOTIFICATION,
        KIND_PING,
        KIND_PONG,
        KIND_REQUEST,
        KIND_RESPONSE,
        KIND_SETTINGS,
        KIND_STREAM_END,
        KIND_STREAM_ITEM,
        KNOWN_FLAGS,
        MAX_KIND,
        MAX_REQUEST_ID,
        PREFACE,
        PREFACE_SIZE,
        PROTOCOL_VERSION,
        ZERO_COPY_MIN_BODY,
        Frame,
        FrameParser,
        encode_frame,
        encode_frames,
        encode_header,
        encode_preface,
    )

_active, IMPLEMENTATIONS = pick("rapidrpc.wire", "_framing_c", "_framing_py")

globals().update({name: getattr(_active, name) for name in PUBLIC_API})
