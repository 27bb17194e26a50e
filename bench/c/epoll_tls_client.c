/*
 * The baseline bench_probe.py measures the engine against: a plain C client,
 * one epoll loop and OpenSSL, nothing else.
 *
 * Throughput mode: CONCURRENCY non-blocking connects to 127.0.0.1:PORT, a full
 * TLS handshake on each (no session reuse), close_notify and close, then the
 * next connection, until HANDSHAKES have been attempted. Prints one JSON line:
 * handshakes done, failures, wall seconds and CPU seconds of the loop.
 *
 * Hold mode (--hold established|handshaking): opens CONCURRENCY connections and
 * keeps them, either established (waiting to read a byte that never comes) or
 * waiting for the server's reply to the ClientHello. Once every connection
 * waits that way and nothing has happened for a while, prints the malloc heap
 * in use (mallinfo2) and the RSS (after malloc_trim), before and while they
 * are held, and exits.
 *
 * The TLS settings are the ones streamsock's default client Context compiles
 * to (csrc/tls.c), so both clients do the same cryptographic work: TLS 1.2 or
 * newer, verify the chain against CAFILE, SNI and a host-name check of
 * HOST_NAME without partial wildcards.
 *
 *   epoll_tls_client --port P --cafile F --host-name H --concurrency N
 *                    --handshakes M [--timeout-ms T] [--ciphers LIST]
 *                    [--hold established|handshaking] [--buffers keep|release|free-idle]
 *
 * --buffers says what happens to OpenSSL's per-connection read and write
 * buffers (about 16.5 KB each): "keep" (the default: a plain client) keeps
 * them for the connection's life; "release" sets SSL_MODE_RELEASE_BUFFERS;
 * "free-idle" calls SSL_free_buffers() whenever the connection waits to read
 * (it refuses while anything is buffered; safe from OpenSSL 3.0.14 on,
 * CVE-2024-4741), which is what streamsock's core does on such OpenSSLs.
 *
 * Build: gcc -std=c11 -O2 -Wall -Wextra -Werror epoll_tls_client.c -lssl -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <malloc.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define MAX_EVENTS 256
#define QUIET_NS (300 * 1000000LL)    /* hold mode: this long without an event means settled */
#define SCAN_EVERY_NS (10 * 1000000LL) /* how often deadlines are checked */

enum phase { FREE, CONNECTING, HANDSHAKING, HOLDING };
enum hold_mode { NO_HOLD, HOLD_ESTABLISHED, HOLD_HANDSHAKING };
enum buffers { KEEP_BUFFERS, RELEASE_BUFFERS, FREE_BUFFERS_WHEN_IDLE };

struct connection {
    int fd;
    SSL *ssl;
    enum phase phase;
    uint32_t watched; /* epoll events registered for fd; 0: not registered */
    int parked;       /* hold mode: waiting on the server in the wanted phase */
    int64_t deadline_ns;
};

struct client {
    SSL_CTX *ctx;
    const char *host_name;
    struct sockaddr_in server;
    int epoll_fd;
    struct connection *slots;
    long concurrency;
    long handshakes; /* connections to attempt in all */
    long started, succeeded, failed;
    long parked; /* hold mode: connections with parked set */
    int64_t timeout_ns;
    enum hold_mode hold;
    enum buffers buffers;
};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static double cpu_seconds(void)
{
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return (double)(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
           (double)(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

/* Bytes handed out by malloc and not freed: every arena plus mmapped blocks. */
static size_t heap_in_use(void)
{
    struct mallinfo2 info = mallinfo2();
    return info.uordblks + info.hblkhd;
}

static size_t rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, resident = 0;
    if (!f)
        return 0;
    if (fscanf(f, "%lu %lu", &size, &resident) != 2)
        resident = 0;
    fclose(f);
    return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}

/* Memory now. malloc_trim first: freed pages go back to the system, so the
 * RSS counts what is held, not the peak of the handshakes before. */
static void sample_memory(size_t *heap, size_t *rss)
{
    malloc_trim(0);
    *heap = heap_in_use();
    *rss = rss_bytes();
}

static SSL_CTX *make_context(const char *cafile, const char *ciphers, enum buffers buffers)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        return NULL;
    /* As new_ssl_ctx() in csrc/tls.c sets them for a default client Context. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (buffers == RELEASE_BUFFERS) /* not set by the engine: shows what it would save */
        SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
        (ciphers && SSL_CTX_set_cipher_list(ctx, ciphers) != 1) ||
        SSL_CTX_load_verify_locations(ctx, cafile, NULL) != 1) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    return ctx;
}

static SSL *make_ssl(const struct client *cl, int fd)
{
    SSL *ssl = SSL_new(cl->ctx);
    if (!ssl)
        return NULL;
    SSL_set_connect_state(ssl);
    SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if (SSL_set_fd(ssl, fd) != 1 || SSL_set_tlsext_host_name(ssl, cl->host_name) != 1 ||
        SSL_set1_host(ssl, cl->host_name) != 1) {
        SSL_free(ssl);
        return NULL;
    }
    return ssl;
}

static void set_parked(struct client *cl, struct connection *c, int parked)
{
    cl->parked += parked - c->parked;
    c->parked = parked;
}

static int watch(struct client *cl, struct connection *c, uint32_t events)
{
    if (c->watched == events)
        return 0;
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(cl->epoll_fd, c->watched ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &ev) < 0)
        return -1;
    c->watched = events;
    return 0;
}

/* Ends a connection; a successful one says goodbye with close_notify, as the engine does. */
static void finish(struct client *cl, struct connection *c, int ok)
{
    if (c->ssl) {
        if (ok)
            SSL_shutdown(c->ssl);
        SSL_free(c->ssl);
    }
    ERR_clear_error();
    if (c->fd >= 0)
        close(c->fd); /* also leaves the epoll set */
    set_parked(cl, c, 0);
    memset(c, 0, sizeof *c);
    c->fd = -1;
    c->phase = FREE;
    if (ok)
        cl->succeeded++;
    else
        cl->failed++;
}

/* Waits for what OpenSSL asked for, or ends the connection on an error. */
static void wait_for(struct client *cl, struct connection *c, int ssl_error)
{
    uint32_t events = ssl_error == SSL_ERROR_WANT_READ ? EPOLLIN : ssl_error == SSL_ERROR_WANT_WRITE ? EPOLLOUT : 0;
    if (!events || watch(cl, c, events) < 0) {
        finish(cl, c, 0);
        return;
    }
    if (cl->buffers == FREE_BUFFERS_WHEN_IDLE && events == EPOLLIN)
        SSL_free_buffers(c->ssl); /* allocated again by the next read */
    int wanted_phase = cl->hold == HOLD_ESTABLISHED ? HOLDING : HANDSHAKING;
    set_parked(cl, c, cl->hold != NO_HOLD && events == EPOLLIN && (int)c->phase == wanted_phase);
}

/* Moves a connection on after an event (or right after a connect that finished at once). */
static void advance(struct client *cl, struct connection *c)
{
    if (c->phase == FREE)
        return;
    set_parked(cl, c, 0);
    if (c->phase == CONNECTING) {
        int error = 0;
        socklen_t len = sizeof error;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &len) < 0 || error != 0 ||
            !(c->ssl = make_ssl(cl, c->fd))) {
            finish(cl, c, 0);
            return;
        }
        c->phase = HANDSHAKING;
    }
    if (c->phase == HANDSHAKING) {
        int rc = SSL_do_handshake(c->ssl);
        if (rc != 1) {
            wait_for(cl, c, SSL_get_error(c->ssl, rc));
            return;
        }
        if (cl->hold == NO_HOLD) {
            finish(cl, c, 1);
            return;
        }
        c->phase = HOLDING;
    }
    /* Holding: a read that waits; it also takes in the server's session tickets. */
    unsigned char byte;
    int rc = SSL_read(c->ssl, &byte, 1);
    if (rc > 0) {
        finish(cl, c, 1); /* a server that talks is not what hold mode measures */
        return;
    }
    wait_for(cl, c, SSL_get_error(c->ssl, rc));
}

static void start(struct client *cl, struct connection *c)
{
    cl->started++;
    c->phase = CONNECTING;
    c->deadline_ns = now_ns() + cl->timeout_ns;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        finish(cl, c, 0);
        return;
    }
    if (connect(c->fd, (const struct sockaddr *)&cl->server, sizeof cl->server) == 0) {
        advance(cl, c);
        return;
    }
    if (errno != EINPROGRESS || watch(cl, c, EPOLLOUT) < 0)
        finish(cl, c, 0);
}

/* Fills free slots while connections remain to be attempted. */
static void fill_slots(struct client *cl)
{
    for (long i = 0; i < cl->concurrency && cl->started < cl->handshakes; i++)
        if (cl->slots[i].phase == FREE)
            start(cl, &cl->slots[i]);
}

static void expire_overdue(struct client *cl, int64_t now)
{
    for (long i = 0; i < cl->concurrency; i++) {
        struct connection *c = &cl->slots[i];
        if (c->phase != FREE && c->deadline_ns <= now)
            finish(cl, c, 0);
    }
}

static int usage(const char *why)
{
    fprintf(stderr, "epoll_tls_client: %s\nusage: epoll_tls_client --port P --cafile F --host-name H "
                    "--concurrency N --handshakes M [--timeout-ms T] [--ciphers LIST] "
                    "[--hold established|handshaking] [--buffers keep|release|free-idle]\n", why);
    return 2;
}

int main(int argc, char **argv)
{
    long port = 0, timeout_ms = 30000;
    const char *cafile = NULL, *ciphers = NULL, *hold = NULL, *buffers = "keep";
    struct client cl;
    memset(&cl, 0, sizeof cl);
    cl.host_name = "localhost";
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 >= argc)
            return usage("an option lacks its value");
        const char *name = argv[i], *value = argv[i + 1];
        if (strcmp(name, "--port") == 0)
            port = strtol(value, NULL, 10);
        else if (strcmp(name, "--cafile") == 0)
            cafile = value;
        else if (strcmp(name, "--host-name") == 0)
            cl.host_name = value;
        else if (strcmp(name, "--concurrency") == 0)
            cl.concurrency = strtol(value, NULL, 10);
        else if (strcmp(name, "--handshakes") == 0)
            cl.handshakes = strtol(value, NULL, 10);
        else if (strcmp(name, "--timeout-ms") == 0)
            timeout_ms = strtol(value, NULL, 10);
        else if (strcmp(name, "--ciphers") == 0)
            ciphers = value;
        else if (strcmp(name, "--hold") == 0)
            hold = value;
        else if (strcmp(name, "--buffers") == 0)
            buffers = value;
        else
            return usage("unknown option");
    }
    if (port < 1 || port > 65535 || !cafile || cl.concurrency < 1 || timeout_ms < 1)
        return usage("--port, --cafile and --concurrency are required");
    if (hold) {
        if (strcmp(hold, "established") != 0 && strcmp(hold, "handshaking") != 0)
            return usage("--hold takes established or handshaking");
        cl.hold = hold[0] == 'e' ? HOLD_ESTABLISHED : HOLD_HANDSHAKING;
        cl.handshakes = cl.concurrency; /* one connection per slot, kept */
    }
    if (cl.handshakes < 1)
        return usage("--handshakes must be at least 1");
    if (strcmp(buffers, "keep") == 0)
        cl.buffers = KEEP_BUFFERS;
    else if (strcmp(buffers, "release") == 0)
        cl.buffers = RELEASE_BUFFERS;
    else if (strcmp(buffers, "free-idle") == 0)
        cl.buffers = FREE_BUFFERS_WHEN_IDLE;
    else
        return usage("--buffers takes keep, release or free-idle");
    cl.timeout_ns = (int64_t)timeout_ms * 1000000;
    cl.server.sin_family = AF_INET;
    cl.server.sin_port = htons((uint16_t)port);
    cl.server.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    cl.ctx = make_context(cafile, ciphers, cl.buffers);
    if (!cl.ctx) {
        ERR_print_errors_fp(stderr);
        return usage("could not set up the SSL_CTX");
    }
    cl.slots = calloc((size_t)cl.concurrency, sizeof *cl.slots);
    cl.epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (!cl.slots || cl.epoll_fd < 0) {
        perror("epoll_tls_client: setup");
        return 1;
    }
    for (long i = 0; i < cl.concurrency; i++)
        cl.slots[i].fd = -1;

    size_t heap_before, rss_before;
    sample_memory(&heap_before, &rss_before);
    double cpu_start = cpu_seconds();
    int64_t start_ns = now_ns(), last_event_ns = start_ns, next_scan_ns = start_ns + SCAN_EVERY_NS;
    /* Bounded: a handshake takes a handful of wakeups, an idle wait at least
     * a millisecond, and no run outlives every deadline by much. */
    uint64_t max_iterations = 64 * (uint64_t)(cl.handshakes + cl.concurrency) + 2 * (uint64_t)timeout_ms + 1000;
    int settled = 0;
    uint64_t iteration;
    fill_slots(&cl);
    for (iteration = 0; iteration < max_iterations; iteration++) {
        if (cl.succeeded + cl.failed >= cl.handshakes)
            break;
        int64_t now = now_ns();
        long live = cl.started - cl.succeeded - cl.failed;
        if (cl.hold != NO_HOLD && cl.started == cl.handshakes && live > 0 && cl.parked == live &&
            now - last_event_ns >= QUIET_NS) {
            settled = 1;
            break;
        }
        struct epoll_event events[MAX_EVENTS];
        int n = epoll_wait(cl.epoll_fd, events, MAX_EVENTS, 10);
        if (n < 0 && errno != EINTR) {
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++)
            advance(&cl, events[i].data.ptr);
        now = now_ns();
        if (n > 0)
            last_event_ns = now;
        if (now >= next_scan_ns) {
            expire_overdue(&cl, now);
            next_scan_ns = now + SCAN_EVERY_NS;
        }
        fill_slots(&cl);
    }
    double wall = (double)(now_ns() - start_ns) / 1e9;
    double cpu = cpu_seconds() - cpu_start;
    if (iteration == max_iterations) {
        fprintf(stderr, "epoll_tls_client: gave up after %llu loop iterations\n", (unsigned long long)iteration);
        return 1;
    }
    if (cl.hold != NO_HOLD) {
        size_t heap_held, rss_held;
        sample_memory(&heap_held, &rss_held);
        long established = 0, handshaking = 0;
        for (long i = 0; i < cl.concurrency; i++) {
            established += cl.slots[i].phase == HOLDING;
            handshaking += cl.slots[i].phase == HANDSHAKING || cl.slots[i].phase == CONNECTING;
        }
        printf("{\"connections\": %ld, \"established\": %ld, \"handshaking\": %ld, \"failed\": %ld, "
               "\"settled\": %s, "
               "\"heap_before\": %zu, \"heap_held\": %zu, \"rss_before\": %zu, \"rss_held\": %zu}\n",
               cl.concurrency, established, handshaking, cl.failed, settled ? "true" : "false", heap_before, heap_held,
               rss_before, rss_held);
    } else {
        printf("{\"handshakes\": %ld, \"failed\": %ld, \"seconds\": %.6f, \"cpu_seconds\": %.6f}\n", cl.succeeded,
               cl.failed, wall, cpu);
    }
    for (long i = 0; i < cl.concurrency; i++)
        if (cl.slots[i].phase != FREE)
            finish(&cl, &cl.slots[i], 0);
    free(cl.slots);
    close(cl.epoll_fd);
    SSL_CTX_free(cl.ctx);
    return 0;
}
