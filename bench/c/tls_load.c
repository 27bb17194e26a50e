/*
 * The load generator of the TLS echo benchmarks: one epoll loop, non-blocking
 * sockets and OpenSSL against a TLS echo server on 127.0.0.1:PORT. It is meant
 * to run pinned on one CPU while the server runs on another, and to spend so
 * little per operation that the server, not this program, sets the pace.
 *
 *   tls_load --port P --cafile F --host-name H [--ciphers LIST] --mode rr|bulk|accept
 *            [--connections N] [--size BYTES] [--bytes TOTAL] [--seconds S] [--warmup S]
 *            [--server-pid PID]
 *
 * rr      N persistent connections (default 50), all connected and handshaken
 *         first. Then each one, on its own, writes a request of SIZE bytes
 *         (default 256), reads until SIZE bytes came back, checks them and
 *         writes the next request. WARMUP seconds (default 1) unmeasured, then
 *         SECONDS (default 5) measured: ops is the round trips completed in the
 *         window, bytes ops * SIZE.
 * bulk    One connection: TOTAL bytes (default 512 MiB) written in 16 KiB
 *         SSL_writes while the echo is read back at the same time. Unless
 *         --warmup is 0, 16 MiB are echoed first, unmeasured. The window runs
 *         from the first byte of the TOTAL written to its last byte read; ops is
 *         1, bytes TOTAL. SECONDS only sets the deadline.
 * accept  N slots (default 10), each looping: connect, a full handshake (no
 *         session is offered: client session cache off, no tickets asked for),
 *         one SSL_shutdown that sends close_notify without waiting, close, and
 *         at once the next connection. WARMUP then SECONDS as in rr; ops is the
 *         handshakes completed in the window. A connection that fails is an
 *         error (the first one's reason goes to stderr) and its slot goes on.
 *
 * Every request differs from the one before, so a stale, short, shifted or
 * corrupted echo shows: a message is made of 16 KiB blocks, each starting with
 * 8 bytes that name the message (connection and request number) and the block,
 * the rest of the block a fixed pattern, byte j = (j * 167 + 13) & 0xff.
 *
 * TLS as in epoll_tls_client.c, the settings streamsock's default client
 * Context compiles to: TLS 1.2 or newer, the chain verified against CAFILE, SNI
 * and a host-name check of HOST_NAME without partial wildcards, --ciphers as
 * the TLS 1.2 cipher list.
 *
 * With --server-pid, the server's CPU time over the window is the sum of the
 * first field of /proc/PID/task/ * /schedstat (every thread, in nanoseconds);
 * this program's own is CLOCK_PROCESS_CPUTIME_ID.
 *
 * Prints one JSON line on stdout at the end:
 *   {"mode":"rr","connections":50,"size":256,"ops":123456,"seconds":5.000100,
 *    "bytes":31604736,"errors":0,"server_cpu_seconds":4.870000,"client_cpu_seconds":2.100000}
 * size is the request size (rr), the SSL_write size (bulk, 16384) or 0
 * (accept); errors counts failed connections and wrong echoes over the whole
 * run, warm-up included; server_cpu_seconds is null without --server-pid.
 * Exit status: 0; 1 when an echo was wrong, when rr or bulk had any error,
 * when no handshake succeeded in accept mode, or when the run was still going
 * WARMUP + SECONDS + 30 s after the start; 2 on a usage error.
 *
 * Example, with the C anchor server on the other CPU:
 *   taskset -c 1 ./tls_echo_server --cert cert.pem --key key.pem > port &
 *   taskset -c 0 ./tls_load --port $(cat port) --cafile ca.pem --host-name localhost \
 *       --mode rr --server-pid $!
 *
 * Build: gcc -std=c11 -O2 -Wall -Wextra -Werror -D_GNU_SOURCE tls_load.c -o tls_load -lssl -lcrypto
 */
#ifndef _GNU_SOURCE /* the build line may define it too */
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define NS 1000000000LL
#define MAX_EVENTS 256
#define BLOCK 16384             /* a message block; also what one SSL_write takes at most */
#define HEADER 8                /* bytes at the start of each block naming message and block */
#define READ_SIZE 65536         /* the most one SSL_read asks for */
#define READ_AHEAD_SIZE 65536   /* OpenSSL's read buffer: several records per recv */
#define BULK_WARMUP (16ULL << 20)
#define DEADLINE_SLACK_NS (30 * NS)
#define MAX_CONNECTIONS 100000

enum mode { RR, BULK, ACCEPT };
enum phase { FREE, CONNECTING, HANDSHAKING, READY, ECHOING };
enum stage { SETUP, WARMUP, MEASURE, DONE };

static const char *const mode_names[] = {"rr", "bulk", "accept"};

struct connection {
    int fd;
    SSL *ssl;
    enum phase phase;
    long index;
    uint32_t watched;     /* epoll events registered for fd; 0: not registered */
    uint32_t write_waits; /* the event the unfinished SSL_write waits for; 0: it may go on */
    uint32_t read_waits;  /* the same for SSL_read */
    uint64_t seed;        /* names the message in flight; goes into its block headers */
    uint64_t size, sent, received;
    unsigned char *out;   /* the block being written: pattern plus this block's header */
};

struct sample {
    int64_t wall_ns;
    double client_cpu, server_cpu;
    uint64_t ops, bytes;
};

struct load {
    enum mode mode;
    SSL_CTX *ctx;
    const char *host_name;
    struct sockaddr_in server;
    long server_pid; /* 0: not given */
    int epoll_fd;
    struct connection *conns;
    long n_conns;
    uint64_t size;  /* rr: request size */
    uint64_t total; /* bulk: bytes to echo */
    int64_t warmup_ns, measure_ns;
    unsigned char *pattern; /* BLOCK bytes: what follows every block header */
    unsigned char *in;      /* READ_SIZE bytes, shared: every read is checked at once */
    enum stage stage;
    int64_t stage_end_ns; /* rr and accept: when WARMUP or MEASURE ends */
    long handshaking;     /* rr and bulk: connections not yet READY and not failed */
    long live;            /* rr and bulk: connections not failed */
    uint64_t ops, bytes, errors;
    int measured; /* both samples taken */
    struct sample first, last;
};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS + ts.tv_nsec;
}

static double own_cpu_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU time of every live thread of pid, or -1 when it cannot be read. Per-thread
 * schedstat is exact to the nanosecond, where /proc/PID/stat counts ticks. */
static double server_cpu_seconds(long pid)
{
    char path[320];
    snprintf(path, sizeof path, "/proc/%ld/task", pid);
    DIR *dir = opendir(path);
    if (!dir)
        return -1;
    unsigned long long total = 0;
    int threads = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (entry->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/proc/%ld/task/%.32s/schedstat", pid, entry->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue; /* the thread ended since readdir */
        unsigned long long ns;
        if (fscanf(f, "%llu", &ns) == 1) {
            total += ns;
            threads++;
        }
        fclose(f);
    }
    closedir(dir);
    return threads ? (double)total / 1e9 : -1;
}

static void take_sample(struct load *ld, struct sample *s)
{
    s->server_cpu = ld->server_pid ? server_cpu_seconds(ld->server_pid) : 0;
    s->wall_ns = now_ns();
    s->client_cpu = own_cpu_seconds();
    s->ops = ld->ops;
    s->bytes = ld->bytes;
}

static void begin_measuring(struct load *ld)
{
    take_sample(ld, &ld->first);
    ld->stage = MEASURE;
    ld->stage_end_ns = ld->first.wall_ns + ld->measure_ns;
}

static void end_measuring(struct load *ld)
{
    if (ld->stage == MEASURE) {
        take_sample(ld, &ld->last);
        ld->measured = 1;
    }
    ld->stage = DONE;
}

static SSL_CTX *make_context(const char *cafile, const char *ciphers)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        return NULL;
    /* As new_ssl_ctx() in csrc/tls.c sets them for a default client Context. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                                 SSL_OP_NO_TICKET);
    /* Every handshake full: no session is kept that could be offered again. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    /* One recv takes in a record's header and body, and whatever records follow,
     * where OpenSSL would otherwise make two per record: fewer system calls on the
     * side that must not be the bottleneck. Nothing changes on the wire. */
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_default_read_buffer_len(ctx, READ_AHEAD_SIZE);
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
        (ciphers && SSL_CTX_set_cipher_list(ctx, ciphers) != 1) ||
        SSL_CTX_load_verify_locations(ctx, cafile, NULL) != 1) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    return ctx;
}

static SSL *make_ssl(const struct load *ld, int fd)
{
    SSL *ssl = SSL_new(ld->ctx);
    if (!ssl)
        return NULL;
    SSL_set_connect_state(ssl);
    SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if (SSL_set_fd(ssl, fd) != 1 || SSL_set_tlsext_host_name(ssl, ld->host_name) != 1 ||
        SSL_set1_host(ssl, ld->host_name) != 1) {
        SSL_free(ssl);
        return NULL;
    }
    return ssl;
}

static int watch(struct load *ld, struct connection *c, uint32_t events)
{
    if (c->watched == events)
        return 0;
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(ld->epoll_fd, c->watched ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &ev) < 0)
        return -1;
    c->watched = events;
    return 0;
}

/* Closes a connection; the slot keeps its block buffer for the next one. */
static void close_connection(struct connection *c, int say_goodbye)
{
    if (c->ssl) {
        if (say_goodbye)
            SSL_shutdown(c->ssl);
        SSL_free(c->ssl);
    }
    /* SSL_get_error() reads the thread's error queue: leave nothing for the next connection. */
    ERR_clear_error();
    if (c->fd >= 0)
        close(c->fd); /* also leaves the epoll set */
    c->fd = -1;
    c->ssl = NULL;
    c->phase = FREE;
    c->watched = c->write_waits = c->read_waits = 0;
}

static void fail(struct load *ld, struct connection *c, const char *what, const char *why)
{
    if (ld->errors++ == 0)
        fprintf(stderr, "tls_load: first error: connection %ld: %s: %s\n", c->index, what, why);
    enum phase was = c->phase;
    close_connection(c, 0);
    if (ld->mode != ACCEPT) {
        if (was == CONNECTING || was == HANDSHAKING)
            ld->handshaking--;
        ld->live--;
    }
}

static void fail_errno(struct load *ld, struct connection *c, const char *what, int error)
{
    fail(ld, c, what, strerror(error));
}

/* Ends a connection after an SSL call failed with ssl_error; saved_errno is errno right after the call. */
static void fail_ssl(struct load *ld, struct connection *c, const char *what, int ssl_error, int saved_errno)
{
    char why[512];
    unsigned long e = ERR_peek_last_error();
    if (ssl_error == SSL_ERROR_SSL && e) {
        ERR_error_string_n(e, why, sizeof why);
        long verify = SSL_get_verify_result(c->ssl);
        if (verify != X509_V_OK) {
            size_t used = strlen(why);
            snprintf(why + used, sizeof why - used, " (%s)", X509_verify_cert_error_string(verify));
        }
    } else if (ssl_error == SSL_ERROR_SYSCALL) {
        snprintf(why, sizeof why, "%s", saved_errno ? strerror(saved_errno) : "unexpected EOF");
    } else if (ssl_error == SSL_ERROR_ZERO_RETURN) {
        snprintf(why, sizeof why, "the server closed the connection");
    } else {
        snprintf(why, sizeof why, "SSL_get_error %d", ssl_error);
    }
    fail(ld, c, what, why);
}

static uint64_t block_header(uint64_t seed, uint64_t block)
{
    return seed ^ (block * 0x9E3779B97F4A7C15ULL);
}

static void put_header(unsigned char *out, size_t room, uint64_t value)
{
    for (size_t i = 0; i < HEADER && i < room; i++)
        out[i] = (unsigned char)(value >> (8 * i));
}

/* Position in the message of the first byte of data (the message from offset
 * on) that is not what was sent, or -1 when all of it is. */
static int64_t check_echo(const struct load *ld, uint64_t seed, uint64_t offset, const unsigned char *data,
                          size_t len)
{
    size_t done = 0;
    while (done < len) {
        uint64_t at = offset + done;
        size_t j = (size_t)(at % BLOCK);
        size_t take = len - done < BLOCK - j ? len - done : BLOCK - j;
        size_t k = 0;
        if (j < HEADER) {
            uint64_t value = block_header(seed, at / BLOCK);
            for (; k < take && j + k < HEADER; k++)
                if (data[done + k] != (unsigned char)(value >> (8 * (j + k))))
                    return (int64_t)(at + k);
        }
        if (memcmp(data + done + k, ld->pattern + j + k, take - k) != 0)
            for (; k < take; k++)
                if (data[done + k] != ld->pattern[j + k])
                    return (int64_t)(at + k);
        done += take;
    }
    return -1;
}

static void start_message(struct connection *c, uint64_t seed, uint64_t size)
{
    c->phase = ECHOING;
    c->seed = seed;
    c->size = size;
    c->sent = c->received = 0;
    put_header(c->out, size < BLOCK ? (size_t)size : BLOCK, block_header(seed, 0));
    c->write_waits = 0;
    /* The echo cannot be back yet: no read until epoll says so, unless OpenSSL
     * already holds bytes it read ahead. Saves a recv that would fail per request. */
    c->read_waits = SSL_has_pending(c->ssl) ? 0 : EPOLLIN;
}

static void message_done(struct load *ld, struct connection *c)
{
    ld->ops++;
    ld->bytes += c->size;
    if (ld->mode == RR) {
        start_message(c, c->seed + 1, ld->size);
        return;
    }
    c->phase = READY;
    if (ld->stage == WARMUP) {
        begin_measuring(ld);
        start_message(c, 0, ld->total);
    } else {
        end_measuring(ld);
    }
}

/* Writes and reads an echoing connection as far as it goes without waiting,
 * then watches for what it waits for. EPOLLIN stays watched throughout, so a
 * server that closes or talks out of turn is seen. */
static void pump(struct load *ld, struct connection *c)
{
    for (;;) {
        int progressed = 0;
        if (c->sent < c->size && !c->write_waits) {
            size_t at = (size_t)(c->sent % BLOCK);
            uint64_t left = c->size - c->sent;
            int len = (int)(left < BLOCK - at ? left : BLOCK - at);
            int rc = SSL_write(c->ssl, c->out + at, len);
            if (rc > 0) {
                c->sent += (uint64_t)rc;
                /* Only now may the block change: a write that waited is retried with the same bytes. */
                if (c->sent % BLOCK == 0 && c->sent < c->size)
                    put_header(c->out, BLOCK, block_header(c->seed, c->sent / BLOCK));
                progressed = 1;
            } else {
                int saved_errno = errno;
                int e = SSL_get_error(c->ssl, rc);
                if (e == SSL_ERROR_WANT_WRITE) {
                    c->write_waits = EPOLLOUT;
                } else if (e == SSL_ERROR_WANT_READ) {
                    c->write_waits = EPOLLIN;
                } else {
                    fail_ssl(ld, c, "write", e, saved_errno);
                    return;
                }
            }
        }
        /* Reading goes on while writing waits: the server echoes as it reads,
         * and with both sides' buffers full only reading here unblocks it. */
        if (c->received < c->size && !c->read_waits) {
            uint64_t left = c->size - c->received;
            int rc = SSL_read(c->ssl, ld->in, (int)(left < READ_SIZE ? left : READ_SIZE));
            if (rc > 0) {
                int64_t bad = check_echo(ld, c->seed, c->received, ld->in, (size_t)rc);
                if (bad >= 0) {
                    char why[128];
                    snprintf(why, sizeof why, "echo differs at byte %" PRId64 " of a %" PRIu64 "-byte message", bad,
                             c->size);
                    fail(ld, c, "check", why);
                    return;
                }
                c->received += (uint64_t)rc;
                progressed = 1;
                if (c->received == c->size) {
                    message_done(ld, c);
                    if (c->phase != ECHOING)
                        return;
                }
            } else {
                int saved_errno = errno;
                int e = SSL_get_error(c->ssl, rc);
                if (e == SSL_ERROR_WANT_READ) {
                    c->read_waits = EPOLLIN;
                } else if (e == SSL_ERROR_WANT_WRITE) {
                    c->read_waits = EPOLLOUT;
                } else {
                    fail_ssl(ld, c, "read", e, saved_errno);
                    return;
                }
            }
        }
        if (!progressed)
            break;
    }
    if (watch(ld, c, EPOLLIN | ((c->write_waits | c->read_waits) & EPOLLOUT)) < 0)
        fail_errno(ld, c, "epoll_ctl", errno);
}

static void handshake_done(struct load *ld, struct connection *c)
{
    if (ld->mode == ACCEPT) {
        ld->ops++;
        close_connection(c, 1); /* its slot is refilled after the event batch */
        return;
    }
    c->phase = READY;
    ld->handshaking--;
    if (watch(ld, c, EPOLLIN) < 0)
        fail_errno(ld, c, "epoll_ctl", errno);
}

/* Moves a connecting or handshaking connection on. */
static void advance(struct load *ld, struct connection *c)
{
    if (c->phase == CONNECTING) {
        int error = 0;
        socklen_t len = sizeof error;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &len) < 0)
            error = errno;
        if (error) {
            fail_errno(ld, c, "connect", error);
            return;
        }
        c->ssl = make_ssl(ld, c->fd);
        if (!c->ssl) {
            const char *why = ERR_reason_error_string(ERR_peek_last_error());
            fail(ld, c, "SSL_new", why ? why : "failed");
            return;
        }
        c->phase = HANDSHAKING;
    }
    int rc = SSL_do_handshake(c->ssl);
    if (rc == 1) {
        handshake_done(ld, c);
        return;
    }
    int saved_errno = errno;
    int e = SSL_get_error(c->ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        if (watch(ld, c, e == SSL_ERROR_WANT_READ ? EPOLLIN : EPOLLOUT) < 0)
            fail_errno(ld, c, "epoll_ctl", errno);
        return;
    }
    fail_ssl(ld, c, "handshake", e, saved_errno);
}

/* rr, while the others still handshake: takes in what the server sends after
 * its handshake (TLS 1.3 session tickets); application data is an error. */
static void idle_read(struct load *ld, struct connection *c)
{
    int rc = SSL_read(c->ssl, ld->in, 1);
    if (rc > 0) {
        fail(ld, c, "read", "data before any request");
        return;
    }
    int saved_errno = errno;
    int e = SSL_get_error(c->ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        if (watch(ld, c, e == SSL_ERROR_WANT_READ ? EPOLLIN : EPOLLIN | EPOLLOUT) < 0)
            fail_errno(ld, c, "epoll_ctl", errno);
        return;
    }
    fail_ssl(ld, c, "read", e, saved_errno);
}

static void on_event(struct load *ld, struct connection *c, uint32_t events)
{
    switch (c->phase) {
    case FREE:
        break;
    case CONNECTING:
    case HANDSHAKING:
        advance(ld, c);
        break;
    case READY:
        idle_read(ld, c);
        break;
    case ECHOING:
        if (events & (EPOLLERR | EPOLLHUP))
            events |= EPOLLIN | EPOLLOUT; /* let both calls run into the error */
        if (c->write_waits & events)
            c->write_waits = 0;
        if (c->read_waits & events)
            c->read_waits = 0;
        pump(ld, c);
        break;
    }
}

static void start(struct load *ld, struct connection *c)
{
    c->phase = CONNECTING;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        fail_errno(ld, c, "socket", errno);
        return;
    }
    int one = 1;
    if (setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0) {
        fail_errno(ld, c, "TCP_NODELAY", errno);
        return;
    }
    if (connect(c->fd, (const struct sockaddr *)&ld->server, sizeof ld->server) == 0) {
        advance(ld, c);
        return;
    }
    if (errno != EINPROGRESS) {
        fail_errno(ld, c, "connect", errno);
        return;
    }
    if (watch(ld, c, EPOLLOUT) < 0)
        fail_errno(ld, c, "epoll_ctl", errno);
}

/* accept: starts a connection in every free slot; returns how many are still
 * free (failed at once), so the loop does not sleep on them. */
static long fill_slots(struct load *ld)
{
    long still_free = 0;
    for (long i = 0; i < ld->n_conns; i++) {
        struct connection *c = &ld->conns[i];
        if (c->phase == FREE) {
            start(ld, c);
            still_free += c->phase == FREE;
        }
    }
    return still_free;
}

/* rr and bulk: every connection has handshaken or failed; the run proper begins. */
static void begin_run(struct load *ld)
{
    ld->stage = WARMUP;
    ld->stage_end_ns = now_ns() + ld->warmup_ns;
    if (ld->mode == BULK) {
        struct connection *c = &ld->conns[0];
        if (ld->warmup_ns > 0) {
            start_message(c, 1, BULK_WARMUP);
        } else {
            begin_measuring(ld);
            start_message(c, 0, ld->total);
        }
        pump(ld, c);
        return;
    }
    if (ld->warmup_ns == 0)
        begin_measuring(ld);
    for (long i = 0; i < ld->n_conns; i++) {
        struct connection *c = &ld->conns[i];
        if (c->phase == READY) {
            start_message(c, (uint64_t)(i + 1) << 40, ld->size);
            pump(ld, c);
        }
    }
}

/* The stage changes that the clock or the state of the connections call for. */
static void step(struct load *ld, int64_t now)
{
    if (ld->stage == SETUP && ld->mode != ACCEPT && ld->handshaking == 0 && ld->live > 0)
        begin_run(ld);
    if (ld->mode != BULK && ld->stage == WARMUP && now >= ld->stage_end_ns)
        begin_measuring(ld);
    if (ld->mode != BULK && ld->stage == MEASURE && now >= ld->stage_end_ns)
        end_measuring(ld);
    if (ld->mode != ACCEPT && ld->live == 0)
        end_measuring(ld);
}

static int timeout_ms(int64_t until, int64_t now)
{
    if (until <= now)
        return 0;
    int64_t ms = (until - now + 999999) / 1000000;
    return ms > 60000 ? 60000 : (int)ms;
}

/* Backstop for the deadline the loop keeps: even a loop that stopped turning ends. */
static void on_alarm(int signo)
{
    (void)signo;
    static const char msg[] = "tls_load: deadline passed, giving up\n";
    ssize_t ignored = write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)ignored;
    _exit(1);
}

static int usage(const char *why)
{
    fprintf(stderr,
            "tls_load: %s\nusage: tls_load --port P --cafile F --host-name H [--ciphers LIST] "
            "--mode rr|bulk|accept\n                [--connections N] [--size BYTES] [--bytes TOTAL] "
            "[--seconds S] [--warmup S]\n                [--server-pid PID]\n",
            why);
    return 2;
}

static int parse_count(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-')
        return -1;
    *out = v;
    return 0;
}

static int parse_seconds(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= 0 && v <= 1e6))
        return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    const char *cafile = NULL, *ciphers = NULL, *mode = NULL;
    uint64_t port = 0, connections = 0, size = 256, total = 512ULL << 20, pid = 0;
    double seconds = 5, warmup = 1;
    struct load ld;
    memset(&ld, 0, sizeof ld);
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 >= argc)
            return usage("an option lacks its value");
        const char *name = argv[i], *value = argv[i + 1];
        int bad = 0;
        if (strcmp(name, "--port") == 0)
            bad = parse_count(value, &port);
        else if (strcmp(name, "--cafile") == 0)
            cafile = value;
        else if (strcmp(name, "--host-name") == 0)
            ld.host_name = value;
        else if (strcmp(name, "--ciphers") == 0)
            ciphers = value;
        else if (strcmp(name, "--mode") == 0)
            mode = value;
        else if (strcmp(name, "--connections") == 0)
            bad = parse_count(value, &connections);
        else if (strcmp(name, "--size") == 0)
            bad = parse_count(value, &size);
        else if (strcmp(name, "--bytes") == 0)
            bad = parse_count(value, &total);
        else if (strcmp(name, "--seconds") == 0)
            bad = parse_seconds(value, &seconds);
        else if (strcmp(name, "--warmup") == 0)
            bad = parse_seconds(value, &warmup);
        else if (strcmp(name, "--server-pid") == 0)
            bad = parse_count(value, &pid);
        else
            return usage("unknown option");
        if (bad)
            return usage("an option's value is not a number in range");
    }
    if (!cafile || !ld.host_name || !mode)
        return usage("--port, --cafile, --host-name and --mode are required");
    if (port < 1 || port > 65535)
        return usage("--port must be 1 to 65535");
    if (strcmp(mode, "rr") == 0)
        ld.mode = RR;
    else if (strcmp(mode, "bulk") == 0)
        ld.mode = BULK;
    else if (strcmp(mode, "accept") == 0)
        ld.mode = ACCEPT;
    else
        return usage("--mode takes rr, bulk or accept");
    if (ld.mode == BULK)
        connections = 1;
    else if (connections == 0)
        connections = ld.mode == RR ? 50 : 10;
    if (connections > MAX_CONNECTIONS)
        return usage("--connections is at most 100000");
    if (size < 1 || size > (1ULL << 40) || total < 1 || total > (1ULL << 50))
        return usage("--size and --bytes must be at least 1");
    if (!(seconds > 0))
        return usage("--seconds must be more than 0");
    if (pid > 0x7fffffff)
        return usage("--server-pid is not a process id");
    ld.server_pid = (long)pid;
    if (ld.server_pid && server_cpu_seconds(ld.server_pid) < 0)
        return usage("cannot read /proc/PID/task/*/schedstat of --server-pid");
    ld.n_conns = (long)connections;
    ld.size = size;
    ld.total = total;
    ld.warmup_ns = (int64_t)(warmup * 1e9);
    ld.measure_ns = (int64_t)(seconds * 1e9);
    ld.server.sin_family = AF_INET;
    ld.server.sin_port = htons((uint16_t)port);
    ld.server.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    int64_t start_ns = now_ns();
    int64_t deadline_ns = start_ns + ld.warmup_ns + ld.measure_ns + DEADLINE_SLACK_NS;
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_alarm);
    alarm((unsigned)((deadline_ns - start_ns) / NS) + 3);

    ld.ctx = make_context(cafile, ciphers);
    if (!ld.ctx) {
        ERR_print_errors_fp(stderr);
        return usage("could not set up the SSL_CTX (--cafile, --ciphers)");
    }
    size_t out_size = ld.mode == ACCEPT ? 0 : ld.mode == BULK || ld.size >= BLOCK ? BLOCK : (size_t)ld.size;
    ld.conns = calloc((size_t)ld.n_conns, sizeof *ld.conns);
    ld.pattern = malloc(BLOCK);
    ld.in = malloc(READ_SIZE);
    ld.epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (!ld.conns || !ld.pattern || !ld.in || ld.epoll_fd < 0) {
        perror("tls_load: setup");
        return 1;
    }
    for (size_t j = 0; j < BLOCK; j++)
        ld.pattern[j] = (unsigned char)(j * 167 + 13);
    for (long i = 0; i < ld.n_conns; i++) {
        struct connection *c = &ld.conns[i];
        c->fd = -1;
        c->index = i;
        if (out_size) {
            if (!(c->out = malloc(out_size))) {
                perror("tls_load: setup");
                return 1;
            }
            memcpy(c->out, ld.pattern, out_size);
        }
    }

    long free_slots = 0;
    if (ld.mode == ACCEPT) {
        ld.stage = WARMUP;
        ld.stage_end_ns = start_ns + ld.warmup_ns;
        if (ld.warmup_ns == 0)
            begin_measuring(&ld);
        free_slots = fill_slots(&ld);
    } else {
        ld.stage = SETUP;
        ld.handshaking = ld.live = ld.n_conns;
        for (long i = 0; i < ld.n_conns; i++)
            start(&ld, &ld.conns[i]);
        step(&ld, now_ns());
    }
    struct epoll_event events[MAX_EVENTS];
    while (ld.stage != DONE) {
        int64_t now = now_ns();
        if (now >= deadline_ns) {
            fprintf(stderr, "tls_load: still running %.1f s after the start, giving up\n",
                    (double)(now - start_ns) / 1e9);
            return 1;
        }
        int64_t wake = deadline_ns;
        if (ld.mode != BULK && (ld.stage == WARMUP || ld.stage == MEASURE) && ld.stage_end_ns < wake)
            wake = ld.stage_end_ns;
        int n = epoll_wait(ld.epoll_fd, events, MAX_EVENTS, free_slots ? 0 : timeout_ms(wake, now));
        if (n < 0 && errno != EINTR) {
            perror("tls_load: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++)
            on_event(&ld, events[i].data.ptr, events[i].events);
        step(&ld, now_ns());
        if (ld.mode == ACCEPT && ld.stage != DONE)
            free_slots = fill_slots(&ld);
    }

    uint64_t ops = 0, bytes = 0;
    double wall = 0, client_cpu = 0, server_cpu = -1;
    if (ld.measured) {
        ops = ld.last.ops - ld.first.ops;
        bytes = ld.last.bytes - ld.first.bytes;
        wall = (double)(ld.last.wall_ns - ld.first.wall_ns) / 1e9;
        client_cpu = ld.last.client_cpu - ld.first.client_cpu;
        if (ld.server_pid && ld.first.server_cpu >= 0 && ld.last.server_cpu >= 0)
            server_cpu = ld.last.server_cpu - ld.first.server_cpu;
    }
    char server_cpu_text[32] = "null";
    if (server_cpu >= 0)
        snprintf(server_cpu_text, sizeof server_cpu_text, "%.6f", server_cpu);
    printf("{\"mode\":\"%s\",\"connections\":%ld,\"size\":%" PRIu64 ",\"ops\":%" PRIu64 ",\"seconds\":%.6f,"
           "\"bytes\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"server_cpu_seconds\":%s,\"client_cpu_seconds\":%.6f}\n",
           mode_names[ld.mode], ld.n_conns, ld.mode == RR ? ld.size : ld.mode == BULK ? (uint64_t)BLOCK : 0, ops,
           wall, bytes, ld.errors, server_cpu_text, client_cpu);
    fflush(stdout);

    for (long i = 0; i < ld.n_conns; i++) {
        struct connection *c = &ld.conns[i];
        if (c->phase != FREE)
            close_connection(c, c->phase == READY || c->phase == ECHOING);
        free(c->out);
    }
    free(ld.conns);
    free(ld.pattern);
    free(ld.in);
    close(ld.epoll_fd);
    SSL_CTX_free(ld.ctx);
    if (ld.mode == ACCEPT && ld.ops == 0)
        fprintf(stderr, "tls_load: no handshake completed\n");
    if (ld.mode == ACCEPT)
        return ld.ops == 0 ? 1 : 0;
    return ld.errors > 0 || !ld.measured ? 1 : 0;
}
