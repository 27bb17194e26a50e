/*
 * The connection state machine.
 *
 * Theory of operation
 * -------------------
 * A connection is a socket plus, while TLS is on, an SSL object, and a state:
 *
 *   RESOLVE -> CONNECTING -> [HANDSHAKING] -> ESTABLISHED <-> HANDSHAKING (STARTTLS)
 *                                               |  ^
 *                                               v  |
 *                                           TLS_SHUTDOWN (enable_crypto(false))
 *   LISTENING (servers);  any state -> FAILED (errors stick) or CLOSED.
 *
 * ss_conn_step() is the one place states change: it runs the current state's
 * action (sock.c or tls.c, which only report) and moves on until an action
 * must wait for the socket, returning SS_WANT_READ / SS_WANT_WRITE, or the
 * connection is ESTABLISHED (SS_DONE). Drivers sit above it: ss_conn_run()
 * polls in C for the blocking API; Python's select() and asyncio, and the
 * engine, wait on ss_conn_fd() themselves and call step again.
 *
 * Every resolved address is tried in turn within the caller's one deadline;
 * the errno of the last failure is what PHP reports. TLS reads the socket
 * through the conn's read buffer (tls.c's socket BIO), record by record: when
 * TLS ends (close_notify), the plaintext that followed it is still in that
 * buffer, and application data that arrived before the peer's close_notify
 * is kept in `handback` and read first.
 *
 * Syscalls are counted, not spent: each entry point allows one recv (two
 * when the first filled the buffer); the blocking driver allows it only
 * after poll said readable, and a client that has just sent its ClientHello
 * does not look for the answer before waiting for it.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static int socktype_of(int transport)
{
    return transport == SS_TRANSPORT_UDP || transport == SS_TRANSPORT_UDG ? SOCK_DGRAM : SOCK_STREAM;
}

static int is_local(int transport)
{
    return transport == SS_TRANSPORT_UNIX || transport == SS_TRANSPORT_UDG;
}

static ss_conn_t *conn_new(const ss_conn_options_t *o, ss_error_info_t *err)
{
    ss__fail(err, SS_OK, 0, "%s", "");
    if (ss_transport_name(o->transport) == NULL) {
        ss__fail(err, SS_ERR_UNSUPPORTED, 0, "unknown transport %d", o->transport);
        return NULL;
    }
    ss_conn_t *conn = calloc(1, sizeof *conn);
    if (!conn) {
        ss__fail(err, SS_ERR_NOMEM, ENOMEM, "out of memory");
        return NULL;
    }
    conn->fd = -1;
    conn->transport = o->transport;
    conn->socktype = socktype_of(o->transport);
    conn->port = o->port;
    conn->verify_peer_name = o->verify_peer_name;
    conn->sni_enabled = o->sni_enabled;
    conn->bind_port = o->bind_port;
    conn->backlog = o->backlog > 0 ? o->backlog : 32;
    conn->tcp_nodelay = o->tcp_nodelay;
    conn->so_reuseport = o->so_reuseport;
    conn->so_broadcast = o->so_broadcast;
    conn->ipv6_v6only = o->ipv6_v6only;
    conn->so_reuseaddr = o->so_reuseaddr;
    conn->so_keepalive = o->so_keepalive;
    conn->tcp_keepidle = o->tcp_keepidle;
    conn->tcp_keepintvl = o->tcp_keepintvl;
    conn->tcp_keepcnt = o->tcp_keepcnt;
    conn->so_linger = o->so_linger;
    conn->so_rcvbuf = o->so_rcvbuf;
    conn->so_sndbuf = o->so_sndbuf;
    conn->host = dup_or_null(o->host);
    conn->peer_name = dup_or_null(o->peer_name);
    conn->bind_host = dup_or_null(o->bind_host);
    if ((o->host && !conn->host) || (o->peer_name && !conn->peer_name) || (o->bind_host && !conn->bind_host)) {
        ss_conn_free(conn);
        ss__fail(err, SS_ERR_NOMEM, ENOMEM, "out of memory");
        return NULL;
    }
    if (is_local(o->transport)) {
        if (!o->path || o->path_len == 0 || o->path_len > sizeof conn->path - 1) {
            ss_conn_free(conn);
            ss__fail(err, SS_ERR_ADDR_PATH_TOO_LONG, ENAMETOOLONG, "invalid unix socket path");
            return NULL;
        }
        memcpy(conn->path, o->path, o->path_len);
        conn->path_len = o->path_len;
    } else if (!o->host) {
        ss_conn_free(conn);
        ss__fail(err, SS_ERR_ADDR_HOST_EMPTY, 0, "missing host");
        return NULL;
    }
    if (o->tls)
        conn->initial_tls = ss__tls_ctx_ref(o->tls);
    return conn;
}

ss_conn_t *ss_conn_client(const ss_conn_options_t *o, ss_error_info_t *err)
{
    ss_conn_t *conn = conn_new(o, err);
    if (conn)
        conn->state = SS_STATE_RESOLVE;
    return conn;
}

ss_conn_t *ss_conn_server(const ss_conn_options_t *o, ss_error_info_t *err)
{
    ss_conn_t *conn = conn_new(o, err);
    if (!conn)
        return NULL;
    int rc;
    if (is_local(conn->transport)) {
        rc = ss__open_unix(conn, 1);
    } else {
        rc = ss__resolve(conn, conn->host, conn->port, 1, &conn->ai_list);
        if (rc == SS_OK)
            rc = ss__listen_inet(conn);
    }
    if (rc < 0) {
        *err = conn->err;
        ss_conn_free(conn);
        return NULL;
    }
    conn->state = SS_STATE_LISTENING;
    return conn;
}

ss_conn_t *ss_conn_accept(ss_conn_t *listener, ss_error_info_t *err)
{
    ss__fail(err, SS_OK, 0, "%s", "");
    if (listener->state != SS_STATE_LISTENING || listener->socktype != SOCK_STREAM) {
        ss__fail(err, SS_ERR_STATE, 0, "accept needs a listening stream socket");
        return NULL;
    }
    int fd;
    do
        fd = accept4(listener->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            ss__fail(err, SS_ERR_SYSTEM, errno, "accept failed: %s", strerror(errno));
        return NULL;
    }
    ss_conn_t *conn = calloc(1, sizeof *conn);
    if (!conn) {
        close(fd);
        ss__fail(err, SS_ERR_NOMEM, ENOMEM, "out of memory");
        return NULL;
    }
    conn->fd = fd;
    conn->transport = listener->transport;
    conn->socktype = SOCK_STREAM;
    conn->accepted = 1;
    conn->ipv6_v6only = -1;
    conn->bind_port = -1;
    conn->state = SS_STATE_ESTABLISHED;
    if (listener->initial_tls) {
        if (ss__tls_attach(conn, listener->initial_tls) != SS_OK) {
            *err = conn->err;
            ss_conn_free(conn);
            return NULL;
        }
        conn->state = SS_STATE_HANDSHAKING;
    }
    return conn;
}

ss_conn_t *ss_conn_from_fd(int fd, int32_t transport, ss_tls_ctx_t *tls, const char *peer_name,
                           ss_error_info_t *err)
{
    ss__fail(err, SS_OK, 0, "%s", "");
    /* The socket's own type decides how it is read (a unix socketpair may be
     * a stream, datagram or seqpacket socket); the transport must agree. */
    int socktype = 0;
    socklen_t size = sizeof socktype;
    if (fd < 0 || ss_transport_name(transport) == NULL ||
        getsockopt(fd, SOL_SOCKET, SO_TYPE, &socktype, &size) < 0 ||
        (socktype == SOCK_DGRAM) != (socktype_of(transport) == SOCK_DGRAM) ||
        (socktype != SOCK_STREAM && socktype != SOCK_DGRAM && socktype != SOCK_SEQPACKET) ||
        (tls && (socktype != SOCK_STREAM || is_local(transport)))) {
        ss__fail(err, SS_ERR_STATE, EINVAL, "ss_conn_from_fd needs a connected socket of the transport's type");
        return NULL;
    }
    if (ss__set_nonblocking(fd) < 0) {
        ss__fail(err, SS_ERR_SYSTEM, errno, "fcntl failed: %s", strerror(errno));
        return NULL;
    }
    ss_conn_t *conn = calloc(1, sizeof *conn);
    if (!conn || (peer_name && !(conn->peer_name = strdup(peer_name)))) {
        free(conn);
        ss__fail(err, SS_ERR_NOMEM, ENOMEM, "out of memory");
        return NULL;
    }
    conn->fd = fd;
    conn->transport = transport;
    conn->socktype = socktype == SOCK_DGRAM ? SOCK_DGRAM : SOCK_STREAM; /* seqpacket closes as a stream */
    conn->accepted = tls && tls->server;
    conn->ipv6_v6only = -1;
    conn->bind_port = -1;
    conn->verify_peer_name = 1;
    conn->sni_enabled = 1;
    conn->state = SS_STATE_ESTABLISHED;
    if (tls) {
        if (ss__tls_attach(conn, tls) != SS_OK) {
            *err = conn->err;
            conn->fd = -1; /* the caller keeps its fd when we fail */
            ss_conn_free(conn);
            return NULL;
        }
        conn->state = SS_STATE_HANDSHAKING;
    }
    return conn;
}

/* Bytes left unread when a TCP socket closes make the kernel reset the
 * connection instead of closing it, and a reset can cost the peer the tail of
 * what we sent: the TLS 1.3 session tickets a client never reads are enough.
 * Whatever has arrived is read away first (bounded, never waiting). */
static void discard_unread(int fd)
{
    char buf[4096];
    for (int i = 0; i < 64; i++) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n <= 0 && !(n < 0 && errno == EINTR))
            return;
    }
}

/* close_notify when established, then the socket; keep_tls: the TLS state
 * stays, cut off from the socket, else it is freed. */
static void end_connection(ss_conn_t *conn, int keep_tls)
{
    if (conn->fd >= 0 && conn->wbuf_len)
        ss__sock_flush(conn); /* best effort: a last flight or its alert */
    if (conn->ssl) {
        if (conn->state == SS_STATE_ESTABLISHED)
            ss__tls_notify_close(conn);
        if (keep_tls)
            ss__tls_silence(conn);
        else
            ss__tls_detach(conn);
    }
    if (conn->fd >= 0) {
        if (conn->socktype == SOCK_STREAM && conn->state != SS_STATE_LISTENING)
            discard_unread(conn->fd);
        close(conn->fd);
        conn->fd = -1;
    }
}

void ss_conn_close(ss_conn_t *conn)
{
    end_connection(conn, 0);
    if (conn->state == SS_STATE_LISTENING && conn->path_len && conn->path[0] &&
        conn->socktype == SOCK_STREAM) /* a unix listener removes its socket file */
        unlink(conn->path);
    conn->state = SS_STATE_CLOSED;
}

void ss__conn_hang_up(ss_conn_t *conn)
{
    end_connection(conn, 1);
}

void ss_conn_free(ss_conn_t *conn)
{
    if (!conn)
        return;
    ss_conn_close(conn);
    ss_tls_ctx_free(conn->initial_tls);
    SSL_SESSION_free(conn->offer_session);
    if (conn->ai_list)
        freeaddrinfo(conn->ai_list);
    free(conn->host);
    free(conn->peer_name);
    free(conn->bind_host);
    free(conn->handback);
    free(conn->server_hello);
    free(conn->rbuf);
    free(conn->wbuf);
    free(conn);
}

int ss__conn_fail(ss_conn_t *conn, int code)
{
    conn->state = SS_STATE_FAILED;
    return code;
}

/* The one switch: every state change happens here. */
static int step(ss_conn_t *conn)
{
    for (;;) {
        int rc;
        switch ((enum ss_state)conn->state) {
        case SS_STATE_RESOLVE:
            if (is_local(conn->transport)) {
                rc = ss__open_unix(conn, 0);
            } else {
                /* The engine may have looked the name up on its resolver threads. */
                rc = conn->ai_list ? SS_OK : ss__resolve(conn, conn->host, conn->port, 0, &conn->ai_list);
                if (rc == SS_OK) {
                    conn->ai_next = conn->ai_list;
                    rc = ss__connect_next(conn);
                }
            }
            if (rc < 0)
                return ss__conn_fail(conn, rc);
            conn->state = SS_STATE_CONNECTING;
            if (rc == SS_WANT_WRITE)
                return SS_WANT_WRITE;
            continue;

        case SS_STATE_CONNECTING:
            rc = ss__connect_result(conn);
            if (rc != SS_DONE) {
                if (is_local(conn->transport))
                    return ss__conn_fail(conn, ss__fail(&conn->err, SS_ERR_CONNECT, rc, "%s", strerror(rc)));
                conn->connect_errno = rc; /* try the next address */
                close(conn->fd);
                conn->fd = -1;
                conn->revents = 0;
                rc = ss__connect_next(conn);
                if (rc < 0)
                    return ss__conn_fail(conn, rc);
                if (rc == SS_WANT_WRITE)
                    return SS_WANT_WRITE;
            }
            if (conn->initial_tls) {
                rc = ss__tls_attach(conn, conn->initial_tls);
                if (rc < 0)
                    return ss__conn_fail(conn, rc);
                conn->state = SS_STATE_HANDSHAKING;
            } else {
                conn->state = SS_STATE_ESTABLISHED;
            }
            continue;

        case SS_STATE_HANDSHAKING:
            /* A client's first step sends the ClientHello: the answer cannot be there yet. */
            if (!conn->tls->server && SSL_in_before(conn->ssl))
                conn->recv_budget = 0;
            rc = ss__tls_handshake(conn);
            if (rc < 0)
                return ss__conn_fail(conn, rc);
            if (rc != SS_DONE)
                return rc;
            conn->state = SS_STATE_ESTABLISHED;
            continue;

        case SS_STATE_TLS_SHUTDOWN:
            rc = ss__tls_shutdown(conn);
            if (rc < 0)
                return ss__conn_fail(conn, rc);
            if (rc != SS_DONE)
                return rc;
            ss__tls_detach(conn);
            conn->state = SS_STATE_ESTABLISHED;
            continue;

        case SS_STATE_ESTABLISHED:
        case SS_STATE_LISTENING:
            return SS_DONE;

        case SS_STATE_CLOSED:
            return ss__fail(&conn->err, SS_ERR_CLOSED, 0, "%s", ss_error_message(SS_ERR_CLOSED));

        case SS_STATE_FAILED:
            return conn->err.code;
        }
        return ss__conn_fail(conn, ss__fail(&conn->err, SS_ERR_STATE, 0, "bad state %d", conn->state));
    }
}

int ss_conn_step(ss_conn_t *conn)
{
    conn->revents = 0;
    conn->recv_budget = 1;
    return step(conn);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Milliseconds left before deadline (-1: none), for poll. */
static int left_ms(int64_t deadline)
{
    if (deadline < 0)
        return -1;
    int64_t left = deadline - now_ms();
    return left > 0 ? (int)(left > INT32_MAX ? INT32_MAX : left) : 0;
}

/* Waits for want: 1 ready (and the next recv allowed), 0 timed out,
 * SS_IO_INTERRUPTED, or an error recorded on conn. */
static int wait_for(ss_conn_t *conn, int want, int timeout_ms)
{
    if (conn->fd < 0)
        return ss__fail(&conn->err, SS_ERR_CLOSED, 0, "%s", ss_error_message(SS_ERR_CLOSED));
    if (want == SS_WANT_READ && ss_conn_pending(conn))
        return conn->recv_budget = 1;
    int rc = ss__poll(conn->fd, want, timeout_ms, &conn->revents);
    if (rc == SS_IO_INTERRUPTED)
        return rc;
    if (rc < 0)
        return ss__fail(&conn->err, SS_ERR_SYSTEM, -rc, "poll failed: %s", strerror(-rc));
    conn->recv_budget = rc > 0 && want == SS_WANT_READ;
    return rc;
}

int ss_conn_wait(ss_conn_t *conn, int want, int32_t timeout_ms)
{
    int rc = wait_for(conn, want, timeout_ms);
    conn->revents = 0; /* a later step is not the one this wait was for */
    return rc;
}

int ss_conn_run(ss_conn_t *conn, int32_t timeout_ms)
{
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    conn->revents = 0;
    conn->recv_budget = 1;
    for (;;) {
        int rc = step(conn);
        conn->revents = 0;
        if (rc <= SS_DONE)
            return rc;
        rc = wait_for(conn, rc, left_ms(deadline));
        if (rc == SS_IO_INTERRUPTED)
            return rc;
        if (rc < 0)
            return ss__conn_fail(conn, rc);
        if (rc == 0) {
            const char *what = conn->state == SS_STATE_HANDSHAKING    ? "TLS handshake timed out"
                               : conn->state == SS_STATE_TLS_SHUTDOWN ? "TLS shutdown timed out"
                                                                      : "Connection timed out";
            /* A connect or handshake that ran out of time cannot be resumed. */
            return ss__conn_fail(conn, ss__fail(&conn->err, SS_ERR_TIMEOUT, ETIMEDOUT, "%s", what));
        }
    }
}

/* For read and write: SS_DONE when established, else the step's want as an
 * SS_IO_* value, or its error. */
static int64_t be_established(ss_conn_t *conn)
{
    if (conn->deferred_error) { /* met after the last call returned its data */
        int code = conn->deferred_error;
        conn->deferred_error = 0;
        return ss__conn_fail(conn, code);
    }
    if (conn->state == SS_STATE_ESTABLISHED)
        return SS_DONE;
    int rc = step(conn);
    if (rc <= SS_DONE)
        return rc;
    return rc == SS_WANT_READ ? SS_IO_WANT_READ : SS_IO_WANT_WRITE;
}

static int64_t read_some(ss_conn_t *conn, char *buf, size_t len)
{
    int64_t rc = be_established(conn);
    if (rc != SS_DONE)
        return rc;
    if (conn->handback_off < conn->handback_len) {
        size_t n = conn->handback_len - conn->handback_off;
        if (n > len)
            n = len;
        memcpy(buf, conn->handback + conn->handback_off, n);
        conn->handback_off += n;
        if (conn->handback_off == conn->handback_len) {
            free(conn->handback);
            conn->handback = NULL;
            conn->handback_len = conn->handback_off = 0;
        }
        return (int64_t)n;
    }
    int64_t n = conn->ssl ? ss__tls_read(conn, buf, len) : ss__sock_read(conn, buf, len);
    if (n < SS_IO_WANT_WRITE)
        return ss__conn_fail(conn, (int)n);
    return n;
}

int64_t ss_conn_read(ss_conn_t *conn, char *buf, size_t len)
{
    conn->recv_budget = 1;
    return read_some(conn, buf, len);
}

int64_t ss_conn_read_wait(ss_conn_t *conn, char *buf, size_t len, int32_t timeout_ms)
{
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    conn->recv_budget = 1;
    for (;;) {
        int64_t n = read_some(conn, buf, len);
        if (n != SS_IO_WANT_READ && n != SS_IO_WANT_WRITE)
            return n;
        int rc = wait_for(conn, n == SS_IO_WANT_READ ? SS_WANT_READ : SS_WANT_WRITE, left_ms(deadline));
        conn->revents = 0;
        if (rc == 0)
            return SS_IO_TIMEOUT;
        if (rc < 0)
            return rc == SS_IO_INTERRUPTED ? rc : ss__conn_fail(conn, rc);
        conn->recv_budget = 1; /* also after POLLOUT: a TLS read that had to write first */
    }
}

static int64_t write_some(ss_conn_t *conn, const char *buf, size_t len)
{
    int64_t rc = be_established(conn);
    if (rc != SS_DONE)
        return rc;
    if (len == 0)
        return 0;
    if (conn->ssl && conn->shutdown_sent) /* as a plain socket's write side after shutdown(SHUT_WR) */
        return ss__conn_fail(conn, ss__fail(&conn->err, SS_ERR_SYSTEM, EPIPE, "write failed: %s", strerror(EPIPE)));
    int64_t n = conn->ssl ? ss__tls_write(conn, buf, len) : ss__sock_write(conn, buf, len);
    if (n < SS_IO_WANT_WRITE)
        return ss__conn_fail(conn, (int)n);
    return n;
}

int64_t ss_conn_write(ss_conn_t *conn, const char *buf, size_t len)
{
    conn->recv_budget = 1;
    return write_some(conn, buf, len);
}

int64_t ss_conn_write_wait(ss_conn_t *conn, const char *buf, size_t len, int32_t timeout_ms, int32_t *status)
{
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    size_t done = 0;
    conn->recv_budget = 1;
    *status = SS_OK;
    while (done < len || len == 0) {
        int64_t n = write_some(conn, buf + done, len - done);
        if (n >= 0) {
            done += (size_t)n;
            if (len == 0)
                break;
            continue;
        }
        if (n != SS_IO_WANT_READ && n != SS_IO_WANT_WRITE) {
            *status = (int32_t)n;
            break;
        }
        int rc = wait_for(conn, n == SS_IO_WANT_READ ? SS_WANT_READ : SS_WANT_WRITE, left_ms(deadline));
        conn->revents = 0;
        if (rc <= 0) {
            *status = rc == 0 ? SS_IO_TIMEOUT : rc == SS_IO_INTERRUPTED ? rc : ss__conn_fail(conn, rc);
            break;
        }
        conn->recv_budget = 1;
    }
    return (int64_t)done;
}

int64_t ss_conn_recvfrom(ss_conn_t *conn, char *buf, size_t len, int32_t peek, char *peer, size_t peer_cap,
                         uint32_t *peer_len)
{
    *peer_len = 0;
    if (conn->fd < 0)
        return ss__fail(&conn->err, SS_ERR_CLOSED, 0, "%s", ss_error_message(SS_ERR_CLOSED));
    struct sockaddr_storage from;
    socklen_t from_len = sizeof from;
    ssize_t n;
    do
        n = recvfrom(conn->fd, buf, len, peek ? MSG_PEEK : 0, (struct sockaddr *)&from, &from_len);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return SS_IO_WANT_READ;
        return ss__fail(&conn->err, SS_ERR_SYSTEM, errno, "recvfrom failed: %s", strerror(errno));
    }
    if (peer_cap && from_len > 0) {
        int text_len = ss__format_sockaddr((struct sockaddr *)&from, from_len, peer, peer_cap);
        *peer_len = text_len > 0 ? (uint32_t)text_len : 0;
    }
    return n;
}

int64_t ss_conn_sendto(ss_conn_t *conn, const char *buf, size_t len, const char *host, int32_t port,
                       const char *path, uint32_t path_len)
{
    if (conn->fd < 0)
        return ss__fail(&conn->err, SS_ERR_CLOSED, 0, "%s", ss_error_message(SS_ERR_CLOSED));
    ssize_t n;
    if (path) {
        struct sockaddr_un to;
        memset(&to, 0, sizeof to);
        to.sun_family = AF_UNIX;
        if (path_len == 0 || path_len > sizeof to.sun_path || (path[0] && path_len >= sizeof to.sun_path))
            return ss__fail(&conn->err, SS_ERR_ADDR_PATH_TOO_LONG, ENAMETOOLONG, "invalid unix socket path");
        memcpy(to.sun_path, path, path_len);
        socklen_t to_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + path_len + (path[0] ? 1 : 0));
        do
            n = sendto(conn->fd, buf, len, MSG_NOSIGNAL, (struct sockaddr *)&to, to_len);
        while (n < 0 && errno == EINTR);
    } else {
        struct addrinfo *ai = NULL;
        int rc = ss__resolve(conn, host, port, 0, &ai);
        if (rc != SS_OK)
            return rc;
        do
            n = sendto(conn->fd, buf, len, MSG_NOSIGNAL, ai->ai_addr, ai->ai_addrlen);
        while (n < 0 && errno == EINTR);
        int e = errno;
        freeaddrinfo(ai);
        errno = e;
    }
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return SS_IO_WANT_WRITE;
        return ss__fail(&conn->err, SS_ERR_SYSTEM, errno, "sendto failed: %s", strerror(errno));
    }
    return n;
}

/* Urgent data of a connected stream socket: TLS has no such thing (the byte
 * would bypass the record layer), so a TLS conn refuses. */
static int64_t oob_check(ss_conn_t *conn)
{
    if (conn->fd < 0)
        return ss__fail(&conn->err, SS_ERR_CLOSED, 0, "%s", ss_error_message(SS_ERR_CLOSED));
    if (conn->ssl)
        return ss__fail(&conn->err, SS_ERR_UNSUPPORTED, EOPNOTSUPP,
                        "out-of-band data cannot be sent or received on a TLS stream");
    return SS_OK;
}

int64_t ss_conn_recv_oob(ss_conn_t *conn, char *buf, size_t len)
{
    int64_t rc = oob_check(conn);
    if (rc != SS_OK)
        return rc;
    ssize_t n;
    do
        n = recv(conn->fd, buf, len, MSG_OOB);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) /* announced, not yet arrived */
            return SS_IO_WANT_READ;
        if (errno == EINVAL) /* none pending, or read already: an answer, not a failure of the conn */
            return ss__fail(&conn->err, SS_ERR_SYSTEM, EINVAL, "no out-of-band data is pending");
        return ss__fail(&conn->err, SS_ERR_SYSTEM, errno, "recv(MSG_OOB) failed: %s", strerror(errno));
    }
    return n;
}

int64_t ss_conn_send_oob(ss_conn_t *conn, const char *buf, size_t len)
{
    int64_t rc = oob_check(conn);
    if (rc != SS_OK)
        return rc;
    ssize_t n;
    do
        n = send(conn->fd, buf, len, MSG_OOB | MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return SS_IO_WANT_WRITE;
        return ss__fail(&conn->err, SS_ERR_SYSTEM, errno, "send(MSG_OOB) failed: %s", strerror(errno));
    }
    return n;
}

int ss_conn_start_tls(ss_conn_t *conn, ss_tls_ctx_t *tls, const char *peer_name, int32_t verify_peer_name,
                      int32_t sni_enabled, const ss_conn_t *session_from)
{
    if (conn->state != SS_STATE_ESTABLISHED)
        return ss__fail(&conn->err, conn->state == SS_STATE_CLOSED ? SS_ERR_CLOSED : SS_ERR_STATE, 0,
                        "cannot enable crypto: the stream is not connected");
    if (conn->ssl)
        return ss__fail(&conn->err, SS_ERR_TLS_ACTIVE, 0, "%s", ss_error_message(SS_ERR_TLS_ACTIVE));
    if (conn->socktype != SOCK_STREAM || is_local(conn->transport))
        return ss__fail(&conn->err, SS_ERR_UNSUPPORTED, 0, "TLS needs a tcp stream, not %s",
                        ss_transport_name(conn->transport));
    /* Injection defence: bytes already received came before the handshake and
     * would be taken for TLS records, or were meant to be trusted. A server's
     * socket may legitimately hold the ClientHello already. */
    int waiting = 0;
    if (conn->handback_len > conn->handback_off || conn->rbuf_len > conn->rbuf_off ||
        (!tls->server && ioctl(conn->fd, FIONREAD, &waiting) == 0 && waiting > 0))
        return ss__fail(&conn->err, SS_ERR_STARTTLS_BUFFERED, 0, "%s", ss_error_message(SS_ERR_STARTTLS_BUFFERED));
    if (peer_name) {
        char *copy = strdup(peer_name);
        if (!copy)
            return ss__fail(&conn->err, SS_ERR_NOMEM, ENOMEM, "out of memory");
        free(conn->peer_name);
        conn->peer_name = copy;
    }
    conn->verify_peer_name = verify_peer_name;
    conn->sni_enabled = sni_enabled;
    int rc = ss__tls_attach(conn, tls);
    if (rc < 0)
        return rc;
    if (session_from && session_from->ssl)
        ss__tls_resume(conn, session_from);
    conn->state = SS_STATE_HANDSHAKING;
    return SS_OK;
}

int ss_conn_stop_tls(ss_conn_t *conn)
{
    if (conn->state != SS_STATE_ESTABLISHED || !conn->ssl)
        return ss__fail(&conn->err, SS_ERR_STATE, 0, "cannot disable crypto: TLS is not enabled");
    conn->state = SS_STATE_TLS_SHUTDOWN;
    return SS_OK;
}

int ss_conn_shutdown(ss_conn_t *conn, int32_t how)
{
    if (conn->fd < 0)
        return ss__fail(&conn->err, SS_ERR_CLOSED, 0, "%s", ss_error_message(SS_ERR_CLOSED));
    if (how < 0 || how > 2)
        return ss__fail(&conn->err, SS_ERR_STATE, EINVAL, "shutdown: how must be 0, 1 or 2");
    /* TLS ends its write side with close_notify: a bare FIN would read as a truncation. */
    if (conn->ssl && conn->state == SS_STATE_ESTABLISHED && how != SHUT_RD) {
        int rc = ss__tls_close_write(conn);
        if (rc != SS_DONE)
            return rc == SS_WANT_WRITE ? rc : ss__conn_fail(conn, rc);
    }
    if (shutdown(conn->fd, how) < 0)
        return ss__fail(&conn->err, SS_ERR_SYSTEM, errno, "shutdown failed: %s", strerror(errno));
    return SS_OK;
}

void ss_conn_interrupt(ss_conn_t *conn)
{
    int fd = conn->fd;
    if (fd >= 0)
        shutdown(fd, SHUT_RDWR); /* no TLS here: the SSL object is the waiting thread's */
}

int ss_conn_state(const ss_conn_t *conn)
{
    return conn->state;
}

int ss_conn_fd(const ss_conn_t *conn)
{
    return conn->fd;
}

int ss_conn_is_tls(const ss_conn_t *conn)
{
    return conn->ssl != NULL;
}

/* Bytes of whole TLS records at the front of the read buffer (a record is a
 * 5-byte header whose last two bytes are the length, then that many bytes). */
static size_t whole_records(const ss_conn_t *conn)
{
    size_t at = conn->rbuf_off;
    while (conn->rbuf_len - at >= 5) {
        const unsigned char *header = (const unsigned char *)conn->rbuf + at;
        size_t record = 5 + ((size_t)header[3] << 8 | header[4]);
        if (conn->rbuf_len - at < record)
            break;
        at += record;
    }
    return at - conn->rbuf_off;
}

size_t ss_conn_pending(const ss_conn_t *conn)
{
    size_t n = conn->handback_len - conn->handback_off;
    if (!conn->ssl)
        return n + conn->rbuf_len - conn->rbuf_off; /* plaintext that followed a TLS close */
    if (conn->state == SS_STATE_ESTABLISHED)
        n += (size_t)SSL_pending(conn->ssl) + whole_records(conn);
    return n;
}

int ss_conn_error(const ss_conn_t *conn, ss_error_info_t *out)
{
    *out = conn->err;
    return conn->err.code;
}

int ss_conn_name(const ss_conn_t *conn, int32_t peer, char *out, size_t cap)
{
    if (conn->fd < 0)
        return SS_ERR_CLOSED;
    struct sockaddr_storage sa;
    socklen_t len = sizeof sa;
    int rc = peer ? getpeername(conn->fd, (struct sockaddr *)&sa, &len)
                  : getsockname(conn->fd, (struct sockaddr *)&sa, &len);
    if (rc < 0)
        return SS_ERR_SYSTEM;
    return ss__format_sockaddr((struct sockaddr *)&sa, len, out, cap);
}
