/* Small C helpers for the MessagePack serializer (cext/serializer.pyx): big-endian loads
 * and stores, an ASCII check, a small-int reader, and the map-key cache's slot hash.
 *
 * memcpy + byte swap compiles to one unaligned load/store plus bswap on every compiler we
 * build with; the pointers may be unaligned (they point into message bytes).
 */
#ifndef RAPIDRPC_SERIALIZER_ENDIAN_H
#define RAPIDRPC_SERIALIZER_ENDIAN_H

#include <stdint.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define RR_BE16(x) (x)
#define RR_BE32(x) (x)
#define RR_BE64(x) (x)
#else
#define RR_BE16(x) __builtin_bswap16(x)
#define RR_BE32(x) __builtin_bswap32(x)
#define RR_BE64(x) __builtin_bswap64(x)
#endif

static inline uint16_t rr_load16(const unsigned char *p) {
    uint16_t v; memcpy(&v, p, 2); return RR_BE16(v);
}
static inline uint32_t rr_load32(const unsigned char *p) {
    uint32_t v; memcpy(&v, p, 4); return RR_BE32(v);
}
static inline uint64_t rr_load64(const unsigned char *p) {
    uint64_t v; memcpy(&v, p, 8); return RR_BE64(v);
}
static inline double rr_load_double(const unsigned char *p) {
    uint64_t v = rr_load64(p); double d; memcpy(&d, &v, 8); return d;
}
static inline double rr_load_float(const unsigned char *p) {
    uint32_t v = rr_load32(p); float f; memcpy(&f, &v, 4); return (double)f;
}

/* Header byte followed by a big-endian field, written in one go. */
static inline void rr_store_b16(char *p, unsigned char b, uint16_t v) {
    p[0] = (char)b; v = RR_BE16(v); memcpy(p + 1, &v, 2);
}
static inline void rr_store_b32(char *p, unsigned char b, uint32_t v) {
    p[0] = (char)b; v = RR_BE32(v); memcpy(p + 1, &v, 4);
}
static inline void rr_store_b64(char *p, unsigned char b, uint64_t v) {
    p[0] = (char)b; v = RR_BE64(v); memcpy(p + 1, &v, 8);
}
static inline void rr_store_double(char *p, double d) {
    uint64_t v; memcpy(&v, &d, 8); rr_store_b64(p, 0xcb, v);
}

/* True when the n bytes at p are all ASCII (checks 8 bytes at a time). */
static inline int rr_is_ascii(const unsigned char *p, Py_ssize_t n) {
    uint64_t acc = 0;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w; memcpy(&w, p + i, 8); acc |= w;
    }
    for (; i < n; i++) acc |= p[i];
    return (acc & UINT64_C(0x8080808080808080)) == 0;
}

/* Fast path for the ints messages are made of: stores the value of an int that fits in
 * two internal digits (|v| < 2**60 on 64-bit builds) and returns 1; returns 0 for the rest,
 * which take PyLong_AsLongLongAndOverflow. */
#if PY_VERSION_HEX >= 0x030C0000
static inline int rr_long_small(PyObject *o, long long *out) {
    if (!PyUnstable_Long_IsCompact((PyLongObject *)o)) return 0;
    *out = (long long)PyUnstable_Long_CompactValue((PyLongObject *)o);
    return 1;
}
#else
static inline int rr_long_small(PyObject *o, long long *out) {
    const digit *d = ((PyLongObject *)o)->ob_digit;
    switch (Py_SIZE(o)) {
    case 0: *out = 0; return 1;
    case 1: *out = (long long)d[0]; return 1;
    case -1: *out = -(long long)d[0]; return 1;
    case 2: *out = ((long long)d[1] << PyLong_SHIFT) | (long long)d[0]; return 1;
    case -2: *out = -(((long long)d[1] << PyLong_SHIFT) | (long long)d[0]); return 1;
    default: return 0;
    }
}
#endif

/* Slot of a short key in the decoder's map-key cache: mixes the length and the first and
 * last (up to) 8 bytes; collisions only cost a cache miss. */
static inline size_t rr_key_slot(const unsigned char *p, Py_ssize_t n, size_t mask) {
    uint64_t a = 0, b = 0;
    if (n >= 8) {
        memcpy(&a, p, 8);
        memcpy(&b, p + n - 8, 8);
    } else {
        for (Py_ssize_t i = 0; i < n; i++) a = (a << 8) | p[i];
    }
    uint64_t h = (a ^ (b * UINT64_C(0x9E3779B97F4A7C15)) ^ (uint64_t)n) * UINT64_C(0xFF51AFD7ED558CCD);
    return (size_t)(h >> 40) & mask;
}

#endif
