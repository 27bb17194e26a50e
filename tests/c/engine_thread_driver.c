/*
 * Drives ss_engine_thread from C, for test_engine_thread_c.py under
 * ThreadSanitizer: COUNT TLS probes to HOST:PORT (verified against CAFILE
 * with the name "localhost"; CAFILE "-": plain TCP connects), at most
 * CONCURRENCY at once, all added up front. The caller falls behind: after
 * each of its first STALLS batches it waits until the engine can go no
 * further without it (ss__engine_thread_wait_stalled: a batch waits to be
 * taken and the thread's own is full, its runs holding finished probes back,
 * or nothing is left to drive). Waiting for that event rather than for a
 * while makes what the caller then finds certain: with STALLS 2 and enough
 * probes, the next two takes get two full batches, the one published when
 * the first stall ended and the one the engine filled meanwhile. (The batch
 * published right after the caller's first take holds whatever the engine's
 * run had then, often less than a full batch.) Prints "probes P ok K
 * duplicates D after_stall A" (A: what the two takes after the last stall
 * got) and exits 0 when every probe came back once, 1 otherwise.
 *
 *   engine_thread_driver PORT CAFILE COUNT CONCURRENCY STALLS HOST
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/ssl.h>

#include "internal.h" /* ss__engine_thread_wait_stalled: outside the API */

#define STALL_TIMEOUT_MS 120000 /* only a failure waits this long */

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: engine_thread_driver PORT CAFILE COUNT CONCURRENCY STALLS HOST\n");
        return 2;
    }
    int port = atoi(argv[1]), count = atoi(argv[3]), concurrency = atoi(argv[4]), stalls = atoi(argv[5]);
    if (count < 1 || count > 1000000 || concurrency < 1 || stalls < 0) {
        fprintf(stderr, "COUNT must be 1..1000000, CONCURRENCY >= 1 and STALLS >= 0\n");
        return 2;
    }
    ss_error_info_t err;
    ss_tls_options_t tls_options;
    memset(&tls_options, 0, sizeof tls_options);
    tls_options.verify_peer = 1;
    tls_options.verify_depth = -1;
    tls_options.min_version = TLS1_2_VERSION;
    tls_options.security_level = -1;
    tls_options.cafile = argv[2];
    int plain = strcmp(argv[2], "-") == 0;
    ss_tls_ctx_t *tls = plain ? NULL : ss_tls_ctx_new(&tls_options, &err);
    if (!plain && !tls) {
        fprintf(stderr, "TLS context: %s\n", err.message);
        return 1;
    }
    ss_conn_options_t conn_options;
    memset(&conn_options, 0, sizeof conn_options);
    conn_options.transport = plain ? SS_TRANSPORT_TCP : SS_TRANSPORT_TLS;
    conn_options.host = argv[6];
    conn_options.port = port;
    conn_options.tls = tls;
    conn_options.peer_name = "localhost";
    conn_options.verify_peer_name = 1;
    conn_options.sni_enabled = 1;
    conn_options.bind_port = -1;
    conn_options.ipv6_v6only = -1;
    ss_engine_options_t engine_options;
    memset(&engine_options, 0, sizeof engine_options);
    engine_options.concurrency = concurrency;
    engine_options.total_timeout_ms = 30000;
    ss_engine_thread_t *engine = ss_engine_thread_new(&engine_options, &err);
    if (!engine) {
        fprintf(stderr, "engine: %s\n", err.message);
        return 1;
    }
    for (int i = 0; i < count; i++) {
        ss_conn_t *conn = ss_conn_client(&conn_options, &err);
        if (!conn || ss_engine_thread_add(engine, (uint64_t)i, conn, NULL) != SS_OK) {
            fprintf(stderr, "add %d failed\n", i);
            return 1;
        }
    }
    ss_tls_ctx_free(tls); /* the conns hold their own references */
    unsigned char *seen = calloc((unsigned)count, 1);
    int taken = 0, ok = 0, duplicates = 0, batches = 0, after_stall = 0;
    for (int round = 0; taken < count && round < 10000; round++) {
        const ss_probe_result_t *records;
        const unsigned char *arena;
        int32_t n = ss_engine_thread_take(engine, 1000, &records, &arena);
        if (n < 0) {
            fprintf(stderr, "take failed: %d\n", n);
            break;
        }
        for (int32_t i = 0; i < n; i++) {
            uint64_t id = records[i].id;
            if (id >= (uint64_t)count || seen[id]++)
                duplicates++;
            ok += records[i].ok;
        }
        taken += n;
        if (n == 0)
            continue; /* none in time: take again */
        batches++;
        if (batches > stalls && batches <= stalls + 2)
            after_stall += n; /* the two batches that waited */
        if (batches <= stalls && taken < count) {
            int32_t rc = ss__engine_thread_wait_stalled(engine, STALL_TIMEOUT_MS);
            if (rc != 1) {
                fprintf(stderr, "the engine did not stall after batch %d: %d\n", batches, rc);
                break;
            }
        }
    }
    ss_engine_thread_free(engine);
    free(seen);
    printf("probes %d ok %d duplicates %d after_stall %d\n", taken, ok, duplicates, after_stall);
    return taken == count && ok == count && duplicates == 0 ? 0 : 1;
}
