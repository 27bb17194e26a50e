/*
 * streamsock public C API.
 *
 * This header is the FFI contract: the build strips every line that starts
 * with '#' and hands the rest to cffi's cdef, so below the include guard it
 * holds only declarations cffi can parse (no macros, explicit enum values).
 *
 * Conventions
 *   - Functions return 0 (SS_OK) or a negative ss_error code.
 *   - Nothing here keeps global mutable state; every function is safe to call
 *     from many threads at once on distinct arguments.
 *   - Opaque handles come in *_new / *_free pairs; *_free(NULL) is a no-op.
 */
#ifndef STREAMSOCK_H
#define STREAMSOCK_H
#include <stddef.h>
#include <stdint.h>

/* Error codes: explicit, negative, never reused. error.c maps each one to its
 * name and its message; the Python package keeps the same table (checked by
 * tests/test_errors.py). */
enum ss_error {
    SS_OK = 0,
    /* address parser */
    SS_ERR_ADDR_EMPTY = -101,
    SS_ERR_ADDR_TOO_LONG = -102,
    SS_ERR_ADDR_UNKNOWN_TRANSPORT = -103,
    SS_ERR_ADDR_HOST_EMPTY = -104,
    SS_ERR_ADDR_HOST_CHAR = -105,
    SS_ERR_ADDR_HOST_TOO_LONG = -106,
    SS_ERR_ADDR_IPV6_BRACKET = -107,
    SS_ERR_ADDR_IPV6_INVALID = -108,
    SS_ERR_ADDR_COLONS = -109,
    SS_ERR_ADDR_AFTER_BRACKET = -110,
    SS_ERR_ADDR_PORT_EMPTY = -111,
    SS_ERR_ADDR_PORT_SYNTAX = -112,
    SS_ERR_ADDR_PORT_RANGE = -113,
    SS_ERR_ADDR_PATH_EMPTY = -114,
    SS_ERR_ADDR_PATH_NUL = -115,
    SS_ERR_ADDR_PATH_TOO_LONG = -116,
    /* raised by the layers above the parser, kept in the same table */
    SS_ERR_ADDR_PORT_MISSING = -117,
    SS_ERR_ADDR_PORT_TWICE = -118,
    SS_ERR_ADDR_PORT_UNEXPECTED = -119,
    /* sockets and connections */
    SS_ERR_NOMEM = -200,
    SS_ERR_SYSTEM = -201,
    SS_ERR_RESOLVE = -202,
    SS_ERR_CONNECT = -203,
    SS_ERR_TIMEOUT = -204,
    SS_ERR_CLOSED = -205,
    SS_ERR_STATE = -206,
    SS_ERR_UNSUPPORTED = -207,
    SS_ERR_EOF = -208,
    /* TLS */
    SS_ERR_TLS = -300,
    SS_ERR_TLS_CONFIG = -301,
    SS_ERR_TLS_VERIFY = -302,
    SS_ERR_TLS_PEER_NAME = -303,
    SS_ERR_TLS_FINGERPRINT = -304,
    SS_ERR_STARTTLS_BUFFERED = -305,
    SS_ERR_TLS_ACTIVE = -306,
    SS_ERR_BUSY = -307,
    SS_ERR_STARTTLS_REFUSED = -308
};

/* Transports, in PHP's names. Values are explicit and stable. */
enum ss_transport {
    SS_TRANSPORT_TCP = 1,
    SS_TRANSPORT_UDP = 2,
    SS_TRANSPORT_SSL = 3,
    SS_TRANSPORT_TLS = 4,
    SS_TRANSPORT_SSLV2 = 5,
    SS_TRANSPORT_SSLV3 = 6,
    SS_TRANSPORT_TLSV1_0 = 7,
    SS_TRANSPORT_TLSV1_1 = 8,
    SS_TRANSPORT_TLSV1_2 = 9,
    SS_TRANSPORT_TLSV1_3 = 10,
    SS_TRANSPORT_UNIX = 11,
    SS_TRANSPORT_UDG = 12
};

/* Bits of ss_address.flags. */
enum ss_address_flag {
    SS_ADDR_IPV6 = 1,      /* host is an IPv6 literal (printed in brackets) */
    SS_ADDR_ABSTRACT = 2   /* unix/udg path in Linux's abstract namespace */
};

/* One parsed address. Every field is 32 bits so a batch can be read as one
 * flat int32 array. Offsets count bytes from the start of that address's own
 * input, never from the start of a batch buffer.
 *   error      SS_OK, or the negative code; on error only err_* are meaningful
 *   transport  enum ss_transport
 *   port       0..65535, or -1 when the address has none
 *   host_*     the host without brackets, or the socket path for unix/udg
 *   err_*      the offending text (err_len may be 0: "nothing where text was
 *              expected", e.g. the end of a host:)                          */
typedef struct ss_address {
    int32_t error;
    int32_t transport;
    int32_t port;
    uint32_t flags;
    uint32_t host_off;
    uint32_t host_len;
    uint32_t err_off;
    uint32_t err_len;
} ss_address_t;

/* Limits the parser enforces. */
enum ss_address_limit {
    SS_HOST_MAX = 255,          /* bytes in a host name */
    SS_UNIX_PATH_MAX = 107,     /* bytes in a unix path (sun_path less its NUL) */
    SS_UNIX_ABSTRACT_MAX = 108  /* bytes in an abstract name, leading NUL included */
};

/* Step results (>= 0; errors are negative ss_error codes). */
enum ss_want {
    SS_DONE = 0,
    SS_WANT_READ = 1,
    SS_WANT_WRITE = 2
};

/* Read/write results below zero that are not errors. */
enum ss_io {
    SS_IO_WANT_READ = -1,
    SS_IO_WANT_WRITE = -2,
    SS_IO_TIMEOUT = -3,      /* a blocking call's time ran out; the conn stays usable, nothing is lost */
    SS_IO_INTERRUPTED = -4   /* a signal came while waiting: let its handler run, then call again */
};

/* Connection states. Every transition is in conn.c's one switch. */
enum ss_state {
    SS_STATE_RESOLVE = 1,       /* client: addresses not yet looked up */
    SS_STATE_CONNECTING = 2,    /* client: non-blocking connect in flight */
    SS_STATE_HANDSHAKING = 3,   /* TLS handshake (at connect, accept or STARTTLS) */
    SS_STATE_ESTABLISHED = 4,   /* data flows, plaintext or TLS */
    SS_STATE_TLS_SHUTDOWN = 5,  /* enable_crypto(false): close_notify exchange */
    SS_STATE_LISTENING = 6,     /* server socket (tcp/unix listening, udp/udg bound) */
    SS_STATE_CLOSED = 7,
    SS_STATE_FAILED = 8
};

/* What went wrong, recorded where it happened (house rule 6).
 *   code           enum ss_error
 *   sys_errno      errno of the failing call (PHP's errno), else 0
 *   ssl_error      SSL_get_error() of the failing TLS call, else 0
 *   verify_result  X509 verify result when verification failed, else 0
 *   message        PHP-style errstr with the details (OpenSSL reason, name) */
typedef struct ss_error_info {
    int32_t code;
    int32_t sys_errno;
    int32_t ssl_error;
    int32_t verify_result;
    char message[512];
} ss_error_info_t;

/* Options of a TLS context: PHP's ssl context options after validation by
 * python/streamsock/context.py. Strings are NUL-terminated or NULL; ints are
 * 0/1 flags unless noted. Read during ss_tls_ctx_new only. */
typedef struct ss_tls_options {
    int32_t server;             /* 1: accept side */
    int32_t verify_peer;
    int32_t allow_self_signed;
    int32_t verify_depth;       /* -1: OpenSSL's default */
    int32_t min_version;        /* TLS1_VERSION etc.; 0: no bound */
    int32_t max_version;
    int32_t security_level;     /* -1: OpenSSL's default */
    int32_t disable_compression;
    int32_t honor_cipher_order;
    const char *cafile;
    const char *capath;
    const char *local_cert;     /* PEM: certificate (chain) */
    const char *local_pk;       /* PEM: key; NULL: in local_cert */
    const char *passphrase;
    const char *ciphers;        /* TLS 1.2 and older cipher list */
    const unsigned char *alpn;  /* wire format: length-prefixed names */
    uint32_t alpn_len;
    /* server: SNI name -> certificate, as parallel arrays */
    uint32_t sni_count;
    const char *const *sni_names;
    const char *const *sni_certs;
    const char *const *sni_keys;   /* entries may be NULL: key in the cert file */
    int32_t no_ticket;          /* no RFC 5077 session tickets (TLS 1.2 resumes by session id) */
    const char *groups;         /* key-exchange groups, "X25519:P-256" (ecdh_curve); NULL: OpenSSL's */
    const char *dh_param;       /* server: PEM file of DH parameters for the DHE suites */
} ss_tls_options_t;

typedef struct ss_tls_ctx ss_tls_ctx_t;

/* Builds an OpenSSL context from opts, loading certificates and the CA
 * bundle once; share it among any number of connections and threads.
 * Returns NULL and fills *err on failure. */
ss_tls_ctx_t *ss_tls_ctx_new(const ss_tls_options_t *opts, ss_error_info_t *err);
void ss_tls_ctx_free(ss_tls_ctx_t *ctx);

/* Where and how to connect or listen. Strings NUL-terminated or NULL.
 *   transport   enum ss_transport (the TLS version pins live in the tls ctx)
 *   host/port   tcp/udp and the TLS transports; host must be non-NULL
 *   path        unix/udg: path_len bytes, may start with NUL (abstract)
 *   tls         NULL: plaintext; else TLS starts right after connect/accept
 *   peer_name   name to verify and to send as SNI (NULL: host)
 *   bind_host   socket option bindto; bind_port -1: any */
typedef struct ss_conn_options {
    int32_t transport;
    const char *host;
    int32_t port;
    const char *path;
    uint32_t path_len;
    ss_tls_ctx_t *tls;
    const char *peer_name;
    int32_t verify_peer_name;
    int32_t sni_enabled;
    const char *bind_host;
    int32_t bind_port;
    int32_t backlog;
    int32_t tcp_nodelay;
    int32_t so_reuseport;
    int32_t so_broadcast;
    int32_t ipv6_v6only;        /* -1: system default */
    /* PHP's other socket options; 0 leaves each as the system has it. */
    int32_t so_reuseaddr;       /* 1: on, -1: off (servers turn it on unless off) */
    int32_t so_keepalive;       /* 1: on, -1: off */
    int32_t tcp_keepidle;       /* seconds */
    int32_t tcp_keepintvl;      /* seconds */
    int32_t tcp_keepcnt;
    int32_t so_linger;          /* 1 + the linger seconds: 1 is linger 0 (close resets) */
    int32_t so_rcvbuf;          /* bytes */
    int32_t so_sndbuf;          /* bytes */
} ss_conn_options_t;

typedef struct ss_conn ss_conn_t;

/* A client connection in SS_STATE_RESOLVE; no I/O happens until ss_conn_step.
 * The conn keeps its own reference to opts->tls and copies of the strings. */
ss_conn_t *ss_conn_client(const ss_conn_options_t *opts, ss_error_info_t *err);

/* A server socket: resolves, binds and, for stream transports, listens.
 * Returns NULL and fills *err on failure. */
ss_conn_t *ss_conn_server(const ss_conn_options_t *opts, ss_error_info_t *err);

/* Accepts one connection from a listening conn without blocking. Returns the
 * new conn (SS_STATE_HANDSHAKING when the server has TLS, else ESTABLISHED),
 * or NULL with err->code SS_OK when none is waiting, or NULL with an error. */
ss_conn_t *ss_conn_accept(ss_conn_t *listener, ss_error_info_t *err);

/* Adopts an already connected socket (the conn owns fd from now on, and
 * makes it non-blocking): a stream (tcp, unix; a unix seqpacket socket too)
 * or datagram (udp, udg) socket, as the transport says and the socket's own
 * type agrees; SS_STATE_ESTABLISHED in plaintext, or SS_STATE_HANDSHAKING
 * when tls is given (tcp only; its role decides client or server).
 * peer_name is the client's name to verify and send as SNI. */
ss_conn_t *ss_conn_from_fd(int fd, int32_t transport, ss_tls_ctx_t *tls, const char *peer_name,
                           ss_error_info_t *err);

/* Closes the socket (if open) and frees everything. NULL is a no-op. */
void ss_conn_free(ss_conn_t *conn);

/* Advances the state machine as far as it goes without blocking: returns
 * SS_DONE when the state is ESTABLISHED (or LISTENING), SS_WANT_READ or
 * SS_WANT_WRITE when it must wait for the socket, or a negative error (kept
 * on the handle: errors stick). */
int ss_conn_step(ss_conn_t *conn);

/* The blocking driver: steps and polls until SS_DONE, an error, or
 * timeout_ms passes (SS_ERR_TIMEOUT; -1 waits forever). Returns
 * SS_IO_INTERRUPTED, with the conn as it was, when a signal interrupts the
 * wait: call again with the time that is left. Blocks the calling thread
 * only (cffi releases the GIL). */
int ss_conn_run(ss_conn_t *conn, int32_t timeout_ms);

/* Waits until the socket is ready for `want` (SS_WANT_READ/WRITE). Returns 1
 * when ready, 0 on timeout, SS_IO_INTERRUPTED, or a negative error. Ready at
 * once when decrypted or buffered bytes wait and want is SS_WANT_READ. */
int ss_conn_wait(ss_conn_t *conn, int want, int32_t timeout_ms);

/* Reads everything available without waiting, up to len bytes: returns the
 * count, 0 at end of stream, SS_IO_WANT_READ/WRITE when nothing is there, or
 * a negative error. On TLS it decrypts record after record from one recv
 * (two when the first filled the buffer); a count below len means nothing
 * complete is left in a buffer, so waiting for the socket is right. */
int64_t ss_conn_read(ss_conn_t *conn, char *buf, size_t len);

/* ss_conn_read, waiting up to timeout_ms (-1: no limit) for the first byte:
 * the count, 0 at end of stream, SS_IO_TIMEOUT, SS_IO_INTERRUPTED, or a
 * negative error. */
int64_t ss_conn_read_wait(ss_conn_t *conn, char *buf, size_t len, int32_t timeout_ms);

/* Writes as much of len bytes as the socket takes now (on TLS record after
 * record): returns the count (> 0), SS_IO_WANT_READ/WRITE when nothing could
 * be written without blocking, or a negative error. */
int64_t ss_conn_write(ss_conn_t *conn, const char *buf, size_t len);

/* Writes all len bytes, waiting up to timeout_ms (-1: no limit) in all:
 * returns the count written and sets *status to SS_OK (all of it),
 * SS_IO_TIMEOUT, SS_IO_INTERRUPTED (call again with the rest) or an error. */
int64_t ss_conn_write_wait(ss_conn_t *conn, const char *buf, size_t len, int32_t timeout_ms, int32_t *status);

/* Datagram sockets: receive one datagram (peek: leave it to be received
 * again) and its sender's address as text ("127.0.0.1:53", "[::1]:53", a unix
 * path, which may start with NUL) of *peer_len bytes; send one to a numeric
 * address or a unix path. */
int64_t ss_conn_recvfrom(ss_conn_t *conn, char *buf, size_t len, int32_t peek, char *peer, size_t peer_cap,
                         uint32_t *peer_len);
int64_t ss_conn_sendto(ss_conn_t *conn, const char *buf, size_t len, const char *host, int32_t port,
                       const char *path, uint32_t path_len);

/* TCP urgent data (MSG_OOB) on a connected stream: receive the pending
 * urgent byte (SS_IO_WANT_READ when announced and not yet arrived, an
 * SS_ERR_SYSTEM error with EINVAL when none is pending), or send len bytes
 * whose last is urgent. SS_ERR_UNSUPPORTED on a TLS conn. Neither error
 * sticks: the conn stays usable. */
int64_t ss_conn_recv_oob(ss_conn_t *conn, char *buf, size_t len);
int64_t ss_conn_send_oob(ss_conn_t *conn, const char *buf, size_t len);

/* STARTTLS: begins a TLS handshake on an established plaintext stream
 * (state -> HANDSHAKING; drive it with step/run). A client refuses with
 * SS_ERR_STARTTLS_BUFFERED when unread bytes already wait in the socket.
 * session_from (may be NULL): a TLS conn whose session to resume. */
int ss_conn_start_tls(ss_conn_t *conn, ss_tls_ctx_t *tls, const char *peer_name,
                      int32_t verify_peer_name, int32_t sni_enabled, const ss_conn_t *session_from);

/* Ends TLS and returns to plaintext: sends close_notify and waits for the
 * peer's (state -> TLS_SHUTDOWN; drive with step/run). Application data that
 * arrives before the peer's close_notify is kept and read as usual. */
int ss_conn_stop_tls(ss_conn_t *conn);

/* shutdown(2): how is SHUT_RD (0), SHUT_WR (1) or SHUT_RDWR (2). On an
 * established TLS stream SHUT_WR and SHUT_RDWR send close_notify first (reading
 * goes on until the peer's); SS_WANT_WRITE when the socket has no room for it
 * yet: call again once it is writable. Writing afterwards fails with EPIPE. */
int ss_conn_shutdown(ss_conn_t *conn, int32_t how);

/* Shuts the socket down both ways, TLS untouched: from another thread, to
 * wake a call that waits on the conn (which then fails). */
void ss_conn_interrupt(ss_conn_t *conn);

/* Closes the socket now, after one non-blocking attempt to send TLS
 * close_notify; the handle stays valid (state CLOSED). */
void ss_conn_close(ss_conn_t *conn);

int ss_conn_state(const ss_conn_t *conn);
int ss_conn_fd(const ss_conn_t *conn);
int ss_conn_is_tls(const ss_conn_t *conn);

/* Decrypted or handed-back bytes readable without touching the socket. */
size_t ss_conn_pending(const ss_conn_t *conn);

/* Copies the recorded error (SS_OK when none) into *out; returns its code. */
int ss_conn_error(const ss_conn_t *conn, ss_error_info_t *out);

/* The local (peer = 0) or remote (peer = 1) address as text, like PHP's
 * stream_socket_get_name: "127.0.0.1:80", "[::1]:80", or the unix path.
 * Returns its length, or a negative error. */
int ss_conn_name(const ss_conn_t *conn, int32_t peer, char *out, size_t cap);

/* The negotiated TLS parameters; fields are "" when there is no TLS. */
typedef struct ss_tls_info {
    char protocol[16];         /* "TLSv1.3" */
    char cipher_name[64];      /* "TLS_AES_256_GCM_SHA384" */
    int32_t cipher_bits;
    char cipher_version[16];   /* protocol version that defined the cipher */
    char alpn[256];            /* selected ALPN protocol, "" if none */
    char group[64];            /* key-exchange group, e.g. "X25519" */
    char server_name[256];     /* server side: SNI the client sent */
    int32_t session_reused;
} ss_tls_info_t;

int ss_conn_tls_info(const ss_conn_t *conn, ss_tls_info_t *out);

/* The peer's certificate chain, DER: index 0 is the leaf. Returns the
 * length (copying when it fits in cap), 0 when there is no such
 * certificate, or a negative error. */
int64_t ss_conn_peer_cert(const ss_conn_t *conn, int32_t index, unsigned char *out, size_t cap);

/* How far the peer (a client conn's server) would be trusted, whether or not
 * the context enforced it: OpenSSL's verification of the chain against the
 * context's CA store, and the expected name against the leaf certificate.
 * A handshake that failed its verification still has the chain it received.
 *   verify_result  X509_V_OK (0) or X509_V_ERR_*; -1: no certificate received
 *   name_matched   1 or 0; -1: no certificate, or no name to check */
typedef struct ss_trust {
    int32_t verify_result;
    int32_t name_matched;
} ss_trust_t;

void ss_conn_trust(const ss_conn_t *conn, ss_trust_t *out);

/* OpenSSL's text for an X509_V_ERR_* code ("certificate has expired"). */
const char *ss_verify_reason(int32_t verify_result);

/* ---- certificate details ----------------------------------------------- */

/* One certificate as OpenSSL parsed it, at the start of a block that holds
 * its variable-size parts after it; every *_off counts from the block's
 * start. Texts are UTF-8, not NUL-terminated.
 *   block_len     the whole block, this header included
 *   subject/issuer  one line in certificate order, RFC 2253 escapes, short
 *                 names: "O=Example, CN=example.com"
 *   common_name   the subject's last CN ("" when it has none)
 *   san           subjectAltName entries, each (1 byte kind: 1 DNS, 2 IP,
 *                 3 email, 4 URI; 2 bytes little-endian length; value);
 *                 an IP entry's value is its 4 or 16 address bytes
 *   serial        upper-case hex as BN_bn2hex prints it ("-" when negative)
 *   not_before/not_after  seconds since the epoch, UTC
 *   version       1..3
 *   key_type      the public key's algorithm, OpenSSL's long name
 *   key_bits      its size in bits (EVP_PKEY_get_bits), 0 when unknown
 *   signature_algorithm  OpenSSL's long name
 *   self_signed   issuer and subject are the same name, octet for octet
 *   sha256/sha1   digests of the DER; spki_sha256 of the SubjectPublicKeyInfo */
typedef struct ss_cert_info {
    uint32_t block_len;
    uint32_t der_off;
    uint32_t der_len;
    uint32_t subject_off;
    uint32_t subject_len;
    uint32_t issuer_off;
    uint32_t issuer_len;
    uint32_t common_name_off;
    uint32_t common_name_len;
    uint32_t san_off;
    uint32_t san_len;
    uint32_t serial_off;
    uint32_t serial_len;
    int32_t version;
    int64_t not_before;
    int64_t not_after;
    int32_t key_bits;
    int32_t self_signed;
    char key_type[32];
    char signature_algorithm[64];
    unsigned char sha256[32];
    unsigned char sha1[20];
    unsigned char spki_sha256[32];
} ss_cert_info_t;

/* Describes a DER certificate into out[0..cap) as a block (ss_cert_info_t,
 * then its data). Returns the block's length, SS_ERR_NOMEM when it does not
 * fit (or memory ran out), or SS_ERR_TLS when OpenSSL cannot parse der. */
int64_t ss_cert_describe_der(const unsigned char *der, size_t der_len, unsigned char *out, size_t cap);

/* ---- the acceptor: a server's handshakes, none waiting on another -------- */

typedef struct ss_acceptor ss_acceptor_t;

/*   handshake_timeout_ms  from accept to established, per connection (<= 0: none)
 *   max_handshakes        handshakes in progress plus connections established and
 *                         not yet handed over, at most (0: 1024); beyond it new
 *                         clients wait in the listen backlog */
typedef struct ss_acceptor_options {
    int32_t handshake_timeout_ms;
    uint32_t max_handshakes;
} ss_acceptor_options_t;

/* An acceptor for listener (a listening stream conn, which stays the caller's
 * and must outlive the acceptor). NULL and *err on failure. */
ss_acceptor_t *ss_acceptor_new(ss_conn_t *listener, const ss_acceptor_options_t *opts, ss_error_info_t *err);
/* Closes the handshakes in progress and the connections not handed over. NULL is a no-op. */
void ss_acceptor_free(ss_acceptor_t *acceptor);

/* An epoll fd, readable whenever ss_acceptor_run has work to do. */
int ss_acceptor_fd(const ss_acceptor_t *acceptor);

/* Accepts what waits, steps the handshakes whose sockets are ready, ends those
 * past their deadline (counted as failures), waiting up to timeout_ms (0: not
 * at all, -1: no limit) until a connection is established. Writes up to cap
 * established conns to out (the caller owns them: ss_conn_free) and returns
 * how many; 0 when the time ran out or a handshake accepted in the current
 * epoch failed (ss_acceptor_epoch_failures); SS_IO_INTERRUPTED on a signal or
 * ss_acceptor_wake; or a negative error. Blocks only the calling thread. */
int32_t ss_acceptor_run(ss_acceptor_t *acceptor, int32_t timeout_ms, ss_conn_t **out, uint32_t cap);

/* Milliseconds until the acceptor needs a run without any event (a handshake
 * deadline, the end of a pause after running out of descriptors; 0: now), or
 * -1 when nothing is due. */
int32_t ss_acceptor_next_timer(const ss_acceptor_t *acceptor);

/* Failed handshakes so far (returned), accept() failures, and the last error
 * of each (either pointer may be NULL: the counts alone are cheap). */
uint64_t ss_acceptor_stats(const ss_acceptor_t *acceptor, uint64_t *accept_errors,
                           ss_error_info_t *last_handshake_error, ss_error_info_t *last_accept_error);

/* Starts an epoch (a blocking accept call): failures of the handshakes
 * accepted from now on are reported by ss_acceptor_epoch_failures, and make
 * ss_acceptor_run return; those accepted before are only counted. */
uint64_t ss_acceptor_begin(ss_acceptor_t *acceptor);
/* Failed handshakes of the current epoch, and the last one's error. */
uint64_t ss_acceptor_epoch_failures(const ss_acceptor_t *acceptor, ss_error_info_t *last);

/* Makes a running (or the next) ss_acceptor_run return SS_IO_INTERRUPTED: the
 * one acceptor call that is safe from any thread. */
void ss_acceptor_wake(ss_acceptor_t *acceptor);

/* ---- the engine: many client connections at once on epoll -------------- */

typedef struct ss_engine ss_engine_t;

/* The plaintext dialogues the engine can run before TLS (STARTTLS). */
enum ss_starttls {
    SS_STARTTLS_NONE = 0,
    SS_STARTTLS_SMTP = 1,  /* greeting 220, EHLO, STARTTLS -> 220 */
    SS_STARTTLS_IMAP = 2,  /* greeting * OK, a001 STARTTLS -> a001 OK */
    SS_STARTTLS_POP3 = 3,  /* greeting +OK, STLS -> +OK */
    SS_STARTTLS_FTP = 4    /* greeting 220, AUTH TLS -> 234 */
};

/* How every probe runs. Timeouts are in milliseconds, <= 0 for none.
 *   concurrency      connections in flight at most (1 .. 2^24)
 *   connect_*        name lookup + TCP connect
 *   handshake_*      from connected to TLS done (the STARTTLS dialogue included)
 *   total_*          the whole probe, payload and banner included
 *   payload          bytes sent once established (may be NULL)
 *   banner_max       bytes of the peer's first data to keep (0: read nothing);
 *                    with STARTTLS, the plaintext greeting, and after TLS
 *                    only what answers a payload
 *   capture_chain    0: the leaf certificate only; 1: every certificate sent
 *   starttls         enum ss_starttls: dialogue to run on plaintext targets
 *                    before TLS (ss_engine_add's starttls_tls)
 *   rate             new connections per second at most (<= 0: no limit)
 *   session_cache    TLS sessions kept for resumption, one per target
 *                    (host, port, peer name, TLS context); 0: no resumption
 *   resolver_threads threads for host-name lookups (<= 0: 16)
 *   peer_fingerprint NULL, or PHP's peer_fingerprint as "alg=hex[,alg=hex...]"
 *                    (lower-case hex, OpenSSL digest names): every digest of
 *                    the leaf certificate must match, checked before the
 *                    payload goes out */
typedef struct ss_engine_options {
    int32_t concurrency;
    int32_t connect_timeout_ms;
    int32_t handshake_timeout_ms;
    int32_t total_timeout_ms;
    const char *payload;
    uint32_t payload_len;
    uint32_t banner_max;
    int32_t capture_chain;
    int32_t starttls;
    double rate;
    int32_t session_cache;
    int32_t resolver_threads;
    const char *peer_fingerprint;
} ss_engine_options_t;

/* One finished probe. Variable-size data lives in the caller's arena:
 * banner bytes at banner_off, the ServerHello at server_hello_off (for JA3S
 * and JA4S), and certificates at certs_off as a sequence of
 * ss_cert_info_t blocks (leaf first), whatever the outcome once a
 * certificate arrived. verify_result and name_matched are ss_trust_t's, also
 * when verification was not enforced. Times are phase durations in
 * milliseconds (resolve: the name lookup; connect: TCP; handshake: TLS, the
 * STARTTLS dialogue not included; total: start to end); -1 for a phase not
 * reached or not run. ok means connected, with TLS (and STARTTLS) done when
 * asked for; the payload and banner never make a probe fail: the banner is
 * what came before end of stream, an error or the deadline. */
typedef struct ss_probe_result {
    uint64_t id;
    int32_t ok;
    int32_t error;           /* SS_OK or the ss_error that ended it */
    int32_t sys_errno;
    int32_t verify_result;
    int32_t state;           /* enum ss_state reached */
    int32_t session_reused;
    char message[256];
    char protocol[16];
    char cipher[64];
    char group[64];
    char alpn[64];
    char peer[64];           /* the address connected to */
    double resolve_ms;
    double connect_ms;
    double handshake_ms;
    double total_ms;
    uint32_t banner_off;
    uint32_t banner_len;
    uint32_t certs_off;
    uint32_t certs_len;
    int32_t name_matched;    /* ss_trust_t's */
    uint32_t server_hello_off; /* the ServerHello's body, as received (TLS) */
    uint32_t server_hello_len;
} ss_probe_result_t;

ss_engine_t *ss_engine_new(const ss_engine_options_t *opts, ss_error_info_t *err);
/* Closes every connection still queued or in flight. NULL is a no-op. */
void ss_engine_free(ss_engine_t *engine);

/* Queues a client conn (from ss_conn_client, not yet stepped) under id; the
 * engine owns it from now on, also when this fails. starttls_tls: with the
 * engine's starttls option, the client TLS context to start after the
 * dialogue on this (plaintext tcp) conn; NULL runs no dialogue. The engine
 * takes its own reference. */
int ss_engine_add(ss_engine_t *engine, uint64_t id, ss_conn_t *conn, ss_tls_ctx_t *starttls_tls);

/* Probes queued or in flight and not yet reported. */
uint32_t ss_engine_pending(const ss_engine_t *engine);

/* Runs the probes until at least one has finished, timeout_ms passes (-1:
 * until one finishes, 0: poll once) or ss_engine_interrupt is called, and
 * writes up to cap finished ones to out, their data to arena. Returns how
 * many, or a negative error. Blocks only the calling thread. With cap 0 it
 * keeps driving the probes in flight and holds finished ones back. */
int32_t ss_engine_run(ss_engine_t *engine, int32_t timeout_ms, ss_probe_result_t *out, uint32_t cap,
                      unsigned char *arena, uint32_t arena_cap);

/* Makes a running (or the next) ss_engine_run return early. The one engine
 * call that is safe from any thread. */
void ss_engine_interrupt(ss_engine_t *engine);

/* ---- an engine on a thread of its own ---------------------------------- */

/* The thread keeps driving connections while the caller handles finished
 * probes and adds new ones, so that work never holds up a handshake. The
 * thread blocks every signal. */
typedef struct ss_engine_thread ss_engine_thread_t;

/* An engine (as ss_engine_new) and its running thread. */
ss_engine_thread_t *ss_engine_thread_new(const ss_engine_options_t *opts, ss_error_info_t *err);
/* Stops and joins the thread, then frees the engine and every probe not
 * yet taken. NULL is a no-op. In a child forked after ss_engine_thread_new
 * it does nothing: the thread is the parent's and its lock may be held. */
void ss_engine_thread_free(ss_engine_thread_t *thread);

/* As ss_engine_add, from the caller's thread (one caller thread at a time
 * for add and take). Add and take fail with SS_ERR_STATE in a forked child. */
int ss_engine_thread_add(ss_engine_thread_t *thread, uint64_t id, ss_conn_t *conn, ss_tls_ctx_t *starttls_tls);

/* Waits up to timeout_ms (-1: no limit) for finished probes, and points
 * *records and *arena at them (arena as for ss_engine_run). Returns how many
 * (0: none came in time, or none is pending), or a negative error that
 * stopped the thread. The batch stays valid until the next take or free. */
int32_t ss_engine_thread_take(ss_engine_thread_t *thread, int32_t timeout_ms, const ss_probe_result_t **records,
                              const unsigned char **arena);

/* Parses one address of len bytes (not NUL-terminated; NUL bytes are data).
 * Fills *out and returns out->error. Never allocates. */
int ss_parse_address(const char *text, size_t len, ss_address_t *out);

/* Parses count addresses stored back to back in buf: address i is the bytes
 * [ends[i-1], ends[i]) with ends[-1] taken as 0. Fills out[0..count) and
 * returns how many of them failed. Never allocates. */
size_t ss_parse_addresses(const char *buf, const uint32_t *ends, size_t count,
                          ss_address_t *out);

/* The canonical lowercase scheme of a transport ("tcp", "tlsv1.2", ...), or
 * NULL for a value outside enum ss_transport. Static storage. */
const char *ss_transport_name(int transport);

/* 1 when the linked OpenSSL can speak what the transport asks for, 0 when it
 * cannot (sslv2/sslv3 on builds without them), -1 for an unknown value. */
int ss_transport_available(int transport);

/* Name ("SS_ERR_ADDR_EMPTY") and message of an error code, or NULL for a
 * code that is not in the table. Static storage. */
const char *ss_error_name(int code);
const char *ss_error_message(int code);

/* A fresh self-signed certificate (EC P-256 key, SHA-256, valid from an hour
 * ago for `days` days) for `name`, with subjectAltName DNS:name plus
 * IP:127.0.0.1 and IP:::1, for `streamsock serve --self-signed` and the demo.
 * Writes NUL-terminated PEM into cert (certificate) and key (PKCS#8 key);
 * returns SS_OK or an error recorded in *err (SS_ERR_NOMEM when a buffer is
 * too small: 4 KiB each is plenty). */
int ss_self_signed_pem(const char *name, int32_t days, char *cert, size_t cert_cap, char *key, size_t key_cap,
                       ss_error_info_t *err);

/* The linked OpenSSL's version text (OpenSSL_version(OPENSSL_VERSION)). */
const char *ss_openssl_version(void);

#endif
