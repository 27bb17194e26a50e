/*
 * Fuzz target for the certificate describer (csrc/certinfo.c).
 *
 * clang -fsanitize=fuzzer,address,undefined -Icsrc tests/c/fuzz_cert.c csrc/*.c
 * -lssl -lcrypto (libFuzzer supplies main); tests/test_libfuzzer.py builds and
 * runs it with the certificate corpus of tests/test_certificate.py as seeds.
 *
 * Each input is described into a heap block of exactly the room given, so ASan
 * reports any write past it. What a description claims is checked: every
 * part lies inside the block, the subjectAltName entries tile their part, the
 * DER given back describes to itself, and the same input with one byte less
 * of room is refused, not cut. A broken
 * invariant traps (SIGILL). Test code only.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "streamsock.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define ROOM (1u << 16)

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_cert: broken invariant: %s\n", what);
        __builtin_trap();
    }
}

static int inside(uint32_t off, uint32_t len, uint32_t block_len)
{
    return off <= block_len && len <= block_len - off;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned char *der = malloc(size ? size : 1);
    unsigned char *out = malloc(ROOM);
    if (!der || !out) {
        free(der);
        free(out);
        return 0;
    }
    if (size)
        memcpy(der, data, size);
    int64_t n = ss_cert_describe_der(der, size, out, ROOM);
    check(n == SS_ERR_TLS || n == SS_ERR_NOMEM || (n >= (int64_t)sizeof(ss_cert_info_t) && n <= ROOM),
          "length out of range");
    if (n > 0) {
        ss_cert_info_t info;
        memcpy(&info, out, sizeof info);
        uint32_t block = info.block_len;
        check(block == (uint32_t)n, "block_len differs from the length returned");
        check(inside(info.der_off, info.der_len, block), "DER outside the block");
        /* OpenSSL re-encodes what it parsed (lenient input comes back as DER): that
         * encoding must describe to itself. */
        unsigned char *again = malloc(ROOM);
        if (again) {
            int64_t m = ss_cert_describe_der(out + info.der_off, info.der_len, again, ROOM);
            ss_cert_info_t second;
            memcpy(&second, again, sizeof second);
            check(m > 0 && second.der_len == info.der_len &&
                      memcmp(again + second.der_off, out + info.der_off, info.der_len) == 0 &&
                      memcmp(second.sha256, info.sha256, sizeof info.sha256) == 0,
                  "the DER given back does not describe to itself");
            free(again);
        }
        check(inside(info.subject_off, info.subject_len, block), "subject outside the block");
        check(inside(info.issuer_off, info.issuer_len, block), "issuer outside the block");
        check(inside(info.common_name_off, info.common_name_len, block), "common name outside the block");
        check(inside(info.serial_off, info.serial_len, block) && info.serial_len > 0, "serial outside the block");
        check(inside(info.san_off, info.san_len, block), "subjectAltName outside the block");
        for (uint32_t at = 0; at < info.san_len;) {
            check(info.san_len - at >= 3, "subjectAltName entry header cut");
            const unsigned char *entry = out + info.san_off + at;
            uint32_t len = (uint32_t)entry[1] | (uint32_t)entry[2] << 8;
            check(entry[0] >= 1 && entry[0] <= 4, "subjectAltName kind unknown");
            check(entry[0] != 2 || len == 4 || len == 16, "IP entry not 4 or 16 bytes");
            check(len <= info.san_len - at - 3, "subjectAltName entry runs past its part");
            at += 3 + len;
        }
        check(memchr(info.key_type, 0, sizeof info.key_type) != NULL, "key_type not terminated");
        check(memchr(info.signature_algorithm, 0, sizeof info.signature_algorithm) != NULL,
              "signature_algorithm not terminated");
        unsigned char *tight = malloc((size_t)n - 1);
        if (tight) {
            check(ss_cert_describe_der(der, size, tight, (size_t)n - 1) == SS_ERR_NOMEM, "a block too small was cut");
            free(tight);
        }
    }
    free(der);
    free(out);
    return 0;
}
