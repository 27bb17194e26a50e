/*
 * OpenSSL: contexts built once from PHP's ssl options, and the TLS steps a
 * connection takes (attach, handshake, read, write, close_notify). These
 * functions record errors on the connection but never change its state.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "internal.h"

#define HANDBACK_MAX (1u << 20) /* bytes kept while waiting for the peer's close_notify */

/* Decided when the library is built (house rule 12): the headers of the
 * OpenSSL we link say which protocol versions it was compiled with. */
int ss_transport_available(int transport)
{
    switch (transport) {
    case SS_TRANSPORT_SSLV2:
        return 0; /* removed from OpenSSL in 1.1.0 */
    case SS_TRANSPORT_SSLV3:
#if defined(OPENSSL_NO_SSL3) || defined(OPENSSL_NO_SSL3_METHOD)
        return 0;
#else
        return 1;
#endif
    case SS_TRANSPORT_TLSV1_0:
#ifdef OPENSSL_NO_TLS1
        return 0;
#else
        return 1;
#endif
    case SS_TRANSPORT_TLSV1_1:
#ifdef OPENSSL_NO_TLS1_1
        return 0;
#else
        return 1;
#endif
    case SS_TRANSPORT_TLSV1_3:
#ifdef OPENSSL_NO_TLS1_3
        return 0;
#else
        return 1;
#endif
    case SS_TRANSPORT_TCP:
    case SS_TRANSPORT_UDP:
    case SS_TRANSPORT_SSL:
    case SS_TRANSPORT_TLS:
    case SS_TRANSPORT_TLSV1_2:
    case SS_TRANSPORT_UNIX:
    case SS_TRANSPORT_UDG:
        return 1;
    default:
        return -1;
    }
}

const char *ss_openssl_version(void)
{
    return OpenSSL_version(OPENSSL_VERSION);
}

/* ---- contexts ---------------------------------------------------------- */

/* PHP's allow_self_signed and verify depth live on our context, found
 * through the SSL's context app data (no global ex_data index needed). */
static int verify_callback(int ok, X509_STORE_CTX *store)
{
    SSL *ssl = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx());
    const ss_tls_ctx_t *ctx = ssl ? SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)) : NULL;
    if (!ok && ctx && ctx->allow_self_signed && X509_STORE_CTX_get_error_depth(store) == 0 &&
        X509_STORE_CTX_get_error(store) == X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT)
        return 1;
    return ok;
}

static int passphrase_callback(char *buf, int size, int rwflag, void *userdata)
{
    (void)rwflag;
    const char *passphrase = userdata;
    if (!passphrase)
        return 0;
    size_t n = strlen(passphrase);
    if (n > (size_t)size)
        return 0;
    memcpy(buf, passphrase, n);
    return (int)n;
}

static int alpn_select_callback(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                                const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl;
    const ss_tls_ctx_t *ctx = arg;
    unsigned char *selected = NULL;
    if (SSL_select_next_proto(&selected, outlen, ctx->alpn, (unsigned int)ctx->alpn_len, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = selected;
    return SSL_TLSEXT_ERR_OK;
}

static int name_matches(const char *pattern, const char *name)
{
    if (strcasecmp(pattern, name) == 0)
        return 1;
    if (pattern[0] == '*' && pattern[1] == '.') { /* "*.example.com" covers one label */
        const char *dot = strchr(name, '.');
        return dot && dot != name && strcasecmp(pattern + 1, dot) == 0;
    }
    return 0;
}

static int servername_callback(SSL *ssl, int *alert, void *arg)
{
    (void)alert;
    const ss_tls_ctx_t *ctx = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!name)
        return SSL_TLSEXT_ERR_NOACK;
    for (size_t i = 0; i < ctx->sni_count; i++) {
        if (name_matches(ctx->sni_names[i], name)) {
            SSL_set_SSL_CTX(ssl, ctx->sni_ctxs[i]);
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_OK; /* keep the default certificate */
}

static int config_fail(ss_error_info_t *err, const char *fmt, const char *arg)
{
    char what[400];
    snprintf(what, sizeof what, fmt, arg ? arg : "");
    return ss__fail_tls(err, SS_ERR_TLS_CONFIG, NULL, 0, what);
}

static int load_certificate(SSL_CTX *ssl_ctx, const char *cert, const char *key, const char *passphrase,
                            ss_error_info_t *err)
{
    SSL_CTX_set_default_passwd_cb(ssl_ctx, passphrase_callback);
    SSL_CTX_set_default_passwd_cb_userdata(ssl_ctx, (void *)passphrase);
    int rc = SS_OK;
    if (SSL_CTX_use_certificate_chain_file(ssl_ctx, cert) != 1)
        rc = config_fail(err, "Unable to set local cert chain file `%s'", cert);
    else if (SSL_CTX_use_PrivateKey_file(ssl_ctx, key ? key : cert, SSL_FILETYPE_PEM) != 1)
        rc = config_fail(err, "Unable to set private key file `%s'", key ? key : cert);
    else if (SSL_CTX_check_private_key(ssl_ctx) != 1)
        rc = config_fail(err, "Private key does not match certificate `%s'", cert);
    /* The passphrase is the caller's buffer: never keep a pointer to it. */
    SSL_CTX_set_default_passwd_cb(ssl_ctx, NULL);
    SSL_CTX_set_default_passwd_cb_userdata(ssl_ctx, NULL);
    return rc;
}

/* SSL_free_buffers could use freed memory before 3.0.14, 3.1.6, 3.2.2 and
 * 3.3.1 (CVE-2024-4741). Versions are 0xMNN00PP0. */
static int free_buffers_is_safe(unsigned long version)
{
    unsigned long major = version >> 28, minor = (version >> 20) & 0xff, patch = (version >> 4) & 0xff;
    static const unsigned long fixed_patch[] = {14, 6, 2, 1}; /* for minor 0..3 */
    return major > 3 || (major == 3 && (minor > 3 || patch >= fixed_patch[minor]));
}

/* A connection waiting to read hands OpenSSL's two record buffers (about 33 KB)
 * and its own read buffer back until data comes, so an idle or handshaking
 * connection costs far less; they come back from malloc when the next record
 * arrives. */
static int waiting_to_read(ss_conn_t *conn)
{
    if (conn->tls->free_idle_buffers)
        SSL_free_buffers(conn->ssl); /* refuses, harmlessly, while a record is half read */
    ss__sock_release_rbuf(conn);
    return SS_WANT_READ;
}

/* ---- the socket BIO -------------------------------------------------------
 * OpenSSL reads the socket through the conn's read buffer (sock.c's
 * ss__sock_fill). OpenSSL asks for exactly the record it is reading (no
 * read-ahead), so one recv serves many records, and whatever follows the
 * peer's close_notify stays in the buffer for the plaintext stream after
 * enable_crypto(false).
 *
 * Writes: a handshake flight (several records) is gathered and sent whole
 * when OpenSSL flushes it, one send and one wake-up of the peer instead of
 * one per record; application records go straight out, with MSG_MORE while
 * more records of the same write follow. */

static int socket_bio_read(BIO *bio, char *out, int len)
{
    ss_conn_t *conn = BIO_get_data(bio);
    BIO_clear_retry_flags(bio);
    ssize_t have = ss__sock_fill(conn);
    if (have <= 0) {
        if (have == 0) /* OpenSSL asks BIO_eof whether a 0 means the end */
            BIO_set_flags(bio, BIO_FLAGS_IN_EOF);
        else if (errno == EAGAIN || errno == EWOULDBLOCK)
            BIO_set_retry_read(bio);
        return (int)have;
    }
    size_t n = (size_t)have < (size_t)len ? (size_t)have : (size_t)len;
    memcpy(out, conn->rbuf + conn->rbuf_off, n);
    conn->rbuf_off += n;
    return (int)n;
}

static int gather(ss_conn_t *conn, const char *in, size_t len)
{
    if (conn->wbuf_len + len > conn->wbuf_cap) {
        size_t cap = conn->wbuf_cap ? conn->wbuf_cap : 8192;
        while (cap < conn->wbuf_len + len)
            cap *= 2;
        char *grown = realloc(conn->wbuf, cap);
        if (!grown) {
            errno = ENOMEM;
            return -1;
        }
        conn->wbuf = grown;
        conn->wbuf_cap = cap;
    }
    memcpy(conn->wbuf + conn->wbuf_len, in, len);
    conn->wbuf_len += len;
    return (int)len;
}

static int socket_bio_write(BIO *bio, const char *in, int len)
{
    ss_conn_t *conn = BIO_get_data(bio);
    BIO_clear_retry_flags(bio);
    if (SSL_in_init(conn->ssl))
        return gather(conn, in, (size_t)len);
    if (conn->wbuf_len) { /* a flight's tail goes first */
        int rc = ss__sock_flush(conn);
        if (rc <= 0) {
            if (rc == 0)
                BIO_set_retry_write(bio);
            return -1;
        }
    }
    ssize_t n;
    do
        n = send(conn->fd, in, (size_t)len, MSG_NOSIGNAL | (conn->send_more ? MSG_MORE : 0));
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        BIO_set_retry_write(bio);
    return (int)n;
}

static long socket_bio_ctrl(BIO *bio, int cmd, long num, void *ptr)
{
    (void)num;
    (void)ptr;
    switch (cmd) {
    case BIO_CTRL_FLUSH: {
        int rc = ss__sock_flush(BIO_get_data(bio));
        if (rc == 0)
            BIO_set_retry_write(bio);
        return rc > 0;
    }
    case BIO_CTRL_EOF:
        return BIO_test_flags(bio, BIO_FLAGS_IN_EOF) != 0;
    case BIO_C_GET_FD: {
        const ss_conn_t *conn = BIO_get_data(bio);
        return conn->fd;
    }
    default:
        return 0;
    }
}

/* Per context, not per process: the library keeps no global state. The
 * type is fixed rather than from BIO_get_new_index, whose 8-bit supply a
 * long-running process that compiles many contexts would use up. */
static BIO_METHOD *new_socket_bio_method(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR | 0x7d, "streamsock socket");
    if (m && BIO_meth_set_write(m, socket_bio_write) && BIO_meth_set_read(m, socket_bio_read) &&
        BIO_meth_set_ctrl(m, socket_bio_ctrl))
        return m;
    BIO_meth_free(m);
    return NULL;
}

/* Settings shared by the main context and the per-SNI-name ones. */
/* dh_param: the DH group for the (TLS 1.2) DHE suites, as PHP reads it. */
static int load_dh_param(SSL_CTX *c, const char *path, ss_error_info_t *err)
{
    BIO *bio = BIO_new_file(path, "r");
    if (!bio)
        return config_fail(err, "Invalid dh_param `%s'", path);
    EVP_PKEY *params = PEM_read_bio_Parameters(bio, NULL);
    BIO_free(bio);
    if (!params)
        return config_fail(err, "Failed reading DH params from `%s'", path);
    if (EVP_PKEY_base_id(params) != EVP_PKEY_DH || SSL_CTX_set0_tmp_dh_pkey(c, params) != 1) {
        EVP_PKEY_free(params);
        return config_fail(err, "Failed assigning DH params from `%s'", path);
    }
    return SS_OK; /* the context owns params now */
}

static SSL_CTX *new_ssl_ctx(ss_tls_ctx_t *ctx, const ss_tls_options_t *o, ss_error_info_t *err)
{
    SSL_CTX *c = SSL_CTX_new(o->server ? TLS_server_method() : TLS_client_method());
    if (!c) {
        ss__fail_tls(err, SS_ERR_NOMEM, NULL, 0, "SSL_CTX_new failed");
        return NULL;
    }
    SSL_CTX_set_app_data(c, ctx);
    SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    ctx->free_idle_buffers = free_buffers_is_safe(OpenSSL_version_num());
    if (!ctx->free_idle_buffers)
        SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS); /* part of the saving, on every version */
    /* A peer that closes without close_notify reads as end of stream, as in PHP. */
    long options = SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION;
    if (o->disable_compression)
        options |= SSL_OP_NO_COMPRESSION;
    if (o->no_ticket)
        options |= SSL_OP_NO_TICKET;
    if (o->honor_cipher_order)
        options |= SSL_OP_CIPHER_SERVER_PREFERENCE;
    SSL_CTX_set_options(c, (uint64_t)options);
    if (o->security_level >= 0)
        SSL_CTX_set_security_level(c, o->security_level);
    if ((o->min_version && SSL_CTX_set_min_proto_version(c, o->min_version) != 1) ||
        (o->max_version && SSL_CTX_set_max_proto_version(c, o->max_version) != 1)) {
        config_fail(err, "%sunsupported protocol version range", "");
        SSL_CTX_free(c);
        return NULL;
    }
    if (o->ciphers && SSL_CTX_set_cipher_list(c, o->ciphers) != 1) {
        config_fail(err, "Failed setting cipher list `%s'", o->ciphers);
        SSL_CTX_free(c);
        return NULL;
    }
    if (o->groups && SSL_CTX_set1_groups_list(c, o->groups) != 1) {
        config_fail(err, "Invalid ecdh_curve `%s'", o->groups);
        SSL_CTX_free(c);
        return NULL;
    }
    if (o->server && o->dh_param && load_dh_param(c, o->dh_param, err) != SS_OK) {
        SSL_CTX_free(c);
        return NULL;
    }
    if (o->verify_depth >= 0)
        SSL_CTX_set_verify_depth(c, o->verify_depth);
    int mode = SSL_VERIFY_NONE;
    if (o->verify_peer)
        mode = o->server ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_PEER;
    SSL_CTX_set_verify(c, mode, o->verify_peer ? verify_callback : NULL);
    if (o->server) {
        static const unsigned char sid_ctx[] = "streamsock";
        SSL_CTX_set_session_id_context(c, sid_ctx, sizeof sid_ctx - 1);
        if (ctx->alpn_len)
            SSL_CTX_set_alpn_select_cb(c, alpn_select_callback, ctx);
    } else if (o->alpn_len && SSL_CTX_set_alpn_protos(c, o->alpn, o->alpn_len) != 0) {
        config_fail(err, "%sinvalid alpn_protocols", "");
        SSL_CTX_free(c);
        return NULL;
    }
    return c;
}

static int load_trust(SSL_CTX *c, const ss_tls_options_t *o, ss_error_info_t *err)
{
    if (o->cafile || o->capath) {
        if (SSL_CTX_load_verify_locations(c, o->cafile, o->capath) != 1)
            return config_fail(err, "Unable to set verify locations `%s'", o->cafile ? o->cafile : o->capath);
        if (o->server && o->cafile) {
            STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(o->cafile);
            if (names)
                SSL_CTX_set_client_CA_list(c, names);
        }
    } else if (SSL_CTX_set_default_verify_paths(c) != 1) {
        return config_fail(err, "%sUnable to load the system trust store", "");
    }
    return SS_OK;
}

ss_tls_ctx_t *ss_tls_ctx_new(const ss_tls_options_t *o, ss_error_info_t *err)
{
    ss__fail(err, SS_OK, 0, "%s", "");
    ss_tls_ctx_t *ctx = calloc(1, sizeof *ctx);
    if (!ctx) {
        ss__fail(err, SS_ERR_NOMEM, ENOMEM, "out of memory");
        return NULL;
    }
    atomic_init(&ctx->refs, 1);
    ctx->server = o->server != 0;
    ctx->verify_peer = o->verify_peer != 0;
    ctx->allow_self_signed = o->allow_self_signed != 0;
    ctx->verify_depth = o->verify_depth;
    ERR_clear_error();
    if (!(ctx->socket_bio = new_socket_bio_method()))
        goto nomem;
    if (o->server && o->alpn_len) {
        ctx->alpn = malloc(o->alpn_len);
        if (!ctx->alpn)
            goto nomem;
        memcpy(ctx->alpn, o->alpn, o->alpn_len);
        ctx->alpn_len = o->alpn_len;
    }
    ctx->ssl_ctx = new_ssl_ctx(ctx, o, err);
    if (!ctx->ssl_ctx)
        goto fail;
    if ((o->verify_peer || !o->server) && load_trust(ctx->ssl_ctx, o, err) != SS_OK)
        goto fail;
    if (o->local_cert && load_certificate(ctx->ssl_ctx, o->local_cert, o->local_pk, o->passphrase, err) != SS_OK)
        goto fail;
    if (o->server && o->sni_count) {
        ctx->sni_names = calloc(o->sni_count, sizeof *ctx->sni_names);
        ctx->sni_ctxs = calloc(o->sni_count, sizeof *ctx->sni_ctxs);
        if (!ctx->sni_names || !ctx->sni_ctxs)
            goto nomem;
        for (uint32_t i = 0; i < o->sni_count; i++) {
            ctx->sni_count = i + 1; /* free what exists on failure */
            ctx->sni_names[i] = strdup(o->sni_names[i]);
            if (!ctx->sni_names[i])
                goto nomem;
            ctx->sni_ctxs[i] = new_ssl_ctx(ctx, o, err);
            if (!ctx->sni_ctxs[i])
                goto fail;
            if (o->verify_peer && load_trust(ctx->sni_ctxs[i], o, err) != SS_OK)
                goto fail;
            if (load_certificate(ctx->sni_ctxs[i], o->sni_certs[i], o->sni_keys[i], o->passphrase, err) != SS_OK)
                goto fail;
        }
        SSL_CTX_set_tlsext_servername_callback(ctx->ssl_ctx, servername_callback);
        SSL_CTX_set_tlsext_servername_arg(ctx->ssl_ctx, ctx);
    }
    if (o->server && !o->local_cert && !o->sni_count) {
        config_fail(err, "%sa TLS server needs local_cert (or SNI_server_certs)", "");
        goto fail;
    }
    return ctx;
nomem:
    ss__fail(err, SS_ERR_NOMEM, ENOMEM, "out of memory");
fail:
    ss_tls_ctx_free(ctx);
    return NULL;
}

ss_tls_ctx_t *ss__tls_ctx_ref(ss_tls_ctx_t *ctx)
{
    atomic_fetch_add(&ctx->refs, 1);
    return ctx;
}

void ss_tls_ctx_free(ss_tls_ctx_t *ctx)
{
    if (!ctx || atomic_fetch_sub(&ctx->refs, 1) != 1)
        return;
    for (size_t i = 0; i < ctx->sni_count; i++) {
        free(ctx->sni_names[i]);
        SSL_CTX_free(ctx->sni_ctxs[i]);
    }
    free(ctx->sni_names);
    free(ctx->sni_ctxs);
    free(ctx->alpn);
    SSL_CTX_free(ctx->ssl_ctx);
    BIO_meth_free(ctx->socket_bio);
    free(ctx);
}

/* ---- per connection ------------------------------------------------------ */

/* An IP literal (zone stripped into buf) gets an IP check and no SNI (RFC 6066). */
static int ip_literal(const char *name, char *buf, size_t cap)
{
    size_t n = strcspn(name, "%");
    if (n >= cap)
        return 0;
    memcpy(buf, name, n);
    buf[n] = '\0';
    unsigned char addr[16];
    return inet_pton(AF_INET, buf, addr) == 1 || inet_pton(AF_INET6, buf, addr) == 1;
}

static const char *expected_name(const ss_conn_t *conn)
{
    return conn->peer_name ? conn->peer_name : conn->host;
}

/* Keeps a copy of the first ServerHello the client receives: JA3S and JA4S
 * read its version, cipher and extensions in the order the server sent them. */
static void keep_server_hello(int write_p, int version, int content_type, const void *buf, size_t len, SSL *ssl,
                              void *arg)
{
    (void)version;
    (void)ssl;
    ss_conn_t *conn = arg;
    const unsigned char *message = buf;
    if (write_p || content_type != SSL3_RT_HANDSHAKE || len < 4 || message[0] != SSL3_MT_SERVER_HELLO ||
        conn->server_hello || len - 4 > SS_SERVER_HELLO_MAX)
        return;
    conn->server_hello = malloc(len - 4);
    if (!conn->server_hello)
        return; /* a fingerprint is not worth failing the handshake for */
    memcpy(conn->server_hello, message + 4, len - 4);
    conn->server_hello_len = len - 4;
}

int ss__tls_attach(ss_conn_t *conn, ss_tls_ctx_t *ctx)
{
    ERR_clear_error();
    SSL *ssl = SSL_new(ctx->ssl_ctx);
    if (!ssl)
        return ss__fail_tls(&conn->err, SS_ERR_NOMEM, NULL, 0, "SSL_new failed");
    BIO *bio = BIO_new(ctx->socket_bio);
    if (!bio) {
        SSL_free(ssl);
        return ss__fail_tls(&conn->err, SS_ERR_NOMEM, NULL, 0, "BIO_new failed");
    }
    BIO_set_data(bio, conn);
    BIO_set_init(bio, 1);
    SSL_set_bio(ssl, bio, bio); /* one reference, taken over by ssl */
    if (ctx->server) {
        SSL_set_accept_state(ssl);
    } else {
        SSL_set_connect_state(ssl);
        const char *name = expected_name(conn);
        char ip[INET6_ADDRSTRLEN + 1];
        if (name && name[0]) {
            int is_ip = ip_literal(name, ip, sizeof ip);
            int ok = 1;
            if (conn->sni_enabled && !is_ip)
                ok = SSL_set_tlsext_host_name(ssl, name) == 1;
            if (ok && conn->verify_peer_name && ctx->verify_peer) {
                SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
                ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), ip) == 1
                           : SSL_set1_host(ssl, name) == 1;
            }
            if (!ok) {
                SSL_free(ssl);
                return ss__fail_tls(&conn->err, SS_ERR_TLS_CONFIG, NULL, 0, "invalid peer name");
            }
        }
    }
    if (conn->capture_hello && !ctx->server) {
        SSL_set_msg_callback(ssl, keep_server_hello);
        SSL_set_msg_callback_arg(ssl, conn);
    }
    if (conn->offer_session && !ctx->server) {
        SSL_set_session(ssl, conn->offer_session);
        SSL_SESSION_free(conn->offer_session); /* the SSL holds its own reference now */
        conn->offer_session = NULL;
    }
    conn->ssl = ssl;
    conn->tls = ss__tls_ctx_ref(ctx);
    conn->shutdown_sent = 0;
    return SS_OK;
}

void ss__tls_detach(ss_conn_t *conn)
{
    SSL_free(conn->ssl);
    conn->ssl = NULL;
    ss_tls_ctx_free(conn->tls);
    conn->tls = NULL;
    conn->shutdown_sent = 0;
}

void ss__tls_notify_close(ss_conn_t *conn)
{
    if (conn->shutdown_sent)
        return; /* out already: another SSL_shutdown would read for the peer's */
    ERR_clear_error();
    SSL_shutdown(conn->ssl);
    ERR_clear_error();
}

int ss__tls_close_write(ss_conn_t *conn)
{
    if (conn->shutdown_sent)
        return SS_DONE;
    ERR_clear_error();
    int rc = SSL_shutdown(conn->ssl); /* the first call only sends: 0, or 1 when the peer's came first */
    if (rc < 0) {
        int e = SSL_get_error(conn->ssl, rc);
        if (e == SSL_ERROR_WANT_WRITE)
            return SS_WANT_WRITE; /* the alert waits in OpenSSL; the next call sends it */
        return ss__fail_tls(&conn->err, SS_ERR_TLS, conn->ssl, rc, "TLS shutdown failed");
    }
    conn->shutdown_sent = 1;
    return SS_DONE;
}

void ss__tls_silence(ss_conn_t *conn)
{
    SSL_set_quiet_shutdown(conn->ssl, 1);
    BIO *null = BIO_new(BIO_s_null());
    if (null)
        SSL_set_bio(conn->ssl, null, null);
}

void ss__tls_resume(ss_conn_t *conn, const ss_conn_t *from)
{
    SSL_SESSION *session = SSL_get_session(from->ssl);
    if (session && SSL_SESSION_is_resumable(session))
        SSL_set_session(conn->ssl, session);
}

/* verify_peer off but verify_peer_name on: PHP still checks the name. */
static int check_name_without_chain(ss_conn_t *conn)
{
    if (conn->tls->server || conn->tls->verify_peer || !conn->verify_peer_name)
        return SS_OK;
    const char *name = expected_name(conn);
    X509 *cert = SSL_get0_peer_certificate(conn->ssl);
    if (!name || !cert)
        return SS_OK;
    char ip[INET6_ADDRSTRLEN + 1];
    int match = ip_literal(name, ip, sizeof ip) ? X509_check_ip_asc(cert, ip, 0)
                                                : X509_check_host(cert, name, 0, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS, NULL);
    if (match == 1)
        return SS_OK;
    return ss__fail(&conn->err, SS_ERR_TLS_PEER_NAME, 0, "Peer certificate CN or subjectAltName did not match expected \"%s\"",
                    name);
}

int ss__tls_handshake(ss_conn_t *conn)
{
    ERR_clear_error();
    int rc = SSL_do_handshake(conn->ssl);
    if (rc == 1)
        return check_name_without_chain(conn);
    int e = SSL_get_error(conn->ssl, rc);
    if (e == SSL_ERROR_WANT_READ)
        return waiting_to_read(conn);
    if (e == SSL_ERROR_WANT_WRITE)
        return SS_WANT_WRITE;
    int code = ss__fail_tls(&conn->err, SS_ERR_TLS, conn->ssl, rc, "TLS handshake failed");
    long verify = conn->err.verify_result;
    if (verify == X509_V_ERR_HOSTNAME_MISMATCH || verify == X509_V_ERR_IP_ADDRESS_MISMATCH) {
        size_t used = strlen(conn->err.message);
        snprintf(conn->err.message + used, sizeof conn->err.message - used, " (expected \"%s\")", expected_name(conn));
    }
    return code;
}

static int keep_handback(ss_conn_t *conn, const char *buf, size_t n)
{
    if (conn->handback_len + n > HANDBACK_MAX)
        return ss__fail(&conn->err, SS_ERR_TLS, 0, "more than %u bytes arrived before the peer's close_notify",
                        HANDBACK_MAX);
    char *grown = realloc(conn->handback, conn->handback_len + n);
    if (!grown)
        return ss__fail(&conn->err, SS_ERR_NOMEM, ENOMEM, "out of memory");
    memcpy(grown + conn->handback_len, buf, n);
    conn->handback = grown;
    conn->handback_len += n;
    return SS_OK;
}

int ss__tls_shutdown(ss_conn_t *conn)
{
    if (!conn->shutdown_sent) {
        int rc = ss__tls_close_write(conn);
        if (rc != SS_DONE)
            return rc;
        if (SSL_get_shutdown(conn->ssl) & SSL_RECEIVED_SHUTDOWN)
            return SS_DONE;
    }
    /* Our close_notify is out; read until the peer's, keeping its data. */
    char buf[16384];
    for (;;) {
        ERR_clear_error();
        int n = SSL_read(conn->ssl, buf, sizeof buf);
        if (n > 0) {
            int rc = keep_handback(conn, buf, (size_t)n);
            if (rc != SS_OK)
                return rc;
            continue;
        }
        int e = SSL_get_error(conn->ssl, n);
        if (e == SSL_ERROR_ZERO_RETURN)
            return SS_DONE;
        if (e == SSL_ERROR_WANT_READ)
            return SS_WANT_READ;
        if (e == SSL_ERROR_WANT_WRITE)
            return SS_WANT_WRITE;
        return ss__fail_tls(&conn->err, SS_ERR_TLS, conn->ssl, n, "TLS shutdown failed");
    }
}

/* A failure after some bytes went through: the bytes are returned now, the
 * failure by the next call (recorded now, while OpenSSL still has its reason). */
static int64_t defer_failure(ss_conn_t *conn, int ret, const char *what, size_t done)
{
    conn->deferred_error = ss__fail_tls(&conn->err, SS_ERR_TLS, conn->ssl, ret, what);
    return (int64_t)done;
}

int64_t ss__tls_read(ss_conn_t *conn, char *buf, size_t len)
{
    size_t got = 0;
    ERR_clear_error(); /* once: a call that succeeds leaves the queue empty */
    while (got < len) {
        size_t n = 0;
        if (SSL_read_ex(conn->ssl, buf + got, len - got, &n)) {
            got += n;
            /* The record is used up, nothing waits in our buffer and no recv
             * is allowed: another SSL_read would only say WANT_READ. */
            if (!SSL_pending(conn->ssl) && conn->rbuf_off == conn->rbuf_len && !conn->recv_budget) {
                waiting_to_read(conn);
                return (int64_t)got;
            }
            continue;
        }
        switch (SSL_get_error(conn->ssl, 0)) {
        case SSL_ERROR_ZERO_RETURN: /* repeats on the next call */
            return (int64_t)got;
        case SSL_ERROR_WANT_READ:
            if (got)
                return (int64_t)got;
            waiting_to_read(conn);
            return SS_IO_WANT_READ;
        case SSL_ERROR_WANT_WRITE:
            return got ? (int64_t)got : SS_IO_WANT_WRITE;
        default:
            if (got)
                return defer_failure(conn, 0, "TLS read failed", got);
            return ss__fail_tls(&conn->err, SS_ERR_TLS, conn->ssl, 0, "TLS read failed");
        }
    }
    return (int64_t)got;
}

int64_t ss__tls_write(ss_conn_t *conn, const char *buf, size_t len)
{
    size_t done = 0;
    ERR_clear_error();
    while (done < len) {
        size_t n = 0;
        /* With partial writes each call writes one record: tell the BIO whether another follows. */
        conn->send_more = len - done > SSL3_RT_MAX_PLAIN_LENGTH;
        int ok = SSL_write_ex(conn->ssl, buf + done, len - done, &n);
        conn->send_more = 0;
        if (ok) {
            done += n;
            continue;
        }
        switch (SSL_get_error(conn->ssl, 0)) {
        case SSL_ERROR_WANT_READ:
            return done ? (int64_t)done : SS_IO_WANT_READ;
        case SSL_ERROR_WANT_WRITE:
            return done ? (int64_t)done : SS_IO_WANT_WRITE;
        default:
            if (done)
                return defer_failure(conn, 0, "TLS write failed", done);
            return ss__fail_tls(&conn->err, SS_ERR_TLS, conn->ssl, 0, "TLS write failed");
        }
    }
    return (int64_t)done;
}

static void copy_text(char *out, size_t cap, const char *text)
{
    snprintf(out, cap, "%s", text ? text : "");
}

int ss_conn_tls_info(const ss_conn_t *conn, ss_tls_info_t *out)
{
    memset(out, 0, sizeof *out);
    SSL *ssl = conn->ssl;
    /* Until the handshake is done some of these read state OpenSSL has not
     * set up yet (SSL_get_negotiated_group crashes on a half-read
     * ClientHello), and none of it is settled. */
    if (!ssl || !SSL_is_init_finished(ssl))
        return SS_OK;
    copy_text(out->protocol, sizeof out->protocol, SSL_get_version(ssl));
    const SSL_CIPHER *cipher = SSL_get_current_cipher(ssl);
    if (cipher) {
        copy_text(out->cipher_name, sizeof out->cipher_name, SSL_CIPHER_get_name(cipher));
        out->cipher_bits = SSL_CIPHER_get_bits(cipher, NULL);
        copy_text(out->cipher_version, sizeof out->cipher_version, SSL_CIPHER_get_version(cipher));
    }
    const unsigned char *alpn = NULL;
    unsigned int alpn_len = 0;
    SSL_get0_alpn_selected(ssl, &alpn, &alpn_len);
    if (alpn_len && alpn_len < sizeof out->alpn) {
        memcpy(out->alpn, alpn, alpn_len);
        out->alpn[alpn_len] = '\0';
    }
    int group = SSL_get_negotiated_group(ssl);
    if (group > 0)
        copy_text(out->group, sizeof out->group, SSL_group_to_name(ssl, group));
    copy_text(out->server_name, sizeof out->server_name, SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name));
    out->session_reused = SSL_session_reused(ssl);
    return SS_OK;
}

X509 *ss__tls_peer_cert(const ss_conn_t *conn, int32_t index)
{
    if (!conn->ssl || index < 0)
        return NULL;
    /* The client side's chain starts with the leaf; the server side's does not.
     * After a failed verification only the chain holds the leaf. */
    STACK_OF(X509) *chain = SSL_get_peer_cert_chain(conn->ssl);
    if (index == 0) {
        X509 *leaf = SSL_get0_peer_certificate(conn->ssl);
        if (leaf || conn->accepted)
            return leaf;
    }
    int at = conn->accepted ? index - 1 : index;
    return chain && at < sk_X509_num(chain) ? sk_X509_value(chain, at) : NULL;
}

int64_t ss_conn_peer_cert(const ss_conn_t *conn, int32_t index, unsigned char *out, size_t cap)
{
    X509 *cert = ss__tls_peer_cert(conn, index);
    if (!cert)
        return 0;
    int len = i2d_X509(cert, NULL);
    if (len <= 0)
        return SS_ERR_TLS;
    if ((size_t)len <= cap) {
        unsigned char *p = out;
        i2d_X509(cert, &p);
    }
    return len;
}

void ss_conn_trust(const ss_conn_t *conn, ss_trust_t *out)
{
    out->verify_result = -1;
    out->name_matched = -1;
    X509 *leaf = conn->accepted ? NULL : ss__tls_peer_cert(conn, 0);
    if (!leaf)
        return;
    /* OpenSSL verifies the chain under SSL_VERIFY_NONE too, and keeps the result. */
    out->verify_result = (int32_t)SSL_get_verify_result(conn->ssl);
    const char *name = expected_name(conn);
    char ip[INET6_ADDRSTRLEN + 1];
    if (!name || !name[0])
        return;
    int match = ip_literal(name, ip, sizeof ip) ? X509_check_ip_asc(leaf, ip, 0)
                                                : X509_check_host(leaf, name, 0, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS, NULL);
    out->name_matched = match == 1;
    ERR_clear_error();
}

const char *ss_verify_reason(int32_t verify_result)
{
    return X509_verify_cert_error_string(verify_result);
}

/* ---- self-signed certificates -------------------------------------------- */

static int pem_to_buffer(BIO *bio, char *out, size_t cap, ss_error_info_t *err)
{
    char *data = NULL;
    long len = BIO_get_mem_data(bio, &data);
    if (len < 0 || (size_t)len >= cap)
        return ss__fail(err, SS_ERR_NOMEM, ENOMEM, "PEM buffer too small (%ld bytes needed)", len + 1);
    memcpy(out, data, (size_t)len);
    out[len] = '\0';
    return SS_OK;
}

int ss_self_signed_pem(const char *name, int32_t days, char *cert_out, size_t cert_cap, char *key_out,
                       size_t key_cap, ss_error_info_t *err)
{
    ss__fail(err, SS_OK, 0, "%s", "");
    ERR_clear_error();
    int rc = SS_ERR_TLS;
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *cert = X509_new();
    BIO *cert_bio = BIO_new(BIO_s_mem());
    BIO *key_bio = BIO_new(BIO_s_mem());
    char san[320];
    if (!key || !cert || !cert_bio || !key_bio || !name || strlen(name) > 255)
        goto fail;
    snprintf(san, sizeof san, "DNS:%s,IP:127.0.0.1,IP:::1", name);
    X509V3_CTX v3;
    X509_EXTENSION *ext = NULL;
    unsigned char serial[16];
    BIGNUM *bn = NULL;
    if (!X509_set_version(cert, 2) || RAND_bytes(serial, sizeof serial) != 1 ||
        !(bn = BN_bin2bn(serial, sizeof serial, NULL)) || !BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert))) {
        BN_free(bn);
        goto fail;
    }
    BN_free(bn);
    X509_NAME *subject = X509_get_subject_name(cert);
    if (!X509_gmtime_adj(X509_getm_notBefore(cert), -3600) ||
        !X509_gmtime_adj(X509_getm_notAfter(cert), (long)(days > 0 ? days : 1) * 86400) ||
        !X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_UTF8, (const unsigned char *)name, -1, -1, 0) ||
        !X509_set_issuer_name(cert, subject) || !X509_set_pubkey(cert, key))
        goto fail;
    X509V3_set_ctx(&v3, cert, cert, NULL, NULL, 0);
    if (!(ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san)) || !X509_add_ext(cert, ext, -1)) {
        X509_EXTENSION_free(ext);
        goto fail;
    }
    X509_EXTENSION_free(ext);
    if (!(ext = X509V3_EXT_conf_nid(NULL, &v3, NID_basic_constraints, "critical,CA:FALSE")) ||
        !X509_add_ext(cert, ext, -1)) {
        X509_EXTENSION_free(ext);
        goto fail;
    }
    X509_EXTENSION_free(ext);
    if (!X509_sign(cert, key, EVP_sha256()) || !PEM_write_bio_X509(cert_bio, cert) ||
        !PEM_write_bio_PrivateKey(key_bio, key, NULL, NULL, 0, NULL, NULL))
        goto fail;
    rc = pem_to_buffer(cert_bio, cert_out, cert_cap, err);
    if (rc == SS_OK)
        rc = pem_to_buffer(key_bio, key_out, key_cap, err);
    goto done;
fail:
    ss__fail_tls(err, SS_ERR_TLS, NULL, 0, "could not make a self-signed certificate");
done:
    BIO_free(cert_bio);
    BIO_free(key_bio);
    X509_free(cert);
    EVP_PKEY_free(key);
    return rc == SS_OK ? SS_OK : err->code;
}
