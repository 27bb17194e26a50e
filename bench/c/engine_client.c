/*
 * streamsock's engine driven from C, for bench_probe.py: the same C code
 * probe() runs (ss_engine_thread_t, the engine on a thread of its own), with
 * no Python in the process. Set beside the native engine's figures, it tells
 * what the engine costs from what the interpreter around it costs.
 *
 * Throughput as epoll_tls_client.c: HANDSHAKES full TLS handshakes to
 * 127.0.0.1:PORT, at most CONCURRENCY at once, verifying the chain against
 * CAFILE and the name HOST_NAME with the TLS settings of streamsock's default
 * client Context (CIPHERS for TLS 1.2). Targets are added in slices of 256
 * as results come back, as probe() does. After a warm-up of 100 handshakes,
 * prints one JSON line: handshakes done, failures, wall and CPU seconds.
 *
 *   engine_client PORT CAFILE HOST_NAME CONCURRENCY HANDSHAKES CIPHERS
 *
 * Build (bench_probe.py does): gcc -std=c11 -O3 -DNDEBUG -D_GNU_SOURCE
 * -Icsrc bench/c/engine_client.c and every csrc .c file, -lssl -lcrypto
 * -lpthread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <openssl/ssl.h>

#include "streamsock.h"

#define SLICE 256 /* targets handed over ahead, as probe() keeps the engine's queue */

static double wall_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_seconds(void)
{
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return (double)(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
           (double)(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

/* Runs count probes; returns how many succeeded, or -1 when the engine failed. */
static long run(const ss_conn_options_t *conn_options, int32_t concurrency, long count)
{
    ss_error_info_t err;
    ss_engine_options_t options;
    memset(&options, 0, sizeof options);
    options.concurrency = concurrency;
    options.total_timeout_ms = 30000;
    ss_engine_thread_t *engine = ss_engine_thread_new(&options, &err);
    if (!engine) {
        fprintf(stderr, "engine: %s\n", err.message);
        return -1;
    }
    long added = 0, done = 0, ok = 0;
    while (done < count) {
        while (added < count && added - done < concurrency + SLICE) {
            ss_conn_t *conn = ss_conn_client(conn_options, &err);
            if (!conn || ss_engine_thread_add(engine, (uint64_t)added, conn, NULL) != SS_OK) {
                ss_engine_thread_free(engine);
                return -1;
            }
            added++;
        }
        const ss_probe_result_t *records;
        const unsigned char *arena;
        int32_t n = ss_engine_thread_take(engine, 1000, &records, &arena);
        if (n < 0)
            break;
        for (int32_t i = 0; i < n; i++)
            ok += records[i].ok;
        done += n;
    }
    ss_engine_thread_free(engine);
    return done == count ? ok : -1;
}

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: engine_client PORT CAFILE HOST_NAME CONCURRENCY HANDSHAKES CIPHERS\n");
        return 2;
    }
    long count = atol(argv[5]);
    ss_error_info_t err;
    ss_tls_options_t tls_options; /* what a default client Context compiles to */
    memset(&tls_options, 0, sizeof tls_options);
    tls_options.verify_peer = 1;
    tls_options.verify_depth = -1;
    tls_options.min_version = TLS1_2_VERSION;
    tls_options.security_level = -1;
    tls_options.disable_compression = 1;
    tls_options.cafile = argv[2];
    tls_options.ciphers = argv[6];
    ss_tls_ctx_t *tls = ss_tls_ctx_new(&tls_options, &err);
    if (!tls) {
        fprintf(stderr, "TLS context: %s\n", err.message);
        return 1;
    }
    ss_conn_options_t conn_options;
    memset(&conn_options, 0, sizeof conn_options);
    conn_options.transport = SS_TRANSPORT_TLS;
    conn_options.host = "127.0.0.1";
    conn_options.port = atoi(argv[1]);
    conn_options.tls = tls;
    conn_options.peer_name = argv[3];
    conn_options.verify_peer_name = 1;
    conn_options.sni_enabled = 1;
    conn_options.bind_port = -1;
    conn_options.ipv6_v6only = -1;
    if (run(&conn_options, 10, 100) < 0) /* warm-up, as every contender has */
        return 1;
    double wall = wall_seconds(), cpu = cpu_seconds();
    long ok = run(&conn_options, atoi(argv[4]), count);
    wall = wall_seconds() - wall;
    cpu = cpu_seconds() - cpu;
    ss_tls_ctx_free(tls);
    if (ok < 0)
        return 1;
    printf("{\"handshakes\": %ld, \"failed\": %ld, \"seconds\": %.6f, \"cpu_seconds\": %.6f}\n", ok, count - ok, wall,
           cpu);
    return 0;
}
