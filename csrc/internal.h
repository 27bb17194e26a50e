/*
 * Private definitions shared by the C sources. Nothing here crosses the FFI.
 */
#ifndef STREAMSOCK_INTERNAL_H
#define STREAMSOCK_INTERNAL_H

#include "streamsock.h"

/* The one error table: code, message. error.c expands it into the name and
 * message look-ups; the compiler's -Wswitch (with -Werror) rejects an enum
 * ss_error value missing here, and a duplicate case label rejects a repeat. */
#define SS_ERROR_TABLE(X)                                                                   \
    X(SS_OK, "success")                                                                     \
    X(SS_ERR_ADDR_EMPTY, "empty address")                                                   \
    X(SS_ERR_ADDR_TOO_LONG, "address longer than 4294967295 bytes")                         \
    X(SS_ERR_ADDR_UNKNOWN_TRANSPORT, "unknown socket transport")                            \
    X(SS_ERR_ADDR_HOST_EMPTY, "missing host")                                               \
    X(SS_ERR_ADDR_HOST_CHAR, "invalid character in host")                                   \
    X(SS_ERR_ADDR_HOST_TOO_LONG, "host longer than 255 bytes")                              \
    X(SS_ERR_ADDR_IPV6_BRACKET, "missing ']' after IPv6 address")                           \
    X(SS_ERR_ADDR_IPV6_INVALID, "not a valid IPv6 address")                                 \
    X(SS_ERR_ADDR_COLONS,                                                                   \
      "more than one ':' but not an IPv6 address (write an IPv6 address with a port as "    \
      "[addr]:port)")                                                                       \
    X(SS_ERR_ADDR_AFTER_BRACKET, "expected ':port' after ']'")                              \
    X(SS_ERR_ADDR_PORT_EMPTY, "missing port number after ':'")                              \
    X(SS_ERR_ADDR_PORT_SYNTAX, "port must be decimal digits")                               \
    X(SS_ERR_ADDR_PORT_RANGE, "port out of range 0-65535")                                  \
    X(SS_ERR_ADDR_PATH_EMPTY, "missing socket path")                                        \
    X(SS_ERR_ADDR_PATH_NUL, "NUL byte in socket path")                                      \
    X(SS_ERR_ADDR_PATH_TOO_LONG,                                                            \
      "socket path too long (at most 107 bytes, or 108 with the leading NUL of an "         \
      "abstract name)")                                                                     \
    X(SS_ERR_ADDR_PORT_MISSING, "missing port")                                             \
    X(SS_ERR_ADDR_PORT_TWICE, "port given twice (in the address and as an argument)")      \
    X(SS_ERR_ADDR_PORT_UNEXPECTED, "unix and udg sockets take no port")                    \
    X(SS_ERR_NOMEM, "out of memory")                                                        \
    X(SS_ERR_SYSTEM, "system call failed")                                                  \
    X(SS_ERR_RESOLVE, "name resolution failed")                                             \
    X(SS_ERR_CONNECT, "connection failed")                                                  \
    X(SS_ERR_TIMEOUT, "timed out")                                                          \
    X(SS_ERR_CLOSED, "stream is closed")                                                    \
    X(SS_ERR_STATE, "operation not valid in this state")                                    \
    X(SS_ERR_UNSUPPORTED, "not supported by this transport or OpenSSL")                    \
    X(SS_ERR_EOF, "peer closed the connection")                                             \
    X(SS_ERR_TLS, "TLS error")                                                              \
    X(SS_ERR_TLS_CONFIG, "invalid TLS configuration")                                       \
    X(SS_ERR_TLS_VERIFY, "certificate verify failed")                                       \
    X(SS_ERR_TLS_PEER_NAME, "peer certificate does not match the expected name")            \
    X(SS_ERR_TLS_FINGERPRINT, "peer certificate fingerprint does not match")                \
    X(SS_ERR_STARTTLS_BUFFERED,                                                             \
      "plaintext received before the TLS handshake (possible STARTTLS injection)")          \
    X(SS_ERR_TLS_ACTIVE, "TLS is already enabled on this stream")                           \
    X(SS_ERR_BUSY, "stream is in use by another thread")                                    \
    X(SS_ERR_STARTTLS_REFUSED, "the server refused STARTTLS")

#include <netdb.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <sys/socket.h>

#include <openssl/ssl.h>

/* ---- error.c ---------------------------------------------------------- */

/* Records code, errno and a printf-style message; returns code. */
int ss__fail(ss_error_info_t *err, int code, int sys_errno, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Records a TLS failure: SSL_get_error of ret, the OpenSSL error queue
 * (drained), the verify result; message is "<what>: <OpenSSL reason>". */
int ss__fail_tls(ss_error_info_t *err, int code, SSL *ssl, int ret, const char *what);

/* Appends the OpenSSL error queue's reasons to buf (drained). */
void ss__drain_openssl_errors(char *buf, size_t cap);

/* ---- tls.c ------------------------------------------------------------ */

#define SS_SERVER_HELLO_MAX 4096 /* a ServerHello's extensions are few and short */

struct ss_tls_ctx {
    SSL_CTX *ssl_ctx;
    atomic_int refs;            /* Python's owner + each conn using it */
    int server;
    int verify_peer;
    int allow_self_signed;
    int verify_depth;
    int free_idle_buffers;      /* SSL_free_buffers is safe in the linked OpenSSL */
    BIO_METHOD *socket_bio;     /* the conn's socket through its read buffer (tls.c) */
    unsigned char *alpn;        /* server: our protocols, wire format */
    size_t alpn_len;
    size_t sni_count;
    char **sni_names;
    SSL_CTX **sni_ctxs;
};

ss_tls_ctx_t *ss__tls_ctx_ref(ss_tls_ctx_t *ctx);

/* Creates conn->ssl over conn's socket (through conn's read buffer) for the
 * conn's role and names. */
int ss__tls_attach(ss_conn_t *conn, ss_tls_ctx_t *ctx);
/* One handshake step: SS_DONE, SS_WANT_*, or an error recorded on conn. */
int ss__tls_handshake(ss_conn_t *conn);
/* One close_notify step: SS_DONE once the peer's close_notify arrived. */
int ss__tls_shutdown(ss_conn_t *conn);
int64_t ss__tls_read(ss_conn_t *conn, char *buf, size_t len);
int64_t ss__tls_write(ss_conn_t *conn, const char *buf, size_t len);
void ss__tls_detach(ss_conn_t *conn);
/* Best effort, never blocks: one SSL_shutdown before the socket closes. */
void ss__tls_notify_close(ss_conn_t *conn);
/* Sends close_notify (once) and keeps reading possible: SS_DONE, SS_WANT_WRITE
 * (call again when writable), or an error. */
int ss__tls_close_write(ss_conn_t *conn);
/* No more I/O for conn->ssl (its socket is about to close, and a new socket
 * may get the same number); what it knows of the session can still be read. */
void ss__tls_silence(ss_conn_t *conn);
/* Offers the session of `from` for resumption (client side). */
void ss__tls_resume(ss_conn_t *conn, const ss_conn_t *from);
/* The peer's certificate at index (0: the leaf) or NULL; a client's
 * handshake that failed verification still has the chain it received. */
X509 *ss__tls_peer_cert(const ss_conn_t *conn, int32_t index);

/* ---- certinfo.c ------------------------------------------------------- */

/* ss_cert_describe_der for a certificate OpenSSL holds. */
int64_t ss__cert_describe(X509 *cert, unsigned char *out, size_t cap);

/* ---- engine.c --------------------------------------------------------- */

/* Probes queued and not started yet. */
uint32_t ss__engine_queued(const ss_engine_t *engine);

/* ---- engine_thread.c -------------------------------------------------- */

/* Waits up to timeout_ms (-1: no limit) until the thread can go no further
 * without the caller: a batch waits to be taken, and the thread's own is full
 * (its runs hold finished probes back) or it has nothing left to drive.
 * Returns 1 then, 0 on timeout or when nothing is left to take, or the error
 * that stopped the thread. For tests (tests/c/engine_thread_driver.c), which
 * order their steps on it where a pause would only make a full batch likely. */
int32_t ss__engine_thread_wait_stalled(ss_engine_thread_t *t, int32_t timeout_ms);

/* ---- sock.c ----------------------------------------------------------- */

/* Looks up host:port for socktype; on failure records SS_ERR_RESOLVE. */
int ss__resolve(ss_conn_t *conn, const char *host, int port, int passive, struct addrinfo **out);
/* The lookup alone, safe on any thread: getaddrinfo's code (0: *out set),
 * with errno in *sys_errno for EAI_SYSTEM. */
int ss__lookup(const char *host, int port, int socktype, int passive, struct addrinfo **out, int *sys_errno);
/* Records an ss__lookup failure on conn as SS_ERR_RESOLVE; returns the code. */
int ss__resolve_failed(ss_conn_t *conn, const char *host, int gai_rc, int sys_errno);
/* 1 for an IPv4 or IPv6 address literal (nothing to look up). */
int ss__is_ip_literal(const char *host);
/* Starts a non-blocking connect to conn->ai_next; SS_DONE, SS_WANT_WRITE or error. */
int ss__connect_next(ss_conn_t *conn);
/* After the socket became writable: SS_DONE, or the connect errno (> 0). */
int ss__connect_result(ss_conn_t *conn);
int ss__open_unix(ss_conn_t *conn, int listen_side);
int ss__listen_inet(ss_conn_t *conn);
int ss__set_nonblocking(int fd);
int ss__format_sockaddr(const struct sockaddr *sa, socklen_t len, char *out, size_t cap);
/* Waits for want on fd: 1 ready, 0 timed out, SS_IO_INTERRUPTED (a signal
 * came: the caller's signal handlers may need to run), or -errno. *revents
 * gets poll's revents (may be NULL). */
int ss__poll(int fd, int want, int timeout_ms, short *revents);
int64_t ss__sock_read(ss_conn_t *conn, char *buf, size_t len);
int64_t ss__sock_write(ss_conn_t *conn, const char *buf, size_t len);
/* One recv into conn's read buffer if it is empty and the recv budget allows:
 * > 0 bytes now buffered, 0 end of stream, -1 with errno (EAGAIN when the
 * socket is empty or the budget is spent). */
ssize_t ss__sock_fill(ss_conn_t *conn);
/* Gives the read buffer back to malloc when it holds nothing. */
void ss__sock_release_rbuf(ss_conn_t *conn);
/* Sends what waits in conn's write buffer: 1 when it is empty, 0 when the
 * socket is full (EAGAIN), -1 with errno. */
int ss__sock_flush(ss_conn_t *conn);

/* ---- resolver.c -------------------------------------------------------- */

typedef struct ss_resolver ss_resolver_t;

/* One lookup: the request, then its result. */
struct ss_lookup {
    struct ss_lookup *next;
    uint64_t tag;               /* the submitter's, handed back as is */
    int port;
    int socktype;
    int gai_rc;                 /* getaddrinfo's code: 0 when result is set */
    int sys_errno;
    struct addrinfo *result;    /* owned until taken out */
    char host[];
};

/* NULL when out of memory or descriptors. */
ss_resolver_t *ss__resolver_new(int max_threads);
/* Closes the eventfd now; workers still looking up finish on their own. */
void ss__resolver_free(ss_resolver_t *resolver);
/* An eventfd: readable while finished lookups wait in ss__resolver_take. */
int ss__resolver_fd(const ss_resolver_t *resolver);
int ss__resolver_submit(ss_resolver_t *resolver, uint64_t tag, const char *host, int port, int socktype);
/* The next finished lookup (the caller frees it), or NULL when none is left. */
struct ss_lookup *ss__resolver_take(ss_resolver_t *resolver);
void ss__lookup_free(struct ss_lookup *lookup);

/* ---- starttls.c -------------------------------------------------------- */

#define SS_STARTTLS_MAX_LINE 2048 /* longer reply lines are a protocol error */
#define SS_STARTTLS_MAX_LINES 100 /* lines in one reply (EHLO lists extensions) */
#define SS_STARTTLS_SHOWN 120     /* characters of a reply quoted in an error */

/* One client's STARTTLS dialogue (enum ss_starttls protocol). */
struct ss_starttls_dialogue {
    int protocol;
    int step;          /* index of the step whose reply is awaited */
    int lines;         /* lines of the current reply so far */
    char reply_code[4];
    size_t sent;       /* bytes of the step's command written */
    size_t line_len;
    char line[SS_STARTTLS_MAX_LINE];
};

int ss__starttls_valid(int protocol);
void ss__starttls_init(struct ss_starttls_dialogue *dialogue, int protocol);
/* Runs the dialogue on conn's plaintext as far as the socket allows: SS_DONE
 * after the server's go-ahead (start TLS now), SS_WANT_READ/WRITE, or an
 * error recorded on conn (which is FAILED then). The greeting's bytes are
 * appended to greeting as far as greeting_cap allows (greeting may be NULL). */
int ss__starttls_step(struct ss_starttls_dialogue *dialogue, ss_conn_t *conn, unsigned char *greeting,
                      uint32_t *greeting_len, uint32_t greeting_cap);

/* ---- conn.c ----------------------------------------------------------- */

struct ss_conn {
    int state;
    int fd;
    int transport;
    int socktype;               /* SOCK_STREAM or SOCK_DGRAM */
    int accepted;               /* server side of a connection */
    SSL *ssl;
    ss_tls_ctx_t *tls;          /* reference held while ssl exists */
    ss_tls_ctx_t *initial_tls;  /* TLS to start after connect/accept */
    char *host;
    int port;
    char *peer_name;            /* verify + SNI name; NULL: host */
    int verify_peer_name;
    int sni_enabled;
    char path[110];
    size_t path_len;
    char *bind_host;
    int bind_port;
    int backlog;
    int tcp_nodelay;
    int so_reuseport;
    int so_broadcast;
    int ipv6_v6only;
    int so_reuseaddr, so_keepalive, tcp_keepidle, tcp_keepintvl, tcp_keepcnt, so_linger, so_rcvbuf, so_sndbuf;
    struct addrinfo *ai_list;
    struct addrinfo *ai_next;   /* next address to try */
    int connect_errno;          /* last failure among the addresses tried */
    int shutdown_sent;
    SSL_SESSION *offer_session; /* client: resume this session (owned), NULL: none */
    /* What the socket gave and TLS has not consumed yet. OpenSSL reads
     * through it (tls.c's socket BIO) record by record, so one recv serves
     * many records, and what follows the peer's close_notify stays here and
     * is read as plaintext after enable_crypto(false). */
    char *rbuf;                 /* NULL while empty and given back */
    size_t rbuf_off;
    size_t rbuf_len;
    char *wbuf;                 /* a handshake flight, sent whole at BIO_flush */
    size_t wbuf_len;
    size_t wbuf_cap;
    int send_more;              /* more records of the same write follow (MSG_MORE) */
    int recv_budget;            /* recvs allowed now: 1 at every entry point, 0 once
                                 * the socket was found empty (no EAGAIN recv twice),
                                 * 0 right after sending a ClientHello */
    short revents;              /* of the last ss_conn_wait: a clean POLLOUT after a
                                 * connect means connected, no getsockopt needed */
    int deferred_error;         /* an error met after some data was returned: the next
                                 * read or write returns it (recorded in err) */
    char *handback;             /* data read while waiting for close_notify */
    size_t handback_len;
    size_t handback_off;
    int capture_hello;          /* client: keep the first ServerHello (fingerprints), up to
                                 * SS_SERVER_HELLO_MAX bytes */
    unsigned char *server_hello; /* its body, without the handshake header */
    size_t server_hello_len;
    ss_error_info_t err;
};

int ss__conn_fail(ss_conn_t *conn, int code);
/* Closes the socket (close_notify first when established) but keeps the TLS
 * state, so the session's details can still be read. */
void ss__conn_hang_up(ss_conn_t *conn);

#endif
