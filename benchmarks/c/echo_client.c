/*
 * Physical-limit reference client for benchmarks/c/echo_server.c (rapidrpc frame shape).
 *
 * One blocking TCP connection (TCP_NODELAY).  Modes:
 *   seq N SIZE          N sequential round trips of a SIZE-byte body
 *   inflight K N SIZE   N calls with K requests kept in flight (a window, like a pipelining
 *                       RPC client), replies matched by request id
 * Each run prints one JSON line: calls, seconds, calls_per_s, p50_us, p99_us, bytes_per_s
 * (body bytes echoed per second, one direction) and with -l the per-call latencies as
 * "lat_u32be_hex" (nanoseconds, u32 big-endian, hex) so a harness can merge runs.
 *
 * Usage: echo_client -p PORT [-H HOST] [-c CPU] [-T TIMEOUT_S] [-l] (-i | MODE ARGS...)
 *   -i reads runs from stdin, one per line ("seq 1000 16", "inflight 64 4096 16", "quit"),
 *   on the same connection, and answers each with one JSON line.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "frame.h"

#define MAX_CALLS 10000000u
#define MAX_INFLIGHT 65536u

static int sock = -1;
static uint32_t next_id = 1;
static int emit_latencies = 0;
static char error_text[256];

/* Records what went wrong (with errno's text when errno is set) for the JSON error line. */
static int fail(const char *what)
{
    if (errno)
        snprintf(error_text, sizeof error_text, "%s: %s", what, strerror(errno));
    else
        snprintf(error_text, sizeof error_text, "%s", what);
    return -1;
}

static int send_all(const unsigned char *p, size_t n)
{
    while (n) {
        ssize_t k = send(sock, p, n, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return fail("send");
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static int recv_exact(unsigned char *p, size_t n)
{
    while (n) {
        ssize_t k = recv(sock, p, n, 0);
        if (k == 0) {
            errno = 0;
            return fail("server closed the connection");
        }
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return fail("recv (timeout or reset)");
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static int check_reply(const unsigned char *h, uint32_t id, uint32_t size)
{
    if (h[RR_OFF_KIND] != RR_KIND_RESPONSE || rr_get_u32(h + RR_OFF_LENGTH) != size
        || rr_get_u32(h + RR_OFF_ID) != id) {
        errno = 0;
        return fail("reply does not match the request");
    }
    return 0;
}

static void fill_body(unsigned char *body, uint32_t size)
{
    for (uint32_t i = 0; i < size; i++)
        body[i] = (unsigned char)(i * 31u + 7u);
}

/* N sequential round trips; the first reply's body is compared byte for byte. */
static int run_seq(uint32_t n, uint32_t size, uint64_t *lat)
{
    unsigned char *req = malloc(RR_HEADER_SIZE + (size_t)size);
    unsigned char *rep = malloc(RR_HEADER_SIZE + (size_t)size);
    int rc = -1;
    if (!req || !rep) {
        errno = ENOMEM;
        fail("malloc");
        goto out;
    }
    fill_body(req + RR_HEADER_SIZE, size);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t id = next_id++;
        rr_put_header(req, size, RR_KIND_REQUEST, id);
        uint64_t t0 = rr_now_ns();
        if (send_all(req, RR_HEADER_SIZE + (size_t)size) < 0
            || recv_exact(rep, RR_HEADER_SIZE) < 0 || check_reply(rep, id, size) < 0
            || recv_exact(rep + RR_HEADER_SIZE, size) < 0)
            goto out;
        lat[i] = rr_now_ns() - t0;
        if (i == 0 && memcmp(req + RR_HEADER_SIZE, rep + RR_HEADER_SIZE, size) != 0) {
            errno = 0;
            fail("echoed body differs");
            goto out;
        }
    }
    rc = 0;
out:
    free(req);
    free(rep);
    return rc;
}

/* N calls with K in flight: each reply lets one more request go, batched per read. */
static int run_inflight(uint32_t k, uint32_t n, uint32_t size, uint64_t *lat)
{
    size_t frame = RR_HEADER_SIZE + (size_t)size;
    if (k > n)
        k = n;
    uint32_t base = next_id;
    next_id += n;
    uint64_t *sent_at = malloc(sizeof *sent_at * n);
    unsigned char *tx = malloc(frame * k);
    size_t rcap = frame * k + 65536;
    unsigned char *rx = malloc(rcap);
    size_t rlen = 0;
    uint32_t sent = 0, done = 0;
    int rc = -1;
    if (!sent_at || !tx || !rx) {
        errno = ENOMEM;
        fail("malloc");
        goto out;
    }
    for (uint32_t j = 0; j < k; j++)
        fill_body(tx + j * frame + RR_HEADER_SIZE, size);

    uint32_t burst = k; /* requests to send now */
    while (done < n) {
        if (burst) {
            uint64_t now = rr_now_ns();
            for (uint32_t j = 0; j < burst; j++) {
                rr_put_header(tx + j * frame, size, RR_KIND_REQUEST, base + sent);
                sent_at[sent++] = now;
            }
            if (send_all(tx, frame * burst) < 0)
                goto out;
        }
        ssize_t got = recv(sock, rx + rlen, rcap - rlen, 0);
        if (got <= 0) {
            if (got < 0 && errno == EINTR) {
                burst = 0;
                continue;
            }
            if (got == 0)
                errno = 0;
            fail(got == 0 ? "server closed the connection" : "recv (timeout or reset)");
            goto out;
        }
        rlen += (size_t)got;
        uint64_t now = rr_now_ns();
        size_t off = 0;
        uint32_t finished = 0;
        while (rlen - off >= frame) {
            const unsigned char *h = rx + off;
            uint32_t id = rr_get_u32(h + RR_OFF_ID);
            if (h[RR_OFF_KIND] != RR_KIND_RESPONSE || rr_get_u32(h + RR_OFF_LENGTH) != size
                || id - base >= sent) {
                errno = 0;
                fail("reply does not match any request in flight");
                goto out;
            }
            lat[done++] = now - sent_at[id - base];
            finished++;
            off += frame;
        }
        memmove(rx, rx + off, rlen - off);
        rlen -= off;
        burst = finished < n - sent ? finished : n - sent;
    }
    rc = 0;
out:
    free(sent_at);
    free(tx);
    free(rx);
    return rc;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted values (the harness uses the same definition). */
static uint64_t percentile(const uint64_t *sorted, uint32_t n, unsigned p)
{
    uint64_t rank = ((uint64_t)n * p + 99) / 100;
    return sorted[rank ? rank - 1 : 0];
}

static void report(const char *mode, uint32_t k, uint32_t n, uint32_t size, uint64_t elapsed,
                   uint64_t *lat)
{
    double seconds = (double)elapsed / 1e9;
    printf("{\"mode\": \"%s\", \"inflight\": %u, \"calls\": %u, \"size\": %u, \"seconds\": %.9f, "
           "\"calls_per_s\": %.1f, \"bytes_per_s\": %.1f",
           mode, k, n, size, seconds, n / seconds, (double)n * size / seconds);
    if (emit_latencies) {
        fputs(", \"lat_u32be_hex\": \"", stdout);
        for (uint32_t i = 0; i < n; i++)
            printf("%08x", lat[i] > 0xffffffffu ? 0xffffffffu : (unsigned)lat[i]);
        fputc('"', stdout);
    }
    qsort(lat, n, sizeof *lat, cmp_u64);
    printf(", \"p50_us\": %.3f, \"p99_us\": %.3f}\n", percentile(lat, n, 50) / 1e3,
           percentile(lat, n, 99) / 1e3);
    fflush(stdout);
}

static void report_error(void)
{
    printf("{\"error\": \"%s\"}\n", error_text);
    fflush(stdout);
}

/* Runs one "MODE ARGS" request; returns -1 when the connection is no longer usable. */
static int run(int argc, char **argv)
{
    uint32_t k = 1, n = 0, size = 0;
    int inflight = argc == 4 && strcmp(argv[0], "inflight") == 0;
    if (inflight) {
        k = (uint32_t)strtoul(argv[1], NULL, 10);
        n = (uint32_t)strtoul(argv[2], NULL, 10);
        size = (uint32_t)strtoul(argv[3], NULL, 10);
    } else if (argc == 3 && strcmp(argv[0], "seq") == 0) {
        n = (uint32_t)strtoul(argv[1], NULL, 10);
        size = (uint32_t)strtoul(argv[2], NULL, 10);
    } else {
        snprintf(error_text, sizeof error_text, "expected 'seq N SIZE' or 'inflight K N SIZE'");
        report_error();
        return 0;
    }
    if (n == 0 || n > MAX_CALLS || k == 0 || k > MAX_INFLIGHT || size == 0
        || size > RR_MAX_FRAME_SIZE) {
        snprintf(error_text, sizeof error_text, "arguments out of range");
        report_error();
        return 0;
    }
    uint64_t *lat = malloc(sizeof *lat * n);
    if (!lat) {
        snprintf(error_text, sizeof error_text, "out of memory");
        report_error();
        return 0;
    }
    uint64_t t0 = rr_now_ns();
    int rc = inflight ? run_inflight(k, n, size, lat) : run_seq(n, size, lat);
    uint64_t elapsed = rr_now_ns() - t0;
    if (rc == 0)
        report(argv[0], k, n, size, elapsed, lat);
    else
        report_error();
    free(lat);
    return rc;
}

static void pin(int cpu)
{
    if (cpu < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) < 0)
        perror("sched_setaffinity");
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    int port = 0, cpu = -1, interactive = 0, timeout_s = 30, opt;
    while ((opt = getopt(argc, argv, "+p:H:c:T:li")) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 'H': host = optarg; break;
        case 'c': cpu = atoi(optarg); break;
        case 'T': timeout_s = atoi(optarg); break;
        case 'l': emit_latencies = 1; break;
        case 'i': interactive = 1; break;
        default: port = 0; break;
        }
    }
    if (port <= 0 || (!interactive && optind >= argc)) {
        fprintf(stderr, "usage: %s -p PORT [-H HOST] [-c CPU] [-T TIMEOUT_S] [-l] "
                        "(-i | seq N SIZE | inflight K N SIZE)\n", argv[0]);
        return 2;
    }
    pin(cpu);

    sock = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (sock < 0 || inet_pton(AF_INET, host, &addr.sin_addr) != 1
        || connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0) {
        fail("connect");
        report_error();
        return 1;
    }
    int one = 1;
    setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* Every blocking call is bounded: a silent server ends the run with an error. */
    struct timeval tv = {.tv_sec = timeout_s};
    setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);

    if (!interactive)
        return run(argc - optind, argv + optind) < 0 ? 1 : 0;

    char line[256];
    while (fgets(line, sizeof line, stdin)) {
        char *words[8];
        int nw = 0;
        for (char *w = strtok(line, " \t\r\n"); w && nw < 8; w = strtok(NULL, " \t\r\n"))
            words[nw++] = w;
        if (nw == 0)
            continue;
        if (strcmp(words[0], "quit") == 0)
            break;
        if (run(nw, words) < 0)
            return 1;
    }
    close(sock);
    return 0;
}
