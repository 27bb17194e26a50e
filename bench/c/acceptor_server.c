/*
 * streamsock's acceptor (csrc/acceptor.c) driven from C, for the accept rows
 * of bench_stream.py: what the C core costs per accepted TLS client without
 * any interpreter around it. It listens on 127.0.0.1 (an ephemeral port),
 * prints the port on a line of its own, then loops: ss_acceptor_run hands
 * over the clients whose handshake is done; each gets one read (the bench's
 * clients close right after their handshake) and is closed. SIGTERM stops it.
 *
 *   acceptor_server CERT KEY
 *
 * Build (bench_stream.py does): gcc -std=c11 -O3 -DNDEBUG -D_GNU_SOURCE -Icsrc
 *   acceptor_server.c csrc/\*.c -lssl -lcrypto -lpthread
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "streamsock.h"

#define HANDED_OVER 64

static volatile sig_atomic_t stopping;

static void on_term(int sig)
{
    (void)sig;
    stopping = 1;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: acceptor_server CERT KEY\n");
        return 2;
    }
    ss_error_info_t err;
    ss_tls_options_t t;
    memset(&t, 0, sizeof t);
    t.server = 1;
    t.verify_depth = -1;
    t.security_level = -1;
    t.disable_compression = 1;
    t.min_version = 0x0303; /* TLS 1.2 or newer, as a default Context compiles to */
    t.local_cert = argv[1];
    t.local_pk = argv[2];
    ss_tls_ctx_t *tls = ss_tls_ctx_new(&t, &err);
    if (!tls) {
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    ss_conn_options_t o;
    memset(&o, 0, sizeof o);
    o.transport = SS_TRANSPORT_TLS;
    o.host = "127.0.0.1";
    o.port = 0;
    o.tls = tls;
    o.bind_port = -1;
    o.backlog = 1024;
    o.tcp_nodelay = 1;
    o.ipv6_v6only = -1;
    ss_conn_t *listener = ss_conn_server(&o, &err);
    ss_acceptor_options_t ao = {.handshake_timeout_ms = 60000, .max_handshakes = 0};
    ss_acceptor_t *acceptor = listener ? ss_acceptor_new(listener, &ao, &err) : NULL;
    if (!acceptor) {
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    char name[64];
    int n = ss_conn_name(listener, 0, name, sizeof name);
    if (n <= 0 || !strrchr(name, ':'))
        return 1;
    printf("%s\n", strrchr(name, ':') + 1);
    fflush(stdout);
    signal(SIGTERM, on_term);
    ss_conn_t *ready[HANDED_OVER];
    char buf[4096];
    while (!stopping) {
        int32_t got = ss_acceptor_run(acceptor, 1000, ready, HANDED_OVER);
        for (int32_t i = 0; i < got; i++) {
            ss_conn_read(ready[i], buf, sizeof buf); /* the client's close_notify, usually */
            ss_conn_free(ready[i]);
        }
    }
    ss_acceptor_free(acceptor);
    ss_conn_free(listener);
    ss_tls_ctx_free(tls);
    return 0;
}
