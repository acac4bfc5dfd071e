"""Error messages and the Frame repr, shared by both framing twins.

Cold paths only: both backends build their messages here, so a FrameError reads the same
whichever backend raised it (the differential tests compare messages, not just classes).
"""

from __future__ import annotations

from .constants import (
    KIND_NAMES,
    KNOWN_FLAGS,
    MAX_KIND,
    MAX_REQUEST_ID,
    PREFACE,
    PREFACE_MAGIC,
    PROTOCOL_VERSION,
)

__all__ = [
    "at_header",
    "bad_flags",
    "bad_kind",
    "bad_max_frame_size",
    "bad_preface_byte",
    "bad_request_id",
    "bad_reserved",
    "body_not_contiguous",
    "body_too_large",
    "empty_body",
    "frame_repr",
    "negative_length",
    "poisoned",
    "reentered",
    "unsupported_version",
]

_REPR_BODY_BYTES = 32
VERSION_INDEX = len(PREFACE_MAGIC)  # offset of the version byte inside the preface


def bad_preface_byte(offset: int, got: int) -> str:
    """Preface byte *offset* (also its stream offset) is *got* instead of the expected one."""
    want = PREFACE[offset]
    hint = ""
    if offset == 0 and got == 0x16:
        hint = " (it looks like a TLS ClientHello: is the client using TLS?)"
    elif offset == 0 and 0x41 <= got <= 0x5A:
        hint = " (it looks like an HTTP request)"
    return (
        f"bad connection preface at stream offset {offset}: got byte 0x{got:02x}, expected "
        f"0x{want:02x}; the peer does not speak the rapidrpc protocol{hint}"
    )


def unsupported_version(got: int) -> str:
    """The preface carries protocol version *got*, which this side does not speak."""
    return (
        f"unsupported protocol version {got} in the connection preface (stream offset "
        f"{VERSION_INDEX}); this side speaks version {PROTOCOL_VERSION}"
    )


def at_header(offset: int, detail: str) -> str:
    """Place a header problem *detail* at the header's stream *offset*."""
    return f"bad frame header at stream offset {offset}: {detail}"


def empty_body() -> str:
    """Body length 0 is never valid."""
    return "body length 0: every body is one MessagePack value, so it cannot be empty"


def negative_length(length: int) -> str:
    """A negative body length given to an encoder."""
    return f"body length {length} is negative"


def body_too_large(length: int, limit: int) -> str:
    """A body of *length* bytes is above the frame size *limit*; name the knob."""
    return (
        f"body length {length} bytes exceeds the frame size limit of {limit} bytes "
        "(raise it with max_frame_size=...)"
    )


def bad_kind(kind: int) -> str:
    """*kind* is not one of the known frame kinds."""
    return f"unknown frame kind {kind}; known kinds are 1..{MAX_KIND} (see KIND_NAMES)"


def bad_flags(flags: int) -> str:
    """*flags* has bits outside KNOWN_FLAGS (or is not a u8 at all)."""
    if not 0 <= flags <= 0xFF:
        return f"flags {flags} out of range 0..255"
    return (
        f"unknown flag bits 0x{flags & ~KNOWN_FLAGS & 0xFF:02x} in flags 0x{flags:02x}; "
        f"known flags are 0x{KNOWN_FLAGS:02x}"
    )


def bad_reserved(value: int) -> str:
    """The reserved u16 of a header is not zero."""
    return f"reserved header field is 0x{value:04x}, it must be 0"


def bad_request_id(request_id: int) -> str:
    """*request_id* does not fit the u32 request id field."""
    return f"request id {request_id} out of range 0..{MAX_REQUEST_ID}"


def bad_max_frame_size(value: int) -> str:
    """A FrameParser limit that is not a usable u32 body length."""
    return f"max_frame_size must be in 1..{0xFFFFFFFF}, got {value}"


def body_not_contiguous() -> str:
    """Bodies and fed data must be C-contiguous buffers."""
    return "a C-contiguous bytes-like object is required (got a non-contiguous buffer)"


def poisoned(first_error: str) -> str:
    """feed() after a FrameError: the stream cannot be resynchronised."""
    return f"the frame parser is unusable after an earlier protocol error: {first_error}"


def reentered() -> str:
    """feed() was called while feed() was running on the same parser."""
    return "FrameParser.feed() re-entered while it is already running on the same parser"


def skip_mid_frame() -> str:
    """skip() was called while the parser holds part of a preface, header or body."""
    return "FrameParser.skip() called while the parser holds part of a frame: only between frames"


def negative_skip(n: int) -> str:
    """skip() was given a negative count."""
    return f"FrameParser.skip() takes a byte count >= 0, got {n}"


def mixed_in_place() -> str:
    """feed_in_place() was called while feed() holds part of a frame."""
    return (
        "FrameParser.feed_in_place() called while feed() holds part of a frame: "
        "one connection uses one mode"
    )


def frame_repr(kind: int, request_id: int, flags: int, body: object) -> str:
    """repr() of a Frame: kind by name, body shortened to its first bytes."""
    name = KIND_NAMES.get(kind, str(kind))
    with memoryview(body) as view:  # type: ignore[arg-type]
        size = view.nbytes
        with view.cast("B") as octets:
            shown = repr(octets[:_REPR_BODY_BYTES].tobytes())
    if size > _REPR_BODY_BYTES:
        shown = f"{shown}... ({size} bytes)"
    return f"Frame({name}, request_id={request_id}, flags=0x{flags:02x}, body={shown})"
