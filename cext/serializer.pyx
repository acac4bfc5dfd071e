# cython: embedsignature.format=python
"""Cython MessagePack serializer: the hot path (twin: rapidrpc/wire/_serializer_py.py).

Both backends follow docs/serializer.md and a differential test suite holds them to the
same bytes and the same errors; error messages are built by the shared helpers in
rapidrpc/wire/_ext.py.  Shape of this module:

* packing writes into a growable C buffer: ``dumps`` starts in a stack area and moves to a
  ``bytes`` object it resizes in place, so the result needs no final copy when large;
  ``Packer`` keeps one heap buffer between calls.  Nothing is shared between calls, so
  ``dumps`` is thread-safe and re-entrant from ``default`` hooks.
* decoding runs over a ``const unsigned char*`` with an explicit stack of open containers
  (no C recursion, so no input can overflow the C stack), never preallocating more
  elements than the remaining bytes could hold.
* ``Unpacker`` scans buffered bytes with a resumable scanner and decodes each value once it
  is complete (linear time however the value is split).
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.datetime cimport PyDateTime_Check, import_datetime
from cpython.dict cimport PyDict_CheckExact, PyDict_Next
from cpython.exc cimport PyErr_Clear, PyErr_ExceptionMatches, PyErr_Occurred
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact
from cpython.list cimport PyList_CheckExact, PyList_GET_ITEM, PyList_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_CheckExact
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF, Py_XDECREF
from cpython.sequence cimport PySequence_Fast_ITEMS
from cpython.tuple cimport PyTuple_CheckExact, PyTuple_GET_SIZE
from cpython.unicode cimport PyUnicode_CheckExact, PyUnicode_DecodeUTF8
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint16_t, uint32_t, uint64_t
from cpython.pycapsule cimport PyCapsule_New
from libc.string cimport memcmp, memcpy, memmove

from serializer_api cimport SERIALIZER_API_NAME, SerializerAPI

from rapidrpc.errors import SerializationError
from rapidrpc.wire import _ext
from rapidrpc.wire import constants as _constants
from rapidrpc.wire.constants import (
    DEFAULT_MAX_ARRAY_LEN as _D_ARRAY,
    DEFAULT_MAX_BIN_LEN as _D_BIN,
    DEFAULT_MAX_BUFFER_SIZE as _D_BUFFER,
    DEFAULT_MAX_DEPTH as _D_DEPTH,
    DEFAULT_MAX_EXT_LEN as _D_EXT,
    DEFAULT_MAX_MAP_LEN as _D_MAP,
    DEFAULT_MAX_STR_LEN as _D_STR,
)

__all__ = ["Packer", "Unpacker", "dumps", "loads"]

cdef extern from *:
    """
    #ifndef RAPIDRPC_DEBUG
    #define RAPIDRPC_DEBUG 0
    #endif
    """
    # setup.py defines it (RAPIDRPC_DEBUG=1 builds): invariant checks, compiled out otherwise.
    const int RAPIDRPC_DEBUG

cdef extern from "serializer_endian.h":
    uint16_t rr_load16(const unsigned char* p)
    uint32_t rr_load32(const unsigned char* p)
    uint64_t rr_load64(const unsigned char* p)
    double rr_load_double(const unsigned char* p)
    double rr_load_float(const unsigned char* p)
    void rr_store_b16(char* p, unsigned char b, uint16_t v)
    void rr_store_b32(char* p, unsigned char b, uint32_t v)
    void rr_store_b64(char* p, unsigned char b, uint64_t v)
    void rr_store_double(char* p, double d)
    bint rr_is_ascii(const unsigned char* p, Py_ssize_t n)
    size_t rr_key_slot(const unsigned char* p, Py_ssize_t n, size_t mask)
    bint rr_long_small(object o, long long* out)

# Raw-pointer variants of a few C-API calls: the decoder's hot loop manages references itself
# (ownership is documented at each use) instead of paying Cython's bookkeeping per value.
cdef extern from "Python.h":
    PyObject* r_long "PyLong_FromLong"(long v) except NULL
    PyObject* r_longlong "PyLong_FromLongLong"(long long v) except NULL
    PyObject* r_ulonglong "PyLong_FromUnsignedLongLong"(unsigned long long v) except NULL
    PyObject* r_float "PyFloat_FromDouble"(double v) except NULL
    PyObject* r_bytes "PyBytes_FromStringAndSize"(const char* s, Py_ssize_t n) except NULL
    PyObject* r_list "PyList_New"(Py_ssize_t n) except NULL
    PyObject* r_list_as_tuple "PyList_AsTuple"(PyObject* lst) except NULL
    PyObject* r_tuple_new "PyTuple_New"(Py_ssize_t n) except NULL
    PyObject* r_dict "_PyDict_NewPresized"(Py_ssize_t n) except NULL
    PyObject* r_str_new "PyUnicode_New"(Py_ssize_t n, Py_UCS4 maxchar) except NULL
    void* r_str_data "PyUnicode_DATA"(PyObject* o)
    Py_ssize_t r_str_len "PyUnicode_GET_LENGTH"(PyObject* o)
    Py_hash_t r_hash "PyObject_Hash"(PyObject* o) except? -1
    int r_dict_set "PyDict_SetItem"(PyObject* d, PyObject* k, PyObject* v)
    Py_ssize_t r_dict_size "PyDict_GET_SIZE"(PyObject* d)
    void r_list_set "PyList_SET_ITEM"(PyObject* lst, Py_ssize_t i, PyObject* o)
    void r_set_size "Py_SET_SIZE"(PyObject* o, Py_ssize_t n)
    void r_incref "Py_INCREF"(PyObject* o)
    void r_decref "Py_DECREF"(PyObject* o)
    void r_xdecref "Py_XDECREF"(PyObject* o)
    char* r_bytes_data "PyBytes_AS_STRING"(PyObject* o)
    # NULL (with UnicodeEncodeError set) for lone surrogates; checked by hand.
    const char* r_utf8 "PyUnicode_AsUTF8AndSize"(object o, Py_ssize_t* size)
    unsigned long long r_as_ull "PyLong_AsUnsignedLongLong"(object o)
    int _PyBytes_Resize(PyObject** b, Py_ssize_t n) except -1
    PyObject* r_none "Py_None"
    PyObject* r_true "Py_True"
    PyObject* r_false "Py_False"

import_datetime()

# --- numbers from rapidrpc.wire.constants, read once into C globals --------------------------
cdef int EXT_TIMESTAMP = _constants.EXT_TIMESTAMP
cdef int EXT_BIGINT = _constants.EXT_BIGINT
cdef Py_ssize_t PACK_DEPTH = _constants.DEFAULT_MAX_DEPTH

# --- shared Python pieces (slow paths and error messages), cached as C-level references ------
cdef object _ExtType = _ext.ExtType
cdef object _encode_bigint = _ext.encode_bigint
cdef object _decode_bigint = _ext.decode_bigint
cdef object _encode_timestamp = _ext.encode_timestamp
cdef object _decode_timestamp = _ext.decode_timestamp
cdef object _err_truncated = _ext.err_truncated
cdef object _err_reserved = _ext.err_reserved
cdef object _err_depth = _ext.err_depth
cdef object _err_limit = _ext.err_limit
cdef object _err_utf8 = _ext.err_utf8
cdef object _err_duplicate_key = _ext.err_duplicate_key
cdef object _err_unhashable_key = _ext.err_unhashable_key
cdef object _err_trailing = _ext.err_trailing
cdef object _err_unsupported = _ext.err_unsupported
cdef object _err_pack_depth = _ext.err_pack_depth
cdef object _err_encode_str = _ext.err_encode_str
cdef object _err_too_long = _ext.err_too_long
cdef object _err_ext_code = _ext.err_ext_code
cdef object _err_ext_data = _ext.err_ext_data
cdef object _err_mutated = _ext.err_mutated
cdef object _err_unusable = _ext.err_unusable
cdef object _err_reentrant = _ext.err_reentrant
cdef object _err_buffer_full = _ext.err_buffer_full
cdef object _err_not_callable = _ext.err_not_callable
cdef object _check_limits = _ext.check_limits
cdef object _int_pos = int.__pos__

# The default decoding limits, for the C entry (_loads_c).
cdef Py_ssize_t C_D_STR = _D_STR
cdef Py_ssize_t C_D_BIN = _D_BIN
cdef Py_ssize_t C_D_ARRAY = _D_ARRAY
cdef Py_ssize_t C_D_MAP = _D_MAP
cdef Py_ssize_t C_D_EXT = _D_EXT

cdef int LIMIT_STR = _ext.LIMIT_STR
cdef int LIMIT_BIN = _ext.LIMIT_BIN
cdef int LIMIT_EXT = _ext.LIMIT_EXT
cdef int LIMIT_ARRAY = _ext.LIMIT_ARRAY
cdef int LIMIT_MAP = _ext.LIMIT_MAP

cdef enum:
    STACK_BUF = 2048           # dumps: bytes packed on the C stack before moving to a bytes
    PACKER_INITIAL = 4096      # Packer: first heap buffer
    PACKER_KEEP_MAX = 1 << 20  # Packer: a buffer grown past this is freed after the call
    SMALL_FRAMES = 32          # decoder: open containers held on the C stack
    UNPACKER_INITIAL = 4096
    KEY_CACHE_SIZE = 1024      # map-key cache slots (power of two)
    KEY_CACHE_MAXLEN = 32      # only short ASCII keys are cached

# ============================================================================================
# Header table (scanner and truncation reports; the decoder's hot loop has its own switch)
# ============================================================================================

cdef enum:
    H_FIXED = 0      # the whole item is HDR_SIZE bytes
    H_STR = 1
    H_BIN = 2
    H_EXT = 3
    H_ARRAY = 4
    H_MAP = 5
    H_RESERVED = 6

cdef unsigned char HDR_SIZE[256]   # header bytes (whole item for H_FIXED)
cdef unsigned char HDR_KIND[256]
cdef unsigned char HDR_LENW[256]   # width of the length field after the type byte (0: fixed)
cdef uint32_t HDR_FIXED[256]       # length/count when HDR_LENW is 0


cdef void _set_hdr(int b, int size, int kind, int lenw, uint32_t fixed) noexcept:
    HDR_SIZE[b] = size
    HDR_KIND[b] = kind
    HDR_LENW[b] = lenw
    HDR_FIXED[b] = fixed


cdef void _init_tables() noexcept:
    cdef int b
    for b in range(256):
        _set_hdr(b, 1, H_FIXED, 0, 0)
    for b in range(0x80, 0x90):
        _set_hdr(b, 1, H_MAP, 0, b & 0x0F)
    for b in range(0x90, 0xA0):
        _set_hdr(b, 1, H_ARRAY, 0, b & 0x0F)
    for b in range(0xA0, 0xC0):
        _set_hdr(b, 1, H_STR, 0, b & 0x1F)
    _set_hdr(0xC1, 1, H_RESERVED, 0, 0)
    _set_hdr(0xC4, 2, H_BIN, 1, 0)
    _set_hdr(0xC5, 3, H_BIN, 2, 0)
    _set_hdr(0xC6, 5, H_BIN, 4, 0)
    _set_hdr(0xC7, 3, H_EXT, 1, 0)
    _set_hdr(0xC8, 4, H_EXT, 2, 0)
    _set_hdr(0xC9, 6, H_EXT, 4, 0)
    _set_hdr(0xCA, 5, H_FIXED, 0, 0)
    _set_hdr(0xCB, 9, H_FIXED, 0, 0)
    _set_hdr(0xCC, 2, H_FIXED, 0, 0)
    _set_hdr(0xCD, 3, H_FIXED, 0, 0)
    _set_hdr(0xCE, 5, H_FIXED, 0, 0)
    _set_hdr(0xCF, 9, H_FIXED, 0, 0)
    _set_hdr(0xD0, 2, H_FIXED, 0, 0)
    _set_hdr(0xD1, 3, H_FIXED, 0, 0)
    _set_hdr(0xD2, 5, H_FIXED, 0, 0)
    _set_hdr(0xD3, 9, H_FIXED, 0, 0)
    _set_hdr(0xD4, 2, H_EXT, 0, 1)
    _set_hdr(0xD5, 2, H_EXT, 0, 2)
    _set_hdr(0xD6, 2, H_EXT, 0, 4)
    _set_hdr(0xD7, 2, H_EXT, 0, 8)
    _set_hdr(0xD8, 2, H_EXT, 0, 16)
    _set_hdr(0xD9, 2, H_STR, 1, 0)
    _set_hdr(0xDA, 3, H_STR, 2, 0)
    _set_hdr(0xDB, 5, H_STR, 4, 0)
    _set_hdr(0xDC, 3, H_ARRAY, 2, 0)
    _set_hdr(0xDD, 5, H_ARRAY, 4, 0)
    _set_hdr(0xDE, 3, H_MAP, 2, 0)
    _set_hdr(0xDF, 5, H_MAP, 4, 0)


_init_tables()


cdef inline Py_ssize_t _hdr_len(const unsigned char* s) noexcept:
    """Length/count field of the (complete) header at *s*."""
    cdef unsigned char b = s[0]
    cdef int w = HDR_LENW[b]
    if w == 0:
        return HDR_FIXED[b]
    if w == 1:
        return s[1]
    if w == 2:
        return rr_load16(s + 1)
    return rr_load32(s + 1)


cdef Py_ssize_t _need(const unsigned char* s, const unsigned char* end) noexcept:
    """Bytes the truncated item at *s* needs, as far as its header tells (error path)."""
    cdef unsigned char b
    cdef int kind
    cdef Py_ssize_t h
    if s >= end:
        return 1
    b = s[0]
    h = HDR_SIZE[b]
    kind = HDR_KIND[b]
    if end - s < h or kind == H_FIXED or kind == H_RESERVED:
        return h
    if kind == H_MAP:
        return h + 2 * _hdr_len(s)
    return h + _hdr_len(s)


# ============================================================================================
# Packing
# ============================================================================================

ctypedef struct Writer:
    char* buf
    Py_ssize_t len
    Py_ssize_t cap
    PyObject* owner     # the bytes object buf lives in (dumps after the stack area), or NULL
    bint heap           # buf is the Packer's PyMem buffer: grow with realloc
    PyObject* default_  # borrowed; NULL when no hook


cdef int _grow(Writer* w, Py_ssize_t extra) except -1:
    cdef Py_ssize_t need = w.len + extra
    cdef Py_ssize_t cap = w.cap * 2
    cdef char* p
    cdef object o
    if need < w.len:
        raise MemoryError()
    if cap < need:
        cap = need
    if w.heap:
        p = <char*>PyMem_Realloc(w.buf, cap)
        if p == NULL:
            raise MemoryError()
        w.buf = p
    elif w.owner == NULL:
        o = PyBytes_FromStringAndSize(NULL, cap)
        memcpy(PyBytes_AS_STRING(o), w.buf, w.len)
        Py_INCREF(o)
        w.owner = <PyObject*>o
        w.buf = r_bytes_data(w.owner)
    else:
        # Sole owner of a fresh bytes object, so resizing it in place is allowed.
        _PyBytes_Resize(&w.owner, cap)
        w.buf = r_bytes_data(w.owner)
    w.cap = cap
    return 0


cdef inline int _reserve(Writer* w, Py_ssize_t n) except -1:
    if w.cap - w.len < n:
        return _grow(w, n)
    return 0


cdef inline int _put_uint(Writer* w, unsigned long long v) except -1:
    cdef char* p
    _reserve(w, 9)
    p = w.buf + w.len
    if v < 0x80:
        p[0] = <char>v
        w.len += 1
    elif v < 0x100:
        p[0] = <char>0xCC
        p[1] = <char>v
        w.len += 2
    elif v < 0x10000:
        rr_store_b16(p, 0xCD, <uint16_t>v)
        w.len += 3
    elif (v >> 32) == 0:
        rr_store_b32(p, 0xCE, <uint32_t>v)
        w.len += 5
    else:
        rr_store_b64(p, 0xCF, <uint64_t>v)
        w.len += 9
    return 0


cdef inline int _put_negint(Writer* w, long long v) except -1:
    cdef char* p
    _reserve(w, 9)
    p = w.buf + w.len
    if v >= -0x20:
        p[0] = <char>(v & 0xFF)
        w.len += 1
    elif v >= -0x80:
        p[0] = <char>0xD0
        p[1] = <char>(v & 0xFF)
        w.len += 2
    elif v >= -0x8000:
        rr_store_b16(p, 0xD1, <uint16_t>v)
        w.len += 3
    elif v >= -0x80000000LL:
        rr_store_b32(p, 0xD2, <uint32_t>v)
        w.len += 5
    else:
        rr_store_b64(p, 0xD3, <uint64_t>v)
        w.len += 9
    return 0


cdef inline int _put_len(Writer* w, Py_ssize_t n, unsigned char fix, int fixmax,
                         unsigned char b8, unsigned char b16, unsigned char b32,
                         str what) except -1:
    """A str/bin/array/map header: fix form below fixmax, else 8/16/32-bit (b8=0: none)."""
    cdef char* p
    _reserve(w, 5)
    p = w.buf + w.len
    if n < fixmax:
        p[0] = <char>(fix | n)
        w.len += 1
    elif b8 and n < 0x100:
        p[0] = <char>b8
        p[1] = <char>n
        w.len += 2
    elif n < 0x10000:
        rr_store_b16(p, b16, <uint16_t>n)
        w.len += 3
    elif (n >> 32) == 0:
        rr_store_b32(p, b32, <uint32_t>n)
        w.len += 5
    else:
        raise _err_too_long(what, n)
    return 0


cdef inline int _put_raw(Writer* w, const char* s, Py_ssize_t n) except -1:
    _reserve(w, n)
    memcpy(w.buf + w.len, s, n)
    w.len += n
    return 0


cdef int _pack_int(Writer* w, object o) except -1:
    cdef int overflow = 0
    cdef long long v
    cdef unsigned long long u
    if rr_long_small(o, &v):
        if v >= 0:
            return _put_uint(w, <unsigned long long>v)
        return _put_negint(w, v)
    v = PyLong_AsLongLongAndOverflow(o, &overflow)
    if overflow == 0:
        if v >= 0:
            return _put_uint(w, <unsigned long long>v)
        return _put_negint(w, v)
    if overflow > 0:
        u = r_as_ull(o)
        if not (u == <unsigned long long>-1 and PyErr_Occurred() != NULL):
            return _put_uint(w, u)
        PyErr_Clear()
    if not PyLong_CheckExact(o):
        o = _int_pos(o)  # a subclass's own methods must not run (same rule as the pure twin)
    return _pack_ext(w, EXT_BIGINT, _encode_bigint(o))


cdef int _raise_encode_error(object o) except -1:
    # Error path: redo the encoding in Python to get the UnicodeEncodeError as an object.
    PyErr_Clear()
    try:
        str.encode(o, "utf-8")
    except UnicodeEncodeError as exc:
        raise _err_encode_str(exc) from None
    raise AssertionError("str failed to encode only once")  # unreachable


cdef inline int _pack_str(Writer* w, object o) except -1:
    cdef Py_ssize_t n
    cdef const char* s = r_utf8(o, &n)
    cdef char* p
    if s == NULL:
        return _raise_encode_error(o)
    if n < 32:
        _reserve(w, n + 1)
        p = w.buf + w.len
        p[0] = <char>(0xA0 | n)
        memcpy(p + 1, s, n)
        w.len += n + 1
        return 0
    _put_len(w, n, 0xA0, 32, 0xD9, 0xDA, 0xDB, "str")
    return _put_raw(w, s, n)


cdef inline int _pack_bin(Writer* w, const char* s, Py_ssize_t n) except -1:
    _put_len(w, n, 0, 0, 0xC4, 0xC5, 0xC6, "bin")
    return _put_raw(w, s, n)


cdef int _pack_ext(Writer* w, int code, object data) except -1:
    cdef const char* s = PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef char* p
    _reserve(w, 6)
    p = w.buf + w.len
    if n == 1 or n == 2 or n == 4 or n == 8 or n == 16:
        p[0] = <char>(0xD4 if n == 1 else 0xD5 if n == 2 else 0xD6 if n == 4 else
                      0xD7 if n == 8 else 0xD8)
        p[1] = <char>code
        w.len += 2
    elif n < 0x100:
        p[0] = <char>0xC7
        p[1] = <char>n
        p[2] = <char>code
        w.len += 3
    elif n < 0x10000:
        rr_store_b16(p, 0xC8, <uint16_t>n)
        p[3] = <char>code
        w.len += 4
    elif (n >> 32) == 0:
        rr_store_b32(p, 0xC9, <uint32_t>n)
        p[5] = <char>code
        w.len += 6
    else:
        raise _err_too_long("ext", n)
    return _put_raw(w, s, n)


cdef int _pack(Writer* w, object o, Py_ssize_t depth) except -1:
    """Append *o*; *depth* counts the containers enclosing it."""
    cdef char* p
    if PyUnicode_CheckExact(o):
        return _pack_str(w, o)
    if PyLong_CheckExact(o):
        return _pack_int(w, o)
    if o is None or o is True or o is False:
        _reserve(w, 1)
        w.buf[w.len] = <char>(0xC0 if o is None else 0xC3 if o is True else 0xC2)
        w.len += 1
        return 0
    if PyFloat_CheckExact(o):
        _reserve(w, 9)
        rr_store_double(w.buf + w.len, PyFloat_AS_DOUBLE(o))
        w.len += 9
        return 0
    if PyDict_CheckExact(o):
        return _pack_dict(w, <dict>o, depth)
    if PyList_CheckExact(o):
        return _pack_list(w, <list>o, depth)
    if PyTuple_CheckExact(o):
        return _pack_tuple(w, <tuple>o, depth)
    if PyBytes_CheckExact(o):
        return _pack_bin(w, PyBytes_AS_STRING(o), PyBytes_GET_SIZE(o))
    return _pack_other(w, o, depth)


cdef int _pack_dict(Writer* w, dict o, Py_ssize_t depth) except -1:
    cdef Py_ssize_t n = len(o)
    cdef Py_ssize_t pos = 0, done = 0
    cdef PyObject* k
    cdef PyObject* v
    cdef object key, value
    if depth >= PACK_DEPTH:
        raise _err_pack_depth(PACK_DEPTH)
    _put_len(w, n, 0x80, 16, 0, 0xDE, 0xDF, "map")
    depth += 1
    while PyDict_Next(o, &pos, &k, &v):
        if done == n:
            raise _err_mutated("dict")
        # Own references: a default hook may remove them from the dict while we pack them.
        key = <object>k
        value = <object>v
        if PyUnicode_CheckExact(key):  # the usual key: skip the dispatcher
            _pack_str(w, key)
        else:
            _pack(w, key, depth)
        _pack(w, value, depth)
        done += 1
    if done != n or len(o) != n:
        raise _err_mutated("dict")
    return 0


cdef int _pack_list(Writer* w, list o, Py_ssize_t depth) except -1:
    cdef Py_ssize_t n = PyList_GET_SIZE(o), i
    cdef object item
    if depth >= PACK_DEPTH:
        raise _err_pack_depth(PACK_DEPTH)
    _put_len(w, n, 0x90, 16, 0, 0xDC, 0xDD, "array")
    depth += 1
    for i in range(n):
        # The header promised n elements; a default hook may resize the list meanwhile.
        if i >= PyList_GET_SIZE(o):
            raise _err_mutated("list")
        item = <object>PyList_GET_ITEM(o, i)
        _pack(w, item, depth)
    if PyList_GET_SIZE(o) != n:
        raise _err_mutated("list")
    return 0


cdef int _pack_tuple(Writer* w, tuple o, Py_ssize_t depth) except -1:
    # Borrowed is fine: the tuple is immutable and owned by our caller.
    return _pack_items(w, PySequence_Fast_ITEMS(o), PyTuple_GET_SIZE(o), depth)


cdef int _pack_items(Writer* w, PyObject** items, Py_ssize_t n, Py_ssize_t depth) except -1:
    """An array of the *n* objects at *items* (a tuple's storage, or the C entry's)."""
    cdef Py_ssize_t i
    if depth >= PACK_DEPTH:
        raise _err_pack_depth(PACK_DEPTH)
    _put_len(w, n, 0x90, 16, 0, 0xDC, 0xDD, "array")
    depth += 1
    for i in range(n):
        _pack(w, <object>items[i], depth)
    return 0


cdef int _pack_other(Writer* w, object o, Py_ssize_t depth) except -1:
    """Subclasses of the builtins, bytearray/memoryview, ExtType, datetime, then default()."""
    cdef Py_buffer view
    cdef object code, data
    # Same order as the pure twin; subclasses are packed from their builtin storage.
    if isinstance(o, int):
        return _pack_int(w, o)
    if isinstance(o, float):
        _reserve(w, 9)
        rr_store_double(w.buf + w.len, PyFloat_AS_DOUBLE(o))
        w.len += 9
        return 0
    if isinstance(o, str):
        return _pack_str(w, o)
    if isinstance(o, bytes):
        return _pack_bin(w, PyBytes_AS_STRING(o), PyBytes_GET_SIZE(o))
    if isinstance(o, bytearray):
        return _pack_bin(w, PyByteArray_AS_STRING(o), PyByteArray_GET_SIZE(o))
    if isinstance(o, memoryview):
        try:
            PyObject_GetBuffer(o, &view, PyBUF_SIMPLE)
        except BufferError:
            data = o.tobytes()  # not C-contiguous: logical (C) order, like bytes(view)
            return _pack_bin(w, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        try:
            return _pack_bin(w, <const char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
    if isinstance(o, _ExtType):
        code = o.code
        data = o.data
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise _err_ext_data(data)
        if not isinstance(code, int):
            raise TypeError(f"ExtType code must be int, not {type(code).__name__}")
        if not -128 <= code <= 127:
            raise _err_ext_code(code)
        if not isinstance(data, bytes):
            data = bytes(data)
        return _pack_ext(w, code, data)
    if isinstance(o, list):
        return _pack_list(w, <list>o, depth)
    if isinstance(o, tuple):
        return _pack_tuple(w, <tuple>o, depth)
    if isinstance(o, dict):
        # A mapping subclass decides its own order (OrderedDict.move_to_end etc.).
        return _pack_dict(w, dict(o.items()), depth)
    if PyDateTime_Check(o):
        return _pack_ext(w, EXT_TIMESTAMP, _encode_timestamp(o))
    if w.default_ != NULL:
        # A default() result is one level deeper, so `default=lambda o: o` ends in a depth
        # error instead of looping forever.
        if depth >= PACK_DEPTH:
            raise _err_pack_depth(PACK_DEPTH)
        return _pack(w, (<object>w.default_)(o), depth + 1)
    raise _err_unsupported(o)


cdef object _dumps(object obj, object default):
    return _dumps_some(obj, NULL, 0, default)


cdef object _dumps_some(object obj, PyObject** items, Py_ssize_t n, object default):
    """The bytes of *obj*, or with *items* of an array of the *n* objects there."""
    cdef char stack[STACK_BUF]
    cdef Writer w
    cdef object result
    w.buf = stack
    w.len = 0
    w.cap = STACK_BUF
    w.owner = NULL
    w.heap = False
    w.default_ = NULL if default is None else <PyObject*>default
    try:
        if items == NULL:
            _pack(&w, obj, 0)
        else:
            _pack_items(&w, items, n, 0)
        if RAPIDRPC_DEBUG and w.len > w.cap:
            raise AssertionError("serializer: packed past the end of the buffer")
        if w.owner == NULL:
            return PyBytes_FromStringAndSize(stack, w.len)
        _PyBytes_Resize(&w.owner, w.len)
        result = <object>w.owner
        return result
    finally:
        Py_XDECREF(w.owner)


def dumps(obj, *, default=None):
    """Serialize *obj* to MessagePack bytes.

    *default* is called for objects of unsupported types; its result is packed instead.
    Raises TypeError for unsupported types, SerializationError for values MessagePack cannot
    hold (lone surrogates, nesting deeper than DEFAULT_MAX_DEPTH).
    """
    if default is not None and not callable(default):
        raise _err_not_callable("default", default)
    return _dumps(obj, default)


@cython.final
cdef class Packer:
    """Packer(*, default=None)
--

A reusable packer: ``Packer(default=...).pack(obj) -> bytes``.

    Keeps one internal buffer between calls.  A default hook that raises mid-pack leaves the
    packer usable; a hook that packs with the same Packer gets a fresh buffer.
    """

    cdef char* _buf
    cdef Py_ssize_t _cap
    cdef object _default
    cdef bint _busy

    def __cinit__(self):
        self._buf = NULL
        self._cap = 0
        self._busy = False

    def __init__(self, *, default=None):
        if default is not None and not callable(default):
            raise _err_not_callable("default", default)
        self._default = default

    def __dealloc__(self):
        PyMem_Free(self._buf)

    def pack(self, obj):
        """Serialize *obj*, like :func:`dumps` with this packer's default hook."""
        cdef Writer w
        if self._busy:
            return _dumps(obj, self._default)
        if self._buf == NULL:
            self._buf = <char*>PyMem_Malloc(PACKER_INITIAL)
            if self._buf == NULL:
                raise MemoryError()
            self._cap = PACKER_INITIAL
        w.buf = self._buf
        w.len = 0
        w.cap = self._cap
        w.owner = NULL
        w.heap = True
        w.default_ = NULL if self._default is None else <PyObject*>self._default
        self._busy = True
        try:
            _pack(&w, obj, 0)
            return PyBytes_FromStringAndSize(w.buf, w.len)
        finally:
            self._buf = w.buf
            self._cap = w.cap
            self._busy = False
            if self._cap > PACKER_KEEP_MAX:
                PyMem_Free(self._buf)
                self._buf = NULL
                self._cap = 0


# ============================================================================================
# Decoding
# ============================================================================================

ctypedef struct Dec:
    const unsigned char* buf   # offset 0 of the input
    const unsigned char* p     # next byte
    const unsigned char* end
    Py_ssize_t base            # added to offsets in messages (stream position of buf)
    Py_ssize_t max_depth
    Py_ssize_t max_str
    Py_ssize_t max_bin
    Py_ssize_t max_array
    Py_ssize_t max_map
    Py_ssize_t max_ext
    PyObject* ext_hook         # borrowed, or NULL
    bint truncated             # the pending error is "input ends inside a value"

cdef enum:
    C_ARRAY = 1   # container header kinds seen by the decoder loop (0: not a container)
    C_MAP = 2

cdef enum:
    K_LIST = 0
    K_TUPLE = 1   # an array inside a map key: built as a list, turned into a tuple when full
    K_MAP = 2

ctypedef struct Frame:
    PyObject* obj       # owned: list (its size = elements so far) or dict
    PyObject* key       # owned: map key waiting for its value, or NULL
    Py_ssize_t n        # elements (arrays) or entries (maps) announced
    Py_ssize_t i        # entries stored (maps)
    Py_ssize_t off      # offset of the container header
    Py_ssize_t key_off  # offset of the pending key
    int kind

ctypedef struct Stack:
    Frame* frames
    Py_ssize_t top      # innermost open frame; -1 when none
    Py_ssize_t cap
    PyObject* item      # owned value in flight during a step that can fail, else NULL
    Frame small[SMALL_FRAMES]


cdef int _stack_grow(Stack* st) except -1:
    cdef Py_ssize_t cap = st.cap * 2
    cdef Frame* frames = <Frame*>PyMem_Malloc(cap * sizeof(Frame))
    if frames == NULL:
        raise MemoryError()
    memcpy(frames, st.frames, st.cap * sizeof(Frame))
    if st.frames != st.small:
        PyMem_Free(st.frames)
    st.frames = frames
    st.cap = cap
    return 0


cdef void _stack_clear(Stack* st) noexcept:
    cdef Py_ssize_t i
    for i in range(st.top + 1):
        r_xdecref(st.frames[i].obj)
        r_xdecref(st.frames[i].key)
    st.top = -1
    r_xdecref(st.item)
    st.item = NULL
    if st.frames != st.small:
        PyMem_Free(st.frames)
        st.frames = st.small


cdef int _raise_truncated(Dec* d, const unsigned char* start) except -1:
    d.truncated = True
    raise _err_truncated(_need(start, d.end), d.end - start, d.base + (start - d.buf))


cdef int _raise_limit(Dec* d, int kind, Py_ssize_t n, Py_ssize_t limit,
                      const unsigned char* start) except -1:
    raise _err_limit(kind, n, limit, d.base + (start - d.buf))


cdef PyObject* _make_str_utf8(Dec* d, const unsigned char* s, Py_ssize_t n) except NULL:
    cdef object o
    try:
        o = PyUnicode_DecodeUTF8(<const char*>s, n, "strict")
    except UnicodeDecodeError as exc:
        raise _err_utf8(exc, d.base + (s - d.buf)) from None
    Py_INCREF(o)
    return <PyObject*>o


cdef inline PyObject* _str(Dec* d, const unsigned char* start, const unsigned char* s,
                           Py_ssize_t n) except NULL:
    """New reference to the str of *n* bytes at *s* (header at *start*)."""
    cdef PyObject* o
    if n > d.max_str:
        _raise_limit(d, LIMIT_STR, n, d.max_str, start)
    if n > d.end - s:
        _raise_truncated(d, start)
    if rr_is_ascii(s, n):
        # ASCII: the str's storage is exactly these bytes
        o = r_str_new(n, 127)
        memcpy(r_str_data(o), s, n)
        return o
    return _make_str_utf8(d, s, n)


cdef inline PyObject* _bin(Dec* d, const unsigned char* start, const unsigned char* s,
                           Py_ssize_t n) except NULL:
    if n > d.max_bin:
        _raise_limit(d, LIMIT_BIN, n, d.max_bin, start)
    if n > d.end - s:
        _raise_truncated(d, start)
    return r_bytes(<const char*>s, n)


cdef PyObject* _ext_value(Dec* d, const unsigned char* start, const unsigned char* s,
                    Py_ssize_t n) except NULL:
    """The ext value whose payload of *n* bytes is at *s* (its type byte is s[-1])."""
    cdef int code = <signed char>(s - 1)[0]
    cdef object data, value
    cdef Py_ssize_t off = d.base + (start - d.buf)
    if n > d.max_ext:
        _raise_limit(d, LIMIT_EXT, n, d.max_ext, start)
    if n > d.end - s:
        _raise_truncated(d, start)
    data = PyBytes_FromStringAndSize(<const char*>s, n)
    if code == EXT_TIMESTAMP:
        value = _decode_timestamp(data, off)
    elif code == EXT_BIGINT:
        value = _decode_bigint(data, off)
    elif d.ext_hook != NULL:
        value = (<object>d.ext_hook)(code, data)
    else:
        value = _ExtType(code, data)
    Py_INCREF(value)
    return <PyObject*>value


# Map keys repeat across messages ("id", "name", ...): a small direct-mapped cache of short
# ASCII key strings saves the allocation and, since each cached str keeps its hash, the
# hashing on dict insert.  Entries are immutable str objects, so sharing them is invisible;
# the GIL serializes access (the module is not free-threading compatible).
cdef PyObject* KEY_CACHE[KEY_CACHE_SIZE]


cdef inline PyObject* _key_str(Dec* d, const unsigned char* start, const unsigned char* s,
                               Py_ssize_t n) except NULL:
    """Like _str() for a map key: served from KEY_CACHE when possible."""
    cdef size_t slot
    cdef PyObject* o
    if n > KEY_CACHE_MAXLEN or n > d.end - s or not rr_is_ascii(s, n):
        return _str(d, start, s, n)
    if n > d.max_str:
        _raise_limit(d, LIMIT_STR, n, d.max_str, start)
    slot = rr_key_slot(s, n, KEY_CACHE_SIZE - 1)
    o = KEY_CACHE[slot]
    if o != NULL and r_str_len(o) == n and memcmp(r_str_data(o), s, n) == 0:
        r_incref(o)
        return o
    o = r_str_new(n, 127)
    memcpy(r_str_data(o), s, n)
    r_hash(o)  # cache the hash inside the str; cannot fail for str
    r_xdecref(KEY_CACHE[slot])
    r_incref(o)
    KEY_CACHE[slot] = o
    return o


cdef PyObject* _decode_value(Dec* d, Stack* st) except NULL:
    """New reference to the value at d.p; advances d.p past it.

    Open containers live in *st* (the caller frees them on error), so this loop never
    recurses whatever the nesting.  Check order per item, shared with the pure twin:
    header complete, 0xc1, depth, length limit, remaining bytes, content.
    """
    cdef const unsigned char* p = d.p
    cdef const unsigned char* end = d.end
    cdef const unsigned char* start
    cdef unsigned int b
    cdef Py_ssize_t n = 0
    cdef int ctype     # C_ARRAY / C_MAP when the item is a container header, else 0
    cdef PyObject* item = NULL
    cdef PyObject* o
    cdef Frame* f
    cdef bint tup
    while True:
        start = p
        if p >= end:
            _raise_truncated(d, start)
        b = p[0]
        p += 1
        ctype = 0
        # -- scalars and headers ----------------------------------------------------------
        if b < 0x80:
            item = r_long(b)
        elif b >= 0xE0:
            item = r_long(<long>b - 0x100)
        elif b >= 0xA0 and b < 0xC0:
            n = b & 0x1F
            if st.top >= 0 and st.frames[st.top].kind == K_MAP and st.frames[st.top].key == NULL:
                item = _key_str(d, start, p, n)
            else:
                item = _str(d, start, p, n)
            p += n
        elif b < 0x90:
            n = b & 0x0F
            ctype = C_MAP
        elif b < 0xA0:
            n = b & 0x0F
            ctype = C_ARRAY
        elif b == 0xC0:
            item = r_none
            r_incref(item)
        elif b == 0xC2:
            item = r_false
            r_incref(item)
        elif b == 0xC3:
            item = r_true
            r_incref(item)
        elif b == 0xCB:
            if end - p < 8:
                _raise_truncated(d, start)
            item = r_float(rr_load_double(p))
            p += 8
        elif b == 0xCC:
            if end - p < 1:
                _raise_truncated(d, start)
            item = r_long(p[0])
            p += 1
        elif b == 0xCD:
            if end - p < 2:
                _raise_truncated(d, start)
            item = r_long(rr_load16(p))
            p += 2
        elif b == 0xCE:
            if end - p < 4:
                _raise_truncated(d, start)
            item = r_longlong(rr_load32(p))
            p += 4
        elif b == 0xCF:
            if end - p < 8:
                _raise_truncated(d, start)
            item = r_ulonglong(rr_load64(p))
            p += 8
        elif b == 0xD0:
            if end - p < 1:
                _raise_truncated(d, start)
            item = r_long(<int8_t>p[0])
            p += 1
        elif b == 0xD1:
            if end - p < 2:
                _raise_truncated(d, start)
            item = r_long(<int16_t>rr_load16(p))
            p += 2
        elif b == 0xD2:
            if end - p < 4:
                _raise_truncated(d, start)
            item = r_longlong(<int32_t>rr_load32(p))
            p += 4
        elif b == 0xD3:
            if end - p < 8:
                _raise_truncated(d, start)
            item = r_longlong(<int64_t>rr_load64(p))
            p += 8
        elif b == 0xCA:
            if end - p < 4:
                _raise_truncated(d, start)
            item = r_float(rr_load_float(p))
            p += 4
        elif b == 0xD9:
            if end - p < 1:
                _raise_truncated(d, start)
            n = p[0]
            p += 1
            item = _str(d, start, p, n)
            p += n
        elif b == 0xDA:
            if end - p < 2:
                _raise_truncated(d, start)
            n = rr_load16(p)
            p += 2
            item = _str(d, start, p, n)
            p += n
        elif b == 0xDB:
            if end - p < 4:
                _raise_truncated(d, start)
            n = rr_load32(p)
            p += 4
            item = _str(d, start, p, n)
            p += n
        elif b == 0xC4:
            if end - p < 1:
                _raise_truncated(d, start)
            n = p[0]
            p += 1
            item = _bin(d, start, p, n)
            p += n
        elif b == 0xC5:
            if end - p < 2:
                _raise_truncated(d, start)
            n = rr_load16(p)
            p += 2
            item = _bin(d, start, p, n)
            p += n
        elif b == 0xC6:
            if end - p < 4:
                _raise_truncated(d, start)
            n = rr_load32(p)
            p += 4
            item = _bin(d, start, p, n)
            p += n
        elif b >= 0xD4 and b <= 0xD8:
            if end - p < 1:
                _raise_truncated(d, start)
            n = HDR_FIXED[b]
            p += 1
            item = _ext_value(d, start, p, n)
            p += n
        elif b == 0xC7:
            if end - p < 2:
                _raise_truncated(d, start)
            n = p[0]
            p += 2
            item = _ext_value(d, start, p, n)
            p += n
        elif b == 0xC8:
            if end - p < 3:
                _raise_truncated(d, start)
            n = rr_load16(p)
            p += 3
            item = _ext_value(d, start, p, n)
            p += n
        elif b == 0xC9:
            if end - p < 5:
                _raise_truncated(d, start)
            n = rr_load32(p)
            p += 5
            item = _ext_value(d, start, p, n)
            p += n
        elif b == 0xDC or b == 0xDE:
            if end - p < 2:
                _raise_truncated(d, start)
            n = rr_load16(p)
            p += 2
            ctype = C_ARRAY if b == 0xDC else C_MAP
        elif b == 0xDD or b == 0xDF:
            if end - p < 4:
                _raise_truncated(d, start)
            n = rr_load32(p)
            p += 4
            ctype = C_ARRAY if b == 0xDD else C_MAP
        else:
            raise _err_reserved(d.base + (start - d.buf))

        if ctype:
            # -- a container header: checks, then an empty value or a new open frame ------
            if st.top + 1 >= d.max_depth:
                raise _err_depth(d.max_depth, d.base + (start - d.buf))
            if ctype == C_ARRAY:
                if n > d.max_array:
                    _raise_limit(d, LIMIT_ARRAY, n, d.max_array, start)
                # every element takes at least one byte: never allocate beyond the input
                if n > end - p:
                    _raise_truncated(d, start)
                # arrays inside a map key become tuples (hashable)
                tup = st.top >= 0 and (
                    st.frames[st.top].kind == K_TUPLE
                    or (st.frames[st.top].kind == K_MAP and st.frames[st.top].key == NULL))
                if n == 0:
                    item = r_tuple_new(0) if tup else r_list(0)
                else:
                    o = r_list(n)
                    st.item = o
                    if st.top + 1 == st.cap:
                        _stack_grow(st)
                    st.item = NULL
                    # the list grows as elements arrive, so it is valid at every moment
                    r_set_size(o, 0)
                    st.top += 1
                    f = &st.frames[st.top]
                    f.obj = o
                    f.key = NULL
                    f.n = n
                    f.i = 0
                    f.off = start - d.buf
                    f.kind = K_TUPLE if tup else K_LIST
                    continue
            else:
                if n > d.max_map:
                    _raise_limit(d, LIMIT_MAP, n, d.max_map, start)
                if 2 * n > end - p:
                    _raise_truncated(d, start)
                o = r_dict(n)
                if n == 0:
                    item = o
                else:
                    st.item = o
                    if st.top + 1 == st.cap:
                        _stack_grow(st)
                    st.item = NULL
                    st.top += 1
                    f = &st.frames[st.top]
                    f.obj = o
                    f.key = NULL
                    f.n = n
                    f.i = 0
                    f.off = start - d.buf
                    f.kind = K_MAP
                    continue

        # -- attach the finished value to the innermost open container -------------------
        while st.top >= 0:
            f = &st.frames[st.top]
            if f.kind != K_MAP:
                r_list_set(f.obj, f.i, item)  # steals item
                f.i += 1
                r_set_size(f.obj, f.i)
                if f.i < f.n:
                    break
                if f.kind == K_LIST:
                    item = f.obj
                else:
                    item = r_list_as_tuple(f.obj)  # on failure the frame still owns obj
                    r_decref(f.obj)
                start = d.buf + f.off
                st.top -= 1
            elif f.key == NULL:
                f.key = item
                f.key_off = start - d.buf
                break
            else:
                st.item = item
                if r_dict_set(f.obj, f.key, item) < 0:
                    if PyErr_ExceptionMatches(TypeError):
                        PyErr_Clear()
                        raise _err_unhashable_key(<object>f.key, d.base + f.key_off)
                    return NULL
                st.item = NULL
                r_decref(item)
                f.i += 1
                if r_dict_size(f.obj) != f.i:
                    raise _err_duplicate_key(<object>f.key, d.base + f.key_off)
                r_decref(f.key)
                f.key = NULL
                if f.i < f.n:
                    break
                item = f.obj
                start = d.buf + f.off
                st.top -= 1
        else:
            d.p = p
            return item


cdef object _decode(Dec* d):
    """Decode one value at d.p (new reference); frees every open container on error."""
    cdef Stack st
    cdef PyObject* r
    cdef object result
    st.frames = st.small
    st.top = -1
    st.cap = SMALL_FRAMES
    st.item = NULL
    try:
        r = _decode_value(d, &st)
    finally:
        _stack_clear(&st)
    if RAPIDRPC_DEBUG and (d.p > d.end or st.item != NULL):
        raise AssertionError("serializer: decoder overran its input or left a value in flight")
    result = <object>r
    r_decref(r)
    return result


cdef object _as_bytes(object data):
    """The raw bytes of a buffer that cannot be read in place (copied in C order)."""
    with memoryview(data) as view:
        return view.tobytes()


cdef int _check_hook(object hook) except -1:
    if hook is not None and not callable(hook):
        raise _err_not_callable("ext_hook", hook)
    return 0


cdef object _decode_all(Dec* d):
    """The one value that fills d's input (SerializationError if bytes trail it)."""
    obj = _decode(d)
    if d.p != d.end:
        raise _err_trailing(d.end - d.p, d.p - d.buf)
    return obj


cdef object _loads_c(const unsigned char* buf, Py_ssize_t size, Py_ssize_t max_depth):
    """``loads(<size bytes at buf>, max_depth=max_depth)``, the C entry (SerializerAPI)."""
    cdef Dec d
    _dec_defaults(&d, buf, size, max_depth)
    return _decode_all(&d)


cdef object _decode_one_c(const unsigned char* buf, Py_ssize_t size, Py_ssize_t* pos,
                          Py_ssize_t max_depth):
    """The value at offset ``pos[0]`` of the *size* bytes at *buf*, decoded as _loads_c
    does but with bytes allowed after it; ``pos[0]`` moves past it (the C entry)."""
    cdef Dec d
    _dec_defaults(&d, buf, size, max_depth)
    d.p = buf + pos[0]
    obj = _decode(&d)
    pos[0] = d.p - buf
    return obj


cdef void _dec_defaults(Dec* d, const unsigned char* buf, Py_ssize_t size,
                        Py_ssize_t max_depth) noexcept:
    """Set *d* up to decode the *size* bytes at *buf* with loads' default limits."""
    d.buf = buf
    d.p = buf
    d.end = buf + size
    d.base = 0
    d.max_depth = max_depth
    d.max_str = C_D_STR
    d.max_bin = C_D_BIN
    d.max_array = C_D_ARRAY
    d.max_map = C_D_MAP
    d.max_ext = C_D_EXT
    d.ext_hook = NULL
    d.truncated = False


cdef object _dumps_c(object obj):
    """``dumps(obj)``, the C entry (SerializerAPI)."""
    return _dumps_some(obj, NULL, 0, None)


cdef object _dumps_array_c(PyObject** items, Py_ssize_t n):
    """``dumps(tuple(items[:n]))`` without the tuple, the C entry (SerializerAPI)."""
    return _dumps_some(None, items, n, None)


def loads(data, *, ext_hook=None, Py_ssize_t max_depth=_D_DEPTH,
          Py_ssize_t max_str_len=_D_STR, Py_ssize_t max_bin_len=_D_BIN,
          Py_ssize_t max_array_len=_D_ARRAY, Py_ssize_t max_map_len=_D_MAP,
          Py_ssize_t max_ext_len=_D_EXT):
    """Decode exactly one MessagePack value from *data* (bytes or any buffer).

    Raises SerializationError (a ValueError) naming what is wrong and at which offset for
    malformed input, trailing bytes, or a declared size over one of the ``max_*`` limits.
    """
    cdef Dec d
    cdef Py_buffer view
    cdef bint have_view = False
    cdef Py_ssize_t size
    cdef object obj
    _check_hook(ext_hook)
    if (max_depth | max_str_len | max_bin_len | max_array_len | max_map_len | max_ext_len) < 0:
        _check_limits(max_depth=max_depth, max_str_len=max_str_len, max_bin_len=max_bin_len,
                      max_array_len=max_array_len, max_map_len=max_map_len,
                      max_ext_len=max_ext_len)
    if not PyBytes_CheckExact(data):
        try:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            have_view = True
        except (BufferError, ValueError):
            data = _as_bytes(data)
    if have_view:
        d.buf = <const unsigned char*>view.buf
        size = view.len
    else:
        d.buf = <const unsigned char*>PyBytes_AS_STRING(data)
        size = PyBytes_GET_SIZE(data)
    d.p = d.buf
    d.end = d.buf + size
    d.base = 0
    d.max_depth = max_depth
    d.max_str = max_str_len
    d.max_bin = max_bin_len
    d.max_array = max_array_len
    d.max_map = max_map_len
    d.max_ext = max_ext_len
    d.ext_hook = NULL if ext_hook is None else <PyObject*>ext_hook
    d.truncated = False
    try:
        return _decode_all(&d)
    finally:
        if have_view:
            PyBuffer_Release(&view)


cdef SerializerAPI _api
_api.dumps = _dumps_c
_api.dumps_array = _dumps_array_c
_api.loads = _loads_c
_api.decode_one = _decode_one_c
_C_API = PyCapsule_New(&_api, SERIALIZER_API_NAME, NULL)


# ============================================================================================
# Streaming
# ============================================================================================

@cython.final
cdef class Unpacker:
    """Unpacker(*, ext_hook=None, max_buffer_size=_D_BUFFER, max_depth=_D_DEPTH, max_str_len=_D_STR, max_bin_len=_D_BIN, max_array_len=_D_ARRAY, max_map_len=_D_MAP, max_ext_len=_D_EXT)
--

Streaming decoder: ``feed()`` bytes in any pieces, iterate to get every whole value.

    Iteration stops when only part of a value is buffered; the part is kept for the next
    feed().  After an error the Unpacker refuses further use until :meth:`reset`.
    """

    cdef char* _buf
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _len        # bytes in _buf
    cdef Py_ssize_t _start      # first unconsumed byte
    cdef Py_ssize_t _consumed   # stream offset of _buf[0]
    cdef Py_ssize_t _scan_pos   # where the scanner resumes
    cdef Py_ssize_t _need       # don't scan again before _len reaches this
    cdef Py_ssize_t* _counts    # scanner: items still missing per open container
    cdef Py_ssize_t _ncounts
    cdef Py_ssize_t _counts_cap
    cdef bint _busy
    cdef bint _poisoned
    cdef object _ext_hook
    cdef Py_ssize_t _max_buffer_size
    cdef Py_ssize_t _max_depth
    cdef Py_ssize_t _max_str
    cdef Py_ssize_t _max_bin
    cdef Py_ssize_t _max_array
    cdef Py_ssize_t _max_map
    cdef Py_ssize_t _max_ext

    def __cinit__(self):
        self._buf = NULL
        self._counts = NULL
        self._cap = 0
        self._counts_cap = 0
        self._busy = False

    def __init__(self, *, ext_hook=None, Py_ssize_t max_buffer_size=_D_BUFFER,
                 Py_ssize_t max_depth=_D_DEPTH, Py_ssize_t max_str_len=_D_STR,
                 Py_ssize_t max_bin_len=_D_BIN, Py_ssize_t max_array_len=_D_ARRAY,
                 Py_ssize_t max_map_len=_D_MAP, Py_ssize_t max_ext_len=_D_EXT):
        _check_hook(ext_hook)
        _check_limits(max_buffer_size=max_buffer_size, max_depth=max_depth,
                      max_str_len=max_str_len, max_bin_len=max_bin_len,
                      max_array_len=max_array_len, max_map_len=max_map_len,
                      max_ext_len=max_ext_len)
        if self._busy:
            raise _err_reentrant()
        self._ext_hook = ext_hook
        self._max_buffer_size = max_buffer_size
        self._max_depth = max_depth
        self._max_str = max_str_len
        self._max_bin = max_bin_len
        self._max_array = max_array_len
        self._max_map = max_map_len
        self._max_ext = max_ext_len
        self._clear()

    def __dealloc__(self):
        PyMem_Free(self._buf)
        PyMem_Free(self._counts)

    cdef void _clear(self) noexcept:
        self._len = 0
        self._start = 0
        self._consumed = 0
        self._scan_pos = 0
        self._need = 0
        self._ncounts = 0
        self._poisoned = False
        if self._cap > PACKER_KEEP_MAX:
            PyMem_Free(self._buf)
            self._buf = NULL
            self._cap = 0

    cdef inline int _enter(self) except -1:
        if self._busy:
            raise _err_reentrant()
        if self._poisoned:
            raise _err_unusable()
        return 0

    def feed(self, data):
        """Append *data* (bytes or any buffer) to the internal buffer."""
        cdef Py_buffer view
        cdef Py_ssize_t held, cap, shift
        cdef char* p
        self._enter()
        try:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        except (BufferError, ValueError):
            data = _as_bytes(data)
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            held = self._len - self._start
            if held + view.len > self._max_buffer_size:
                self._poisoned = True
                raise _err_buffer_full(held + view.len, self._max_buffer_size)
            if self._start and self._start >= held:
                # drop the consumed prefix once it dominates (amortized O(1) per byte)
                shift = self._start
                memmove(self._buf, self._buf + shift, held)
                self._len = held
                self._start = 0
                self._consumed += shift
                self._scan_pos -= shift
                self._need = self._need - shift if self._need > shift else 0
            if self._cap - self._len < view.len:
                cap = self._cap * 2
                if cap < self._len + view.len:
                    cap = self._len + view.len
                if cap < UNPACKER_INITIAL:
                    cap = UNPACKER_INITIAL
                p = <char*>PyMem_Realloc(self._buf, cap)
                if p == NULL:
                    raise MemoryError()
                self._buf = p
                self._cap = cap
            memcpy(self._buf + self._len, view.buf, view.len)
            self._len += view.len
        finally:
            PyBuffer_Release(&view)

    def __iter__(self):
        return self

    cdef int _push_count(self, Py_ssize_t n) except -1:
        cdef Py_ssize_t cap
        cdef Py_ssize_t* p
        if self._ncounts == self._counts_cap:
            cap = self._counts_cap * 2 if self._counts_cap else 16
            p = <Py_ssize_t*>PyMem_Realloc(self._counts, cap * sizeof(Py_ssize_t))
            if p == NULL:
                raise MemoryError()
            self._counts = p
            self._counts_cap = cap
        self._counts[self._ncounts] = n
        self._ncounts += 1
        return 0

    cdef Py_ssize_t _scan(self) except -1:
        """Skip complete items of the value being scanned, without building objects.

        Returns 0 when the value ends at _scan_pos, else the buffer length at which
        scanning can make progress again.  Raises the structural errors (0xc1, depth,
        limits) the decoder would raise at the same item.
        """
        cdef const unsigned char* buf = <const unsigned char*>self._buf
        cdef Py_ssize_t pos = self._scan_pos, end = self._len, h, n, size, limit
        cdef unsigned char b
        cdef int kind
        while True:
            if pos >= end:
                self._scan_pos = pos
                return pos + 1
            b = buf[pos]
            kind = HDR_KIND[b]
            h = HDR_SIZE[b]
            if kind == H_FIXED:
                size = h
            elif kind == H_RESERVED:
                raise _err_reserved(self._consumed + pos)
            else:
                if pos + h > end:
                    self._scan_pos = pos
                    return pos + h
                n = _hdr_len(buf + pos)
                if kind >= H_ARRAY:
                    if self._ncounts >= self._max_depth:
                        raise _err_depth(self._max_depth, self._consumed + pos)
                    limit = self._max_array if kind == H_ARRAY else self._max_map
                    if n > limit:
                        raise _err_limit(LIMIT_ARRAY if kind == H_ARRAY else LIMIT_MAP, n,
                                         limit, self._consumed + pos)
                    pos += h
                    if n:
                        self._push_count(n if kind == H_ARRAY else 2 * n)
                        continue
                    size = 0
                else:
                    limit = (self._max_str if kind == H_STR else
                             self._max_bin if kind == H_BIN else self._max_ext)
                    if n > limit:
                        raise _err_limit(LIMIT_STR if kind == H_STR else
                                         LIMIT_BIN if kind == H_BIN else LIMIT_EXT, n, limit,
                                         self._consumed + pos)
                    size = h + n
            if pos + size > end:
                self._scan_pos = pos
                return pos + size
            pos += size
            # one item done: close every container it completes
            while self._ncounts:
                self._counts[self._ncounts - 1] -= 1
                if self._counts[self._ncounts - 1]:
                    break
                self._ncounts -= 1
            else:
                self._scan_pos = pos
                return 0

    cdef void _dec_init(self, Dec* d, Py_ssize_t end) noexcept:
        d.buf = <const unsigned char*>self._buf + self._start
        d.p = d.buf
        d.end = <const unsigned char*>self._buf + end
        d.base = self._consumed + self._start
        d.max_depth = self._max_depth
        d.max_str = self._max_str
        d.max_bin = self._max_bin
        d.max_array = self._max_array
        d.max_map = self._max_map
        d.max_ext = self._max_ext
        d.ext_hook = NULL if self._ext_hook is None else <PyObject*>self._ext_hook
        d.truncated = False

    def __next__(self):
        cdef Py_ssize_t need
        cdef Dec d
        cdef object obj
        self._enter()
        if self._len < self._need or self._start == self._len:
            raise StopIteration
        # While busy, feed()/next()/reset() from a hook raise instead of moving the buffer
        # under the decoder's pointers.
        self._busy = True
        try:
            try:
                need = self._scan()
            except SerializationError as scan_error:
                self._poisoned = True
                # Report the first error a full decode meets (it may sit before this
                # structural one, e.g. bad UTF-8), falling back to the scanner's own.
                self._dec_init(&d, self._len)
                try:
                    _decode(&d)
                except SerializationError as first:
                    if not d.truncated:
                        raise first from None
                raise scan_error from None
            if need:
                self._need = need
                raise StopIteration
            self._dec_init(&d, self._scan_pos)
            try:
                obj = _decode(&d)
            except BaseException:
                self._poisoned = True
                raise
            self._start = self._scan_pos
            self._need = 0
            return obj
        finally:
            self._busy = False

    def reset(self):
        """Drop all buffered bytes and clear an error: the Unpacker is as new."""
        if self._busy:
            raise _err_reentrant()
        self._clear()
