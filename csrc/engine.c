/*
 * The engine: many client connections driven at once on one epoll set.
 *
 * Each probe is an ss_conn_t from conn.c plus the engine's own phases after
 * the connection is established (send the payload, keep a banner). The
 * engine only waits: conn.c's ss_conn_step does the connecting and the
 * handshake, and its wants say which event to wait for. A connection may
 * change sockets while it tries each resolved address, so the registered fd
 * is re-checked after every step. Deadlines are per phase (connect,
 * handshake) and for the whole probe; finished probes are reported as
 * fixed-size records whose variable parts go into the caller's arena.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

struct probe {
    ss_conn_t *conn;
    uint64_t id;
    int64_t start_ns;
    int64_t connected_ns;   /* 0 until connected */
    int64_t established_ns; /* 0 until TLS (if any) is done */
    int watched_fd;         /* fd registered with epoll, or -1 */
    uint32_t watched_events;
    uint32_t payload_sent;
    uint32_t banner_len;
    unsigned char *banner;
    int done;
    int error; /* set when the engine itself ends the probe (timeout) */
};

struct ss_engine {
    int epoll_fd;
    ss_engine_options_t opts;
    char *payload;
    struct probe *slots; /* concurrency entries; conn == NULL is free */
    uint32_t in_flight;
    struct probe *queue; /* FIFO of probes not started yet */
    uint32_t queue_head, queue_len, queue_cap;
};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t ms_to_ns(int32_t ms)
{
    return ms > 0 ? (int64_t)ms * 1000000 : 0;
}

ss_engine_t *ss_engine_new(const ss_engine_options_t *opts, ss_error_info_t *err)
{
    ss__fail(err, SS_OK, 0, "%s", "");
    if (opts->concurrency < 1) {
        ss__fail(err, SS_ERR_STATE, EINVAL, "concurrency must be at least 1");
        return NULL;
    }
    ss_engine_t *e = calloc(1, sizeof *e);
    if (!e)
        goto nomem;
    e->opts = *opts;
    e->epoll_fd = -1;
    e->slots = calloc((size_t)opts->concurrency, sizeof *e->slots);
    if (!e->slots)
        goto nomem;
    if (opts->payload_len) {
        e->payload = malloc(opts->payload_len);
        if (!e->payload)
            goto nomem;
        memcpy(e->payload, opts->payload, opts->payload_len);
    }
    e->opts.payload = e->payload;
    e->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (e->epoll_fd < 0) {
        ss__fail(err, SS_ERR_SYSTEM, errno, "epoll_create1 failed: %s", strerror(errno));
        ss_engine_free(e);
        return NULL;
    }
    return e;
nomem:
    ss_engine_free(e);
    ss__fail(err, SS_ERR_NOMEM, ENOMEM, "out of memory");
    return NULL;
}

static void release_probe(struct probe *p)
{
    ss_conn_free(p->conn);
    free(p->banner);
    memset(p, 0, sizeof *p);
}

void ss_engine_free(ss_engine_t *e)
{
    if (!e)
        return;
    if (e->slots)
        for (int32_t i = 0; i < e->opts.concurrency; i++)
            if (e->slots[i].conn)
                release_probe(&e->slots[i]);
    for (uint32_t i = 0; i < e->queue_len; i++)
        ss_conn_free(e->queue[(e->queue_head + i) % e->queue_cap].conn);
    free(e->queue);
    free(e->slots);
    free(e->payload);
    if (e->epoll_fd >= 0)
        close(e->epoll_fd);
    free(e);
}

int ss_engine_add(ss_engine_t *e, uint64_t id, ss_conn_t *conn)
{
    if (e->queue_len == e->queue_cap) {
        uint32_t cap = e->queue_cap ? e->queue_cap * 2 : 64;
        struct probe *grown = calloc(cap, sizeof *grown);
        if (!grown) {
            ss_conn_free(conn);
            return SS_ERR_NOMEM;
        }
        for (uint32_t i = 0; i < e->queue_len; i++)
            grown[i] = e->queue[(e->queue_head + i) % e->queue_cap];
        free(e->queue);
        e->queue = grown;
        e->queue_cap = cap;
        e->queue_head = 0;
    }
    struct probe *p = &e->queue[(e->queue_head + e->queue_len) % e->queue_cap];
    memset(p, 0, sizeof *p);
    p->conn = conn;
    p->id = id;
    p->watched_fd = -1;
    e->queue_len++;
    return SS_OK;
}

uint32_t ss_engine_pending(const ss_engine_t *e)
{
    return e->in_flight + e->queue_len;
}

/* Keeps the epoll registration in step with the conn's fd and want. */
static int watch(ss_engine_t *e, struct probe *p, int want)
{
    int fd = ss_conn_fd(p->conn);
    uint32_t events = want == SS_WANT_WRITE ? EPOLLOUT : EPOLLIN;
    if (fd == p->watched_fd && events == p->watched_events)
        return SS_OK;
    struct epoll_event ev = {.events = events, .data.ptr = p};
    /* A socket closed by a failed connect attempt left the set by itself; its
     * successor may even have the same number: MOD, else ADD. */
    if (epoll_ctl(e->epoll_fd, EPOLL_CTL_MOD, fd, &ev) < 0) {
        if (errno != ENOENT || epoll_ctl(e->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0)
            return ss__fail(&p->conn->err, SS_ERR_SYSTEM, errno, "epoll_ctl failed: %s", strerror(errno));
    }
    p->watched_fd = fd;
    p->watched_events = events;
    return SS_OK;
}

static void unwatch(ss_engine_t *e, struct probe *p)
{
    if (p->watched_fd >= 0 && p->watched_fd == ss_conn_fd(p->conn))
        epoll_ctl(e->epoll_fd, EPOLL_CTL_DEL, p->watched_fd, NULL);
    p->watched_fd = -1;
}

/* Moves a probe as far as it goes: 1 when it has finished, 0 when waiting. */
static int advance(ss_engine_t *e, struct probe *p)
{
    char scratch[4096];
    for (;;) {
        int state = ss_conn_state(p->conn);
        if (state != SS_STATE_ESTABLISHED) {
            int rc = ss_conn_step(p->conn);
            int after = ss_conn_state(p->conn);
            int64_t t = now_ns();
            if (!p->connected_ns && (after == SS_STATE_HANDSHAKING || after == SS_STATE_ESTABLISHED))
                p->connected_ns = t;
            if (rc < 0)
                return 1;
            if (rc != SS_DONE)
                return watch(e, p, rc) == SS_OK ? 0 : 1;
            p->established_ns = t;
            continue;
        }
        if (p->payload_sent < e->opts.payload_len) {
            int64_t n = ss_conn_write(p->conn, e->payload + p->payload_sent, e->opts.payload_len - p->payload_sent);
            if (n > 0) {
                p->payload_sent += (uint32_t)n;
                continue;
            }
            if (n == SS_IO_WANT_READ || n == SS_IO_WANT_WRITE)
                return watch(e, p, n == SS_IO_WANT_READ ? SS_WANT_READ : SS_WANT_WRITE) == SS_OK ? 0 : 1;
            return 1;
        }
        if (p->banner_len < e->opts.banner_max) {
            if (!p->banner && !(p->banner = malloc(e->opts.banner_max)))
                return 1;
            size_t room = e->opts.banner_max - p->banner_len;
            int64_t n = ss_conn_read(p->conn, scratch, room < sizeof scratch ? room : sizeof scratch);
            if (n > 0) {
                memcpy(p->banner + p->banner_len, scratch, (size_t)n);
                p->banner_len += (uint32_t)n;
                continue;
            }
            if (n == SS_IO_WANT_READ || n == SS_IO_WANT_WRITE)
                return watch(e, p, n == SS_IO_WANT_READ ? SS_WANT_READ : SS_WANT_WRITE) == SS_OK ? 0 : 1;
            return 1; /* end of stream or an error: the banner is what came */
        }
        return 1;
    }
}

static int64_t deadline_of(const ss_engine_t *e, const struct probe *p)
{
    int64_t total = e->opts.total_timeout_ms > 0 ? p->start_ns + ms_to_ns(e->opts.total_timeout_ms) : INT64_MAX;
    int64_t phase = INT64_MAX;
    if (!p->connected_ns && e->opts.connect_timeout_ms > 0)
        phase = p->start_ns + ms_to_ns(e->opts.connect_timeout_ms);
    else if (p->connected_ns && !p->established_ns && e->opts.handshake_timeout_ms > 0)
        phase = p->connected_ns + ms_to_ns(e->opts.handshake_timeout_ms);
    return phase < total ? phase : total;
}

static void start_queued(ss_engine_t *e)
{
    for (int32_t i = 0; i < e->opts.concurrency && e->queue_len; i++) {
        struct probe *slot = &e->slots[i];
        if (slot->conn)
            continue;
        *slot = e->queue[e->queue_head];
        e->queue_head = (e->queue_head + 1) % e->queue_cap;
        e->queue_len--;
        e->in_flight++;
        slot->start_ns = now_ns();
        slot->done = advance(e, slot);
    }
}

static double elapsed_ms(int64_t from, int64_t to)
{
    return to ? (double)(to - from) / 1e6 : -1.0;
}

static void copy_field(char *out, size_t cap, const char *text)
{
    size_t n = strlen(text);
    if (n >= cap)
        n = cap - 1;
    memcpy(out, text, n);
    out[n] = '\0';
}

/* Writes the record; returns 0 when the arena is too full for its data. */
static int report(ss_engine_t *e, struct probe *p, ss_probe_result_t *r, unsigned char *arena, uint32_t arena_cap,
                  uint32_t *arena_used)
{
    uint32_t used = *arena_used;
    uint32_t need = p->banner_len;
    unsigned char der[16384];
    for (int32_t i = 0; i < (e->opts.capture_chain ? 16 : 1); i++) {
        int64_t len = ss_conn_peer_cert(p->conn, i, NULL, 0);
        if (len <= 0 || len > (int64_t)sizeof der)
            break;
        need += 4 + (uint32_t)len;
    }
    if (used + need > arena_cap && used > 0)
        return 0;
    memset(r, 0, sizeof *r);
    r->id = p->id;
    ss_error_info_t err;
    ss_conn_error(p->conn, &err);
    r->error = p->error ? p->error : err.code;
    r->sys_errno = p->error ? ETIMEDOUT : err.sys_errno;
    r->verify_result = err.verify_result;
    copy_field(r->message, sizeof r->message, err.code ? err.message : "");
    r->state = ss_conn_state(p->conn);
    r->ok = r->error == SS_OK && p->established_ns != 0;
    int64_t end = now_ns();
    r->connect_ms = elapsed_ms(p->start_ns, p->connected_ns);
    r->handshake_ms = ss_conn_is_tls(p->conn) && p->established_ns ? elapsed_ms(p->connected_ns, p->established_ns)
                                                                    : -1.0;
    r->total_ms = elapsed_ms(p->start_ns, end);
    ss_tls_info_t info;
    ss_conn_tls_info(p->conn, &info);
    copy_field(r->protocol, sizeof r->protocol, info.protocol);
    copy_field(r->cipher, sizeof r->cipher, info.cipher_name);
    copy_field(r->group, sizeof r->group, info.group);
    copy_field(r->alpn, sizeof r->alpn, info.alpn);
    r->session_reused = info.session_reused;
    if (ss_conn_name(p->conn, 1, r->peer, sizeof r->peer) < 0)
        r->peer[0] = '\0';
    if (used + need <= arena_cap) {
        r->banner_off = used;
        r->banner_len = p->banner_len;
        if (p->banner_len)
            memcpy(arena + used, p->banner, p->banner_len);
        used += p->banner_len;
        r->certs_off = used;
        for (int32_t i = 0; i < (e->opts.capture_chain ? 16 : 1); i++) {
            int64_t len = ss_conn_peer_cert(p->conn, i, der, sizeof der);
            if (len <= 0 || len > (int64_t)sizeof der)
                break;
            uint32_t n = (uint32_t)len;
            unsigned char prefix[4] = {(unsigned char)n, (unsigned char)(n >> 8), (unsigned char)(n >> 16),
                                       (unsigned char)(n >> 24)};
            memcpy(arena + used, prefix, 4);
            memcpy(arena + used + 4, der, n);
            used += 4 + n;
        }
        r->certs_len = used - r->certs_off;
    }
    *arena_used = used;
    return 1;
}

static void expire(struct probe *p)
{
    const char *what = !p->connected_ns ? "Connection timed out"
                       : !p->established_ns ? "TLS handshake timed out"
                                            : "Probe timed out";
    ss__fail(&p->conn->err, SS_ERR_TIMEOUT, ETIMEDOUT, "%s", what);
    p->error = SS_ERR_TIMEOUT;
    p->done = 1;
}

int32_t ss_engine_run(ss_engine_t *e, int32_t timeout_ms, ss_probe_result_t *out, uint32_t cap,
                      unsigned char *arena, uint32_t arena_cap)
{
    int64_t until = timeout_ms < 0 ? INT64_MAX : now_ns() + ms_to_ns(timeout_ms);
    uint32_t produced = 0, arena_used = 0;
    struct epoll_event events[256];
    for (;;) {
        start_queued(e);
        /* Report what has finished, as room allows. */
        int64_t t = now_ns();
        int64_t next_deadline = INT64_MAX;
        for (int32_t i = 0; i < e->opts.concurrency; i++) {
            struct probe *p = &e->slots[i];
            if (!p->conn)
                continue;
            if (!p->done) {
                int64_t d = deadline_of(e, p);
                if (d <= t)
                    expire(p);
                else if (d < next_deadline)
                    next_deadline = d;
            }
            if (p->done && produced < cap) {
                unwatch(e, p);
                if (!report(e, p, &out[produced], arena, arena_cap, &arena_used))
                    continue; /* arena full: next call */
                produced++;
                release_probe(p);
                e->in_flight--;
            }
        }
        if (produced == cap || (produced && e->queue_len == 0) || (produced && t >= until))
            return (int32_t)produced;
        if (e->in_flight == 0 && e->queue_len == 0)
            return (int32_t)produced;
        if (e->in_flight == 0)
            continue; /* start the next queued ones */
        int64_t wait_until = next_deadline < until ? next_deadline : until;
        if (produced)
            wait_until = t; /* have results: just poll */
        int wait_ms = wait_until == INT64_MAX ? -1 : (int)((wait_until - t + 999999) / 1000000);
        if (wait_ms < 0 && wait_until != INT64_MAX)
            wait_ms = 0;
        int n = epoll_wait(e->epoll_fd, events, (int)(sizeof events / sizeof events[0]), wait_ms);
        if (n < 0 && errno != EINTR)
            return SS_ERR_SYSTEM;
        for (int i = 0; i < n; i++) {
            struct probe *p = events[i].data.ptr;
            if (p->conn && !p->done)
                p->done = advance(e, p);
        }
        if (n <= 0 && produced)
            return (int32_t)produced; /* nothing more ready right now */
        if (n == 0 && now_ns() >= until && produced == 0) {
            /* Time is up for this call; expire what is due, report next time. */
            t = now_ns();
            int any = 0;
            for (int32_t i = 0; i < e->opts.concurrency; i++)
                any |= e->slots[i].conn && (e->slots[i].done || deadline_of(e, &e->slots[i]) <= t);
            if (!any)
                return 0;
        }
    }
}
