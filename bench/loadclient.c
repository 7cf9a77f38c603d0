/*
 * loadclient: the benchmark's WebSocket load client (ticker.v1), one thread, epoll.
 *
 * Opens N connections to ws://HOST:PORT/PATH at once (HTTP upgrade with the subprotocol
 * ticker.v1, then {"op":"subscribe","channel":CH}), and for every "brief" message reads
 * the "seq=<n>" and "t=<ns>" that the publisher wrote into the brief's text: t is
 * CLOCK_MONOTONIC in nanoseconds (Python's time.monotonic_ns() on the same machine), so
 * publish-to-receive latency is the receive time minus t. Every connection keeps a
 * bitmap of the sequence numbers it got, so losses and duplicates are exact.
 *
 * Phases (stdout gets one JSON object per line; the last one has "event":"report"):
 *   connect   all N connect and subscribe; each is ready when its snapshot arrived.
 *             Then {"event":"ready",...}.
 *   live      wait until every connection has the briefs seq-base .. seq-base+expect-1
 *             (--expect; 0 skips the phase), or until the deadline / idle timeout.
 *   --mode connect:   after ready, wait for "quit" (or EOF) on stdin, then report.
 *   --mode live:      connect, live, report.
 *   --mode reconnect: connect, live (usually --expect 0), then wait until the server has
 *             closed every connection ({"event":"down",...}), wait for "go" on stdin,
 *             reconnect all N at once with {"since": cursor, "epoch": epoch} and wait
 *             until each has "subscribed" plus the --resume-expect briefs after its
 *             cursor (seq-base .. seq-base+resume-expect-1). Then report.
 *
 * A connection lost before it is ready during a connect storm (refused, reset, or closed
 * by the server, e.g. 1013 "try again later") is tried again after a full-jitter backoff,
 * as the widget would, at most --max-retries times (default 100: the storm's deadline is
 * the real bound); "retries" counts them, "failed" counts the connections that never got
 * ready. In the resume storm, a connection that had no cursor (it never got ready before
 * the restart) subscribes without "since" and is counted in "no_cursor", not as a failure
 * of the server to recover.
 *
 * --transport sse: the same N subscribers as Server-Sent Events instead: each connection is
 * GET /v1/channels/CH/events (HTTP/1.1, Accept: text/event-stream), the answer read with
 * or without Transfer-Encoding: chunked (or up to the close), and parsed into events
 * ("event:", "id:", "data:" lines; a blank line ends an event; ":" comments such as the
 * heartbeat and "retry:" ignored). An event's data is the WebSocket's message, so the
 * same measures apply: ready on "snapshot", briefs by "seq=" and "t=", "subscribed" on a
 * resume; a "close" event counts its code as a close frame would, and ends the
 * connection. The resume storm asks ?since=<cursor>&epoch=<epoch> (--resume-with since,
 * the default) or sends Last-Event-ID: <cursor> (--resume-with last-event-id).
 *
 * Several processes can share one run (N above one process's open-file limit): each
 * reports its storm's start ("t0_ns") and its first publish and last delivery on the
 * CLOCK_MONOTONIC clock, and --lat-out FILE writes its sorted latencies (uint32 µs) for
 * the runner to merge.
 *
 * Every wait is bounded: --timeout (whole run), --connect-timeout (each connect storm),
 * --idle-timeout (live phase: no new brief for that long after the first one).
 *
 * Build: gcc -O2 -o loadclient loadclient.c   (Linux only: epoll)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stdarg.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum { ST_IDLE, ST_CONNECTING, ST_HANDSHAKE, ST_SUBSCRIBING, ST_READY, ST_CLOSED, ST_FAILED, ST_RETRY };
enum { PH_CONNECT, PH_LIVE, PH_WAIT_DOWN, PH_WAIT_GO, PH_RESUME, PH_DONE };

#define RBUF_SIZE (8u << 20)     /* one shared receive buffer */
#define MAX_FRAME (4u << 20)     /* a larger frame is a protocol error */
#define MAX_EVENTS 1024
#define STDIN_ID 0xffffffffu

typedef struct {
    int fd;
    uint8_t state;
    uint8_t recovered;     /* resume: 1 recovered:true, 2 recovered:false (snapshot follows) */
    uint8_t done;          /* counted as complete in the current phase */
    uint8_t frag_op;
    uint8_t was_ready;     /* ready when the live phase began */
    uint8_t chunked;       /* SSE: the answer is Transfer-Encoding: chunked */
    uint8_t ch_state;      /* SSE: where the chunk decoder is (CH_*) */
    uint32_t ch_left;      /* SSE: bytes left in the current chunk */
    uint16_t retries;      /* in the current connect storm */
    uint32_t count;        /* distinct expected briefs in the current phase */
    int64_t t_start, t_ready, t_done, retry_at;
    char *left; uint32_t left_len, left_cap;   /* bytes of an incomplete frame */
    char *frag; uint32_t frag_len, frag_cap;   /* a fragmented message being assembled */
    char cursor[48];
    char epoch[80];
} conn_t;

/* Options */
static char host[64] = "127.0.0.1", path[256] = "/v1/ws", channel[80] = "bench";
static char mode[16] = "live";
static char lat_out[512];  /* --lat-out: the sorted latencies (uint32 µs), for merging */
static int port = 0, nconn = 100, src_ips = 0, max_retries = 100;
static uint32_t expect = 0, resume_expect = 0, seq_base = 0, max_seq = 0;
static double timeout_s = 120, connect_timeout_s = 60, idle_timeout_s = 30;
static int sse;              /* --transport sse */
static int resume_last_id;   /* --resume-with last-event-id */

/* State */
static conn_t *conns;
static uint8_t *bitmaps;          /* nconn * bm_bytes */
static uint32_t bm_bytes;
static int ep;
static char *rbuf;
static int phase = PH_CONNECT;
static int64_t t_run0, deadline_ns, phase_deadline_ns;
static int64_t t_first_pub = INT64_MAX, t_last_recv = 0, t_last_brief = 0;
static uint32_t *lat_us; static size_t lat_n, lat_cap, lat_dropped;
static uint64_t deliveries, duplicates, unexpected, early_briefs, frames, bytes_in, reads;
static uint64_t server_errors, protocol_errors, no_subprotocol, other_messages;
static int n_ready, n_closed, n_failed, n_done, n_recovered, n_not_recovered, n_no_cursor;
static int close_codes[5000]; static int close_abnormal;
static int stdin_go, stdin_quit, stdin_eof;
static char stdin_line[256]; static size_t stdin_len;
static char first_error[256];
static uint64_t retries_total;
static int n_retry_pending;
static unsigned rng_state = 20260214u;
static size_t seq_skip;   /* bytes of a brief message before its text can start */
static int track_cursor;  /* reconnect mode: remember each connection's cursor */

enum { CH_SIZE, CH_EXT, CH_DATA, CH_DATA_END, CH_END };
static uint64_t sse_comments, sse_ended;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static double sys_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void note_error(const char *what) {
    if (!first_error[0]) snprintf(first_error, sizeof first_error, "%s", what);
}

static void emit(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void emit(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fflush(stdout);
}

/* ------------------------------------------------------------------ sockets */

static void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

/* A connection lost before it was ready, during a connect storm (refused, reset, or
 * closed by the server, e.g. 1013 "try again later"): try again after a full-jitter
 * backoff, as the widget does, at most --max-retries times. Returns 1 if scheduled. */
static int schedule_retry(conn_t *c) {
    if ((phase != PH_CONNECT && phase != PH_RESUME) || c->state == ST_READY) return 0;
    if (c->retries >= max_retries) return 0;
    c->retries++;
    retries_total++;
    int64_t cap = 100000000LL << (c->retries < 5 ? c->retries : 5);  /* 0.2 s .. 3.2 s */
    c->retry_at = now_ns() + (int64_t)((double)rand_r(&rng_state) / RAND_MAX * (double)cap);
    c->state = ST_RETRY;
    n_retry_pending++;
    return 1;
}

static void conn_drop(conn_t *c, int failed) {
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    free(c->left); c->left = NULL; c->left_len = c->left_cap = 0;
    free(c->frag); c->frag = NULL; c->frag_len = c->frag_cap = 0;
    if (schedule_retry(c)) return;
    if (failed) { c->state = ST_FAILED; n_failed++; }
    else { c->state = ST_CLOSED; n_closed++; }
}

static int conn_open(conn_t *c, uint32_t idx) {
    struct sockaddr_in sa = {0};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) { note_error(strerror(errno)); c->fd = -1; conn_drop(c, 1); return -1; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (src_ips > 0) {
        /* Spread source addresses over 127.0.0.2.. so that many runs in a row do not run
         * out of ephemeral ports (each address has its own port range). */
        struct sockaddr_in src = {0};
        src.sin_family = AF_INET;
        src.sin_addr.s_addr = htonl(0x7f000002u + (idx % (uint32_t)src_ips));
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) note_error("bind to a source address failed");
    }
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, host, &sa.sin_addr);
    c->fd = fd;
    c->t_start = now_ns();
    c->t_ready = c->t_done = 0;
    c->count = 0; c->done = 0; c->recovered = 0;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
        note_error(strerror(errno));
        close(fd); c->fd = -1; conn_drop(c, 1);
        return -1;
    }
    c->state = ST_CONNECTING;
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u32 = idx};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    return 0;
}

static int send_all(conn_t *c, const char *buf, size_t len) {
    /* Only small control messages are sent; on loopback they always fit at once. */
    ssize_t w = send(c->fd, buf, len, MSG_NOSIGNAL);
    if (w != (ssize_t)len) { note_error("short send"); return -1; }
    return 0;
}

/* A masked client frame (RFC 6455 5.3: every client frame is masked). */
static int send_frame(conn_t *c, int opcode, const char *payload, size_t len) {
    char out[512];
    static const uint8_t key[4] = {0x37, 0xfa, 0x21, 0x3d};
    size_t h = 0;
    if (len > sizeof out - 8) return -1;
    out[h++] = (char)(0x80 | opcode);
    if (len < 126) out[h++] = (char)(0x80 | len);
    else { out[h++] = (char)(0x80 | 126); out[h++] = (char)(len >> 8); out[h++] = (char)(len & 0xff); }
    memcpy(out + h, key, 4); h += 4;
    for (size_t i = 0; i < len; i++) out[h + i] = payload[i] ^ key[i & 3];
    return send_all(c, out, h + len);
}

/* The answer to a close frame: best effort, the server may already be gone. */
static void send_close_reply(conn_t *c, const char *code, size_t len) {
    char out[8] = {(char)0x88, (char)(0x80 | len), 0x11, 0x22, 0x33, 0x44};
    for (size_t i = 0; i < len; i++) out[6 + i] = code[i] ^ out[2 + i];
    ssize_t w = send(c->fd, out, 6 + len, MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)w;
}

static int send_handshake(conn_t *c) {
    char req[768];
    int n;
    if (sse) {
        /* The resume storm: the cursor (and epoch) of the last event before the restart. */
        char query[256] = "", last_id[128] = "";
        if (phase == PH_RESUME && c->cursor[0]) {
            if (resume_last_id) snprintf(last_id, sizeof last_id, "Last-Event-ID: %s\r\n", c->cursor);
            else snprintf(query, sizeof query, "?since=%s%s%s", c->cursor, c->epoch[0] ? "&epoch=" : "", c->epoch);
        }
        n = snprintf(req, sizeof req,
            "GET %s%s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n"
            "Cache-Control: no-cache\r\n%s\r\n", path, query, host, port, last_id);
        return send_all(c, req, (size_t)n);
    }
    n = snprintf(req, sizeof req,
        "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: ticker.v1\r\n\r\n", path, host, port);
    return send_all(c, req, (size_t)n);
}

static int send_subscribe(conn_t *c, int resume) {
    char msg[300];
    int n;
    if (resume && c->cursor[0])
        n = snprintf(msg, sizeof msg, "{\"op\":\"subscribe\",\"channel\":\"%s\",\"since\":\"%s\"%s%s%s}",
                     channel, c->cursor, c->epoch[0] ? ",\"epoch\":\"" : "", c->epoch, c->epoch[0] ? "\"" : "");
    else
        n = snprintf(msg, sizeof msg, "{\"op\":\"subscribe\",\"channel\":\"%s\"}", channel);
    return send_frame(c, 0x1, msg, (size_t)n);
}

/* ------------------------------------------------------------------ messages */

static const char *rmemmem(const char *hay, size_t hlen, const char *needle, size_t nlen) {
    if (hlen < nlen) return NULL;
    for (size_t i = hlen - nlen + 1; i-- > 0;)
        if (hay[i] == needle[0] && memcmp(hay + i, needle, nlen) == 0) return hay + i;
    return NULL;
}

/* Copy the JSON string value after `key` (searched from the end) into out. */
static void grab_string(const char *p, size_t len, const char *key, char *out, size_t cap) {
    size_t klen = strlen(key);
    const char *k = rmemmem(p, len, key, klen);
    if (!k) return;
    const char *v = k + klen, *end = p + len;
    size_t i = 0;
    while (v < end && *v != '"' && i + 1 < cap) out[i++] = *v++;
    out[i] = 0;
}

static int expected_now(void) {
    return phase == PH_RESUME ? (int)resume_expect : (int)expect;
}

static void mark_done(conn_t *c, int64_t now) {
    if (!c->done) { c->done = 1; c->t_done = now; n_done++; }
}

static void on_brief(conn_t *c, uint32_t idx, const char *p, size_t len, int64_t now) {
    if (phase != PH_LIVE && phase != PH_RESUME) {
        early_briefs++;
        if (c->state == ST_READY) grab_string(p, len, "\"cursor\":\"", c->cursor, sizeof c->cursor);
        return;
    }
    if (track_cursor) grab_string(p, len, "\"cursor\":\"", c->cursor, sizeof c->cursor);
    /* "seq=" sits in the brief's text, after the message head and the brief's id: start
     * looking past the shortest such prefix (the hot path of the client), else anywhere. */
    const char *s = len > seq_skip ? memmem(p + seq_skip, len - seq_skip, "seq=", 4) : NULL;
    if (!s) s = memmem(p, len, "seq=", 4);
    if (!s) { unexpected++; return; }
    const char *end = p + len, *q = s + 4;
    uint64_t seq = 0;
    while (q < end && *q >= '0' && *q <= '9') seq = seq * 10 + (uint64_t)(*q++ - '0');
    if (end - q < 4 || q[0] != ' ' || q[1] != 't' || q[2] != '=') { unexpected++; return; }
    q += 3;
    int64_t tp = 0;
    while (q < end && *q >= '0' && *q <= '9') tp = tp * 10 + (*q++ - '0');
    uint32_t want = (uint32_t)expected_now();
    if (seq < seq_base || seq - seq_base >= want || seq - seq_base >= max_seq) { unexpected++; return; }
    uint32_t bit = (uint32_t)(seq - seq_base);
    uint8_t *bm = bitmaps + (size_t)idx * bm_bytes;
    if (bm[bit >> 3] & (1u << (bit & 7))) { duplicates++; return; }
    bm[bit >> 3] |= (uint8_t)(1u << (bit & 7));
    c->count++;
    deliveries++;
    t_last_brief = now;
    if (phase == PH_LIVE) {
        if (tp < t_first_pub) t_first_pub = tp;
        if (now > t_last_recv) t_last_recv = now;
        int64_t l = (now - tp) / 1000;
        if (l < 0) l = 0;
        if (lat_n < lat_cap) lat_us[lat_n++] = (uint32_t)(l > 0xffffffffLL ? 0xffffffffLL : l);
        else lat_dropped++;
    } else if (now > t_last_recv) t_last_recv = now;
    if (c->count >= want && (phase == PH_LIVE || c->recovered)) mark_done(c, now);
}

static void on_text(conn_t *c, uint32_t idx, const char *p, size_t len, int64_t now) {
    if (len >= 15 && memcmp(p, "{\"type\":\"brief\"", 15) == 0) { on_brief(c, idx, p, len, now); return; }
    if (len >= 18 && memcmp(p, "{\"type\":\"snapshot\"", 18) == 0) {
        grab_string(p, len, "\"epoch\":\"", c->epoch, sizeof c->epoch);
        grab_string(p, len, "\"cursor\":\"", c->cursor, sizeof c->cursor);
        if (c->state == ST_SUBSCRIBING) {
            c->state = ST_READY; c->t_ready = now; n_ready++;
            if (phase == PH_RESUME) {
                /* recovered:false was answered with a snapshot: this connection resumed,
                 * but not exactly (its missed briefs are inside the snapshot). Without a
                 * cursor it could not ask to resume at all. */
                if (!c->recovered) { c->recovered = 3; n_no_cursor++; mark_done(c, now); }
                if (c->recovered == 2) { n_not_recovered++; mark_done(c, now); }
            }
        }
        return;
    }
    if (len >= 20 && memcmp(p, "{\"type\":\"subscribed\"", 20) == 0) {
        grab_string(p, len, "\"epoch\":\"", c->epoch, sizeof c->epoch);
        if (memmem(p, len, "\"recovered\":true", 16)) {
            c->recovered = 1; n_recovered++;
            if (c->state == ST_SUBSCRIBING) { c->state = ST_READY; c->t_ready = now; n_ready++; }
            if (c->count >= resume_expect) mark_done(c, now);
        } else {
            c->recovered = 2;  /* a snapshot follows */
        }
        return;
    }
    if (len >= 15 && memcmp(p, "{\"type\":\"error\"", 15) == 0) {
        server_errors++;
        if (!first_error[0]) snprintf(first_error, sizeof first_error, "server error: %.*s", (int)(len < 200 ? len : 200), p);
        return;
    }
    other_messages++;
}

/* Parse every complete frame in buf; returns the bytes consumed, or -1 if the connection
 * was closed (by a close frame or a protocol error). */
static long parse_frames(conn_t *c, uint32_t idx, char *buf, size_t len, int64_t now) {
    size_t off = 0;
    while (len - off >= 2) {
        uint8_t b0 = (uint8_t)buf[off], b1 = (uint8_t)buf[off + 1];
        int fin = b0 & 0x80, op = b0 & 0x0f, masked = b1 & 0x80;
        uint64_t plen = b1 & 0x7f;
        size_t h = 2;
        if (plen == 126) {
            if (len - off < 4) break;
            plen = ((uint64_t)(uint8_t)buf[off + 2] << 8) | (uint8_t)buf[off + 3];
            h = 4;
        } else if (plen == 127) {
            if (len - off < 10) break;
            plen = 0;
            for (int i = 0; i < 8; i++) plen = (plen << 8) | (uint8_t)buf[off + 2 + i];
            h = 10;
        }
        if (plen > MAX_FRAME) { protocol_errors++; note_error("frame too large"); conn_drop(c, 1); return -1; }
        if (masked) { protocol_errors++; h += 4; }  /* servers must not mask (RFC 6455 5.1) */
        if (len - off < h + plen) break;
        char *pl = buf + off + h;
        if (masked) for (uint64_t i = 0; i < plen; i++) pl[i] ^= buf[off + h - 4 + (i & 3)];
        frames++;
        off += h + plen;
        if (op == 0x1 || op == 0x0) {
            if (op == 0x1 && fin) { on_text(c, idx, pl, plen, now); }
            else {
                /* Fragmented message: assemble it (uvicorn does not fragment, but others may). */
                if (op == 0x1) { c->frag_len = 0; c->frag_op = 1; }
                if (c->frag_len + plen > MAX_FRAME) { protocol_errors++; conn_drop(c, 1); return -1; }
                if (c->frag_len + plen > c->frag_cap) {
                    c->frag_cap = (uint32_t)(c->frag_len + plen) * 2;
                    c->frag = realloc(c->frag, c->frag_cap);
                }
                memcpy(c->frag + c->frag_len, pl, plen);
                c->frag_len += (uint32_t)plen;
                if (fin) { on_text(c, idx, c->frag, c->frag_len, now); c->frag_len = 0; }
            }
        } else if (op == 0x8) {
            int code = plen >= 2 ? (((uint8_t)pl[0]) << 8 | (uint8_t)pl[1]) : 1005;
            if (code > 0 && code < 5000) close_codes[code]++;
            send_close_reply(c, pl, plen >= 2 ? 2 : 0);
            conn_drop(c, 0);
            return -1;
        } else if (op == 0x9) {
            send_frame(c, 0xA, pl, plen);
        } else if (op == 0xA || op == 0x2) {
            /* pong, binary: ignored */
        } else {
            protocol_errors++;
        }
    }
    return (long)off;
}

static void keep_left(conn_t *c, const char *p, size_t n) {
    if (n == 0) { c->left_len = 0; if (c->left_cap > 4096) { free(c->left); c->left = NULL; c->left_cap = 0; } return; }
    if (n > c->left_cap) { c->left_cap = (uint32_t)n; c->left = realloc(c->left, n); }
    memmove(c->left, p, n);
    c->left_len = (uint32_t)n;
}

/* ------------------------------------------------------------------ Server-Sent Events */

static const char *memcasemem(const char *hay, size_t hlen, const char *needle) {
    size_t nlen = strlen(needle);
    for (size_t i = 0; i + nlen <= hlen; i++)
        if (strncasecmp(hay + i, needle, nlen) == 0) return hay + i;
    return NULL;
}

static int hexval(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* Decode the chunked body in p[from, len) in place (the payload moves down, never up):
 * a state machine over the bytes, so that a chunk header split between two reads needs no
 * copy. *out: the end of the payload. Returns 1 once the last chunk (size 0) came, -1 on
 * a malformed body, else 0. */
static int dechunk(conn_t *c, char *p, size_t from, size_t len, size_t *out) {
    size_t w = from, r = from;
    while (r < len) {
        if (c->ch_state == CH_DATA) {
            size_t k = len - r;
            if (k > c->ch_left) k = c->ch_left;
            if (w != r) memmove(p + w, p + r, k);
            w += k; r += k; c->ch_left -= (uint32_t)k;
            if (!c->ch_left) c->ch_state = CH_DATA_END;
            continue;
        }
        char ch = p[r++];
        if (c->ch_state == CH_SIZE) {
            int v = hexval(ch);
            if (v >= 0) {
                if (c->ch_left > (MAX_FRAME << 4)) { *out = w; return -1; }
                c->ch_left = c->ch_left * 16 + (uint32_t)v;
            } else if (ch == ';' || ch == ' ' || ch == '\t') c->ch_state = CH_EXT;
            else if (ch == '\n') c->ch_state = c->ch_left ? CH_DATA : CH_END;
            else if (ch != '\r') { *out = w; return -1; }
        } else if (c->ch_state == CH_EXT) {
            if (ch == '\n') c->ch_state = c->ch_left ? CH_DATA : CH_END;
        } else if (c->ch_state == CH_DATA_END) {
            if (ch == '\n') c->ch_state = CH_SIZE;
            else if (ch != '\r') { *out = w; return -1; }
        }
        if (c->ch_state == CH_END) { *out = w; return 1; }  /* trailers, if any, ignored */
    }
    *out = w;
    return c->ch_state == CH_END;
}

/* One complete event: its data is a WebSocket message; "close" ends the stream. Returns
 * -1 if the connection was dropped. */
static int on_event(conn_t *c, uint32_t idx, const char *type, size_t tlen, const char *id,
                    size_t idlen, const char *data, size_t dlen, int64_t now) {
    frames++;
    if (id && idlen && idlen < sizeof c->cursor) { memcpy(c->cursor, id, idlen); c->cursor[idlen] = 0; }
    if ((tlen == 5 && memcmp(type, "close", 5) == 0)
            || (dlen >= 15 && memcmp(data, "{\"type\":\"close\"", 15) == 0)) {
        const char *k = memmem(data, dlen, "\"code\":", 7);
        int code = k ? atoi(k + 7) : 1005;
        if (code > 0 && code < 5000) close_codes[code]++;
        conn_drop(c, 0);
        return -1;
    }
    on_text(c, idx, data, dlen, now);
    return 0;
}

/* Parse every complete event in buf (decoded payload); returns the bytes consumed (up to
 * the start of an incomplete event), or -1 if the connection was dropped. */
static long parse_events(conn_t *c, uint32_t idx, char *buf, size_t len, int64_t now) {
    size_t off = 0, ev_start = 0;
    const char *type = NULL, *id = NULL, *data = NULL;
    size_t tlen = 0, idlen = 0, dlen = 0;
    int ndata = 0;
    while (off < len) {
        char *nl = memchr(buf + off, '\n', len - off);
        if (!nl) break;
        char *line = buf + off;
        size_t l = (size_t)(nl - line);
        off += l + 1;
        if (l && line[l - 1] == '\r') l--;
        if (l == 0) {  /* a blank line: the event is complete */
            if (ndata && on_event(c, idx, type, tlen, id, idlen, data, dlen, now) < 0) return -1;
            type = id = data = NULL; tlen = idlen = dlen = 0; ndata = 0;
            ev_start = off;
            continue;
        }
        if (line[0] == ':') { sse_comments++; continue; }  /* ": ping" */
        char *colon = memchr(line, ':', l);
        size_t nlen = colon ? (size_t)(colon - line) : l;
        const char *v = colon ? colon + 1 : line + l;
        size_t vlen = (size_t)(line + l - v);
        if (vlen && *v == ' ') { v++; vlen--; }
        if (nlen == 4 && memcmp(line, "data", 4) == 0) {
            if (ndata == 0) { data = v; dlen = vlen; }
            else {  /* several data lines: joined with "\n" (not what ticker sends) */
                size_t need = dlen + 1 + vlen;
                if (need > MAX_FRAME) { protocol_errors++; note_error("SSE event too large"); conn_drop(c, 1); return -1; }
                if (need > c->frag_cap) { c->frag_cap = (uint32_t)need * 2; c->frag = realloc(c->frag, c->frag_cap); }
                if (data != c->frag) memmove(c->frag, data, dlen);
                c->frag[dlen] = '\n';
                memcpy(c->frag + dlen + 1, v, vlen);
                data = c->frag; dlen = need;
            }
            ndata++;
        } else if (nlen == 5 && memcmp(line, "event", 5) == 0) { type = v; tlen = vlen; }
        else if (nlen == 2 && memcmp(line, "id", 2) == 0) { id = v; idlen = vlen; }
        /* "retry" and unknown fields: ignored */
    }
    return (long)ev_start;
}

/* rbuf[0, off): what was kept from the previous read (the head so far while the answer's
 * head is incomplete, else decoded payload); rbuf[off, len): the bytes just read. */
static void sse_input(conn_t *c, uint32_t idx, size_t off, size_t len, int64_t now) {
    char *p = rbuf;
    if (c->state == ST_HANDSHAKE) {
        char *end = memmem(p, len, "\r\n\r\n", 4);
        if (!end) { if (len > 8192) { note_error("SSE response head too long"); conn_drop(c, 1); } else keep_left(c, p, len); return; }
        if (len < 12 || (memcmp(p, "HTTP/1.1 200", 12) != 0 && memcmp(p, "HTTP/1.0 200", 12) != 0)) {
            char msg[128];
            snprintf(msg, sizeof msg, "SSE request refused: %.60s", p);
            for (char *q = msg; *q; q++) if (*q == '\r' || *q == '\n' || *q == '"' || *q == '\\') *q = ' ';
            note_error(msg);
            conn_drop(c, 1);
            return;
        }
        size_t hl = (size_t)(end - p) + 4;
        if (!memcasemem(p, hl, "text/event-stream")) no_subprotocol++;
        c->chunked = memcasemem(p, hl, "\r\ntransfer-encoding: chunked") != NULL;
        c->ch_state = CH_SIZE; c->ch_left = 0;
        c->state = ST_SUBSCRIBING;
        p += hl; len -= hl; off = 0;
    }
    size_t dlen = len;
    int ended = 0;
    if (c->chunked) {
        ended = dechunk(c, p, off, len, &dlen);
        if (ended < 0) { protocol_errors++; note_error("malformed chunked body"); conn_drop(c, 1); return; }
    }
    long used = parse_events(c, idx, p, dlen, now);
    if (used < 0) return;
    if (ended) {  /* the answer ended without a close event */
        sse_ended++; close_abnormal++;
        conn_drop(c, 0);
        return;
    }
    keep_left(c, p + used, dlen - (size_t)used);
    if (c->left_len > MAX_FRAME + 16) { protocol_errors++; note_error("SSE event too large"); conn_drop(c, 1); }
}

static void on_readable(conn_t *c, uint32_t idx) {
    size_t off = 0;
    if (c->left_len) { memcpy(rbuf, c->left, c->left_len); off = c->left_len; }
    ssize_t n = recv(c->fd, rbuf + off, RBUF_SIZE - off, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        close_abnormal++;
        if (c->state == ST_CONNECTING || c->state == ST_HANDSHAKE) { note_error("connection refused or reset during the handshake"); conn_drop(c, 1); }
        else conn_drop(c, 0);
        return;
    }
    if (n < 0) return;
    int64_t now = now_ns();
    reads++;
    bytes_in += (uint64_t)n;
    size_t len = off + (size_t)n;
    if (sse) { sse_input(c, idx, off, len, now); return; }
    char *p = rbuf;
    if (c->state == ST_HANDSHAKE) {
        char *end = memmem(p, len, "\r\n\r\n", 4);
        if (!end) { if (len > 8192) { note_error("handshake response too long"); conn_drop(c, 1); } else keep_left(c, p, len); return; }
        if (len < 12 || memcmp(p, "HTTP/1.1 101", 12) != 0) {
            char msg[128];
            snprintf(msg, sizeof msg, "handshake refused: %.60s", p);
            for (char *q = msg; *q; q++) if (*q == '\r' || *q == '\n' || *q == '"' || *q == '\\') *q = ' ';
            note_error(msg);
            conn_drop(c, 1);
            return;
        }
        if (!memmem(p, (size_t)(end - p), "ticker.v1", 9)) no_subprotocol++;
        c->state = ST_SUBSCRIBING;
        if (send_subscribe(c, phase == PH_RESUME) < 0) { conn_drop(c, 1); return; }
        size_t hl = (size_t)(end - p) + 4;
        p += hl; len -= hl;
    }
    long used = parse_frames(c, idx, p, len, now);
    if (used < 0) return;
    keep_left(c, p + used, len - (size_t)used);
    if (c->left_len > MAX_FRAME + 16) { protocol_errors++; conn_drop(c, 1); }
}

static void on_writable(conn_t *c, uint32_t idx) {
    int err = 0; socklen_t el = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
    if (err) { note_error(strerror(err)); conn_drop(c, 1); return; }
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = idx};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->state = ST_HANDSHAKE;
    if (send_handshake(c) < 0) conn_drop(c, 1);
}

static void on_stdin(void) {
    ssize_t n = read(0, stdin_line + stdin_len, sizeof stdin_line - 1 - stdin_len);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) { stdin_eof = 1; epoll_ctl(ep, EPOLL_CTL_DEL, 0, NULL); return; }
    if (n < 0) return;
    stdin_len += (size_t)n;
    stdin_line[stdin_len] = 0;
    char *nl;
    while ((nl = strchr(stdin_line, '\n'))) {
        *nl = 0;
        if (strncmp(stdin_line, "go", 2) == 0) stdin_go = 1;
        else if (strncmp(stdin_line, "quit", 4) == 0) stdin_quit = 1;
        size_t rest = stdin_len - (size_t)(nl + 1 - stdin_line);
        memmove(stdin_line, nl + 1, rest);
        stdin_len = rest;
        stdin_line[stdin_len] = 0;
    }
    if (stdin_len >= sizeof stdin_line - 1) stdin_len = 0;
}

/* ------------------------------------------------------------------ reporting */

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}
static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct_u32(const uint32_t *v, size_t n, double q) {
    if (!n) return -1;
    size_t i = (size_t)(q * (double)(n - 1) + 0.5);
    return v[i];
}

/* Per-connection times (ready or done) relative to t0, as {"p50":..,"p99":..,"max":..}. */
static void times_json(char *out, size_t cap, int64_t t0, int use_done) {
    int64_t *v = malloc(sizeof(int64_t) * (size_t)(nconn > 0 ? nconn : 1));
    size_t k = 0;
    for (int i = 0; i < nconn; i++) {
        int64_t t = use_done ? conns[i].t_done : conns[i].t_ready;
        if (t) v[k++] = t - t0;
    }
    qsort(v, k, sizeof *v, cmp_i64);
    if (!k) snprintf(out, cap, "{\"n\":0}");
    else snprintf(out, cap, "{\"n\":%zu,\"p50_s\":%.6f,\"p99_s\":%.6f,\"max_s\":%.6f}", k,
                  v[(size_t)(0.5 * (double)(k - 1) + 0.5)] / 1e9, v[(size_t)(0.99 * (double)(k - 1) + 0.5)] / 1e9, v[k - 1] / 1e9);
    free(v);
}

static void closes_json(char *out, size_t cap) {
    size_t o = (size_t)snprintf(out, cap, "{");
    int first = 1;
    for (int i = 0; i < 5000; i++) if (close_codes[i] && o < cap - 32) {
        o += (size_t)snprintf(out + o, cap - o, "%s\"%d\":%d", first ? "" : ",", i, close_codes[i]);
        first = 0;
    }
    snprintf(out + o, cap - o, "%s\"abnormal\":%d}", first ? "" : ",", close_abnormal);
}

/* ------------------------------------------------------------------ main loop */

static struct epoll_event *evs;
static int max_events;

static void pump(int64_t until_ns) {
    int64_t now = now_ns();
    int wait_ms = (int)((until_ns - now) / 1000000);
    if (wait_ms < 0) wait_ms = 0;
    if (wait_ms > 50) wait_ms = 50;
    int k = epoll_wait(ep, evs, max_events, wait_ms);
    for (int i = 0; i < k; i++) {
        uint32_t idx = evs[i].data.u32;
        if (idx == STDIN_ID) { on_stdin(); continue; }
        conn_t *c = &conns[idx];
        if (c->fd < 0) continue;
        if (c->state == ST_CONNECTING) {
            if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_writable(c, idx);
            continue;
        }
        if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c, idx);
    }
}

static int live_count(void) {
    int k = 0;
    for (int i = 0; i < nconn; i++) if (conns[i].state == ST_READY) k++;
    return k;
}

/* Connect storm: open every connection at once; ends when each is ready or failed. */
static double connect_storm(int64_t *t0_out) {
    n_ready = 0;
    int64_t t0 = now_ns();
    *t0_out = t0;
    phase_deadline_ns = t0 + (int64_t)(connect_timeout_s * 1e9);
    if (phase_deadline_ns > deadline_ns) phase_deadline_ns = deadline_ns;
    int failed0 = n_failed;
    for (int i = 0; i < nconn; i++) { conns[i].retries = 0; conn_open(&conns[i], (uint32_t)i); }
    while (now_ns() < phase_deadline_ns) {
        if (n_ready + (n_failed - failed0) >= nconn) break;
        pump(phase_deadline_ns);
        if (n_retry_pending) {
            int64_t now = now_ns();
            for (int i = 0; i < nconn; i++)
                if (conns[i].state == ST_RETRY && conns[i].retry_at <= now) {
                    n_retry_pending--;
                    conn_open(&conns[i], (uint32_t)i);
                }
        }
    }
    /* Not ready at the deadline (waiting to retry, or still connecting or subscribing):
     * failed. Closed, so that the scenario that follows has exactly the ready ones. */
    for (int i = 0; i < nconn; i++) {
        conn_t *c = &conns[i];
        if (c->state == ST_RETRY) { c->state = ST_FAILED; n_failed++; n_retry_pending--; }
        else if (c->state == ST_CONNECTING || c->state == ST_HANDSHAKE || c->state == ST_SUBSCRIBING) {
            c->retries = (uint16_t)max_retries;  /* no retry now */
            conn_drop(c, 1);
        }
    }
    int64_t t1 = now_ns();
    return (t1 - t0) / 1e9;
}

static void usage(void) {
    fprintf(stderr,
        "usage: loadclient --url ws://127.0.0.1:PORT/v1/ws [--n N] [--channel bench]\n"
        "       [--mode live|connect|reconnect] [--expect K] [--resume-expect R] [--seq-base B]\n"
        "       [--max-seq M] [--timeout S] [--connect-timeout S] [--idle-timeout S] [--src-ips K]\n"
        "       [--max-retries R] [--lat-out FILE] [--transport ws|sse]\n"
        "       [--resume-with since|last-event-id]\n");
    exit(2);
}

static void parse_url(const char *url) {
    const char *p = url;
    if (strncmp(p, "ws://", 5) == 0) p += 5;
    else if (strncmp(p, "http://", 7) == 0) p += 7;
    else { fprintf(stderr, "loadclient: only ws:// (or http://, for SSE) URLs on an IPv4 address are supported\n"); exit(2); }
    const char *colon = strchr(p, ':'), *slash = strchr(p, '/');
    if (!colon || (slash && slash < colon)) { fprintf(stderr, "loadclient: the URL needs a port, as in ws://127.0.0.1:8000/v1/ws\n"); exit(2); }
    snprintf(host, sizeof host, "%.*s", (int)(colon - p), p);
    port = atoi(colon + 1);
    if (slash) snprintf(path, sizeof path, "%s", slash);
    struct in_addr a;
    if (inet_pton(AF_INET, host, &a) != 1) { fprintf(stderr, "loadclient: the host must be an IPv4 address\n"); exit(2); }
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) usage();
        if (!strcmp(a, "--url")) parse_url(v);
        else if (!strcmp(a, "--n")) nconn = atoi(v);
        else if (!strcmp(a, "--channel")) snprintf(channel, sizeof channel, "%s", v);
        else if (!strcmp(a, "--mode")) snprintf(mode, sizeof mode, "%s", v);
        else if (!strcmp(a, "--expect")) expect = (uint32_t)atoi(v);
        else if (!strcmp(a, "--resume-expect")) resume_expect = (uint32_t)atoi(v);
        else if (!strcmp(a, "--seq-base")) seq_base = (uint32_t)atoi(v);
        else if (!strcmp(a, "--max-seq")) max_seq = (uint32_t)atoi(v);
        else if (!strcmp(a, "--timeout")) timeout_s = atof(v);
        else if (!strcmp(a, "--connect-timeout")) connect_timeout_s = atof(v);
        else if (!strcmp(a, "--idle-timeout")) idle_timeout_s = atof(v);
        else if (!strcmp(a, "--src-ips")) src_ips = atoi(v);
        else if (!strcmp(a, "--lat-out")) snprintf(lat_out, sizeof lat_out, "%s", v);
        else if (!strcmp(a, "--transport")) {
            if (!strcmp(v, "sse")) sse = 1;
            else if (strcmp(v, "ws")) usage();
        }
        else if (!strcmp(a, "--resume-with")) {
            if (!strcmp(v, "last-event-id")) resume_last_id = 1;
            else if (strcmp(v, "since")) usage();
        }
        else if (!strcmp(a, "--max-retries")) max_retries = atoi(v) > 60000 ? 60000 : atoi(v);
        else usage();
        i++;
    }
    if (!port || nconn <= 0) usage();
    if (strcmp(mode, "live") && strcmp(mode, "connect") && strcmp(mode, "reconnect")) usage();
    track_cursor = !strcmp(mode, "reconnect");
    /* SSE: one channel per stream; the URL's path, unless it names none */
    if (sse && !strstr(path, "/events")) snprintf(path, sizeof path, "/v1/channels/%s/events", channel);
    /* {"type":"brief","channel":"CH","brief":{"id":"<at least 15>","channel":"CH","text":" */
    seq_skip = 26 + (strlen(channel) + 2) + 16 + 15;
    uint32_t need = expect > resume_expect ? expect : resume_expect;
    if (need > max_seq) max_seq = need;  /* small bitmaps: they stay in cache */
    if (max_seq < 64) max_seq = 64;

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if ((rlim_t)nconn + 16 > rl.rlim_cur) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        if ((rlim_t)nconn + 16 > rl.rlim_cur) {
            fprintf(stderr, "loadclient: %d connections need more open files than the limit (%llu)\n",
                    nconn, (unsigned long long)rl.rlim_cur);
            return 2;
        }
    }

    conns = calloc((size_t)nconn, sizeof *conns);
    bm_bytes = (max_seq + 7) / 8;
    bitmaps = calloc((size_t)nconn, bm_bytes);
    rbuf = malloc(RBUF_SIZE);
    lat_cap = (size_t)nconn * (expect ? expect : 1);
    lat_us = malloc(lat_cap * sizeof *lat_us);
    max_events = nconn + 8 > MAX_EVENTS ? nconn + 8 : MAX_EVENTS;  /* one wait sees every socket */
    evs = malloc(sizeof *evs * (size_t)max_events);
    if (!conns || !bitmaps || !rbuf || !lat_us || !evs) { fprintf(stderr, "loadclient: out of memory\n"); return 1; }
    for (int i = 0; i < nconn; i++) conns[i].fd = -1;
    ep = epoll_create1(EPOLL_CLOEXEC);
    set_nonblock(0);
    struct epoll_event sev = {.events = EPOLLIN, .data.u32 = STDIN_ID};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, 0, &sev) < 0) stdin_eof = 1;  /* not a pipe or tty: no commands */

    t_run0 = now_ns();
    deadline_ns = t_run0 + (int64_t)(timeout_s * 1e9);
    double cpu0 = cpu_s();

    /* 1. connect storm */
    int64_t tc0;
    double connect_s = connect_storm(&tc0);
    char connect_times[256];
    times_json(connect_times, sizeof connect_times, tc0, 0);
    int connect_ready = n_ready;
    emit("{\"event\":\"ready\",\"n\":%d,\"ready\":%d,\"failed\":%d,\"retries\":%llu,\"connect_s\":%.6f,\"t0_ns\":%lld,\"connect\":%s}\n",
         nconn, n_ready, n_failed, (unsigned long long)retries_total, connect_s, (long long)tc0, connect_times);

    /* 2. live phase: wait for `expect` briefs on every connection */
    phase = PH_LIVE;
    n_done = 0;
    for (int i = 0; i < nconn; i++) conns[i].was_ready = conns[i].state == ST_READY;
    double cpu_live0 = cpu_s(), sys_live0 = sys_s();
    int64_t t_live0 = now_ns();
    int timed_out = 0;
    if (expect > 0) {
        while (1) {
            int64_t now = now_ns();
            if (n_done >= live_count()) break;
            if (now >= deadline_ns) { timed_out = 1; break; }
            if (t_last_brief && now - t_last_brief > (int64_t)(idle_timeout_s * 1e9)) { timed_out = 1; break; }
            if (stdin_quit) { timed_out = 1; break; }
            int64_t until = deadline_ns;
            pump(until);
        }
    }
    double cpu_live = cpu_s() - cpu_live0, sys_live = sys_s() - sys_live0;
    double live_wall = (now_ns() - t_live0) / 1e9;
    uint64_t live_deliveries = deliveries, live_dups = duplicates, live_unexpected = unexpected;
    int live_done = n_done, live_open = live_count();
    uint64_t expected_total = (uint64_t)nconn * expect;
    /* Losses proper: briefs missing on connections that were subscribed when the phase
     * began (a connection closed by the server meanwhile loses the rest). Connections that
     * never got their snapshot are connect failures, reported apart. */
    uint64_t missing_ready = 0;
    int ready_at_start = 0, closed_during = 0;
    for (int i = 0; i < nconn; i++) {
        if (!conns[i].was_ready) continue;
        ready_at_start++;
        if (conns[i].count < expect) missing_ready += expect - conns[i].count;
        if (conns[i].state != ST_READY) closed_during++;
    }

    /* connect mode: stay connected and idle until told to quit */
    if (!strcmp(mode, "connect")) {
        while (!stdin_quit && !stdin_eof && now_ns() < deadline_ns) pump(deadline_ns);
    }

    /* 3. reconnect mode: wait for the server to close everything, then "go" */
    char resume_json[1024] = "null";
    if (!strcmp(mode, "reconnect")) {
        phase = PH_WAIT_DOWN;
        while (live_count() > 0 && now_ns() < deadline_ns && !stdin_quit) pump(deadline_ns);
        int still_open = live_count();
        char closes[512];
        closes_json(closes, sizeof closes);
        emit("{\"event\":\"down\",\"still_open\":%d,\"closes\":%s}\n", still_open, closes);
        phase = PH_WAIT_GO;
        while (!stdin_go && !stdin_quit && !stdin_eof && now_ns() < deadline_ns) pump(deadline_ns);
        if (stdin_go) {
            for (int i = 0; i < nconn; i++) {
                if (conns[i].fd >= 0) conn_drop(&conns[i], 0);
                conns[i].state = ST_IDLE;
            }
            memset(bitmaps, 0, (size_t)nconn * bm_bytes);
            n_failed = 0; n_done = 0; n_recovered = n_not_recovered = n_no_cursor = 0;
            deliveries = duplicates = unexpected = 0;
            phase = PH_RESUME;
            int64_t tg;
            uint64_t retries0 = retries_total;
            double storm_s = connect_storm(&tg);
            /* the storm ends when every connection is ready; then wait for the catch-up */
            while (n_done + n_failed < nconn && now_ns() < phase_deadline_ns) pump(phase_deadline_ns);
            int64_t t_end = now_ns();
            char ready_t[256], done_t[256];
            times_json(ready_t, sizeof ready_t, tg, 0);
            times_json(done_t, sizeof done_t, tg, 1);
            snprintf(resume_json, sizeof resume_json,
                "{\"expect\":%u,\"resumed\":%d,\"recovered\":%d,\"not_recovered\":%d,\"no_cursor\":%d,\"failed\":%d,\"retries\":%llu,"
                "\"deliveries\":%llu,\"expected_deliveries\":%llu,\"duplicates\":%llu,\"unexpected\":%llu,"
                "\"ready_s\":%.6f,\"all_resumed_s\":%.6f,\"subscribed\":%s,\"resumed_at\":%s,\"timed_out\":%s}",
                resume_expect, n_done, n_recovered, n_not_recovered, n_no_cursor, n_failed,
                (unsigned long long)(retries_total - retries0),
                (unsigned long long)deliveries, (unsigned long long)nconn * resume_expect,
                (unsigned long long)duplicates, (unsigned long long)unexpected,
                storm_s, (t_end - tg) / 1e9, ready_t, done_t, n_done + n_failed < nconn ? "true" : "false");
        }
    }

    /* 4. report */
    qsort(lat_us, lat_n, sizeof *lat_us, cmp_u32);
    if (lat_out[0]) {
        /* Several client processes: the runner merges their sorted latencies. */
        FILE *lf = fopen(lat_out, "wb");
        if (!lf || fwrite(lat_us, sizeof *lat_us, lat_n, lf) != lat_n) note_error("cannot write --lat-out");
        if (lf) fclose(lf);
    }
    double mean = 0;
    for (size_t i = 0; i < lat_n; i++) mean += lat_us[i];
    if (lat_n) mean /= (double)lat_n;
    double elapsed = (t_first_pub != INT64_MAX && t_last_recv) ? (t_last_recv - t_first_pub) / 1e9 : 0;
    char closes[512];
    closes_json(closes, sizeof closes);
    char err_json[300] = "null";
    if (first_error[0]) {
        for (char *q = first_error; *q; q++) if (*q == '"' || *q == '\\' || (unsigned char)*q < 32) *q = ' ';
        snprintf(err_json, sizeof err_json, "\"%s\"", first_error);
    }
    emit("{\"event\":\"report\",\"mode\":\"%s\",\"n\":%d,"
         "\"connect\":{\"ready\":%d,\"all_ready_s\":%.6f,\"per_connection\":%s},"
         "\"live\":{\"expect\":%u,\"open\":%d,\"complete\":%d,\"deliveries\":%llu,\"expected_deliveries\":%llu,"
         "\"missing\":%lld,\"ready_at_start\":%d,\"missing_on_ready\":%llu,\"closed_during\":%d,\"duplicates\":%llu,\"unexpected\":%llu,\"early\":%llu,\"timed_out\":%s,"
         "\"elapsed_s\":%.6f,\"deliveries_per_s\":%.1f,\"wall_s\":%.6f,\"t_first_pub_ns\":%lld,\"t_last_recv_ns\":%lld,"
         "\"latency_ms\":{\"n\":%zu,\"min\":%.3f,\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"max\":%.3f,\"mean\":%.3f,\"dropped\":%zu},"
         "\"client_cpu_s\":%.4f,\"client_sys_s\":%.4f},"
         "\"resume\":%s,"
         "\"closes\":%s,\"frames\":%llu,\"reads\":%llu,\"bytes\":%llu,"
         "\"server_errors\":%llu,\"protocol_errors\":%llu,\"no_subprotocol\":%llu,\"other_messages\":%llu,"
         "\"transport\":\"%s\",\"sse_comments\":%llu,\"sse_ended\":%llu,"
         "\"client_cpu_s\":%.4f,\"wall_s\":%.6f,\"error\":%s}\n",
         mode, nconn,
         connect_ready, connect_s, connect_times,
         expect, live_open, live_done, (unsigned long long)live_deliveries, (unsigned long long)expected_total,
         (long long)expected_total - (long long)live_deliveries, ready_at_start,
         (unsigned long long)missing_ready, closed_during, (unsigned long long)live_dups,
         (unsigned long long)live_unexpected, (unsigned long long)early_briefs, timed_out ? "true" : "false",
         elapsed, elapsed > 0 ? live_deliveries / elapsed : 0.0, live_wall,
         (long long)(t_first_pub == INT64_MAX ? 0 : t_first_pub), (long long)t_last_recv,
         lat_n, pct_u32(lat_us, lat_n, 0) / 1e3, pct_u32(lat_us, lat_n, 0.5) / 1e3, pct_u32(lat_us, lat_n, 0.9) / 1e3,
         pct_u32(lat_us, lat_n, 0.99) / 1e3, lat_n ? lat_us[lat_n - 1] / 1e3 : -1.0, mean / 1e3, lat_dropped,
         cpu_live, sys_live,
         resume_json,
         closes, (unsigned long long)frames, (unsigned long long)reads, (unsigned long long)bytes_in,
         (unsigned long long)server_errors, (unsigned long long)protocol_errors,
         (unsigned long long)no_subprotocol, (unsigned long long)other_messages,
         sse ? "sse" : "ws", (unsigned long long)sse_comments, (unsigned long long)sse_ended,
         cpu_s() - cpu0, (now_ns() - t_run0) / 1e9, err_json);

    for (int i = 0; i < nconn; i++) if (conns[i].fd >= 0) close(conns[i].fd);
    return 0;
}
