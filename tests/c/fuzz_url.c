/*
 * Fuzz target for the address parser (csrc/url.c).
 *
 * Built two ways, unchanged:
 *   gcc:   with tests/c/fuzz_main.c (a small mutation driver), under ASan+UBSan;
 *          tests/test_url_c.py does this.
 *   clang: clang -fsanitize=fuzzer,address,undefined -Icsrc tests/c/fuzz_url.c
 *          csrc/url.c csrc/error.c   (libFuzzer supplies main).
 *
 * Every input is copied into a heap block of exactly its size, so ASan reports
 * any read past the end. A broken invariant prints what broke, the result
 * struct and the input in hex to stderr, then traps: the process dies with
 * SIGILL, which both drivers treat as a crash. Test code only.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "streamsock.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_PIECES 4

/* What is being checked, for the failure report. */
struct check_ctx {
    const uint8_t *whole; /* the fuzz input */
    size_t whole_size;
    const uint8_t *s; /* the address under test (the input or one piece) */
    size_t n;
    size_t piece_off; /* where s starts inside whole */
    int piece;        /* -1: the whole input; else the piece index */
    int pieces;
    const ss_address_t *a; /* the result being checked, may be NULL */
    const ss_address_t *b; /* a second result it was compared with, may be NULL */
};

static void print_hex(const char *label, const uint8_t *p, size_t n)
{
    fprintf(stderr, "%s (%zu bytes): ", label, n);
    for (size_t i = 0; i < n; i++)
        fprintf(stderr, "%02x", p[i]);
    fputc('\n', stderr);
}

static void print_address(const char *label, const ss_address_t *a)
{
    const char *name = ss_error_name(a->error);
    fprintf(stderr,
            "%s: error=%d (%s) transport=%d port=%d flags=%u host_off=%u host_len=%u "
            "err_off=%u err_len=%u\n",
            label, (int)a->error, name ? name : "?", (int)a->transport, (int)a->port,
            (unsigned)a->flags, (unsigned)a->host_off, (unsigned)a->host_len,
            (unsigned)a->err_off, (unsigned)a->err_len);
}

static _Noreturn void violated(const struct check_ctx *ctx, int line, const char *what)
{
    fprintf(stderr, "\nfuzz_url: INVARIANT VIOLATED (fuzz_url.c:%d): %s\n", line, what);
    if (ctx->piece >= 0)
        fprintf(stderr, "fuzz_url: in piece %d of %d, bytes [%zu, %zu) of the input\n",
                ctx->piece, ctx->pieces, ctx->piece_off, ctx->piece_off + ctx->n);
    if (ctx->a)
        print_address("fuzz_url: result", ctx->a);
    if (ctx->b)
        print_address("fuzz_url: compared with", ctx->b);
    if (ctx->piece >= 0)
        print_hex("fuzz_url: piece", ctx->s, ctx->n);
    print_hex("fuzz_url: input", ctx->whole, ctx->whole_size);
    fflush(stderr);
    __builtin_trap();
}

#define CHECK(ctx, cond)                                                                  \
    do {                                                                                  \
        if (!(cond))                                                                      \
            violated((ctx), __LINE__, #cond);                                             \
    } while (0)

static int is_bad_host_byte(uint8_t c)
{
    return c <= 0x20 || c == 0x7f || c == '/' || c == '?' || c == '#' || c == '@' || c == '[' ||
           c == ']' || c == '\\';
}

/* The invariants of one ss_parse_address(s, n) call that returned ret. */
static void check_address(const struct check_ctx *ctx, int ret)
{
    const uint8_t *s = ctx->s;
    const size_t n = ctx->n;
    const ss_address_t *a = ctx->a;

    CHECK(ctx, ret == a->error);
    CHECK(ctx, a->error == SS_OK ||
                   (a->error >= SS_ERR_ADDR_PORT_UNEXPECTED && a->error <= SS_ERR_ADDR_EMPTY));
    CHECK(ctx, ss_error_name(a->error) != NULL);
    CHECK(ctx, ss_error_message(a->error) != NULL);
    /* -117..-119 belong to the layers above the parser. */
    CHECK(ctx, a->error != SS_ERR_ADDR_PORT_MISSING && a->error != SS_ERR_ADDR_PORT_TWICE &&
                   a->error != SS_ERR_ADDR_PORT_UNEXPECTED);
    CHECK(ctx, (n == 0) == (a->error == SS_ERR_ADDR_EMPTY));

    if (a->error != SS_OK) {
        CHECK(ctx, (uint64_t)a->err_off + a->err_len <= n);
        return;
    }

    CHECK(ctx, a->transport >= SS_TRANSPORT_TCP && a->transport <= SS_TRANSPORT_UDG);
    CHECK(ctx, ss_transport_name(a->transport) != NULL);
    CHECK(ctx, (uint64_t)a->host_off + a->host_len <= n);
    CHECK(ctx, a->port == -1 || (a->port >= 0 && a->port <= 65535));
    CHECK(ctx, (a->flags & ~(uint32_t)(SS_ADDR_IPV6 | SS_ADDR_ABSTRACT)) == 0);

    const uint8_t *host = s + a->host_off;
    if (a->transport == SS_TRANSPORT_UNIX || a->transport == SS_TRANSPORT_UDG) {
        CHECK(ctx, (uint64_t)a->host_off + a->host_len == n);
        CHECK(ctx, a->port == -1);
        CHECK(ctx, a->host_len > 0);
        CHECK(ctx, (a->flags & SS_ADDR_IPV6) == 0);
        int abstract = host[0] == '\0';
        CHECK(ctx, !!(a->flags & SS_ADDR_ABSTRACT) == abstract);
        if (abstract) {
            CHECK(ctx, a->host_len <= SS_UNIX_ABSTRACT_MAX);
        } else {
            CHECK(ctx, a->host_len <= SS_UNIX_PATH_MAX);
            CHECK(ctx, memchr(host, '\0', a->host_len) == NULL);
        }
    } else {
        CHECK(ctx, a->host_len > 0);
        CHECK(ctx, a->host_len <= SS_HOST_MAX);
        CHECK(ctx, (a->flags & SS_ADDR_ABSTRACT) == 0);
        int has_colon = memchr(host, ':', a->host_len) != NULL;
        CHECK(ctx, !!(a->flags & SS_ADDR_IPV6) == has_colon);
        if (!(a->flags & SS_ADDR_IPV6))
            for (uint32_t i = 0; i < a->host_len; i++)
                CHECK(ctx, !is_bad_host_byte(host[i]));
    }
}

/* A heap copy of exactly n bytes (ASan then flags any read past the end). */
static uint8_t *heap_copy(const uint8_t *p, size_t n)
{
    uint8_t *copy = malloc(n);
    if (!copy && n == 0)
        copy = malloc(1);
    if (!copy) {
        fprintf(stderr, "fuzz_url: out of memory copying %zu bytes\n", n);
        abort();
    }
    if (n)
        memcpy(copy, p, n);
    return copy;
}

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325u;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3u;
    }
    return h;
}

static void sort_u32(uint32_t *v, size_t n)
{
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && v[j - 1] > v[j]; j--) {
            uint32_t t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf = heap_copy(data, size);
    struct check_ctx ctx = {data, size, buf, size, 0, -1, 0, NULL, NULL};

    /* One parse, every invariant. */
    ss_address_t first, second;
    memset(&first, 0, sizeof first);
    int ret = ss_parse_address((const char *)buf, size, &first);
    ctx.a = &first;
    check_address(&ctx, ret);

    /* Deterministic, and independent of what *out held before. */
    memset(&second, 0xa5, sizeof second);
    int ret2 = ss_parse_address((const char *)buf, size, &second);
    ctx.b = &second;
    CHECK(&ctx, ret2 == ret);
    CHECK(&ctx, memcmp(&first, &second, sizeof first) == 0);
    ctx.b = NULL;

    if (size <= UINT32_MAX) {
        /* Split into 1..4 pieces at positions drawn from the data; the batch
         * parse must give, piece by piece, exactly the single parse. */
        uint64_t state = fnv1a(data, size);
        int pieces = 1 + (int)(splitmix64(&state) % MAX_PIECES);
        uint32_t ends[MAX_PIECES];
        for (int i = 0; i < pieces - 1; i++)
            ends[i] = (uint32_t)(splitmix64(&state) % ((uint64_t)size + 1));
        sort_u32(ends, (size_t)(pieces - 1));
        ends[pieces - 1] = (uint32_t)size;

        ss_address_t batch[MAX_PIECES + 1];
        memset(batch, 0x5a, sizeof batch);
        /* batch[pieces] is a guard the call must leave alone. */
        ss_address_t guard;
        memcpy(&guard, &batch[pieces], sizeof guard);
        size_t failed = ss_parse_addresses((const char *)buf, ends, (size_t)pieces, batch);
        ctx.pieces = pieces;
        ctx.a = NULL;
        CHECK(&ctx, memcmp(&guard, &batch[pieces], sizeof guard) == 0);

        size_t expect_failed = 0;
        uint32_t start = 0;
        for (int i = 0; i < pieces; i++) {
            size_t n = ends[i] - start;
            uint8_t *piece = heap_copy(buf + start, n);
            ss_address_t single;
            memset(&single, 0, sizeof single);
            int r = ss_parse_address((const char *)piece, n, &single);
            struct check_ctx pctx = {data, size, piece, n, start, i, pieces, &single, NULL};
            check_address(&pctx, r);
            if (r != SS_OK)
                expect_failed++;
            pctx.b = &batch[i];
            CHECK(&pctx, memcmp(&single, &batch[i], sizeof single) == 0);
            free(piece);
            start = ends[i];
        }
        CHECK(&ctx, failed == expect_failed);

        /* An empty batch touches nothing and fails nothing. */
        CHECK(&ctx, ss_parse_addresses((const char *)buf, ends, 0, batch) == 0);
    }

    free(buf);
    return 0;
}
