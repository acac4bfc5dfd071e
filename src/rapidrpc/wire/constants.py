"""Wire constants shared by both backends (Cython reads these at import into C globals).

Frame layout (all integers big-endian), specified byte by byte in docs/protocol.md:

    preface (once per direction, first 8 bytes on a connection):
        0xC1 'R' 'R' 'P' 'C' <version:u8> '\\r' '\\n'
    frame header (12 bytes), then the body:
        body_length:u32  kind:u8  flags:u8  reserved:u16 (must be 0)  request_id:u32

Every body is exactly one MessagePack value, so a body is never empty.
"""

from __future__ import annotations

__all__ = [
    "BIN32_MARKER",
    "BIN32_MIN_LENGTH",
    "DEFAULT_MAX_ARRAY_LEN",
    "DEFAULT_MAX_BIN_LEN",
    "DEFAULT_MAX_BUFFER_SIZE",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_EXT_LEN",
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_MAX_MAP_LEN",
    "DEFAULT_MAX_STR_LEN",
    "EXT_BIGINT",
    "EXT_TIMESTAMP",
    "FLAG_END_STREAM",
    "HANDSHAKE_MAX_FRAME_SIZE",
    "HEADER_SIZE",
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
    "MAX_BODY_LENGTH",
    "MAX_KIND",
    "MAX_REQUEST_ID",
    "PREFACE",
    "PREFACE_MAGIC",
    "PREFACE_SIZE",
    "PROTOCOL_VERSION",
    "ZERO_COPY_MIN_BODY",
]

# --- connection preface -------------------------------------------------------------------
PROTOCOL_VERSION = 1
# 0xC1 is the one byte MessagePack never uses, so a preface can't be mistaken for a body;
# it is also neither an HTTP method letter nor a TLS record type (0x16), so one port can
# tell native clients from HTTP and TLS by the first byte.
PREFACE_MAGIC = b"\xc1RRPC"
PREFACE = PREFACE_MAGIC + bytes([PROTOCOL_VERSION]) + b"\r\n"
PREFACE_SIZE = len(PREFACE)  # 8

# --- frame header ---------------------------------------------------------------------------
HEADER_SIZE = 12

KIND_REQUEST = 0x01
KIND_RESPONSE = 0x02
KIND_ERROR = 0x03
KIND_NOTIFICATION = 0x04
KIND_CANCEL = 0x05
KIND_PING = 0x06
KIND_PONG = 0x07
KIND_GOAWAY = 0x08
KIND_SETTINGS = 0x09
KIND_STREAM_ITEM = 0x0A
KIND_STREAM_END = 0x0B
MAX_KIND = KIND_STREAM_END  # kinds are 1..MAX_KIND; anything else is a FrameError

KIND_NAMES = {
    KIND_REQUEST: "request",
    KIND_RESPONSE: "response",
    KIND_ERROR: "error",
    KIND_NOTIFICATION: "notification",
    KIND_CANCEL: "cancel",
    KIND_PING: "ping",
    KIND_PONG: "pong",
    KIND_GOAWAY: "goaway",
    KIND_SETTINGS: "settings",
    KIND_STREAM_ITEM: "stream_item",
    KIND_STREAM_END: "stream_end",
}

FLAG_END_STREAM = 0x01  # reserved for streams: last item of a stream
KNOWN_FLAGS = FLAG_END_STREAM  # any other flag bit set is a FrameError

MAX_REQUEST_ID = 0xFFFFFFFF  # ids are u32; clients reconnect before an id would be reused
MAX_BODY_LENGTH = 0xFFFFFFFF  # body_length is u32: no max_frame_size can exceed it

# Default for FrameParser(max_frame_size=...): bodies above this are refused from the header.
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024
# Before the handshake is over (HOSTILE 10: nothing is trusted yet) the first frame after
# the preface -- the peer's settings -- may carry at most this many body bytes; a larger one
# is refused from its header and the connection closed.
HANDSHAKE_MAX_FRAME_SIZE = 4096
# Bodies at least this large that lie inside one immutable `bytes` chunk are handed out as
# read-only memoryviews instead of copies (both backends apply the same rule).
ZERO_COPY_MIN_BODY = 64 * 1024

# --- serializer -----------------------------------------------------------------------------
EXT_TIMESTAMP = -1  # MessagePack spec timestamp
EXT_BIGINT = 1  # ours: int outside [-2**63, 2**64): signed big-endian two's complement, minimal
# bytes of at least BIN32_MIN_LENGTH are packed as bin 32 (their smallest encoding): the
# marker, a u32 length, the bytes.  Reply paths send such a body by reference after a
# 5-byte prefix they write themselves (identical to what dumps makes).
BIN32_MARKER = 0xC6
BIN32_MIN_LENGTH = 0x10000

DEFAULT_MAX_DEPTH = 512
DEFAULT_MAX_STR_LEN = 64 * 1024 * 1024
DEFAULT_MAX_BIN_LEN = 64 * 1024 * 1024
DEFAULT_MAX_EXT_LEN = 64 * 1024 * 1024
DEFAULT_MAX_ARRAY_LEN = 16 * 1024 * 1024
DEFAULT_MAX_MAP_LEN = 4 * 1024 * 1024
DEFAULT_MAX_BUFFER_SIZE = 100 * 1024 * 1024  # Unpacker: bytes held waiting for a whole value
