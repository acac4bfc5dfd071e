"""Pieces both serializer backends share: ExtType, the slow-path ext codecs, error messages.

Both backends build every error through the ``err_*`` helpers below, so the two raise the
same exception class with the same message for the same bad input (a test checks it).  The
ext codecs here (timestamp, big int) are slow paths in both backends, so one Python copy is
enough.
"""

from __future__ import annotations

import struct
from datetime import datetime, timedelta, timezone
from typing import NamedTuple

from ..errors import SerializationError
from .constants import EXT_BIGINT, EXT_TIMESTAMP

__all__ = ["ExtType", "decode_bigint", "decode_timestamp", "encode_bigint", "encode_timestamp"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_TS96 = struct.Struct(">Iq")
_NS_MAX = 999_999_999
# Limits a MessagePack length field can express.
MAX_LEN32 = 0xFFFFFFFF


class ExtType(NamedTuple):
    """A MessagePack extension value: an application type *code* (-128..127) and raw *data*.

    Packing an ExtType writes it as-is; decoding an ext code that rapidrpc does not handle
    itself (see docs/serializer.md) gives an ExtType unless ``ext_hook`` is passed.
    """

    code: int
    data: bytes


# --- ext codecs (slow paths shared by both backends) ------------------------------------------


def encode_bigint(value: int) -> bytes:
    """Minimal big-endian two's complement bytes of *value* (payload of ext EXT_BIGINT)."""
    bits = value.bit_length() if value >= 0 else (~value).bit_length()
    return value.to_bytes((bits + 8) // 8, "big", signed=True)


def decode_bigint(data: bytes, offset: int) -> int:
    """The int an EXT_BIGINT payload holds; *offset* (of the ext header) is for errors."""
    if not data:
        raise SerializationError(f"empty payload for big int ext {EXT_BIGINT}", offset)
    return int.from_bytes(data, "big", signed=True)


def encode_timestamp(dt: datetime) -> bytes:
    """The smallest spec timestamp payload (4, 8 or 12 bytes) for an aware datetime.

    Raises TypeError for a naive datetime: its instant is unknown.
    """
    if dt.utcoffset() is None:
        raise TypeError(
            "cannot serialize a naive datetime: attach a tzinfo "
            "(e.g. dt.replace(tzinfo=datetime.timezone.utc))"
        )
    delta = dt - _EPOCH
    seconds = delta.days * 86400 + delta.seconds
    nanoseconds = delta.microseconds * 1000
    if seconds >> 34 == 0:
        data64 = nanoseconds << 34 | seconds
        if data64 >> 32 == 0:
            return _U32.pack(data64)
        return _U64.pack(data64)
    return _TS96.pack(nanoseconds, seconds)


def decode_timestamp(data: bytes, offset: int) -> datetime:
    """An aware UTC datetime from a spec timestamp payload (sub-microsecond ns truncated)."""
    size = len(data)
    if size == 4:
        seconds, nanoseconds = _U32.unpack(data)[0], 0
    elif size == 8:
        data64 = _U64.unpack(data)[0]
        seconds, nanoseconds = data64 & 0x3FFFFFFFF, data64 >> 34
    elif size == 12:
        nanoseconds, seconds = _TS96.unpack(data)
    else:
        raise SerializationError(
            f"timestamp ext {EXT_TIMESTAMP} has {size} bytes of data; expected 4, 8 or 12",
            offset,
        )
    if nanoseconds > _NS_MAX:
        raise SerializationError(
            f"timestamp nanoseconds {nanoseconds} out of range 0..{_NS_MAX}", offset
        )
    try:
        return _EPOCH + timedelta(seconds=seconds, microseconds=nanoseconds // 1000)
    except OverflowError:
        raise SerializationError(
            f"timestamp {seconds}s is outside the range of datetime", offset
        ) from None


# --- decoding errors ---------------------------------------------------------------------------


def err_truncated(need: int, avail: int, offset: int) -> SerializationError:
    """Input ends inside the value starting at *offset*."""
    return SerializationError(
        f"truncated input: value needs at least {need} bytes, {avail} remain", offset
    )


def err_reserved(offset: int) -> SerializationError:
    """The never-used byte 0xc1."""
    return SerializationError("reserved byte 0xc1 is not valid MessagePack", offset)


def err_depth(max_depth: int, offset: int) -> SerializationError:
    """Containers nested deeper than max_depth."""
    return SerializationError(f"nesting depth exceeds max_depth={max_depth}", offset)


def err_limit(kind: int, size: int, limit: int, offset: int) -> SerializationError:
    """A declared length over its limit; *kind* indexes LIMIT_NAMES."""
    what, unit, knob = LIMIT_NAMES[kind]
    return SerializationError(f"{what} of {size} {unit} exceeds {knob}={limit}", offset)


# (what, unit, knob) per limit kind; the backends use the indexes below.
LIMIT_STR, LIMIT_BIN, LIMIT_EXT, LIMIT_ARRAY, LIMIT_MAP = range(5)
LIMIT_NAMES = (
    ("str", "bytes", "max_str_len"),
    ("bin", "bytes", "max_bin_len"),
    ("ext", "bytes", "max_ext_len"),
    ("array", "elements", "max_array_len"),
    ("map", "entries", "max_map_len"),
)


def err_utf8(exc: UnicodeDecodeError, payload_offset: int) -> SerializationError:
    """A str payload that is not strict UTF-8; the offset is the first bad byte."""
    return SerializationError(f"invalid UTF-8 in str: {exc.reason}", payload_offset + exc.start)


def _short_repr(obj: object) -> str:
    text = repr(obj)
    return text if len(text) <= 60 else text[:57] + "..."


def err_duplicate_key(key: object, offset: int) -> SerializationError:
    """A map key equal to an earlier key of the same map."""
    return SerializationError(f"duplicate map key {_short_repr(key)}", offset)


def err_unhashable_key(key: object, offset: int) -> SerializationError:
    """A map key Python cannot hash (a map, or an array holding one)."""
    return SerializationError(f"unhashable map key of type {type(key).__name__}", offset)


def err_trailing(extra: int, offset: int) -> SerializationError:
    """Bytes left after the one value loads() decodes."""
    return SerializationError(f"trailing data: {extra} bytes after the value", offset)


# --- packing errors ----------------------------------------------------------------------------


def err_unsupported(obj: object) -> TypeError:
    """A value with no MessagePack form and no default hook (or one that gave it back)."""
    name = type(obj).__qualname__
    return TypeError(f"cannot serialize object of type {name}: pass default= to convert it")


def err_pack_depth(max_depth: int) -> SerializationError:
    """Packing went deeper than max_depth (often a self-referential container)."""
    return SerializationError(
        f"nesting depth exceeds max_depth={max_depth} while packing "
        "(self-referential or too deeply nested object?)"
    )


def err_encode_str(exc: UnicodeEncodeError) -> SerializationError:
    """A str that is not encodable as UTF-8 (lone surrogates)."""
    return SerializationError(f"cannot encode str as UTF-8: {exc.reason} at index {exc.start}")


def err_too_long(what: str, size: int) -> SerializationError:
    """A str/bin/ext/array/map longer than a 32-bit MessagePack length can say."""
    return SerializationError(f"{what} of length {size} exceeds the MessagePack limit {MAX_LEN32}")


def err_ext_code(code: int) -> SerializationError:
    """An ExtType code outside the signed byte range."""
    return SerializationError(f"ExtType code {code} is outside -128..127")


def err_ext_data(data: object) -> TypeError:
    """An ExtType whose data is not bytes-like."""
    return TypeError(f"ExtType data must be bytes, not {type(data).__name__}")


def err_mutated(what: str) -> RuntimeError:
    """A container changed size while it was being packed (from a default hook)."""
    return RuntimeError(f"{what} changed size during packing")


# --- streaming / arguments ------------------------------------------------------------------


def err_unusable() -> SerializationError:
    """Any use of a poisoned Unpacker."""
    return SerializationError("Unpacker is unusable after an error; call reset()")


def err_reentrant() -> RuntimeError:
    """feed()/next()/reset() called from inside the same Unpacker's decoding (a hook)."""
    return RuntimeError("Unpacker is already decoding (called from an ext_hook?)")


def err_buffer_full(size: int, limit: int) -> SerializationError:
    """feed() would hold more unconsumed bytes than max_buffer_size."""
    return SerializationError(
        f"Unpacker buffer of {size} bytes would exceed max_buffer_size={limit}"
    )


def err_bad_limit(name: str, value: int) -> ValueError:
    """A negative limit argument."""
    return ValueError(f"{name} must be >= 0, got {value}")


def check_limits(**limits: int) -> None:
    """Raise for the first negative limit (callers only reach here on the slow path)."""
    for name, value in limits.items():
        if value < 0:
            raise err_bad_limit(name, value)


def err_not_callable(name: str, value: object) -> TypeError:
    """A hook argument that cannot be called."""
    return TypeError(f"{name} must be callable or None, not {type(value).__name__}")
