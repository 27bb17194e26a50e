/*
 * The C anchor of the TLS echo benchmarks, "what C costs": one thread, one
 * epoll loop, OpenSSL with its defaults, echoing whatever it reads. tls_load
 * drives it, and the same benchmarks against streamsock are set beside it.
 *
 *   tls_echo_server --cert F --key F [--port P] [--ciphers LIST]
 *
 * Listens on 127.0.0.1:PORT (default 0: an ephemeral port) with a backlog of
 * 1024, prints the port it bound as one line on stdout, then serves until
 * SIGTERM or SIGINT and exits 0. On each listener event it accepts every
 * pending connection. A connection does its TLS handshake, driven by epoll
 * and dropped if not done within 10 s, then writes back everything it reads:
 * each SSL_read (into a 64 KiB buffer) until OpenSSL wants more from the
 * socket, each one written back at once. When a write cannot finish, the rest
 * is kept, reading stops (flow control) and the connection waits to be
 * writable; once the rest is out, reading resumes. On EOF, close_notify or an
 * error the connection is closed, after a close_notify of its own where TLS
 * allows one (a clean close; OpenSSL forbids SSL_shutdown after a fatal error).
 *
 * TLS: TLS_server_method, TLS 1.2 or newer, the certificate chain from --cert
 * (SSL_CTX_use_certificate_chain_file), the key from --key, --ciphers as the
 * TLS 1.2 cipher list, partial writes and moving write buffers allowed; all
 * else as OpenSSL has it by default (session cache, tickets, TLS 1.3 suites).
 *
 * On exit it writes to stderr how many connections it accepted, how many
 * handshakes completed, failed and timed out, and how many accepts failed.
 *
 * Build: gcc -std=c11 -O2 -Wall -Wextra -Werror -D_GNU_SOURCE tls_echo_server.c -o tls_echo_server -lssl -lcrypto
 */
#ifndef _GNU_SOURCE /* the build line may define it too */
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
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

#define MAX_EVENTS 256
#define BUFFER_SIZE 65536
#define BACKLOG 1024
#define HANDSHAKE_TIMEOUT_NS (10 * 1000000000LL)

static volatile sig_atomic_t stop_requested;

enum phase { HANDSHAKING, ECHOING };

struct connection {
    int fd;
    SSL *ssl;
    enum phase phase;
    uint32_t watched;       /* epoll events registered for fd; 0: not registered */
    int64_t deadline_ns;    /* HANDSHAKING: dropped at this time */
    unsigned char *pending; /* BUFFER_SIZE bytes, from the first write that had to wait on */
    size_t pending_start, pending_len;
    struct connection *prev, *next; /* in the server's handshaking or echoing list */
};

struct list {
    struct connection *head, *tail;
};

struct server {
    SSL_CTX *ctx;
    int listen_fd, epoll_fd;
    struct list handshaking; /* oldest first: deadlines in order */
    struct list echoing;
    unsigned char *buffer; /* BUFFER_SIZE bytes: every SSL_read lands here */
    int listening; /* the listener is watched; 0 after an accept error, until a connection closes */
    unsigned long accepted, handshakes, failed, timed_out, accept_errors;
};

static void on_signal(int signo)
{
    (void)signo;
    stop_requested = 1;
}

/* A coarse clock is enough for a 10 s timeout and costs less per loop turn. */
static int64_t coarse_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void list_append(struct list *l, struct connection *c)
{
    c->next = NULL;
    c->prev = l->tail;
    if (l->tail)
        l->tail->next = c;
    else
        l->head = c;
    l->tail = c;
}

static void list_remove(struct list *l, struct connection *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        l->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        l->tail = c->prev;
    c->prev = c->next = NULL;
}

static void set_listening(struct server *srv, int on)
{
    struct epoll_event ev = {.events = on ? EPOLLIN : 0, .data.ptr = NULL};
    if (epoll_ctl(srv->epoll_fd, EPOLL_CTL_MOD, srv->listen_fd, &ev) == 0)
        srv->listening = on;
}

static void close_connection(struct server *srv, struct connection *c, int say_goodbye)
{
    if (say_goodbye)
        SSL_shutdown(c->ssl); /* once, non-blocking: close_notify if the socket takes it */
    SSL_free(c->ssl);
    /* SSL_get_error() reads the thread's error queue: leave nothing for the next connection. */
    ERR_clear_error();
    close(c->fd); /* also leaves the epoll set */
    list_remove(c->phase == HANDSHAKING ? &srv->handshaking : &srv->echoing, c);
    free(c->pending);
    free(c);
    if (!srv->listening)
        set_listening(srv, 1);
}

static int watch(struct server *srv, struct connection *c, uint32_t events)
{
    if (c->watched == events)
        return 0;
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(srv->epoll_fd, c->watched ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &ev) < 0)
        return -1;
    c->watched = events;
    return 0;
}

/* After SSL_ERROR_WANT_READ or _WRITE: waits for it. Returns 0, or -1 when the
 * connection failed instead and is gone. */
static int wait_for(struct server *srv, struct connection *c, int ssl_error)
{
    uint32_t events = ssl_error == SSL_ERROR_WANT_READ ? EPOLLIN : ssl_error == SSL_ERROR_WANT_WRITE ? EPOLLOUT : 0;
    if (events && watch(srv, c, events) == 0)
        return 0;
    close_connection(srv, c, 0);
    return -1;
}

/* Writes as much of data as the connection takes now. Returns the bytes
 * written; fewer than len, and the connection waits for what OpenSSL needs to
 * go on. -1: the connection failed and is gone. */
static long write_out(struct server *srv, struct connection *c, const unsigned char *data, size_t len)
{
    size_t done = 0;
    while (done < len) {
        int rc = SSL_write(c->ssl, data + done, (int)(len - done));
        if (rc > 0) {
            done += (size_t)rc;
            continue;
        }
        if (wait_for(srv, c, SSL_get_error(c->ssl, rc)) < 0)
            return -1;
        return (long)done;
    }
    return (long)done;
}

/* Reads and writes back until OpenSSL wants more from the socket (which also
 * empties what SSL_pending counts), or a write has to wait. */
static void echo(struct server *srv, struct connection *c)
{
    for (;;) {
        int n = SSL_read(c->ssl, srv->buffer, BUFFER_SIZE);
        if (n <= 0) {
            int e = SSL_get_error(c->ssl, n);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                wait_for(srv, c, e);
            else
                close_connection(srv, c, e == SSL_ERROR_ZERO_RETURN);
            return;
        }
        long written = write_out(srv, c, srv->buffer, (size_t)n);
        if (written < 0)
            return;
        if (written < n) {
            /* The shared buffer is overwritten by the next read of any
             * connection: the rest moves to the connection's own, which
             * SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER lets the retry use. */
            if (!c->pending && !(c->pending = malloc(BUFFER_SIZE))) {
                close_connection(srv, c, 0);
                return;
            }
            c->pending_start = 0;
            c->pending_len = (size_t)(n - written);
            memcpy(c->pending, srv->buffer + written, c->pending_len);
            return; /* watching only what the write waits for: reading stops */
        }
    }
}

static void handshake(struct server *srv, struct connection *c)
{
    int rc = SSL_do_handshake(c->ssl);
    if (rc == 1) {
        srv->handshakes++;
        list_remove(&srv->handshaking, c);
        c->phase = ECHOING;
        list_append(&srv->echoing, c);
        echo(srv, c); /* the client's first request may be in already */
        return;
    }
    int e = SSL_get_error(c->ssl, rc);
    if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
        srv->failed++;
    wait_for(srv, c, e);
}

static void on_event(struct server *srv, struct connection *c)
{
    if (c->phase == HANDSHAKING) {
        handshake(srv, c);
        return;
    }
    if (c->pending_len) {
        long written = write_out(srv, c, c->pending + c->pending_start, c->pending_len);
        if (written < 0)
            return;
        c->pending_start += (size_t)written;
        c->pending_len -= (size_t)written;
        if (c->pending_len)
            return;
    }
    /* Flushed, or nothing was pending: read again at once, as OpenSSL may hold
     * data that no epoll event will announce. */
    echo(srv, c);
}

static void accept_all(struct server *srv)
{
    for (;;) {
        int fd = accept4(srv->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (srv->accept_errors++ == 0)
                perror("tls_echo_server: accept4");
            /* Out of descriptors or memory: the listener would be ready on
             * every turn. It rests until a connection closes. */
            set_listening(srv, 0);
            return;
        }
        srv->accepted++;
        int one = 1;
        struct connection *c = calloc(1, sizeof *c);
        if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0 || !c ||
            !(c->ssl = SSL_new(srv->ctx)) || SSL_set_fd(c->ssl, fd) != 1) {
            if (c)
                SSL_free(c->ssl);
            free(c);
            close(fd);
            srv->failed++;
            ERR_clear_error();
            continue;
        }
        SSL_set_accept_state(c->ssl);
        c->fd = fd;
        c->phase = HANDSHAKING;
        c->deadline_ns = coarse_now_ns() + HANDSHAKE_TIMEOUT_NS;
        list_append(&srv->handshaking, c);
        handshake(srv, c); /* the ClientHello has usually arrived with the connection */
    }
}

static void expire_handshakes(struct server *srv, int64_t now)
{
    while (srv->handshaking.head && srv->handshaking.head->deadline_ns <= now) {
        srv->timed_out++;
        close_connection(srv, srv->handshaking.head, 0);
    }
}

static SSL_CTX *make_context(const char *cert, const char *key, const char *ciphers)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx)
        return NULL;
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
        (ciphers && SSL_CTX_set_cipher_list(ctx, ciphers) != 1) ||
        SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

static int usage(const char *why)
{
    fprintf(stderr, "tls_echo_server: %s\nusage: tls_echo_server --cert F --key F [--port P] [--ciphers LIST]\n",
            why);
    return 2;
}

int main(int argc, char **argv)
{
    const char *cert = NULL, *key = NULL, *ciphers = NULL;
    long port = 0;
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 >= argc)
            return usage("an option lacks its value");
        const char *name = argv[i], *value = argv[i + 1];
        if (strcmp(name, "--cert") == 0) {
            cert = value;
        } else if (strcmp(name, "--key") == 0) {
            key = value;
        } else if (strcmp(name, "--ciphers") == 0) {
            ciphers = value;
        } else if (strcmp(name, "--port") == 0) {
            char *end;
            errno = 0;
            port = strtol(value, &end, 10);
            if (errno || end == value || *end || port < 0 || port > 65535)
                return usage("--port must be 0 to 65535");
        } else {
            return usage("unknown option");
        }
    }
    if (!cert || !key)
        return usage("--cert and --key are required");

    struct server srv;
    memset(&srv, 0, sizeof srv);
    signal(SIGPIPE, SIG_IGN);
    /* SIGTERM and SIGINT are let in only inside epoll_pwait, so a stop request
     * cannot slip in between the check of the flag and the wait. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigset_t stop_signals, wait_mask;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    sigprocmask(SIG_BLOCK, &stop_signals, &wait_mask);
    sigdelset(&wait_mask, SIGTERM);
    sigdelset(&wait_mask, SIGINT);

    srv.ctx = make_context(cert, key, ciphers);
    if (!srv.ctx) {
        ERR_print_errors_fp(stderr);
        return usage("could not set up the SSL_CTX (--cert, --key, --ciphers)");
    }
    srv.buffer = malloc(BUFFER_SIZE);
    srv.epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    srv.listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t addr_len = sizeof addr;
    int one = 1;
    struct epoll_event listen_event = {.events = EPOLLIN, .data.ptr = NULL};
    if (!srv.buffer || srv.epoll_fd < 0 || srv.listen_fd < 0 ||
        setsockopt(srv.listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(srv.listen_fd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(srv.listen_fd, BACKLOG) < 0 ||
        getsockname(srv.listen_fd, (struct sockaddr *)&addr, &addr_len) < 0 ||
        epoll_ctl(srv.epoll_fd, EPOLL_CTL_ADD, srv.listen_fd, &listen_event) < 0) {
        perror("tls_echo_server: setup");
        return 1;
    }
    srv.listening = 1;
    printf("%u\n", (unsigned)ntohs(addr.sin_port));
    fflush(stdout);

    struct epoll_event events[MAX_EVENTS];
    while (!stop_requested) {
        int timeout = -1;
        if (srv.handshaking.head) {
            int64_t left = srv.handshaking.head->deadline_ns - coarse_now_ns();
            timeout = left <= 0 ? 0 : (int)(left / 1000000) + 1;
        }
        int n = epoll_pwait(srv.epoll_fd, events, MAX_EVENTS, timeout, &wait_mask);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("tls_echo_server: epoll_pwait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            if (events[i].data.ptr)
                on_event(&srv, events[i].data.ptr);
            else
                accept_all(&srv);
        }
        if (srv.handshaking.head)
            expire_handshakes(&srv, coarse_now_ns());
    }

    while (srv.handshaking.head)
        close_connection(&srv, srv.handshaking.head, 0);
    while (srv.echoing.head)
        close_connection(&srv, srv.echoing.head, 1);
    close(srv.listen_fd);
    close(srv.epoll_fd);
    free(srv.buffer);
    SSL_CTX_free(srv.ctx);
    fprintf(stderr,
            "tls_echo_server: %lu connections accepted, %lu handshakes completed, %lu failed, %lu timed out, "
            "%lu accept errors\n",
            srv.accepted, srv.handshakes, srv.failed, srv.timed_out, srv.accept_errors);
    return 0;
}
