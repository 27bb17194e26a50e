/*
 * Sockets: resolution, non-blocking connect, socket options, listening,
 * unix-domain addresses, plain reads and writes. Nothing here changes a
 * connection's state; conn.c decides what the results mean.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include "internal.h"

int ss__set_nonblocking(int fd)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return -1;
    return 0;
}

int ss__lookup(const char *host, int port, int socktype, int passive, struct addrinfo **out, int *sys_errno)
{
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = socktype;
    hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : AI_ADDRCONFIG);
    if (ss__is_ip_literal(host))
        hints.ai_flags = AI_NUMERICSERV | AI_NUMERICHOST; /* no lookup, no interface scan */
    char service[16];
    snprintf(service, sizeof service, "%d", port < 0 ? 0 : port);
    /* AI_ADDRCONFIG hides ::1 on hosts without a global IPv6 address; a
     * literal must resolve to itself, so retry without it. */
    int rc = getaddrinfo(host, service, &hints, out);
    if (rc == EAI_ADDRFAMILY || rc == EAI_NONAME || rc == EAI_NODATA) {
        hints.ai_flags &= ~AI_ADDRCONFIG;
        rc = getaddrinfo(host, service, &hints, out);
    }
    *sys_errno = rc == EAI_SYSTEM ? errno : 0;
    return rc;
}

int ss__is_ip_literal(const char *host)
{
    unsigned char literal[16];
    return host && (inet_pton(AF_INET, host, literal) == 1 || inet_pton(AF_INET6, host, literal) == 1);
}

int ss__resolve_failed(ss_conn_t *conn, const char *host, int gai_rc, int sys_errno)
{
    return ss__fail(&conn->err, SS_ERR_RESOLVE, sys_errno, "getaddrinfo for %s failed: %s", host,
                    gai_rc == EAI_SYSTEM ? strerror(sys_errno) : gai_strerror(gai_rc));
}

int ss__resolve(ss_conn_t *conn, const char *host, int port, int passive, struct addrinfo **out)
{
    int sys_errno;
    int rc = ss__lookup(host, port, conn->socktype, passive, out, &sys_errno);
    return rc == 0 ? SS_OK : ss__resolve_failed(conn, host, rc, sys_errno);
}

static int set_int_option(int fd, int level, int name, int value)
{
    return setsockopt(fd, level, name, &value, sizeof value);
}

static int apply_options(ss_conn_t *conn, int fd, int family)
{
    if (conn->tcp_nodelay && conn->socktype == SOCK_STREAM && family != AF_UNIX &&
        set_int_option(fd, IPPROTO_TCP, TCP_NODELAY, 1) < 0)
        return -1;
    if (conn->so_broadcast && set_int_option(fd, SOL_SOCKET, SO_BROADCAST, 1) < 0)
        return -1;
    if (conn->so_reuseport && set_int_option(fd, SOL_SOCKET, SO_REUSEPORT, 1) < 0)
        return -1;
    if (conn->ipv6_v6only >= 0 && family == AF_INET6 &&
        set_int_option(fd, IPPROTO_IPV6, IPV6_V6ONLY, conn->ipv6_v6only) < 0)
        return -1;
    if (conn->so_reuseaddr && set_int_option(fd, SOL_SOCKET, SO_REUSEADDR, conn->so_reuseaddr > 0) < 0)
        return -1;
    if (conn->so_keepalive && set_int_option(fd, SOL_SOCKET, SO_KEEPALIVE, conn->so_keepalive > 0) < 0)
        return -1;
    int tcp = conn->socktype == SOCK_STREAM && family != AF_UNIX;
    if (tcp && ((conn->tcp_keepidle && set_int_option(fd, IPPROTO_TCP, TCP_KEEPIDLE, conn->tcp_keepidle) < 0) ||
                (conn->tcp_keepintvl && set_int_option(fd, IPPROTO_TCP, TCP_KEEPINTVL, conn->tcp_keepintvl) < 0) ||
                (conn->tcp_keepcnt && set_int_option(fd, IPPROTO_TCP, TCP_KEEPCNT, conn->tcp_keepcnt) < 0)))
        return -1;
    if (conn->so_linger) {
        struct linger linger = {.l_onoff = 1, .l_linger = conn->so_linger - 1};
        if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, sizeof linger) < 0)
            return -1;
    }
    if (conn->so_rcvbuf && set_int_option(fd, SOL_SOCKET, SO_RCVBUF, conn->so_rcvbuf) < 0)
        return -1;
    if (conn->so_sndbuf && set_int_option(fd, SOL_SOCKET, SO_SNDBUF, conn->so_sndbuf) < 0)
        return -1;
    return 0;
}

/* bindto: bind the client socket to a local address before connecting. */
static int bind_local(ss_conn_t *conn, int fd, int family)
{
    if (!conn->bind_host && conn->bind_port < 0)
        return SS_OK;
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = family;
    hints.ai_socktype = conn->socktype;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char service[16];
    snprintf(service, sizeof service, "%d", conn->bind_port < 0 ? 0 : conn->bind_port);
    const char *host = conn->bind_host && conn->bind_host[0] ? conn->bind_host : NULL;
    /* A literal of the other family: its wildcard means any local address, as
     * PHP has it since bug 74764; any other address of it cannot work. */
    int other = family == AF_INET ? AF_INET6 : AF_INET;
    unsigned char literal[sizeof(struct in6_addr)] = {0};
    if (host && inet_pton(other, host, literal) == 1) {
        static const unsigned char zeros[sizeof(struct in6_addr)];
        if (memcmp(literal, zeros, other == AF_INET ? sizeof(struct in_addr) : sizeof(struct in6_addr)) != 0)
            return ss__fail(&conn->err, SS_ERR_CONNECT, EAFNOSUPPORT, "bindto %s is an %s address and the target is %s",
                            host, other == AF_INET ? "IPv4" : "IPv6", family == AF_INET ? "IPv4" : "IPv6");
        host = NULL;
    }
    int rc = getaddrinfo(host, service, &hints, &ai);
    if (rc != 0)
        return ss__fail(&conn->err, SS_ERR_RESOLVE, 0, "bindto %s failed: %s", host ? host : "*",
                        gai_strerror(rc));
    rc = bind(fd, ai->ai_addr, ai->ai_addrlen);
    int e = errno;
    freeaddrinfo(ai);
    if (rc < 0)
        return ss__fail(&conn->err, SS_ERR_CONNECT, e, "bindto %s:%d failed: %s", host ? host : "*",
                        conn->bind_port, strerror(e));
    return SS_OK;
}

int ss__connect_next(ss_conn_t *conn)
{
    while (conn->ai_next) {
        struct addrinfo *ai = conn->ai_next;
        conn->ai_next = ai->ai_next;
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            conn->connect_errno = errno;
            continue;
        }
        if (apply_options(conn, fd, ai->ai_family) < 0) {
            int e = errno;
            close(fd);
            return ss__fail(&conn->err, SS_ERR_SYSTEM, e, "setsockopt failed: %s", strerror(e));
        }
        int rc = bind_local(conn, fd, ai->ai_family);
        if (rc != SS_OK) {
            close(fd);
            return rc;
        }
        conn->fd = fd;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            return SS_DONE;
        if (errno == EINPROGRESS)
            return SS_WANT_WRITE;
        conn->connect_errno = errno;
        close(fd);
        conn->fd = -1;
    }
    int e = conn->connect_errno ? conn->connect_errno : ECONNREFUSED;
    return ss__fail(&conn->err, SS_ERR_CONNECT, e, "%s", strerror(e));
}

int ss__connect_result(ss_conn_t *conn)
{
    /* poll said writable and nothing else: connected, SO_ERROR would say 0 */
    if (conn->revents && !(conn->revents & (POLLERR | POLLHUP | POLLNVAL)))
        return SS_DONE;
    int error = 0;
    socklen_t len = sizeof error;
    if (getsockopt(conn->fd, SOL_SOCKET, SO_ERROR, &error, &len) < 0)
        error = errno;
    return error == 0 ? SS_DONE : error;
}

static int fill_unix_address(ss_conn_t *conn, struct sockaddr_un *sun, socklen_t *len)
{
    memset(sun, 0, sizeof *sun);
    sun->sun_family = AF_UNIX;
    if (conn->path_len > sizeof sun->sun_path || (conn->path[0] && conn->path_len >= sizeof sun->sun_path))
        return ss__fail(&conn->err, SS_ERR_CONNECT, ENAMETOOLONG, "%s", strerror(ENAMETOOLONG));
    memcpy(sun->sun_path, conn->path, conn->path_len);
    /* Abstract names are exactly path_len bytes; filesystem paths end at their NUL. */
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + conn->path_len + (conn->path[0] ? 1 : 0));
    return SS_OK;
}

int ss__open_unix(ss_conn_t *conn, int listen_side)
{
    struct sockaddr_un sun;
    socklen_t len = 0;
    int rc = fill_unix_address(conn, &sun, &len);
    if (rc != SS_OK)
        return rc;
    int fd = socket(AF_UNIX, conn->socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return ss__fail(&conn->err, SS_ERR_SYSTEM, errno, "socket failed: %s", strerror(errno));
    conn->fd = fd;
    if (listen_side) {
        if (bind(fd, (struct sockaddr *)&sun, len) < 0)
            return ss__fail(&conn->err, SS_ERR_CONNECT, errno, "Unable to bind to %s: %s",
                            conn->path[0] ? conn->path : "abstract name", strerror(errno));
        if (conn->socktype == SOCK_STREAM && listen(fd, conn->backlog) < 0)
            return ss__fail(&conn->err, SS_ERR_SYSTEM, errno, "listen failed: %s", strerror(errno));
        return SS_DONE;
    }
    if (conn->socktype == SOCK_DGRAM) {
        /* A udg client needs an address of its own to receive replies: the
         * bindto path, or else one the kernel picks (Linux autobind). */
        struct sockaddr_un local;
        memset(&local, 0, sizeof local);
        local.sun_family = AF_UNIX;
        size_t n = conn->bind_host ? strlen(conn->bind_host) : 0;
        if (n >= sizeof local.sun_path)
            return ss__fail(&conn->err, SS_ERR_CONNECT, ENAMETOOLONG, "bindto: %s", strerror(ENAMETOOLONG));
        memcpy(local.sun_path, conn->bind_host ? conn->bind_host : "", n);
        socklen_t local_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (n ? n + 1 : 0));
        if (bind(fd, (struct sockaddr *)&local, local_len) < 0)
            return ss__fail(&conn->err, SS_ERR_CONNECT, errno, "bindto %s failed: %s", n ? conn->bind_host : "(auto)",
                            strerror(errno));
    }
    if (connect(fd, (struct sockaddr *)&sun, len) == 0)
        return SS_DONE;
    if (errno == EINPROGRESS) /* EAGAIN on unix sockets means a full backlog, not progress */
        return SS_WANT_WRITE;
    return ss__fail(&conn->err, SS_ERR_CONNECT, errno, "%s", strerror(errno));
}

int ss__listen_inet(ss_conn_t *conn)
{
    int last_errno = EADDRNOTAVAIL;
    for (struct addrinfo *ai = conn->ai_list; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            last_errno = errno;
            continue;
        }
        /* A restarted server must be able to bind while old connections linger. */
        if ((conn->so_reuseaddr >= 0 && set_int_option(fd, SOL_SOCKET, SO_REUSEADDR, 1) < 0) ||
            apply_options(conn, fd, ai->ai_family) < 0 ||
            bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 ||
            (conn->socktype == SOCK_STREAM && listen(fd, conn->backlog) < 0)) {
            last_errno = errno;
            close(fd);
            continue;
        }
        conn->fd = fd;
        return SS_DONE;
    }
    return ss__fail(&conn->err, SS_ERR_CONNECT, last_errno, "Unable to bind to %s:%d: %s", conn->host, conn->port,
                    strerror(last_errno));
}

int ss__format_sockaddr(const struct sockaddr *sa, socklen_t len, char *out, size_t cap)
{
    char host[INET6_ADDRSTRLEN + 16];
    int n;
    switch (sa->sa_family) {
    case AF_INET: {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        n = snprintf(out, cap, "%s:%u", host, ntohs(in->sin_port));
        break;
    }
    case AF_INET6: {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        n = snprintf(out, cap, "[%s]:%u", host, ntohs(in6->sin6_port));
        break;
    }
    case AF_UNIX: {
        const struct sockaddr_un *un = (const struct sockaddr_un *)sa;
        size_t path_len = len > offsetof(struct sockaddr_un, sun_path) ? len - offsetof(struct sockaddr_un, sun_path) : 0;
        if (path_len && un->sun_path[0]) /* filesystem path: stop at its NUL */
            path_len = strnlen(un->sun_path, path_len);
        if (path_len >= cap)
            return SS_ERR_NOMEM;
        memcpy(out, un->sun_path, path_len);
        out[path_len] = '\0';
        return (int)path_len;
    }
    default:
        n = snprintf(out, cap, "%s", "");
    }
    return n < 0 || (size_t)n >= cap ? SS_ERR_NOMEM : n;
}

int ss__poll(int fd, int want, int timeout_ms, short *revents)
{
    struct pollfd p = {.fd = fd, .events = (short)(want == SS_WANT_WRITE ? POLLOUT : POLLIN), .revents = 0};
    int rc = poll(&p, 1, timeout_ms);
    if (revents)
        *revents = p.revents;
    if (rc >= 0)
        return rc;
    /* Not retried here: the caller's signal handlers (Ctrl-C) must get to run. */
    return errno == EINTR ? SS_IO_INTERRUPTED : -errno;
}

#define RBUF_SIZE 65536 /* one recv: four full TLS records */

ssize_t ss__sock_fill(ss_conn_t *conn)
{
    if (conn->rbuf_off < conn->rbuf_len)
        return (ssize_t)(conn->rbuf_len - conn->rbuf_off);
    if (!conn->recv_budget) {
        errno = EAGAIN;
        return -1;
    }
    if (!conn->rbuf && !(conn->rbuf = malloc(RBUF_SIZE))) {
        errno = ENOMEM;
        return -1;
    }
    conn->rbuf_off = conn->rbuf_len = 0;
    ssize_t n;
    do
        n = recv(conn->fd, conn->rbuf, RBUF_SIZE, 0);
    while (n < 0 && errno == EINTR);
    /* A recv that did not fill the buffer emptied the socket: the next one
     * would only say EAGAIN, so it waits for the caller to have waited. */
    conn->recv_budget = n == RBUF_SIZE;
    if (n > 0)
        conn->rbuf_len = (size_t)n;
    return n;
}

void ss__sock_release_rbuf(ss_conn_t *conn)
{
    if (conn->rbuf && conn->rbuf_off == conn->rbuf_len) {
        free(conn->rbuf);
        conn->rbuf = NULL;
        conn->rbuf_off = conn->rbuf_len = 0;
    }
}

int ss__sock_flush(ss_conn_t *conn)
{
    size_t sent = 0;
    while (sent < conn->wbuf_len) {
        ssize_t n = send(conn->fd, conn->wbuf + sent, conn->wbuf_len - sent, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            memmove(conn->wbuf, conn->wbuf + sent, conn->wbuf_len - sent);
            conn->wbuf_len -= sent;
            errno = e;
            return e == EAGAIN || e == EWOULDBLOCK ? 0 : -1;
        }
        sent += (size_t)n;
    }
    free(conn->wbuf);
    conn->wbuf = NULL;
    conn->wbuf_len = conn->wbuf_cap = 0;
    return 1;
}

int64_t ss__sock_read(ss_conn_t *conn, char *buf, size_t len)
{
    if (conn->rbuf_off < conn->rbuf_len) { /* plaintext that followed a TLS close */
        size_t n = conn->rbuf_len - conn->rbuf_off;
        if (n > len)
            n = len;
        memcpy(buf, conn->rbuf + conn->rbuf_off, n);
        conn->rbuf_off += n;
        ss__sock_release_rbuf(conn);
        return (int64_t)n;
    }
    for (;;) {
        ssize_t n = recv(conn->fd, buf, len, 0);
        if (n >= 0)
            return n;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return SS_IO_WANT_READ;
        return ss__fail(&conn->err, SS_ERR_SYSTEM, errno, "read failed: %s", strerror(errno));
    }
}

int64_t ss__sock_write(ss_conn_t *conn, const char *buf, size_t len)
{
    for (;;) {
        ssize_t n = send(conn->fd, buf, len, MSG_NOSIGNAL);
        if (n >= 0)
            return n;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return SS_IO_WANT_WRITE;
        return ss__fail(&conn->err, SS_ERR_SYSTEM, errno, "write failed: %s", strerror(errno));
    }
}
