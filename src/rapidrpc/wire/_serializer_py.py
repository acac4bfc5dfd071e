"""Pure-Python MessagePack serializer: the twin of ``cext/serializer.pyx``.

Both backends follow one specification (docs/serializer.md) and a differential test suite
checks that they emit identical bytes and raise the same errors.  Structure shared with the
Cython twin:

* packing is recursive with an explicit depth bound (DEFAULT_MAX_DEPTH);
* decoding is iterative (an explicit stack of open containers), so no input can exhaust the
  interpreter stack whatever ``max_depth`` is;
* the streaming :class:`Unpacker` first *scans* the buffered bytes with a resumable scanner that
  only tracks how many items are still missing, and decodes a value once it is complete, so a
  value arriving in many small pieces costs linear time.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from ..errors import SerializationError
from ._ext import (
    LIMIT_ARRAY,
    LIMIT_BIN,
    LIMIT_EXT,
    LIMIT_MAP,
    LIMIT_STR,
    ExtType,
    check_limits,
    decode_bigint,
    decode_timestamp,
    encode_bigint,
    encode_timestamp,
    err_buffer_full,
    err_depth,
    err_duplicate_key,
    err_encode_str,
    err_ext_code,
    err_ext_data,
    err_limit,
    err_mutated,
    err_not_callable,
    err_pack_depth,
    err_reentrant,
    err_reserved,
    err_too_long,
    err_trailing,
    err_truncated,
    err_unhashable_key,
    err_unsupported,
    err_unusable,
    err_utf8,
)
from .constants import (
    DEFAULT_MAX_ARRAY_LEN,
    DEFAULT_MAX_BIN_LEN,
    DEFAULT_MAX_BUFFER_SIZE,
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_EXT_LEN,
    DEFAULT_MAX_MAP_LEN,
    DEFAULT_MAX_STR_LEN,
    EXT_BIGINT,
    EXT_TIMESTAMP,
)

__all__ = ["Packer", "Unpacker", "dumps", "loads"]

_PACK_DEPTH = DEFAULT_MAX_DEPTH
_MAXSIZE = 2**63 - 1

# Precompiled struct packers: "header byte + field" in one call.
_P_BB = struct.Struct(">BB").pack
_P_BH = struct.Struct(">BH").pack
_P_BI = struct.Struct(">BI").pack
_P_BQ = struct.Struct(">BQ").pack
_P_Bb = struct.Struct(">Bb").pack
_P_Bh = struct.Struct(">Bh").pack
_P_Bi = struct.Struct(">Bi").pack
_P_Bq = struct.Struct(">Bq").pack
_P_Bd = struct.Struct(">Bd").pack
_P_BBb = struct.Struct(">BBb").pack
_P_BHb = struct.Struct(">BHb").pack
_P_BIb = struct.Struct(">BIb").pack

_U_B = struct.Struct(">B").unpack_from
_U_H = struct.Struct(">H").unpack_from
_U_I = struct.Struct(">I").unpack_from
_U_Q = struct.Struct(">Q").unpack_from
_U_b = struct.Struct(">b").unpack_from
_U_h = struct.Struct(">h").unpack_from
_U_i = struct.Struct(">i").unpack_from
_U_q = struct.Struct(">q").unpack_from
_U_f = struct.Struct(">f").unpack_from
_U_d = struct.Struct(">d").unpack_from
_U_Hb = struct.Struct(">Hb").unpack_from
_U_Ib = struct.Struct(">Ib").unpack_from

# Single-byte bytes objects: fixints and one-byte headers are appended without allocating.
_BYTE = [bytes((b,)) for b in range(256)]


# ============================================================================================
# Packing
# ============================================================================================


def _str_header(n: int, buf: list[bytes]) -> None:
    if n < 32:
        buf.append(_BYTE[0xA0 | n])
    elif n < 0x100:
        buf.append(_P_BB(0xD9, n))
    elif n < 0x10000:
        buf.append(_P_BH(0xDA, n))
    elif n <= 0xFFFFFFFF:
        buf.append(_P_BI(0xDB, n))
    else:
        raise err_too_long("str", n)


def _bin(data: bytes, buf: list[bytes]) -> None:
    n = len(data)
    if n < 0x100:
        buf.append(_P_BB(0xC4, n))
    elif n < 0x10000:
        buf.append(_P_BH(0xC5, n))
    elif n <= 0xFFFFFFFF:
        buf.append(_P_BI(0xC6, n))
    else:
        raise err_too_long("bin", n)
    buf.append(data)


def _ext(code: int, data: bytes, buf: list[bytes]) -> None:
    n = len(data)
    if n == 1:
        buf.append(_P_Bb(0xD4, code))
    elif n == 2:
        buf.append(_P_Bb(0xD5, code))
    elif n == 4:
        buf.append(_P_Bb(0xD6, code))
    elif n == 8:
        buf.append(_P_Bb(0xD7, code))
    elif n == 16:
        buf.append(_P_Bb(0xD8, code))
    elif n < 0x100:
        buf.append(_P_BBb(0xC7, n, code))
    elif n < 0x10000:
        buf.append(_P_BHb(0xC8, n, code))
    elif n <= 0xFFFFFFFF:
        buf.append(_P_BIb(0xC9, n, code))
    else:
        raise err_too_long("ext", n)
    buf.append(data)


def _int(obj: int, buf: list[bytes]) -> None:
    if obj >= 0:
        if obj < 0x80:
            buf.append(_BYTE[obj])
        elif obj < 0x100:
            buf.append(_P_BB(0xCC, obj))
        elif obj < 0x10000:
            buf.append(_P_BH(0xCD, obj))
        elif obj < 0x100000000:
            buf.append(_P_BI(0xCE, obj))
        elif obj < 0x10000000000000000:
            buf.append(_P_BQ(0xCF, obj))
        else:
            _ext(EXT_BIGINT, encode_bigint(obj), buf)
    elif obj >= -0x20:
        buf.append(_BYTE[obj & 0xFF])
    elif obj >= -0x80:
        buf.append(_P_Bb(0xD0, obj))
    elif obj >= -0x8000:
        buf.append(_P_Bh(0xD1, obj))
    elif obj >= -0x80000000:
        buf.append(_P_Bi(0xD2, obj))
    elif obj >= -0x8000000000000000:
        buf.append(_P_Bq(0xD3, obj))
    else:
        _ext(EXT_BIGINT, encode_bigint(obj), buf)


def _array_header(n: int, buf: list[bytes]) -> None:
    if n < 16:
        buf.append(_BYTE[0x90 | n])
    elif n < 0x10000:
        buf.append(_P_BH(0xDC, n))
    elif n <= 0xFFFFFFFF:
        buf.append(_P_BI(0xDD, n))
    else:
        raise err_too_long("array", n)


def _map_header(n: int, buf: list[bytes]) -> None:
    if n < 16:
        buf.append(_BYTE[0x80 | n])
    elif n < 0x10000:
        buf.append(_P_BH(0xDE, n))
    elif n <= 0xFFFFFFFF:
        buf.append(_P_BI(0xDF, n))
    else:
        raise err_too_long("map", n)


def _pack(obj: Any, buf: list[bytes], default: Callable[[Any], Any] | None, depth: int) -> None:
    """Append *obj* to *buf*; *depth* counts the containers enclosing *obj*."""
    t = type(obj)
    if t is str:
        try:
            data = obj.encode()
        except UnicodeEncodeError as exc:
            raise err_encode_str(exc) from None
        n = len(data)
        if n < 32:
            buf.append(_BYTE[0xA0 | n])
        else:
            _str_header(n, buf)
        buf.append(data)
    elif t is int:
        if 0 <= obj < 0x80:
            buf.append(_BYTE[obj])
        else:
            _int(obj, buf)
    elif obj is None:
        buf.append(b"\xc0")
    elif obj is True:
        buf.append(b"\xc3")
    elif obj is False:
        buf.append(b"\xc2")
    elif t is float:
        buf.append(_P_Bd(0xCB, obj))
    elif t is dict:
        if depth >= _PACK_DEPTH:
            raise err_pack_depth(_PACK_DEPTH)
        n = len(obj)
        if n < 16:
            buf.append(_BYTE[0x80 | n])
        else:
            _map_header(n, buf)
        depth += 1
        # The dict iterator raises RuntimeError if a default hook resizes the dict.
        for k, v in obj.items():
            _pack(k, buf, default, depth)
            _pack(v, buf, default, depth)
    elif t is list:
        # (inline, not a helper: one Python frame per nesting level keeps 512 levels well
        # inside the interpreter's recursion limit)
        if depth >= _PACK_DEPTH:
            raise err_pack_depth(_PACK_DEPTH)
        n = len(obj)
        if n < 16:
            buf.append(_BYTE[0x90 | n])
        else:
            _array_header(n, buf)
        depth += 1
        # Indexing (not iterating) so that a default hook resizing the list is always
        # caught: the header already promised n elements.
        try:
            for i in range(n):
                _pack(obj[i], buf, default, depth)
        except IndexError:
            if len(obj) == n:
                raise
            raise err_mutated("list") from None
        if len(obj) != n:
            raise err_mutated("list")
    elif t is tuple:
        if depth >= _PACK_DEPTH:
            raise err_pack_depth(_PACK_DEPTH)
        n = len(obj)
        if n < 16:
            buf.append(_BYTE[0x90 | n])
        else:
            _array_header(n, buf)
        depth += 1
        for x in obj:
            _pack(x, buf, default, depth)
    elif t is bytes:
        _bin(obj, buf)
    else:
        # Returned here rather than packed inside _pack_other, so that every nesting level
        # (and every default() conversion) costs one Python frame.
        again = _pack_other(obj, buf, default, depth)
        if again is not None:
            _pack(again[0], buf, default, again[1])


def _pack_other(
    obj: Any, buf: list[bytes], default: Callable[[Any], Any] | None, depth: int
) -> tuple[Any, int] | None:
    """Subclasses of the builtins, bytearray/memoryview, ExtType, datetime, then default().

    Returns None when *obj* was packed, else (value, depth) for the caller to pack: the
    builtin copy of a container subclass, or default()'s result one level deeper.
    """
    # The order matches the Cython backend; the base-class method reads the builtin storage
    # so overridden methods of a subclass are never called.
    if isinstance(obj, int):
        _int(int.__pos__(obj), buf)
    elif isinstance(obj, float):
        buf.append(_P_Bd(0xCB, obj))
    elif isinstance(obj, str):
        try:
            data = str.encode(obj)
        except UnicodeEncodeError as exc:
            raise err_encode_str(exc) from None
        _str_header(len(data), buf)
        buf.append(data)
    elif isinstance(obj, bytes):
        _bin(obj, buf)
    elif isinstance(obj, bytearray):
        _bin(bytes(obj), buf)  # a copy: a default hook could resize it before the join
    elif isinstance(obj, memoryview):
        _bin(obj.tobytes(), buf)
    elif isinstance(obj, ExtType):
        code, data = obj.code, obj.data
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise err_ext_data(data)
        if not isinstance(code, int):
            raise TypeError(f"ExtType code must be int, not {type(code).__name__}")
        if not -128 <= code <= 127:
            raise err_ext_code(code)
        if not isinstance(data, bytes):
            data = bytes(data)
        _ext(code, data, buf)
    elif isinstance(obj, list):
        return list.__getitem__(obj, slice(None)), depth
    elif isinstance(obj, tuple):
        return tuple.__getitem__(obj, slice(None)), depth
    elif isinstance(obj, dict):
        # A mapping subclass decides its own order (OrderedDict.move_to_end etc.).
        return dict(obj.items()), depth
    elif isinstance(obj, datetime):
        _ext(EXT_TIMESTAMP, encode_timestamp(obj), buf)
    elif default is not None:
        # A default() result is one level deeper, so `default=lambda o: o` ends in a depth
        # error instead of looping forever.
        if depth >= _PACK_DEPTH:
            raise err_pack_depth(_PACK_DEPTH)
        return default(obj), depth + 1
    else:
        raise err_unsupported(obj)
    return None


def _pack_top(obj: Any, buf: list[bytes], default: Callable[[Any], Any] | None) -> None:
    try:
        _pack(obj, buf, default, 0)
    except RecursionError:
        # Only reachable when the caller's own stack is already nearly exhausted.
        raise SerializationError("nesting too deep for the Python stack while packing") from None


def dumps(obj: Any, *, default: Callable[[Any], Any] | None = None) -> bytes:
    """Serialize *obj* to MessagePack bytes.

    *default* is called for objects of unsupported types; its result is packed instead.
    Raises TypeError for unsupported types, SerializationError for values MessagePack cannot
    hold (lone surrogates, nesting deeper than DEFAULT_MAX_DEPTH).
    """
    if default is not None and not callable(default):
        raise err_not_callable("default", default)
    buf: list[bytes] = []
    _pack_top(obj, buf, default)
    return b"".join(buf)


class Packer:
    """A reusable packer: ``Packer(default=...).pack(obj) -> bytes``.

    Keeps one internal buffer (here: the list of parts joined at the end) between calls.
    A default hook that raises mid-pack leaves the packer usable; a hook that packs with
    the same Packer gets a fresh buffer.
    """

    __slots__ = ("_buf", "_busy", "_default")

    def __init__(self, *, default: Callable[[Any], Any] | None = None) -> None:
        if default is not None and not callable(default):
            raise err_not_callable("default", default)
        self._default = default
        self._buf: list[bytes] = []
        self._busy = False

    def pack(self, obj: Any) -> bytes:
        """Serialize *obj*, like :func:`dumps` with this packer's default hook."""
        if self._busy:
            return dumps(obj, default=self._default)
        buf = self._buf
        self._busy = True
        try:
            _pack_top(obj, buf, self._default)
            return b"".join(buf)
        finally:
            buf.clear()
            self._busy = False


# ============================================================================================
# Decoding
# ============================================================================================

# Frame kinds of the decoder's explicit stack.
_LIST, _TUPLE, _MAP = 0, 1, 2
_NOKEY = object()


def _need(data: bytes, start: int, end: int) -> int:
    """Bytes the truncated item at *start* needs, as far as its header tells (error path)."""
    if start >= end:
        return 1
    h, lenfmt, fixed, kind = _HDR[data[start]]
    if end - start < h or kind in (_K_SCALAR, _K_FIXED):
        return h
    n = fixed if lenfmt is None else lenfmt(data, start + 1)[0]
    if kind == _K_ARRAY:
        return h + n
    if kind == _K_MAP:
        return h + 2 * n
    return h + n


def _truncated(data: bytes, start: int, end: int, base: int) -> SerializationError:
    return err_truncated(_need(data, start, end), end - start, base + start)


# Decoder options: (ext_hook, max_depth, max_str, max_bin, max_array, max_map, max_ext).
_Options = tuple[Any, int, int, int, int, int, int]


def _decode(data: bytes, pos: int, end: int, opts: _Options, base: int) -> tuple[Any, int]:
    """Decode one value from ``data[pos:end]``; returns (value, position after it).

    *base* is added to every offset in error messages (the stream position of ``data[0]``).
    Check order per item, shared with the Cython twin: header complete, 0xc1, depth, length
    limit, remaining bytes, content.
    """
    hook, max_depth, max_str, max_bin, max_array, max_map, max_ext = opts
    stack: list[list[Any]] = []
    while True:
        start = pos
        if pos >= end:
            raise _truncated(data, start, end, base)
        b = data[pos]
        pos += 1
        # -- scalars and headers --------------------------------------------------------------
        if b < 0x80:
            obj = b
        elif b >= 0xE0:
            obj = b - 0x100
        elif b >= 0xA0 and b < 0xC0:
            n = b & 0x1F
            if n > max_str:
                raise err_limit(LIMIT_STR, n, max_str, base + start)
            if pos + n > end:
                raise _truncated(data, start, end, base)
            try:
                obj = data[pos : pos + n].decode()
            except UnicodeDecodeError as exc:
                raise err_utf8(exc, base + pos) from None
            pos += n
        elif b == 0xC0:
            obj = None
        elif b == 0xC2:
            obj = False
        elif b == 0xC3:
            obj = True
        elif b == 0xCB:
            if pos + 8 > end:
                raise _truncated(data, start, end, base)
            obj = _U_d(data, pos)[0]
            pos += 8
        elif b == 0xC1:
            raise err_reserved(base + start)
        else:
            h, lenfmt, fixed, kind = _HDR[b]
            if start + h > end:
                raise _truncated(data, start, end, base)
            if kind == _K_SCALAR:
                obj = lenfmt(data, pos)[0]
                pos = start + h
            elif kind <= _K_EXT:
                n = fixed if lenfmt is None else lenfmt(data, pos)[0]
                if kind == _K_STR:
                    if n > max_str:
                        raise err_limit(LIMIT_STR, n, max_str, base + start)
                elif kind == _K_BIN:
                    if n > max_bin:
                        raise err_limit(LIMIT_BIN, n, max_bin, base + start)
                elif n > max_ext:
                    raise err_limit(LIMIT_EXT, n, max_ext, base + start)
                pos = start + h
                if pos + n > end:
                    raise _truncated(data, start, end, base)
                payload = data[pos : pos + n]
                if kind == _K_STR:
                    try:
                        obj = payload.decode()
                    except UnicodeDecodeError as exc:
                        raise err_utf8(exc, base + pos) from None
                elif kind == _K_BIN:
                    obj = payload
                else:
                    code = data[pos - 1]
                    if code >= 0x80:
                        code -= 0x100
                    obj = _ext_value(code, payload, hook, base + start)
                pos += n
            else:
                # containers: fixarray/fixmap carry n in the header byte, the others after it
                n = fixed if lenfmt is None else lenfmt(data, pos)[0]
                if len(stack) >= max_depth:
                    raise err_depth(max_depth, base + start)
                pos = start + h
                if kind == _K_ARRAY:
                    if n > max_array:
                        raise err_limit(LIMIT_ARRAY, n, max_array, base + start)
                    if n > end - pos:
                        raise _truncated(data, start, end, base)
                    tup = bool(stack) and (
                        stack[-1][0] == _TUPLE or (stack[-1][0] == _MAP and stack[-1][3] is _NOKEY)
                    )
                    if n == 0:
                        obj = () if tup else []
                    else:
                        stack.append([_TUPLE if tup else _LIST, [], n, start])
                        continue
                else:
                    if n > max_map:
                        raise err_limit(LIMIT_MAP, n, max_map, base + start)
                    if 2 * n > end - pos:
                        raise _truncated(data, start, end, base)
                    if n == 0:
                        obj = {}
                    else:
                        stack.append([_MAP, {}, n, _NOKEY, 0, start, 0])
                        continue
        # -- attach the finished value to the innermost open container -----------------------
        while stack:
            f = stack[-1]
            if f[0] != _MAP:
                f[1].append(obj)
                f[2] -= 1
                if f[2]:
                    break
                obj = f[1] if f[0] == _LIST else tuple(f[1])
                start = f[3]
                stack.pop()
            elif f[3] is _NOKEY:
                f[3] = obj
                f[4] = start
                break
            else:
                d = f[1]
                key = f[3]
                try:
                    d[key] = obj
                except TypeError:
                    raise err_unhashable_key(key, base + f[4]) from None
                f[6] += 1
                if len(d) != f[6]:
                    raise err_duplicate_key(key, base + f[4])
                f[3] = _NOKEY
                f[2] -= 1
                if f[2]:
                    break
                obj = d
                start = f[5]
                stack.pop()
        else:
            return obj, pos


def _ext_value(
    code: int, payload: bytes, hook: Callable[[int, bytes], Any] | None, offset: int
) -> Any:
    if code == EXT_TIMESTAMP:
        return decode_timestamp(payload, offset)
    if code == EXT_BIGINT:
        return decode_bigint(payload, offset)
    if hook is not None:
        return hook(code, payload)
    return ExtType(code, payload)


# Header table for every byte that is not handled inline by _decode: (header size incl. any
# fixed-size scalar body, length/value reader or None, fixed payload length, kind).
_K_SCALAR, _K_STR, _K_BIN, _K_EXT, _K_ARRAY, _K_MAP, _K_FIXED, _K_RESERVED = range(8)


def _build_header_table() -> list[tuple[int, Any, int, int]]:
    table: list[tuple[int, Any, int, int]] = [(1, None, 0, _K_FIXED)] * 256
    for b in range(0x80, 0x90):
        table[b] = (1, None, b & 0x0F, _K_MAP)
    for b in range(0x90, 0xA0):
        table[b] = (1, None, b & 0x0F, _K_ARRAY)
    for b in range(0xA0, 0xC0):
        table[b] = (1, None, b & 0x1F, _K_STR)
    table[0xC1] = (1, None, 0, _K_RESERVED)
    table[0xC4] = (2, _U_B, 0, _K_BIN)
    table[0xC5] = (3, _U_H, 0, _K_BIN)
    table[0xC6] = (5, _U_I, 0, _K_BIN)
    table[0xC7] = (3, _U_B, 0, _K_EXT)
    table[0xC8] = (4, _U_H, 0, _K_EXT)
    table[0xC9] = (6, _U_I, 0, _K_EXT)
    table[0xCA] = (5, _U_f, 0, _K_SCALAR)
    table[0xCB] = (9, _U_d, 0, _K_SCALAR)
    table[0xCC] = (2, _U_B, 0, _K_SCALAR)
    table[0xCD] = (3, _U_H, 0, _K_SCALAR)
    table[0xCE] = (5, _U_I, 0, _K_SCALAR)
    table[0xCF] = (9, _U_Q, 0, _K_SCALAR)
    table[0xD0] = (2, _U_b, 0, _K_SCALAR)
    table[0xD1] = (3, _U_h, 0, _K_SCALAR)
    table[0xD2] = (5, _U_i, 0, _K_SCALAR)
    table[0xD3] = (9, _U_q, 0, _K_SCALAR)
    for b, size in zip(range(0xD4, 0xD9), (1, 2, 4, 8, 16), strict=True):
        table[b] = (2, None, size, _K_EXT)
    table[0xD9] = (2, _U_B, 0, _K_STR)
    table[0xDA] = (3, _U_H, 0, _K_STR)
    table[0xDB] = (5, _U_I, 0, _K_STR)
    table[0xDC] = (3, _U_H, 0, _K_ARRAY)
    table[0xDD] = (5, _U_I, 0, _K_ARRAY)
    table[0xDE] = (3, _U_H, 0, _K_MAP)
    table[0xDF] = (5, _U_I, 0, _K_MAP)
    return table


_HDR = _build_header_table()


def _check_args(hook: object, limits: dict[str, int]) -> None:
    if hook is not None and not callable(hook):
        raise err_not_callable("ext_hook", hook)
    for value in limits.values():
        if operator.index(value) > _MAXSIZE:
            raise OverflowError("Python int too large to convert to C ssize_t")
    check_limits(**limits)


def _as_bytes(data: Any) -> bytes:
    """The raw bytes of any buffer (copied in C order when not contiguous)."""
    if type(data) is bytes:
        return data
    with memoryview(data) as view:
        return view.tobytes()


def loads(
    data: Any,
    *,
    ext_hook: Callable[[int, bytes], Any] | None = None,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_str_len: int = DEFAULT_MAX_STR_LEN,
    max_bin_len: int = DEFAULT_MAX_BIN_LEN,
    max_array_len: int = DEFAULT_MAX_ARRAY_LEN,
    max_map_len: int = DEFAULT_MAX_MAP_LEN,
    max_ext_len: int = DEFAULT_MAX_EXT_LEN,
) -> Any:
    """Decode exactly one MessagePack value from *data* (bytes or any buffer).

    Raises SerializationError (a ValueError) naming what is wrong and at which offset for
    malformed input, trailing bytes, or a declared size over one of the ``max_*`` limits.
    """
    if (
        ext_hook is not None
        or max_depth is not DEFAULT_MAX_DEPTH
        or max_str_len is not DEFAULT_MAX_STR_LEN
        or max_bin_len is not DEFAULT_MAX_BIN_LEN
        or max_array_len is not DEFAULT_MAX_ARRAY_LEN
        or max_map_len is not DEFAULT_MAX_MAP_LEN
        or max_ext_len is not DEFAULT_MAX_EXT_LEN
    ):
        _check_args(
            ext_hook,
            {
                "max_depth": max_depth,
                "max_str_len": max_str_len,
                "max_bin_len": max_bin_len,
                "max_array_len": max_array_len,
                "max_map_len": max_map_len,
                "max_ext_len": max_ext_len,
            },
        )
    opts = (ext_hook, max_depth, max_str_len, max_bin_len, max_array_len, max_map_len, max_ext_len)
    if type(data) is bytes:
        return _loads(data, opts)
    # Keep the buffer exported while decoding, like the Cython twin: a hook that tries to
    # resize the input gets BufferError in both.
    with memoryview(data) as view:
        return _loads(view.tobytes(), opts)


def _loads(data: bytes, opts: _Options) -> Any:
    end = len(data)
    obj, pos = _decode(data, 0, end, opts, 0)
    if pos != end:
        raise err_trailing(end - pos, pos)
    return obj


# ============================================================================================
# Streaming
# ============================================================================================


def _scan(
    buf: bytearray,
    pos: int,
    end: int,
    stack: list[int],
    max_depth: int,
    limits: tuple[int, int, int, int, int],
    base: int,
) -> tuple[int, int]:
    """Skip over complete items of the value being scanned, without building objects.

    *stack* holds, per open container, how many items it still needs; it is updated in
    place.  Returns ``(pos, need)``: *need* is 0 when the value ends at *pos*, else the
    buffer length at which scanning can make progress again.  Raises the structural errors
    (0xc1, depth, limits) that the decoder would raise at the same item.
    """
    max_str, max_bin, max_array, max_map, max_ext = limits
    while True:
        if pos >= end:
            return pos, pos + 1
        b = buf[pos]
        h, lenfmt, n, kind = _HDR[b]
        if kind == _K_SCALAR:
            size = h
        elif kind == _K_FIXED:
            size = 1
        elif kind == _K_RESERVED:
            raise err_reserved(base + pos)
        else:
            if pos + h > end:
                return pos, pos + h
            if lenfmt is not None:
                n = lenfmt(buf, pos + 1)[0]
            if kind >= _K_ARRAY:
                if len(stack) >= max_depth:
                    raise err_depth(max_depth, base + pos)
                if kind == _K_ARRAY:
                    if n > max_array:
                        raise err_limit(LIMIT_ARRAY, n, max_array, base + pos)
                elif n > max_map:
                    raise err_limit(LIMIT_MAP, n, max_map, base + pos)
                pos += h
                if n:
                    stack.append(n if kind == _K_ARRAY else 2 * n)
                    continue
                size = 0
            else:
                if kind == _K_STR:
                    if n > max_str:
                        raise err_limit(LIMIT_STR, n, max_str, base + pos)
                elif kind == _K_BIN:
                    if n > max_bin:
                        raise err_limit(LIMIT_BIN, n, max_bin, base + pos)
                elif n > max_ext:
                    raise err_limit(LIMIT_EXT, n, max_ext, base + pos)
                size = h + n
        if pos + size > end:
            return pos, pos + size
        pos += size
        # one item done: close every container it completes
        while stack:
            stack[-1] -= 1
            if stack[-1]:
                break
            stack.pop()
        else:
            return pos, 0


class Unpacker:
    """Streaming decoder: ``feed()`` bytes in any pieces, iterate to get every whole value.

    Iteration stops when only part of a value is buffered; the part is kept for the next
    feed().  After an error the Unpacker refuses further use until :meth:`reset`.
    """

    __slots__ = (
        "_buf",
        "_busy",
        "_consumed",
        "_limits",
        "_max_buffer_size",
        "_max_depth",
        "_need",
        "_opts",
        "_poisoned",
        "_scan_pos",
        "_stack",
        "_start",
    )

    def __init__(
        self,
        *,
        ext_hook: Callable[[int, bytes], Any] | None = None,
        max_buffer_size: int = DEFAULT_MAX_BUFFER_SIZE,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_str_len: int = DEFAULT_MAX_STR_LEN,
        max_bin_len: int = DEFAULT_MAX_BIN_LEN,
        max_array_len: int = DEFAULT_MAX_ARRAY_LEN,
        max_map_len: int = DEFAULT_MAX_MAP_LEN,
        max_ext_len: int = DEFAULT_MAX_EXT_LEN,
    ) -> None:
        _check_args(
            ext_hook,
            {
                "max_buffer_size": max_buffer_size,
                "max_depth": max_depth,
                "max_str_len": max_str_len,
                "max_bin_len": max_bin_len,
                "max_array_len": max_array_len,
                "max_map_len": max_map_len,
                "max_ext_len": max_ext_len,
            },
        )
        self._max_buffer_size = max_buffer_size
        self._max_depth = max_depth
        self._limits = (max_str_len, max_bin_len, max_array_len, max_map_len, max_ext_len)
        self._opts = (ext_hook, max_depth, *self._limits)
        self._busy = False
        self._clear()

    def _clear(self) -> None:
        self._buf = bytearray()
        self._start = 0  # first unconsumed byte in _buf
        self._consumed = 0  # stream offset of _buf[0]
        self._scan_pos = 0  # where the scanner resumes
        self._stack: list[int] = []
        self._need = 0  # don't scan again before len(_buf) reaches this
        self._poisoned = False

    def _enter(self) -> None:
        if self._busy:
            raise err_reentrant()
        if self._poisoned:
            raise err_unusable()

    def feed(self, data: Any) -> None:
        """Append *data* (bytes or any buffer) to the internal buffer."""
        self._enter()
        if type(data) is not bytes:
            data = _as_bytes(data)
        buf = self._buf
        held = len(buf) - self._start
        if held + len(data) > self._max_buffer_size:
            self._poisoned = True
            raise err_buffer_full(held + len(data), self._max_buffer_size)
        if self._start and self._start >= held:
            # drop the consumed prefix once it dominates (amortized O(1) per byte)
            del buf[: self._start]
            self._consumed += self._start
            self._scan_pos -= self._start
            self._need = max(self._need - self._start, 0)
            self._start = 0
        buf += data

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        self._enter()
        buf = self._buf
        end = len(buf)
        if end < self._need or self._start == end:
            raise StopIteration
        self._busy = True
        base = self._consumed + self._start
        try:
            try:
                pos, need = _scan(
                    buf,
                    self._scan_pos,
                    end,
                    self._stack,
                    self._max_depth,
                    self._limits,
                    self._consumed,
                )
            except SerializationError as scan_error:
                self._poisoned = True
                # Report the first error a full decode meets (it may sit before this
                # structural one, e.g. bad UTF-8), falling back to the scanner's own.
                rest = bytes(buf[self._start :])
                try:
                    _decode(rest, 0, len(rest), self._opts, base)
                except SerializationError as first:
                    if not first.args[0].startswith("truncated input"):
                        raise first from None
                raise scan_error from None
            self._scan_pos = pos
            if need:
                self._need = need
                raise StopIteration
            value_bytes = bytes(buf[self._start : pos])
            try:
                obj, _ = _decode(value_bytes, 0, len(value_bytes), self._opts, base)
            except BaseException:
                self._poisoned = True
                raise
            self._start = pos
            self._need = 0
            return obj
        finally:
            self._busy = False

    def reset(self) -> None:
        """Drop all buffered bytes and clear an error: the Unpacker is as new."""
        if self._busy:
            raise err_reentrant()
        self._clear()
