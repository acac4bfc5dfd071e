/*
 * Physical-limit reference: a single-threaded epoll echo server of rapidrpc's frame shape.
 *
 * Every complete frame is answered with the same body, flags and request id, and kind
 * RESPONSE.  The reply is the request itself with its kind byte patched in the receive
 * buffer, so all complete frames of one read leave in a single send() without a copy: no
 * RPC server can do less work per call, which is what makes this the reference.
 *
 * Usage: echo_server [-p PORT] [-c CPU] [-t LIFETIME_S] [-w]
 *   Binds 127.0.0.1:PORT (0 = any free port), prints {"port": N} on stdout, serves until
 *   killed, until LIFETIME_S seconds pass (default 3600), or with -w until stdin closes
 *   (the harness holds the pipe, so the server dies with it).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "frame.h"

#define MAX_EVENTS 64
#define INITIAL_BUFFER (64 * 1024)
/* Stop reading from a client whose unsent replies pass this, as a real server must. */
#define HIGH_WATER (8u * 1024 * 1024)

typedef struct conn {
    int fd;
    unsigned char *rbuf; /* received bytes [0, rlen) not yet answered */
    size_t rlen, rcap;
    unsigned char *wbuf; /* replies the socket did not take yet: [woff, wlen) */
    size_t woff, wlen, wcap;
    uint32_t events;
} conn_t;

static int epfd;
static char listen_tag, stdin_tag; /* addresses used as epoll tags */

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void conn_close(conn_t *c)
{
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->rbuf);
    free(c->wbuf);
    free(c);
}

static int conn_set_events(conn_t *c, uint32_t events)
{
    if (events == c->events)
        return 0;
    struct epoll_event ev = {.events = events, .data.ptr = c};
    c->events = events;
    return epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Grows a buffer to hold at least `need` bytes; returns -1 when out of memory. */
static int grow(unsigned char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t cap2 = *cap ? *cap : INITIAL_BUFFER;
    while (cap2 < need)
        cap2 *= 2;
    unsigned char *p = realloc(*buf, cap2);
    if (!p)
        return -1;
    *buf = p;
    *cap = cap2;
    return 0;
}

/* Queues bytes the socket did not accept; replies keep their order. */
static int queue_output(conn_t *c, const unsigned char *p, size_t n)
{
    if (c->woff == c->wlen)
        c->woff = c->wlen = 0;
    if (grow(&c->wbuf, &c->wcap, c->wlen + n) < 0)
        return -1;
    memcpy(c->wbuf + c->wlen, p, n);
    c->wlen += n;
    return 0;
}

/* Sends queued output; 0 when all of it left, 1 when some remains, -1 on error. */
static int flush_output(conn_t *c)
{
    while (c->woff < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 1;
            return -1;
        }
        c->woff += (size_t)n;
    }
    c->woff = c->wlen = 0;
    return 0;
}

/* Answers every complete frame in the receive buffer; -1 closes the connection. */
static int answer_frames(conn_t *c)
{
    size_t off = 0;
    while (c->rlen - off >= RR_HEADER_SIZE) {
        unsigned char *h = c->rbuf + off;
        uint32_t length = rr_get_u32(h + RR_OFF_LENGTH);
        if (length == 0 || length > RR_MAX_FRAME_SIZE)
            return -1; /* protocol violation: this connection only */
        if (c->rlen - off < RR_HEADER_SIZE + (size_t)length)
            break;
        h[RR_OFF_KIND] = RR_KIND_RESPONSE;
        off += RR_HEADER_SIZE + (size_t)length;
    }
    if (off == 0)
        return 0;
    size_t sent = 0;
    if (c->woff == c->wlen) { /* nothing queued: reply straight from the receive buffer */
        while (sent < off) {
            ssize_t n = send(c->fd, c->rbuf + sent, off - sent, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    break;
                return -1;
            }
            sent += (size_t)n;
        }
    }
    if (sent < off && queue_output(c, c->rbuf + sent, off - sent) < 0)
        return -1;
    memmove(c->rbuf, c->rbuf + off, c->rlen - off);
    c->rlen -= off;
    return 0;
}

/* Reads until the socket is drained (bounded per event so one client can't starve others). */
static int on_readable(conn_t *c)
{
    for (int turn = 0; turn < 64; turn++) {
        size_t need = c->rlen + 1;
        if (c->rlen >= RR_HEADER_SIZE) /* a started frame: make room for all of it at once */
            need = RR_HEADER_SIZE + (size_t)rr_get_u32(c->rbuf + RR_OFF_LENGTH);
        if (need > RR_HEADER_SIZE + (size_t)RR_MAX_FRAME_SIZE)
            return -1;
        if (grow(&c->rbuf, &c->rcap, need) < 0)
            return -1;
        size_t room = c->rcap - c->rlen;
        ssize_t n = recv(c->fd, c->rbuf + c->rlen, room, 0);
        if (n == 0)
            return -1;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            return -1;
        }
        c->rlen += (size_t)n;
        if (answer_frames(c) < 0)
            return -1;
        if (c->wlen - c->woff > HIGH_WATER)
            return 0;
        if ((size_t)n < room)
            return 0; /* short read: the socket is drained, skip the EAGAIN round trip */
    }
    return 0;
}

static void update_interest(conn_t *c)
{
    uint32_t ev = 0;
    size_t pending = c->wlen - c->woff;
    if (pending <= HIGH_WATER)
        ev |= EPOLLIN;
    if (pending)
        ev |= EPOLLOUT;
    if (conn_set_events(c, ev) < 0)
        conn_close(c);
}

static void accept_all(int lfd)
{
    for (int i = 0; i < 256; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN, or EMFILE: try again on the next event */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn_t *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->events = EPOLLIN;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            close(fd);
            free(c);
        }
    }
}

static void pin(int cpu)
{
    if (cpu < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) < 0)
        die("sched_setaffinity");
}

int main(int argc, char **argv)
{
    int port = 0, cpu = -1, watch_stdin = 0;
    unsigned lifetime = 3600;
    int opt;
    while ((opt = getopt(argc, argv, "p:c:t:w")) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 'c': cpu = atoi(optarg); break;
        case 't': lifetime = (unsigned)atoi(optarg); break;
        case 'w': watch_stdin = 1; break;
        default:
            fprintf(stderr, "usage: %s [-p PORT] [-c CPU] [-t LIFETIME_S] [-w]\n", argv[0]);
            return 2;
        }
    }
    pin(cpu);
    alarm(lifetime); /* hard bound: SIGALRM ends the process */

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0)
        die("bind");
    if (listen(lfd, 512) < 0)
        die("listen");
    socklen_t alen = sizeof addr;
    if (getsockname(lfd, (struct sockaddr *)&addr, &alen) < 0)
        die("getsockname");

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &listen_tag};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev) < 0)
        die("epoll_ctl listen");
    if (watch_stdin) {
        struct epoll_event sev = {.events = EPOLLIN, .data.ptr = &stdin_tag};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, STDIN_FILENO, &sev) < 0)
            die("epoll_ctl stdin");
    }
    printf("{\"port\": %d}\n", ntohs(addr.sin_port));
    fflush(stdout);

    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            void *tag = events[i].data.ptr;
            if (tag == &listen_tag) {
                accept_all(lfd);
                continue;
            }
            if (tag == &stdin_tag) {
                char sink[256];
                ssize_t r = read(STDIN_FILENO, sink, sizeof sink);
                if (r <= 0 && !(r < 0 && errno == EINTR))
                    return 0; /* the harness let go of us */
                continue;
            }
            conn_t *c = tag;
            uint32_t e = events[i].events;
            if (e & (EPOLLERR | EPOLLHUP)) {
                conn_close(c);
                continue;
            }
            if ((e & EPOLLOUT) && flush_output(c) < 0) {
                conn_close(c);
                continue;
            }
            if ((e & EPOLLIN) && on_readable(c) < 0) {
                conn_close(c);
                continue;
            }
            update_interest(c);
        }
    }
}
