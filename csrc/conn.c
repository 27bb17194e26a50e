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
 * the errno of the last failure is what PHP reports. TLS over the socket uses
 * OpenSSL's fd BIO without read-ahead, so OpenSSL never reads past a record:
 * when TLS ends (close_notify), the next plaintext byte is still in the
 * socket, and application data that arrived before the peer's close_notify
 * is kept in `handback` and read first.
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
    if (fd < 0 || ss_transport_name(transport) == NULL || socktype_of(transport) != SOCK_STREAM) {
        ss__fail(err, SS_ERR_STATE, EINVAL, "ss_conn_from_fd needs a connected stream socket");
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
    conn->socktype = SOCK_STREAM;
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

/* close_notify when established, then the socket; keep_tls: the TLS state
 * stays, cut off from the socket, else it is freed. */
static void end_connection(ss_conn_t *conn, int keep_tls)
{
    if (conn->ssl) {
        if (conn->state == SS_STATE_ESTABLISHED)
            ss__tls_notify_close(conn);
        if (keep_tls)
            ss__tls_silence(conn);
        else
            ss__tls_detach(conn);
    }
    if (conn->fd >= 0) {
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
    free(conn);
}

int ss__conn_fail(ss_conn_t *conn, int code)
{
    conn->state = SS_STATE_FAILED;
    return code;
}

/* The one switch: every state change happens here. */
int ss_conn_step(ss_conn_t *conn)
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

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int ss_conn_wait(ss_conn_t *conn, int want, int32_t timeout_ms)
{
    if (conn->fd < 0)
        return ss__fail(&conn->err, SS_ERR_CLOSED, 0, "%s", ss_error_message(SS_ERR_CLOSED));
    if (want == SS_WANT_READ && ss_conn_pending(conn))
        return 1;
    int rc = ss__poll(conn->fd, want, timeout_ms);
    if (rc < 0)
        return ss__fail(&conn->err, SS_ERR_SYSTEM, -rc, "poll failed: %s", strerror(-rc));
    return rc;
}

int ss_conn_run(ss_conn_t *conn, int32_t timeout_ms)
{
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    for (;;) {
        int rc = ss_conn_step(conn);
        if (rc <= SS_DONE)
            return rc;
        int wait_ms = -1;
        if (deadline >= 0) {
            int64_t left = deadline - now_ms();
            wait_ms = left > 0 ? (int)(left > INT32_MAX ? INT32_MAX : left) : 0;
        }
        rc = ss_conn_wait(conn, rc, wait_ms);
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

int64_t ss_conn_read(ss_conn_t *conn, char *buf, size_t len)
{
    if (conn->state != SS_STATE_ESTABLISHED) {
        int rc = ss_conn_step(conn);
        if (rc < 0)
            return rc;
        if (rc != SS_DONE)
            return rc == SS_WANT_READ ? SS_IO_WANT_READ : SS_IO_WANT_WRITE;
    }
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

int64_t ss_conn_write(ss_conn_t *conn, const char *buf, size_t len)
{
    if (conn->state != SS_STATE_ESTABLISHED) {
        int rc = ss_conn_step(conn);
        if (rc < 0)
            return rc;
        if (rc != SS_DONE)
            return rc == SS_WANT_READ ? SS_IO_WANT_READ : SS_IO_WANT_WRITE;
    }
    if (len == 0)
        return 0;
    int64_t n = conn->ssl ? ss__tls_write(conn, buf, len) : ss__sock_write(conn, buf, len);
    if (n < SS_IO_WANT_WRITE)
        return ss__conn_fail(conn, (int)n);
    return n;
}

int64_t ss_conn_recvfrom(ss_conn_t *conn, char *buf, size_t len, char *peer, size_t peer_cap, uint32_t *peer_len)
{
    *peer_len = 0;
    if (conn->fd < 0)
        return ss__fail(&conn->err, SS_ERR_CLOSED, 0, "%s", ss_error_message(SS_ERR_CLOSED));
    struct sockaddr_storage from;
    socklen_t from_len = sizeof from;
    ssize_t n;
    do
        n = recvfrom(conn->fd, buf, len, 0, (struct sockaddr *)&from, &from_len);
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
    if (conn->handback_len > conn->handback_off ||
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
    if (shutdown(conn->fd, how) < 0)
        return ss__fail(&conn->err, SS_ERR_SYSTEM, errno, "shutdown failed: %s", strerror(errno));
    return SS_OK;
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

size_t ss_conn_pending(const ss_conn_t *conn)
{
    size_t n = conn->handback_len - conn->handback_off;
    if (conn->ssl && conn->state == SS_STATE_ESTABLISHED)
        n += (size_t)SSL_pending(conn->ssl);
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
