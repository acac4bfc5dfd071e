/*
 * rapidrpc frame shape, shared by the C reference echo server and client.
 *
 * The numbers come from src/rapidrpc/wire/constants.py: benchmarks/rpc/cbuild.py reads that
 * file and passes them with -D, so they are never typed twice.  Only the field offsets live
 * here (they are the layout itself); the static assert turns a layout change into a build error.
 *
 *   body_length:u32  kind:u8  flags:u8  reserved:u16  request_id:u32   (big-endian), then body
 */
#ifndef RAPIDRPC_BENCH_FRAME_H
#define RAPIDRPC_BENCH_FRAME_H

#include <stdint.h>
#include <time.h>

#if !defined(RR_HEADER_SIZE) || !defined(RR_KIND_REQUEST) || !defined(RR_KIND_RESPONSE) \
    || !defined(RR_MAX_FRAME_SIZE)
#error "build through benchmarks/rpc/cbuild.py, which passes the wire constants with -D"
#endif

#define RR_OFF_LENGTH 0
#define RR_OFF_KIND 4
#define RR_OFF_FLAGS 5
#define RR_OFF_RESERVED 6
#define RR_OFF_ID 8

_Static_assert(RR_OFF_ID + 4 == RR_HEADER_SIZE,
               "constants.HEADER_SIZE changed: update the field offsets in frame.h");

static inline uint32_t rr_get_u32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void rr_put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* Writes a request header: length, kind, zero flags and reserved bits, request id. */
static inline void rr_put_header(unsigned char *p, uint32_t length, unsigned kind, uint32_t id)
{
    rr_put_u32(p + RR_OFF_LENGTH, length);
    p[RR_OFF_KIND] = (unsigned char)kind;
    p[RR_OFF_FLAGS] = 0;
    p[RR_OFF_RESERVED] = 0;
    p[RR_OFF_RESERVED + 1] = 0;
    rr_put_u32(p + RR_OFF_ID, id);
}

static inline uint64_t rr_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#endif
