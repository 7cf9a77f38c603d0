/*
 * cserver: a C epoll WebSocket server with joined writes, for the benchmark's ceiling check.
 *
 *   cserver PORT joined|write    (listens on 127.0.0.1:PORT; commands on stdin)
 *
 * It speaks just enough ticker.v1 for bench/loadclient.c: the handshake (with a real
 * Sec-WebSocket-Accept), a snapshot with no briefs in answer to any subscribe, and brief
 * messages shaped like ticker's. It has no Redis: it publishes itself, on stdin commands
 * from bench/run.py, stamping each brief with CLOCK_MONOTONIC like the Python publisher:
 *   "brief SEQ"          one brief
 *   "burst SEQ0 COUNT"   COUNT briefs
 * Mode "joined": all frames of a command joined into one buffer, one write per socket
 * (what the socket does not take is queued and sent on EPOLLOUT). Mode "write": one
 * write per socket per message, message after message (the kernel's reference for the
 * one-write-per-message floor). Its only purpose is to cost the server side as little as
 * possible, so that what the load client measures against it is a lower bound of the
 * client's own ceiling for that pattern of writes.
 *
 * Build: gcc -O2 -o cserver cserver.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONN 65536
#define LISTEN_ID 0xfffffffeu
#define STDIN_ID 0xffffffffu

typedef struct {
    int fd;
    int open, subscribed;
    char in[2048]; size_t in_len;
    char *out; size_t out_len, out_cap, out_off;
} conn_t;

static conn_t *conns[MAX_CONN];
static int ep;
static int joined = 1;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ---- SHA-1 (FIPS 180-4), for Sec-WebSocket-Accept only ---- */
static uint32_t rol(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }
static void sha1(const uint8_t *msg, size_t len, uint8_t out[20]) {
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    size_t total = ((len + 8) / 64 + 1) * 64;
    uint8_t *m = calloc(total, 1);
    memcpy(m, msg, len);
    m[len] = 0x80;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) m[total - 1 - i] = (uint8_t)(bits >> (8 * i));
    for (size_t blk = 0; blk < total; blk += 64) {
        uint32_t w[80];
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)m[blk + 4 * i] << 24 | (uint32_t)m[blk + 4 * i + 1] << 16 | (uint32_t)m[blk + 4 * i + 2] << 8 | m[blk + 4 * i + 3];
        for (int i = 16; i < 80; i++) w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
        for (int i = 0; i < 80; i++) {
            uint32_t f, k;
            if (i < 20) { f = (b & c) | (~b & d); k = 0x5A827999; }
            else if (i < 40) { f = b ^ c ^ d; k = 0x6ED9EBA1; }
            else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8F1BBCDC; }
            else { f = b ^ c ^ d; k = 0xCA62C1D6; }
            uint32_t t = rol(a, 5) + f + e + k + w[i];
            e = d; d = c; c = rol(b, 30); b = a; a = t;
        }
        h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
    }
    free(m);
    for (int i = 0; i < 5; i++) for (int j = 0; j < 4; j++) out[4 * i + j] = (uint8_t)(h[i] >> (24 - 8 * j));
}
static void base64(const uint8_t *in, size_t len, char *out) {
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0) | (i + 2 < len ? in[i + 2] : 0);
        out[o++] = t[(v >> 18) & 63]; out[o++] = t[(v >> 12) & 63];
        out[o++] = i + 1 < len ? t[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? t[v & 63] : '=';
    }
    out[o] = 0;
}

/* ---- connections ---- */
static void drop(conn_t *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    conns[c->fd] = NULL;
    free(c->out);
    free(c);
}

/* Send what is queued, then `data`; queue what the socket does not take. */
static void send_or_queue(conn_t *c, const char *data, size_t len) {
    if (c->out_len == c->out_off) {
        c->out_len = c->out_off = 0;
        ssize_t w = send(c->fd, data, len, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN) { drop(c); return; }
        if (w < 0) w = 0;
        data += w; len -= (size_t)w;
        if (!len) return;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)c->fd};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    }
    if (c->out_len + len > c->out_cap) {
        c->out_cap = (c->out_len + len) * 2;
        c->out = realloc(c->out, c->out_cap);
    }
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
}

static void flush(conn_t *c) {
    while (c->out_off < c->out_len) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (w < 0 && errno == EAGAIN) return;
        if (w <= 0) { drop(c); return; }
        c->out_off += (size_t)w;
    }
    c->out_len = c->out_off = 0;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)c->fd};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static size_t frame_header(char *h, size_t n) {
    h[0] = (char)0x81;
    if (n < 126) { h[1] = (char)n; return 2; }
    h[1] = 126; h[2] = (char)(n >> 8); h[3] = (char)(n & 0xff); return 4;
}

static void on_data(conn_t *c) {
    ssize_t r = recv(c->fd, c->in + c->in_len, sizeof c->in - c->in_len, 0);
    if (r <= 0) { if (r == 0 || errno != EAGAIN) drop(c); return; }
    c->in_len += (size_t)r;
    if (!c->open) {
        char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
        if (!end) { if (c->in_len == sizeof c->in) drop(c); return; }
        char *k = memmem(c->in, (size_t)(end - c->in), "Sec-WebSocket-Key: ", 19);
        if (!k) { drop(c); return; }
        k += 19;
        char key[128]; size_t kl = 0;
        while (k < end && *k != '\r' && kl < 60) key[kl++] = *k++;
        memcpy(key + kl, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11", 36);
        uint8_t digest[20]; char acc[32];
        sha1((uint8_t *)key, kl + 36, digest);
        base64(digest, 20, acc);
        char resp[256];
        int n = snprintf(resp, sizeof resp, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\nSec-WebSocket-Protocol: ticker.v1\r\n\r\n", acc);
        size_t hl = (size_t)(end - c->in) + 4;
        memmove(c->in, c->in + hl, c->in_len - hl);
        c->in_len -= hl;
        c->open = 1;
        send_or_queue(c, resp, (size_t)n);
        if (conns[c->fd] != c) return;
    }
    /* client frames: masked; any text frame is taken as the subscribe */
    for (int guard = 0; guard < 64 && c->in_len >= 6; guard++) {
        size_t plen = (uint8_t)c->in[1] & 0x7f, h = 2;
        if (plen == 126) { if (c->in_len < 8) return; plen = (size_t)((uint8_t)c->in[2] << 8 | (uint8_t)c->in[3]); h = 4; }
        if (plen > 1000) { drop(c); return; }
        if (c->in_len < h + 4 + plen) return;
        int op = c->in[0] & 0x0f;
        memmove(c->in, c->in + h + 4 + plen, c->in_len - h - 4 - plen);
        c->in_len -= h + 4 + plen;
        if (op == 0x8) { drop(c); return; }
        if (op == 0x1 && !c->subscribed) {
            static const char snap[] = "{\"type\":\"snapshot\",\"channel\":\"bench\",\"briefs\":[],\"cursor\":\"0-0\",\"epoch\":\"c\"}";
            char f[160];
            size_t fh = frame_header(f, sizeof snap - 1);
            memcpy(f + fh, snap, sizeof snap - 1);
            c->subscribed = 1;
            send_or_queue(c, f, fh + sizeof snap - 1);
            if (conns[c->fd] != c) return;
        }
    }
}

static void fan_out(const char *buf, size_t len) {
    for (int fd = 0; fd < MAX_CONN; fd++)
        if (conns[fd] && conns[fd]->subscribed) send_or_queue(conns[fd], buf, len);
}

static void publish(unsigned seq0, unsigned count) {
    size_t cap = (size_t)count * 400 + 16, len = 0;
    char *buf = malloc(cap);
    for (unsigned i = 0; i < count; i++) {
        size_t start = len;
        char msg[380];
        long long t = (long long)now_ns(), id = t / 1000000;
        int n = snprintf(msg, sizeof msg,
            "{\"type\":\"brief\",\"channel\":\"bench\",\"brief\":{\"id\":\"%lld-%u\",\"channel\":\"bench\","
            "\"text\":\"seq=%u t=%lld Breaking\",\"url\":null,\"time\":\"2026-11-01T00:00:00.000Z\",\"urgency\":5,"
            "\"tags\":[],\"lang\":null,\"version\":1,\"updated_at\":null,\"status\":\"usable\",\"pinned\":false},"
            "\"cursor\":\"%lld-%u\"}", id, seq0 + i, seq0 + i, t, id, seq0 + i);
        len += frame_header(buf + len, (size_t)n);
        memcpy(buf + len, msg, (size_t)n);
        len += (size_t)n;
        if (!joined) fan_out(buf + start, len - start);
    }
    if (joined) fan_out(buf, len);
    free(buf);
}

static void on_stdin(void) {
    static char line[256]; static size_t len;
    ssize_t r = read(0, line + len, sizeof line - 1 - len);
    if (r <= 0) { if (r == 0) exit(0); return; }
    len += (size_t)r; line[len] = 0;
    char *nl;
    while ((nl = strchr(line, '\n'))) {
        *nl = 0;
        unsigned a = 0, b = 0;
        if (sscanf(line, "burst %u %u", &a, &b) == 2) publish(a, b);
        else if (sscanf(line, "brief %u", &a) == 1) publish(a, 1);
        size_t rest = len - (size_t)(nl + 1 - line);
        memmove(line, nl + 1, rest); len = rest; line[len] = 0;
    }
    if (len >= sizeof line - 1) len = 0;
}

int main(int argc, char **argv) {
    if (argc != 3 || (strcmp(argv[2], "joined") && strcmp(argv[2], "write"))) {
        fprintf(stderr, "usage: cserver PORT joined|write\n");
        return 2;
    }
    joined = !strcmp(argv[2], "joined");
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl; getrlimit(RLIMIT_NOFILE, &rl); rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(ls, 2048) < 0) { perror("cserver"); return 1; }
    ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = LISTEN_ID};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    ev.data.u32 = STDIN_ID;
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
    struct epoll_event evs[1024];
    for (;;) {  /* runs until stdin closes or a signal: the runner stops it */
        int k = epoll_wait(ep, evs, 1024, 1000);
        for (int i = 0; i < k; i++) {
            uint32_t id = evs[i].data.u32;
            if (id == STDIN_ID) { on_stdin(); continue; }
            if (id == LISTEN_ID) {
                for (int j = 0; j < 4096; j++) {
                    int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
                    if (fd < 0) break;
                    if (fd >= MAX_CONN) { close(fd); continue; }
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conn_t *c = calloc(1, sizeof *c);
                    c->fd = fd;
                    conns[fd] = c;
                    struct epoll_event cev = {.events = EPOLLIN, .data.u32 = (uint32_t)fd};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            conn_t *c = conns[id];
            if (!c) continue;
            if (evs[i].events & EPOLLOUT) { flush(c); if (conns[id] != c) continue; }
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_data(c);
        }
    }
}
