/*
 * Fuzz target for the connection state machine (csrc/conn.c, tls.c, sock.c)
 * fed by a hostile peer. Each input is one conversation over a socketpair:
 *
 *   byte 0     mode: 0 TLS client, 1 STARTTLS client (plaintext line first),
 *              2 TLS server (needs STREAMSOCK_FUZZ_CERT / _KEY), 3 plaintext,
 *              4 the engine's STARTTLS dialogue (csrc/starttls.c), then TLS
 *   byte 1     chunking seed: how the peer's bytes are split into writes;
 *              in mode 4 also the protocol (smtp, imap, pop3, ftp)
 *   rest       what the peer sends, then it half-closes
 *
 * Invariants: every result is a want or a code in the error table; an error
 * sticks (the next step returns the same code) and leaves the state FAILED;
 * messages are NUL-terminated; the loop ends within its step budget. ASan and
 * UBSan catch memory errors. Links with tests/c/fuzz_main.c (gcc) or libFuzzer.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h" /* mode 4 drives starttls.c's dialogue directly */

#define STEP_BUDGET 256

static ss_tls_ctx_t *client_ctx;
static ss_tls_ctx_t *server_ctx;

static void die(const char *what, const uint8_t *data, size_t size)
{
    fprintf(stderr, "fuzz_conn: invariant violated: %s (input %zu bytes:", what, size);
    for (size_t i = 0; i < size && i < 64; i++)
        fprintf(stderr, " %02x", data[i]);
    fprintf(stderr, ")\n");
    __builtin_trap();
}

static void setup(void)
{
    if (client_ctx)
        return;
    ss_tls_options_t o;
    ss_error_info_t err;
    memset(&o, 0, sizeof o);
    o.verify_depth = -1;
    o.security_level = -1;
    o.verify_peer = 0; /* reach the deeper states: the peer is hostile, not trusted */
    client_ctx = ss_tls_ctx_new(&o, &err);
    const char *cert = getenv("STREAMSOCK_FUZZ_CERT");
    const char *key = getenv("STREAMSOCK_FUZZ_KEY");
    if (cert && key) {
        o.server = 1;
        o.local_cert = cert;
        o.local_pk = key;
        server_ctx = ss_tls_ctx_new(&o, &err);
    }
    if (!client_ctx) {
        fprintf(stderr, "fuzz_conn: cannot build the TLS client context: %s\n", err.message);
        exit(2);
    }
}

static int is_known_error(int code)
{
    return ss_error_name(code) != NULL;
}

static void check_result(int64_t rc, ss_conn_t *conn, const uint8_t *data, size_t size)
{
    if (rc >= 0)
        return;
    if (rc == SS_IO_WANT_READ || rc == SS_IO_WANT_WRITE)
        return;
    if (!is_known_error((int)rc))
        die("result outside the error table", data, size);
    ss_error_info_t err;
    if (ss_conn_error(conn, &err) == SS_OK && rc != SS_ERR_STARTTLS_BUFFERED && rc != SS_ERR_TLS_ACTIVE &&
        rc != SS_ERR_STATE)
        die("an error with nothing recorded", data, size);
    if (memchr(err.message, '\0', sizeof err.message) == NULL)
        die("unterminated message", data, size);
}

/* Keeps the socketpair from filling up: reads and drops what the conn sent. */
static void drain(int fd)
{
    char sink[4096];
    while (recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0) {
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    if (size < 2)
        return 0;
    int mode = data[0] % 5;
    unsigned chunk_seed = data[1];
    const uint8_t *peer = data + 2;
    size_t peer_len = size - 2;
    if (mode == 2 && !server_ctx)
        mode = 0;

    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) < 0)
        return 0;
    ss_error_info_t err;
    ss_tls_ctx_t *tls = mode == 0 ? client_ctx : mode == 2 ? server_ctx : NULL;
    ss_conn_t *conn = ss_conn_from_fd(fds[0], SS_TRANSPORT_TCP, tls, "localhost", &err);
    if (!conn) {
        close(fds[0]);
        close(fds[1]);
        return 0;
    }

    size_t sent = 0;
    int peer_closed = 0;
    int starttls_started = 0;
    int last_error = 0;
    char buf[2048];
    struct ss_starttls_dialogue dialogue;
    ss__starttls_init(&dialogue, SS_STARTTLS_SMTP + (int)(chunk_seed % 4));
    unsigned char greeting[256];
    uint32_t greeting_len = 0;
    for (int step = 0; step < STEP_BUDGET; step++) {
        if (sent < peer_len) { /* the peer sends its next piece */
            size_t piece = 1 + (chunk_seed * 31u + (unsigned)step * 17u) % 700u;
            if (piece > peer_len - sent)
                piece = peer_len - sent;
            ssize_t n = send(fds[1], peer + sent, piece, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n > 0)
                sent += (size_t)n;
        } else if (!peer_closed) {
            shutdown(fds[1], SHUT_WR);
            peer_closed = 1;
        }
        drain(fds[1]);

        int64_t rc;
        int state = ss_conn_state(conn);
        if (state == SS_STATE_ESTABLISHED && mode == 4 && !starttls_started) {
            rc = ss__starttls_step(&dialogue, conn, greeting, &greeting_len, sizeof greeting);
            check_result(rc, conn, data, size);
            if (greeting_len > sizeof greeting)
                die("greeting overflow", data, size);
            if (rc == SS_DONE) {
                starttls_started = 1;
                rc = ss_conn_start_tls(conn, client_ctx, "localhost", 1, 1, NULL);
                check_result(rc, conn, data, size);
            }
        } else if (state == SS_STATE_ESTABLISHED && mode == 1 && !starttls_started) {
            rc = ss_conn_read(conn, buf, 64); /* the plaintext "220 ready" line */
            check_result(rc, conn, data, size);
            if (rc > 0 && memchr(buf, '\n', (size_t)rc)) {
                starttls_started = 1;
                rc = ss_conn_start_tls(conn, client_ctx, "localhost", 1, 1, NULL);
                check_result(rc, conn, data, size);
            }
        } else if (state == SS_STATE_ESTABLISHED) {
            rc = ss_conn_read(conn, buf, sizeof buf);
            check_result(rc, conn, data, size);
            if (rc > 0 && (rc & 1))
                check_result(ss_conn_write(conn, buf, (size_t)rc), conn, data, size);
        } else {
            rc = ss_conn_step(conn);
            check_result(rc, conn, data, size);
        }
        if (rc < 0 && rc != SS_IO_WANT_READ && rc != SS_IO_WANT_WRITE) {
            if (ss_conn_state(conn) == SS_STATE_FAILED) {
                last_error = (int)rc;
                break;
            }
            if (rc != SS_ERR_STARTTLS_BUFFERED)
                break;
        }
        if (rc == 0 && peer_closed && ss_conn_state(conn) == SS_STATE_ESTABLISHED)
            break; /* clean end of stream */
    }
    if (last_error) {
        int again = ss_conn_step(conn);
        if (again != last_error)
            die("an error did not stick", data, size);
        if (ss_conn_state(conn) != SS_STATE_FAILED)
            die("failed conn not in FAILED", data, size);
    }
    ss_conn_tls_info(conn, &(ss_tls_info_t){0});
    char name[256];
    ss_conn_name(conn, 1, name, sizeof name);
    ss_conn_free(conn);
    close(fds[1]);
    return 0;
}
