/*
 * The engine: many client connections driven at once on one epoll set.
 *
 * Each probe is an ss_conn_t from conn.c plus the engine's own phases:
 *
 *   [lookup] -> connect -> [TLS | STARTTLS dialogue -> TLS] -> [payload]
 *            -> [banner] -> [session ticket] -> reported
 *
 * The engine only waits: conn.c's ss_conn_step does the connecting and the
 * handshake, starttls.c the dialogue, and their wants say which event to
 * wait for. A connection may change sockets while it tries each resolved
 * address, so the registered fd is re-checked after every step. Host names
 * go to the resolver's threads (resolver.c) so a slow lookup never stalls
 * the loop; its eventfd sits on the same epoll set, as does the one by which
 * ss_engine_interrupt makes a run return from another thread (engine_thread.c
 * runs the engine on a thread of its own). Deadlines are per phase
 * (connect, handshake) and for the whole probe; a rate limit (token bucket)
 * spaces new connections; a session cache offers repeat targets their last
 * TLS session. A probe hangs up as soon as it finishes, and is reported
 * as a fixed-size record whose variable parts go into the caller's arena.
 * A finished probe leaves its slot at once, so the next one starts before
 * its record is written. Bookkeeping (free slots, finished probes, the next
 * deadline) is kept so that a loop turn costs what happened in it, not the
 * concurrency.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "internal.h"

#define SLOT_BITS 24 /* lookup tags carry the slot index in their low bits */
#define DEFAULT_RESOLVER_THREADS 16
#define SESSION_KEY_MAX 600
#define BATCH_NS (10 * 1000000) /* results are held this long for more to join them */
/* Probes in flight are served at least this often while new ones start: a
 * flood of targets that fail at once must not starve the live handshakes. */
#define POLL_EVERY_NS (1 * 1000000)
#define STARTS_PER_TURN 64
#define TICKET_WAIT_MIN_NS (50 * 1000000) /* plus twice the handshake: a TLS 1.3 ticket's wait */

struct probe {
    ss_conn_t *conn;
    uint64_t id;
    int64_t start_ns;
    int64_t resolved_ns;    /* 0 until the name is looked up */
    int64_t connected_ns;   /* 0 until connected */
    int64_t tls_start_ns;   /* 0 until a TLS handshake starts */
    int64_t established_ns; /* 0 until connected with TLS/STARTTLS done */
    int64_t finished_ns;    /* 0 until done */
    uint64_t lookup_tag;    /* != 0 while waiting for the resolver */
    int watched_fd;         /* fd registered with epoll, or -1 */
    uint32_t watched_events;
    uint32_t payload_sent;
    uint32_t banner_len;
    unsigned char *banner;
    struct ss_starttls_dialogue *dialogue; /* while the STARTTLS dialogue runs */
    ss_tls_ctx_t *starttls_tls;   /* reference; TLS to start after it */
    int session_saved;
    char peer[64]; /* the address connected to, taken before hanging up */
    int error; /* set when the engine itself ends the probe (timeout) */
};

struct session_entry {
    char *key;
    SSL_SESSION *session;
};

struct ss_engine {
    int epoll_fd;
    int wake_fd; /* eventfd: ss_engine_interrupt, from any thread */
    ss_engine_options_t opts;
    char *payload;
    char *pins; /* copy of opts.peer_fingerprint */
    struct probe *slots; /* concurrency entries; conn == NULL is free */
    uint32_t in_flight;   /* slots in use */
    /* So that a loop turn costs what happened, not the concurrency: */
    uint32_t *free_slots; /* stack of free slot indexes */
    uint32_t free_count;
    struct probe *finished; /* done, hung up, not reported yet: at most 2 x concurrency */
    uint32_t finished_count;
    int64_t next_deadline; /* no probe in flight is due before this */
    struct probe *queue; /* FIFO of probes not started yet */
    uint32_t queue_head, queue_len, queue_cap;
    ss_resolver_t *resolver; /* created at the first host name */
    uint64_t lookup_seq;
    double tokens; /* rate limit: connections that may start now */
    int64_t tokens_at;
    int64_t polled_ns; /* when the readiness set was last looked at */
    struct session_entry *sessions; /* session_cache entries, by key hash */
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
    if (opts->concurrency < 1 || opts->concurrency > (1 << SLOT_BITS)) {
        ss__fail(err, SS_ERR_STATE, EINVAL, "concurrency must be between 1 and %d", 1 << SLOT_BITS);
        return NULL;
    }
    if (opts->starttls != SS_STARTTLS_NONE && !ss__starttls_valid(opts->starttls)) {
        ss__fail(err, SS_ERR_STATE, EINVAL, "unknown STARTTLS protocol %d", opts->starttls);
        return NULL;
    }
    if (opts->session_cache < 0) {
        ss__fail(err, SS_ERR_STATE, EINVAL, "session_cache must be >= 0");
        return NULL;
    }
    ss_engine_t *e = calloc(1, sizeof *e);
    if (!e)
        goto nomem;
    e->opts = *opts;
    e->epoll_fd = e->wake_fd = -1;
    e->slots = calloc((size_t)opts->concurrency, sizeof *e->slots);
    e->free_slots = malloc((size_t)opts->concurrency * sizeof *e->free_slots);
    e->finished = malloc(2 * (size_t)opts->concurrency * sizeof *e->finished);
    if (!e->slots || !e->free_slots || !e->finished)
        goto nomem;
    for (int32_t i = 0; i < opts->concurrency; i++) /* slot 0 on top */
        e->free_slots[e->free_count++] = (uint32_t)(opts->concurrency - 1 - i);
    e->next_deadline = INT64_MAX;
    if (opts->payload_len) {
        e->payload = malloc(opts->payload_len);
        if (!e->payload)
            goto nomem;
        memcpy(e->payload, opts->payload, opts->payload_len);
    }
    e->opts.payload = e->payload;
    if (opts->peer_fingerprint && !(e->pins = strdup(opts->peer_fingerprint)))
        goto nomem;
    e->opts.peer_fingerprint = e->pins;
    if (opts->session_cache > 0 && !(e->sessions = calloc((size_t)opts->session_cache, sizeof *e->sessions)))
        goto nomem;
    e->tokens = 1.0;
    e->tokens_at = now_ns();
    e->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    e->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    struct epoll_event wake = {.events = EPOLLIN, .data.ptr = &e->wake_fd};
    if (e->epoll_fd < 0 || e->wake_fd < 0 || epoll_ctl(e->epoll_fd, EPOLL_CTL_ADD, e->wake_fd, &wake) < 0) {
        ss__fail(err, SS_ERR_SYSTEM, errno, "cannot set up the engine's epoll set: %s", strerror(errno));
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
    ss_tls_ctx_free(p->starttls_tls);
    free(p->dialogue);
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
        release_probe(&e->queue[(e->queue_head + i) % e->queue_cap]);
    for (uint32_t i = 0; e->finished && i < e->finished_count; i++)
        release_probe(&e->finished[i]);
    if (e->sessions)
        for (int32_t i = 0; i < e->opts.session_cache; i++) {
            free(e->sessions[i].key);
            SSL_SESSION_free(e->sessions[i].session);
        }
    free(e->sessions);
    ss__resolver_free(e->resolver);
    free(e->queue);
    free(e->slots);
    free(e->free_slots);
    free(e->finished);
    free(e->payload);
    free(e->pins);
    if (e->epoll_fd >= 0)
        close(e->epoll_fd);
    if (e->wake_fd >= 0)
        close(e->wake_fd);
    free(e);
}

int ss_engine_add(ss_engine_t *e, uint64_t id, ss_conn_t *conn, ss_tls_ctx_t *starttls_tls)
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
    conn->capture_hello = 1;
    if (starttls_tls && e->opts.starttls != SS_STARTTLS_NONE)
        p->starttls_tls = ss__tls_ctx_ref(starttls_tls);
    e->queue_len++;
    return SS_OK;
}

uint32_t ss_engine_pending(const ss_engine_t *e)
{
    return e->in_flight + e->queue_len + e->finished_count;
}

uint32_t ss__engine_queued(const ss_engine_t *e)
{
    return e->queue_len;
}

void ss_engine_interrupt(ss_engine_t *e)
{
    uint64_t one = 1;
    /* Only EAGAIN can fail here (the counter is full): it is readable then anyway. */
    ssize_t n = write(e->wake_fd, &one, sizeof one);
    (void)n;
}

/* ---- the session cache: one slot per key hash, newest wins ---------------- */

static uint64_t hash_text(const char *text)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *text; text++)
        h = (h ^ (unsigned char)*text) * 1099511628211ULL;
    return h;
}

/* The probe's cache key: TLS context, host, port and the name verified. */
static int session_key(const struct probe *p, char *out, size_t cap)
{
    const ss_conn_t *c = p->conn;
    const void *tls = p->starttls_tls ? (const void *)p->starttls_tls : (const void *)c->initial_tls;
    int n = snprintf(out, cap, "%p|%s|%d|%s", tls, c->host ? c->host : "", c->port,
                     c->peer_name ? c->peer_name : "");
    return n > 0 && (size_t)n < cap;
}

static void offer_session(ss_engine_t *e, struct probe *p)
{
    char key[SESSION_KEY_MAX];
    if (!e->sessions || !session_key(p, key, sizeof key))
        return;
    struct session_entry *slot = &e->sessions[hash_text(key) % (uint64_t)e->opts.session_cache];
    if (slot->key && strcmp(slot->key, key) == 0 && SSL_SESSION_up_ref(slot->session))
        p->conn->offer_session = slot->session;
}

/* Keeps the probe's session once it can be resumed; 1 when kept (or never will be). */
static int save_session(ss_engine_t *e, struct probe *p)
{
    if (!e->sessions || p->session_saved || !p->conn->ssl)
        return 1;
    SSL_SESSION *session = SSL_get1_session(p->conn->ssl);
    if (!session)
        return 0;
    if (!SSL_SESSION_is_resumable(session)) { /* TLS 1.3: the ticket comes after the handshake */
        SSL_SESSION_free(session);
        return 0;
    }
    char key[SESSION_KEY_MAX];
    char *copy = session_key(p, key, sizeof key) ? strdup(key) : NULL;
    if (!copy) {
        SSL_SESSION_free(session);
        return 1;
    }
    struct session_entry *slot = &e->sessions[hash_text(key) % (uint64_t)e->opts.session_cache];
    free(slot->key);
    SSL_SESSION_free(slot->session);
    slot->key = copy;
    slot->session = session;
    p->session_saved = 1;
    return 1;
}

/* ---- certificate pinning (PHP's peer_fingerprint) -------------------------- */

/* SS_OK when every "alg=hex" digest in pins matches the leaf certificate. */
static int check_pins(const char *pins, ss_conn_t *conn)
{
    X509 *leaf = SSL_get0_peer_certificate(conn->ssl);
    unsigned char *der = NULL;
    int der_len = leaf ? i2d_X509(leaf, &der) : -1;
    int ok = der_len > 0;
    for (const char *at = pins; ok && *at;) {
        const char *eq = strchr(at, '=');
        const char *end = strchr(at, ',');
        if (!end)
            end = at + strlen(at);
        char name[32];
        size_t name_len = eq && eq < end ? (size_t)(eq - at) : 0;
        if (name_len == 0 || name_len >= sizeof name) {
            ok = 0;
            break;
        }
        memcpy(name, at, name_len);
        name[name_len] = '\0';
        const EVP_MD *md = EVP_get_digestbyname(name);
        unsigned char digest[EVP_MAX_MD_SIZE];
        unsigned int digest_len = 0;
        char hex[2 * EVP_MAX_MD_SIZE + 1];
        ok = md && EVP_Digest(der, (size_t)der_len, digest, &digest_len, md, NULL) == 1;
        for (unsigned int i = 0; ok && i < digest_len; i++)
            snprintf(hex + 2 * i, 3, "%02x", digest[i]);
        size_t expected_len = (size_t)(end - eq - 1);
        ok = ok && expected_len == 2 * (size_t)digest_len && CRYPTO_memcmp(hex, eq + 1, expected_len) == 0;
        at = *end ? end + 1 : end;
    }
    OPENSSL_free(der);
    if (ok)
        return SS_OK;
    return ss__conn_fail(conn, ss__fail(&conn->err, SS_ERR_TLS_FINGERPRINT, 0, "peer_fingerprint match failure"));
}

/* ---- waiting ------------------------------------------------------------- */

/* Keeps the epoll registration in step with the conn's fd and want. */
static int watch(ss_engine_t *e, struct probe *p, int want)
{
    int fd = ss_conn_fd(p->conn);
    uint32_t events = want == SS_WANT_WRITE ? EPOLLOUT : EPOLLIN;
    if (fd == p->watched_fd && events == p->watched_events)
        return SS_OK;
    struct epoll_event ev = {.events = events, .data.ptr = p};
    /* A new fd is ADDed. A socket closed by a failed connect attempt left the
     * set by itself and its successor may have the same number: MOD fails
     * with ENOENT then, and it is ADDed too. */
    int op = fd == p->watched_fd ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(e->epoll_fd, op, fd, &ev) < 0) {
        int retry = op == EPOLL_CTL_MOD ? (errno == ENOENT ? EPOLL_CTL_ADD : -1)
                                        : (errno == EEXIST ? EPOLL_CTL_MOD : -1);
        if (retry < 0 || epoll_ctl(e->epoll_fd, retry, fd, &ev) < 0)
            return ss__fail(&p->conn->err, SS_ERR_SYSTEM, errno, "epoll_ctl failed: %s", strerror(errno));
    }
    p->watched_fd = fd;
    p->watched_events = events;
    return SS_OK;
}

/* 0 to wait for `io` (an SS_IO_WANT_* or SS_WANT_* value), 1 when that failed. */
static int wait_for(ss_engine_t *e, struct probe *p, int64_t io)
{
    int want = io == SS_IO_WANT_WRITE || io == SS_WANT_WRITE ? SS_WANT_WRITE : SS_WANT_READ;
    return watch(e, p, want) == SS_OK ? 0 : 1;
}

/* ---- moving a probe on --------------------------------------------------- */

static int64_t deadline_of(const ss_engine_t *e, const struct probe *p);

/* A probe has finished: it hangs up at once (the server is not kept waiting
 * for the caller to take the result, nor the socket held) and moves to
 * `finished` to be reported, freeing its slot; p is not valid afterwards. */
static void finish(ss_engine_t *e, struct probe *p)
{
    p->finished_ns = now_ns();
    if (ss_conn_name(p->conn, 1, p->peer, sizeof p->peer) < 0)
        p->peer[0] = '\0';
    ss__conn_hang_up(p->conn); /* closing the socket takes it out of the epoll set */
    e->finished[e->finished_count++] = *p;
    e->free_slots[e->free_count++] = (uint32_t)(p - e->slots);
    e->in_flight--;
    memset(p, 0, sizeof *p);
}

/* Keeps e->next_deadline a lower bound after p entered a phase. */
static void note_deadline(ss_engine_t *e, const struct probe *p)
{
    int64_t d = deadline_of(e, p);
    if (d < e->next_deadline)
        e->next_deadline = d;
}

static int advance(ss_engine_t *e, struct probe *p);

/* Advances a probe after an event; a phase it enters may bring its deadline closer. */
static void step(ss_engine_t *e, struct probe *p)
{
    if (advance(e, p))
        finish(e, p);
    else
        note_deadline(e, p);
}

static int wants_banner(const ss_engine_t *e, const struct probe *p)
{
    /* After STARTTLS the server waits for the client: read only an answer. */
    return p->banner_len < e->opts.banner_max && (!p->starttls_tls || e->opts.payload_len);
}

/* The established part: payload, banner, session ticket. 1 when finished. */
static int advance_established(ss_engine_t *e, struct probe *p)
{
    char scratch[4096];
    for (;;) {
        if (p->payload_sent < e->opts.payload_len) {
            int64_t n = ss_conn_write(p->conn, e->payload + p->payload_sent, e->opts.payload_len - p->payload_sent);
            if (n == SS_IO_WANT_READ || n == SS_IO_WANT_WRITE)
                return wait_for(e, p, n);
            if (n < 0)
                return 1;
            p->payload_sent += (uint32_t)n;
            continue;
        }
        int banner = wants_banner(e, p);
        if (save_session(e, p) && !banner)
            return 1;
        /* Read for the banner, or only to take in the session ticket. */
        size_t room = banner ? e->opts.banner_max - p->banner_len : sizeof scratch;
        int64_t n = ss_conn_read(p->conn, scratch, room < sizeof scratch ? room : sizeof scratch);
        if (n == SS_IO_WANT_READ || n == SS_IO_WANT_WRITE)
            return save_session(e, p) && !banner ? 1 : wait_for(e, p, n);
        if (n <= 0)
            return 1; /* end of stream or an error: the banner is what came */
        if (banner) {
            if (!p->banner && !(p->banner = malloc(e->opts.banner_max)))
                return 1;
            memcpy(p->banner + p->banner_len, scratch, (size_t)n);
            p->banner_len += (uint32_t)n;
        }
    }
}

/* Moves a probe as far as it goes: 1 when it has finished, 0 when waiting. */
static int advance(ss_engine_t *e, struct probe *p)
{
    int looked = 0;
    for (;;) {
        if (p->established_ns)
            return advance_established(e, p);
        if (p->dialogue) {
            if (e->opts.banner_max && !p->banner && !(p->banner = malloc(e->opts.banner_max)))
                return 1;
            int rc = ss__starttls_step(p->dialogue, p->conn, p->banner, &p->banner_len, e->opts.banner_max);
            if (rc < 0)
                return 1;
            if (rc != SS_DONE)
                return wait_for(e, p, rc);
            free(p->dialogue);
            p->dialogue = NULL;
            ss_conn_t *c = p->conn;
            if (ss_conn_start_tls(c, p->starttls_tls, NULL, c->verify_peer_name, c->sni_enabled, NULL) < 0)
                return 1;
            p->tls_start_ns = now_ns();
            continue;
        }
        int rc = ss_conn_step(p->conn);
        int state = ss_conn_state(p->conn);
        int64_t t = now_ns();
        if (!p->connected_ns && (state == SS_STATE_HANDSHAKING || state == SS_STATE_ESTABLISHED)) {
            p->connected_ns = t;
            if (state == SS_STATE_HANDSHAKING || ss_conn_is_tls(p->conn))
                p->tls_start_ns = t;
        }
        if (rc < 0)
            return 1;
        if (rc == SS_WANT_WRITE && state == SS_STATE_CONNECTING && !looked) {
            /* Over loopback or a near network the connect has often completed
             * already: one look, without waiting, saves a turn of the loop. */
            struct pollfd pfd = {.fd = ss_conn_fd(p->conn), .events = POLLOUT};
            looked = 1;
            if (poll(&pfd, 1, 0) == 1)
                continue;
        }
        if (rc != SS_DONE)
            return wait_for(e, p, rc);
        if (p->starttls_tls && !ss_conn_is_tls(p->conn)) { /* plaintext first: the dialogue */
            if (!(p->dialogue = malloc(sizeof *p->dialogue))) {
                ss__fail(&p->conn->err, SS_ERR_NOMEM, ENOMEM, "out of memory");
                return 1;
            }
            ss__starttls_init(p->dialogue, e->opts.starttls);
            continue;
        }
        if (e->pins && ss_conn_is_tls(p->conn) && check_pins(e->pins, p->conn) != SS_OK)
            return 1;
        p->established_ns = t;
        save_session(e, p);
    }
}

/* Starts a probe: its lookup when the host is a name, else its connect. */
static void start_probe(ss_engine_t *e, struct probe *p, uint32_t slot)
{
    ss_conn_t *c = p->conn;
    p->start_ns = now_ns();
    offer_session(e, p);
    int is_name = c->state == SS_STATE_RESOLVE && c->host && c->transport != SS_TRANSPORT_UNIX &&
                  c->transport != SS_TRANSPORT_UDG && !ss__is_ip_literal(c->host);
    if (!is_name) {
        p->resolved_ns = p->start_ns;
        step(e, p);
        return;
    }
    if (!e->resolver) {
        int threads = e->opts.resolver_threads > 0 ? e->opts.resolver_threads : DEFAULT_RESOLVER_THREADS;
        e->resolver = ss__resolver_new(threads);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
        if (e->resolver && epoll_ctl(e->epoll_fd, EPOLL_CTL_ADD, ss__resolver_fd(e->resolver), &ev) < 0) {
            ss__resolver_free(e->resolver);
            e->resolver = NULL;
        }
    }
    uint64_t tag = (++e->lookup_seq << SLOT_BITS) | slot;
    if (!e->resolver || ss__resolver_submit(e->resolver, tag, c->host, c->port, c->socktype) != SS_OK) {
        ss__conn_fail(c, ss__fail(&c->err, SS_ERR_NOMEM, ENOMEM, "cannot start a name lookup: out of memory"));
        finish(e, p);
        return;
    }
    p->lookup_tag = tag;
    note_deadline(e, p);
}

/* Hands finished lookups to their probes (a lookup whose probe has timed out is dropped). */
static void take_lookups(ss_engine_t *e)
{
    struct ss_lookup *item;
    while ((item = ss__resolver_take(e->resolver))) {
        struct probe *p = &e->slots[item->tag & ((1u << SLOT_BITS) - 1)];
        if (p->conn && p->lookup_tag == item->tag) { /* a finished probe's slot is empty */
            p->lookup_tag = 0;
            p->resolved_ns = now_ns();
            if (item->gai_rc != 0) {
                ss__conn_fail(p->conn, ss__resolve_failed(p->conn, item->host, item->gai_rc, item->sys_errno));
                finish(e, p);
            } else {
                p->conn->ai_list = item->result; /* the conn owns it now */
                item->result = NULL;
                step(e, p);
            }
        }
        ss__lookup_free(item);
    }
}

/* ---- deadlines and the rate limit ---------------------------------------- */

static int64_t deadline_of(const ss_engine_t *e, const struct probe *p)
{
    int64_t total = e->opts.total_timeout_ms > 0 ? p->start_ns + ms_to_ns(e->opts.total_timeout_ms) : INT64_MAX;
    int64_t phase = INT64_MAX;
    if (!p->connected_ns && e->opts.connect_timeout_ms > 0)
        phase = p->start_ns + ms_to_ns(e->opts.connect_timeout_ms);
    else if (p->connected_ns && !p->established_ns && e->opts.handshake_timeout_ms > 0)
        phase = p->connected_ns + ms_to_ns(e->opts.handshake_timeout_ms);
    else if (p->established_ns && !wants_banner(e, p) && p->payload_sent == e->opts.payload_len)
        /* Waiting for a TLS 1.3 session ticket only: a little longer than a handshake. */
        phase = p->established_ns + 2 * (p->established_ns - p->tls_start_ns) + TICKET_WAIT_MIN_NS;
    return phase < total ? phase : total;
}

static void expire(ss_engine_t *e, struct probe *p)
{
    if (!p->established_ns) { /* else the banner (or ticket) wait ends; the probe itself succeeded */
        const char *what = p->lookup_tag       ? "Name lookup timed out"
                           : !p->connected_ns  ? "Connection timed out"
                           : p->dialogue       ? "STARTTLS dialogue timed out"
                                               : "TLS handshake timed out";
        ss__fail(&p->conn->err, SS_ERR_TIMEOUT, ETIMEDOUT, "%s", what);
        p->error = SS_ERR_TIMEOUT;
    }
    finish(e, p);
}

/* Whether another connection may start now; else *next is when one may. */
static int take_token(ss_engine_t *e, int64_t now, int64_t *next)
{
    double rate = e->opts.rate;
    if (rate <= 0)
        return 1;
    double burst = rate / 100 > 1 ? rate / 100 : 1; /* at most 10 ms worth at once */
    e->tokens += (double)(now - e->tokens_at) / 1e9 * rate;
    if (e->tokens > burst)
        e->tokens = burst;
    e->tokens_at = now;
    if (e->tokens >= 1) {
        e->tokens -= 1;
        return 1;
    }
    *next = now + (int64_t)((1 - e->tokens) / rate * 1e9) + 1;
    return 0;
}

/* A free slot and a queued probe. Finished probes not yet taken hold new ones
 * back once there are as many as the concurrency: a caller that stops taking
 * results stops the engine. */
static int can_start(const ss_engine_t *e)
{
    return e->free_count && e->queue_len && e->finished_count < (uint32_t)e->opts.concurrency;
}

/* Starts queued probes while slots and the rate allow, a turn's worth at
 * most; returns when the next may start (INT64_MAX: now, or never). */
static int64_t start_queued(ss_engine_t *e)
{
    int64_t next = INT64_MAX;
    for (int started = 0; started < STARTS_PER_TURN && can_start(e) && take_token(e, now_ns(), &next); started++) {
        uint32_t i = e->free_slots[--e->free_count];
        struct probe *slot = &e->slots[i];
        *slot = e->queue[e->queue_head];
        e->queue_head = (e->queue_head + 1) % e->queue_cap;
        e->queue_len--;
        e->in_flight++;
        start_probe(e, slot, i);
    }
    return next;
}

/* Ends the probes whose deadline has passed; returns the next deadline. */
static int64_t expire_due(ss_engine_t *e, int64_t now)
{
    if (now < e->next_deadline)
        return e->next_deadline;
    int64_t next = INT64_MAX;
    for (int32_t i = 0; i < e->opts.concurrency; i++) {
        struct probe *p = &e->slots[i];
        if (!p->conn)
            continue;
        int64_t d = deadline_of(e, p);
        if (d <= now)
            expire(e, p);
        else if (d < next)
            next = d;
    }
    return e->next_deadline = next;
}

/* ---- reporting ----------------------------------------------------------- */

static double elapsed_ms(int64_t from, int64_t to)
{
    return from && to ? (double)(to - from) / 1e6 : -1.0;
}

static void copy_field(char *out, size_t cap, const char *text)
{
    size_t n = strlen(text);
    if (n >= cap)
        n = cap - 1;
    memcpy(out, text, n);
    out[n] = '\0';
}

/* Writes the record, its banner and certificate blocks (ss_cert_info_t)
 * straight into the arena; returns 0 when the arena is too full for them
 * (reported by the next call; an empty arena takes what fits). */
static int report(ss_engine_t *e, struct probe *p, ss_probe_result_t *r, unsigned char *arena, uint32_t arena_cap,
                  uint32_t *arena_used)
{
    uint32_t start = *arena_used, used = start;
    if (p->banner_len > arena_cap - used)
        return 0; /* a banner is at most 64 KiB: it always fits an empty arena */
    if (p->banner_len)
        memcpy(arena + used, p->banner, p->banner_len);
    used += p->banner_len;
    uint32_t server_hello_off = used;
    size_t server_hello_len = p->conn->server_hello_len;
    if (server_hello_len > arena_cap - used)
        return 0; /* at most SS_SERVER_HELLO_MAX: fits an empty arena beside the banner */
    if (server_hello_len)
        memcpy(arena + used, p->conn->server_hello, server_hello_len);
    used += (uint32_t)server_hello_len;
    uint32_t certs_off = used;
    for (int32_t i = 0; i < (e->opts.capture_chain ? 16 : 1); i++) {
        X509 *cert = ss__tls_peer_cert(p->conn, i);
        if (!cert)
            break;
        int64_t len = ss__cert_describe(cert, arena + used, arena_cap - used);
        if (len == SS_ERR_NOMEM && start > 0)
            return 0;
        if (len <= 0)
            break; /* larger than a whole arena, or unreadable: the chain is cut here */
        used += (uint32_t)len;
    }
    memset(r, 0, sizeof *r);
    r->id = p->id;
    r->banner_off = start;
    r->banner_len = p->banner_len;
    r->certs_off = certs_off;
    r->certs_len = used - certs_off;
    r->server_hello_off = server_hello_off;
    r->server_hello_len = (uint32_t)server_hello_len;
    r->ok = p->established_ns != 0;
    if (!r->ok) { /* after establishment nothing counts as a failure */
        ss_error_info_t err;
        ss_conn_error(p->conn, &err);
        r->error = p->error ? p->error : err.code;
        r->sys_errno = p->error ? ETIMEDOUT : err.sys_errno;
        copy_field(r->message, sizeof r->message, err.code ? err.message : "");
    }
    ss_trust_t trust;
    ss_conn_trust(p->conn, &trust);
    r->verify_result = trust.verify_result;
    r->name_matched = trust.name_matched;
    r->state = ss_conn_state(p->conn);
    r->resolve_ms = elapsed_ms(p->start_ns, p->resolved_ns);
    r->connect_ms = elapsed_ms(p->resolved_ns, p->connected_ns);
    r->handshake_ms = elapsed_ms(p->tls_start_ns, p->established_ns);
    r->total_ms = elapsed_ms(p->start_ns, p->finished_ns);
    ss_tls_info_t info;
    ss_conn_tls_info(p->conn, &info);
    copy_field(r->protocol, sizeof r->protocol, info.protocol);
    copy_field(r->cipher, sizeof r->cipher, info.cipher_name);
    copy_field(r->group, sizeof r->group, info.group);
    copy_field(r->alpn, sizeof r->alpn, info.alpn);
    r->session_reused = info.session_reused;
    memcpy(r->peer, p->peer, sizeof r->peer);
    *arena_used = used;
    return 1;
}

/* ---- the loop ------------------------------------------------------------ */

/* Waits up to wait_ms for readiness and steps what is ready; the number of
 * events, or SS_ERR_SYSTEM. *interrupted tells of ss_engine_interrupt. */
static int poll_events(ss_engine_t *e, int wait_ms, int *interrupted)
{
    struct epoll_event events[256];
    int n = epoll_wait(e->epoll_fd, events, (int)(sizeof events / sizeof events[0]), wait_ms);
    e->polled_ns = now_ns();
    if (n < 0)
        return errno == EINTR ? 0 : SS_ERR_SYSTEM;
    for (int i = 0; i < n; i++) {
        struct probe *p = events[i].data.ptr;
        if (!p) {
            take_lookups(e);
        } else if (p == (void *)&e->wake_fd) {
            uint64_t count;
            *interrupted |= read(e->wake_fd, &count, sizeof count) == sizeof count;
        } else if (p->conn) { /* not finished earlier in this batch */
            step(e, p);
        }
    }
    return n;
}

int32_t ss_engine_run(ss_engine_t *e, int32_t timeout_ms, ss_probe_result_t *out, uint32_t cap,
                      unsigned char *arena, uint32_t arena_cap)
{
    int64_t until = timeout_ms < 0 ? INT64_MAX : now_ns() + ms_to_ns(timeout_ms);
    uint32_t produced = 0, arena_used = 0;
    int64_t first_result_ns = 0;
    int interrupted = 0;
    for (;;) {
        int64_t next_start = start_queued(e);
        if (e->in_flight && now_ns() - e->polled_ns >= POLL_EVERY_NS) {
            if (poll_events(e, 0, &interrupted) < 0)
                return SS_ERR_SYSTEM;
            if (interrupted)
                return (int32_t)produced;
        }
        /* Expire what is due; report what has finished, as room allows. */
        int64_t t = now_ns();
        int64_t next_deadline = expire_due(e, t);
        if (next_start < next_deadline)
            next_deadline = next_start;
        uint32_t kept = 0;
        for (uint32_t k = 0; k < e->finished_count; k++) {
            struct probe *p = &e->finished[k];
            if (produced == cap || !report(e, p, &out[produced], arena, arena_cap, &arena_used)) {
                if (kept != k) /* no room left: reported by a later call */
                    e->finished[kept] = *p;
                kept++;
                continue;
            }
            if (!first_result_ns)
                first_result_ns = t;
            produced++;
            release_probe(p);
        }
        e->finished_count = kept;
        if (e->in_flight == 0 && e->queue_len == 0 && e->finished_count == 0)
            return (int32_t)produced;
        /* Results go back in batches: until the buffer is full, the caller's
         * queue runs dry (it must hand over more) or a short wait has passed. */
        if (produced && (produced == cap || e->queue_len == 0 || t >= until || t >= first_result_ns + BATCH_NS)) {
            start_queued(e); /* the slots just freed get their next probe before the caller's turn */
            return (int32_t)produced;
        }
        if (can_start(e) && next_start == INT64_MAX)
            continue; /* free slots and work queued: start it now (served in between, above) */
        int64_t wait_until = next_deadline < until ? next_deadline : until;
        if (produced && first_result_ns + BATCH_NS < wait_until)
            wait_until = first_result_ns + BATCH_NS;
        int wait_ms = wait_until == INT64_MAX ? -1 : (int)((wait_until - t + 999999) / 1000000);
        if (wait_ms < 0 && wait_until != INT64_MAX)
            wait_ms = 0;
        int n = poll_events(e, wait_ms, &interrupted);
        if (n < 0)
            return SS_ERR_SYSTEM;
        if (interrupted)
            return (int32_t)produced;
        if (n == 0 && produced == 0 && now_ns() >= until) {
            /* Time is up for this call unless something is due to report. */
            if (cap == 0 || (e->finished_count == 0 && e->next_deadline > now_ns()))
                return 0;
        }
    }
}
