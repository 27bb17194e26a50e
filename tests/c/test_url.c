/*
 * Unit tests of the address parser (csrc/url.c): exact ss_address_t contents
 * for representative inputs. tests/test_url_c.py builds this with ASan+UBSan
 * and runs it; the last line is "N passed, M failed", and the exit status is
 * non-zero when anything failed.
 *
 * Each input is parsed from a heap copy of exactly its length, so a read past
 * the end is an ASan error rather than a silent pass.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "streamsock.h"

static int passed, failed;

/* Expected result; host_off/host_len are only compared on success and
 * err_off/err_len only on error, as the header documents. */
struct expect {
    int error;
    int transport;
    int port;
    unsigned flags;
    unsigned host_off, host_len;
    unsigned err_off, err_len;
};

#define OK(transport, host_off, host_len, port, flags)                                    \
    ((struct expect){SS_OK, (transport), (port), (flags), (host_off), (host_len), 0, 0})
#define ERR(code, err_off, err_len)                                                      \
    ((struct expect){(code), 0, -1, 0, 0, 0, (err_off), (err_len)})

static void print_escaped(const char *s, size_t n)
{
    fputc('"', stderr);
    for (size_t i = 0; i < n && i < 80; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
            fputc(c, stderr);
        else
            fprintf(stderr, "\\x%02x", c);
    }
    fputs(n > 80 ? "\"..." : "\"", stderr);
    fprintf(stderr, " (%zu bytes)", n);
}

static void print_result(const char *label, const ss_address_t *a)
{
    const char *name = ss_error_name(a->error);
    fprintf(stderr,
            "    %s error=%d (%s) transport=%d port=%d flags=%u host=%u+%u err=%u+%u\n", label,
            (int)a->error, name ? name : "?", (int)a->transport, (int)a->port,
            (unsigned)a->flags, (unsigned)a->host_off, (unsigned)a->host_len,
            (unsigned)a->err_off, (unsigned)a->err_len);
}

static int matches(const ss_address_t *a, const struct expect *e, const char *host,
                   const char *text)
{
    if (a->error != e->error)
        return 0;
    if (e->error != SS_OK)
        return a->err_off == e->err_off && a->err_len == e->err_len;
    if (a->transport != e->transport || a->port != e->port || a->flags != e->flags ||
        a->host_off != e->host_off || a->host_len != e->host_len)
        return 0;
    /* The host text too, when given (it may hold NULs, so compare bytes). */
    if (host && memcmp(text + a->host_off, host, a->host_len) != 0)
        return 0;
    return 1;
}

/* Parses text[0, len) and compares with e; host, when non-NULL, is the host
 * (or path) text expected at host_off. */
static void check_n(int line, const char *text, size_t len, struct expect e, const char *host)
{
    char *copy = malloc(len ? len : 1);
    if (!copy) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    memcpy(copy, text, len);
    ss_address_t a;
    memset(&a, 0xee, sizeof a);
    int ret = ss_parse_address(copy, len, &a);
    int ok = ret == a.error && matches(&a, &e, host, copy);
    if (ok) {
        passed++;
    } else {
        failed++;
        fprintf(stderr, "FAIL test_url.c:%d: ", line);
        print_escaped(text, len);
        fprintf(stderr, "\n    returned %d\n", ret);
        print_result("got:     ", &a);
        ss_address_t want = {e.error,    e.transport, e.port,    e.flags,
                             e.host_off, e.host_len,  e.err_off, e.err_len};
        print_result("expected:", &want);
    }
    free(copy);
}

#define CHECK_STR(text, e, host) check_n(__LINE__, (text), strlen(text), (e), (host))
#define CHECK_LIT(text, e, host) check_n(__LINE__, (text), sizeof(text) - 1, (e), (host))

static void expect_true(int line, int cond, const char *what)
{
    if (cond) {
        passed++;
    } else {
        failed++;
        fprintf(stderr, "FAIL test_url.c:%d: %s\n", line, what);
    }
}
#define EXPECT(cond) expect_true(__LINE__, (cond), #cond)

static char *repeat(const char *prefix, char fill, size_t count, size_t *out_len)
{
    size_t plen = strlen(prefix);
    char *s = malloc(plen + count + 1);
    if (!s) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    memcpy(s, prefix, plen);
    memset(s + plen, fill, count);
    s[plen + count] = '\0';
    *out_len = plen + count;
    return s;
}

static void test_hosts_and_ports(void)
{
    CHECK_STR("tls://[::1]:443", OK(SS_TRANSPORT_TLS, 7, 3, 443, SS_ADDR_IPV6), "::1");
    CHECK_STR("example.com:80", OK(SS_TRANSPORT_TCP, 0, 11, 80, 0), "example.com");
    CHECK_STR("example.com", OK(SS_TRANSPORT_TCP, 0, 11, -1, 0), "example.com");
    CHECK_STR("TCP://Example.com:0", OK(SS_TRANSPORT_TCP, 6, 11, 0, 0), "Example.com");
    CHECK_STR("tlsv1.2://h:65535", OK(SS_TRANSPORT_TLSV1_2, 10, 1, 65535, 0), "h");
    CHECK_STR("SSLv2://h", OK(SS_TRANSPORT_SSLV2, 8, 1, -1, 0), "h");
    CHECK_STR("udp://10.0.0.1:0053", OK(SS_TRANSPORT_UDP, 6, 8, 53, 0), "10.0.0.1");
    CHECK_STR("h\xc3\xa9:1", OK(SS_TRANSPORT_TCP, 0, 3, 1, 0), "h\xc3\xa9");
    CHECK_STR("[::1]", OK(SS_TRANSPORT_TCP, 1, 3, -1, SS_ADDR_IPV6), "::1");
    CHECK_STR("[fe80::1%eth0]:8080", OK(SS_TRANSPORT_TCP, 1, 12, 8080, SS_ADDR_IPV6),
              "fe80::1%eth0");
    CHECK_STR("fe80::1%eth0", OK(SS_TRANSPORT_TCP, 0, 12, -1, SS_ADDR_IPV6), "fe80::1%eth0");
    CHECK_STR("ssl://::ffff:1.2.3.4", OK(SS_TRANSPORT_SSL, 6, 14, -1, SS_ADDR_IPV6),
              "::ffff:1.2.3.4");
    /* A one-character "scheme" is no scheme: host "a", port "//x". */
    CHECK_STR("a://x", ERR(SS_ERR_ADDR_PORT_SYNTAX, 2, 3), NULL);
}

static void test_host_port_errors(void)
{
    CHECK_STR("", ERR(SS_ERR_ADDR_EMPTY, 0, 0), NULL);
    CHECK_STR("HTTP://x", ERR(SS_ERR_ADDR_UNKNOWN_TRANSPORT, 0, 4), NULL);
    CHECK_STR("tlsv1.4://x", ERR(SS_ERR_ADDR_UNKNOWN_TRANSPORT, 0, 7), NULL);
    CHECK_STR("tcp://", ERR(SS_ERR_ADDR_HOST_EMPTY, 6, 0), NULL);
    CHECK_STR(":80", ERR(SS_ERR_ADDR_HOST_EMPTY, 0, 0), NULL);
    CHECK_STR("a b:1", ERR(SS_ERR_ADDR_HOST_CHAR, 1, 1), NULL);
    CHECK_STR("tcp://user@h:1", ERR(SS_ERR_ADDR_HOST_CHAR, 10, 1), NULL);
    CHECK_STR("host:99999", ERR(SS_ERR_ADDR_PORT_RANGE, 5, 5), NULL);
    CHECK_STR("host:65536", ERR(SS_ERR_ADDR_PORT_RANGE, 5, 5), NULL);
    CHECK_STR("host:", ERR(SS_ERR_ADDR_PORT_EMPTY, 5, 0), NULL);
    CHECK_STR("host:8a", ERR(SS_ERR_ADDR_PORT_SYNTAX, 5, 2), NULL);
    CHECK_STR("host:-1", ERR(SS_ERR_ADDR_PORT_SYNTAX, 5, 2), NULL);
    CHECK_STR("1:2:3", ERR(SS_ERR_ADDR_COLONS, 0, 5), NULL);
    CHECK_STR("tcp://[::1", ERR(SS_ERR_ADDR_IPV6_BRACKET, 6, 4), NULL);
    CHECK_STR("[zz]:1", ERR(SS_ERR_ADDR_IPV6_INVALID, 1, 2), NULL);
    CHECK_STR("[]:1", ERR(SS_ERR_ADDR_IPV6_INVALID, 1, 0), NULL);
    CHECK_STR("[fe80::1%]:1", ERR(SS_ERR_ADDR_IPV6_INVALID, 1, 8), NULL);
    CHECK_STR("[::1]x", ERR(SS_ERR_ADDR_AFTER_BRACKET, 5, 1), NULL);
    CHECK_STR("[::1]:", ERR(SS_ERR_ADDR_PORT_EMPTY, 6, 0), NULL);
    /* A NUL is data, not a terminator: here it is a bad host byte. */
    CHECK_LIT("ab\0:1", ERR(SS_ERR_ADDR_HOST_CHAR, 2, 1), NULL);
    /* A UTF-16 surrogate in UTF-8 form (how Python hands a lone one over). */
    CHECK_STR("a\xed\xa0\x80" "b:1", ERR(SS_ERR_ADDR_HOST_CHAR, 1, 3), NULL);
    CHECK_STR("h\xed\xb3\xbf:1", ERR(SS_ERR_ADDR_HOST_CHAR, 1, 3), NULL);
    CHECK_STR("\xed\x9f\xbf:1", OK(SS_TRANSPORT_TCP, 0, 3, 1, 0), "\xed\x9f\xbf"); /* U+D7FF is no surrogate */

    size_t len;
    char *host = repeat("", 'h', 255, &len);
    check_n(__LINE__, host, len, OK(SS_TRANSPORT_TCP, 0, 255, -1, 0), host);
    free(host);
    host = repeat("tcp://", 'h', 256, &len);
    check_n(__LINE__, host, len, ERR(SS_ERR_ADDR_HOST_TOO_LONG, 6, 256), NULL);
    free(host);
}

static void test_unix_paths(void)
{
    CHECK_STR("unix:///tmp/s", OK(SS_TRANSPORT_UNIX, 7, 6, -1, 0), "/tmp/s");
    /* A path may hold ':'; it is never a port. */
    CHECK_STR("udg:///tmp/s:1", OK(SS_TRANSPORT_UDG, 6, 8, -1, 0), "/tmp/s:1");
    CHECK_STR("unix://rel", OK(SS_TRANSPORT_UNIX, 7, 3, -1, 0), "rel");
    CHECK_LIT("unix://\0abs", OK(SS_TRANSPORT_UNIX, 7, 4, -1, SS_ADDR_ABSTRACT), "\0abs");
    CHECK_STR("unix://", ERR(SS_ERR_ADDR_PATH_EMPTY, 7, 0), NULL);
    CHECK_LIT("unix:///tmp/a\0b", ERR(SS_ERR_ADDR_PATH_NUL, 13, 1), NULL);

    size_t len;
    char *path = repeat("unix:///", 'p', 106, &len); /* a 107-byte path */
    check_n(__LINE__, path, len, OK(SS_TRANSPORT_UNIX, 7, 107, -1, 0), path + 7);
    free(path);
    path = repeat("unix:///", 'p', 107, &len); /* a 108-byte path */
    check_n(__LINE__, path, len, ERR(SS_ERR_ADDR_PATH_TOO_LONG, 7, 108), NULL);
    free(path);
    path = repeat("udg://", 'p', 108, &len); /* an abstract name of 108 bytes */
    path[6] = '\0';
    check_n(__LINE__, path, len, OK(SS_TRANSPORT_UDG, 6, 108, -1, SS_ADDR_ABSTRACT), path + 6);
    free(path);
    path = repeat("udg://", 'p', 109, &len); /* ... and of 109 */
    path[6] = '\0';
    check_n(__LINE__, path, len, ERR(SS_ERR_ADDR_PATH_TOO_LONG, 6, 109), NULL);
    free(path);
}

static void test_batch(void)
{
    /* "a:1" | "" | "[::1]:2" | "unix://" : offsets are per address. */
    static const char buf[] = "a:1[::1]:2unix://";
    const uint32_t ends[] = {3, 3, 10, 17};
    ss_address_t out[4];
    memset(out, 0xee, sizeof out);
    size_t failures = ss_parse_addresses(buf, ends, 4, out);
    EXPECT(failures == 2);
    EXPECT(out[0].error == SS_OK && out[0].host_off == 0 && out[0].host_len == 1 &&
           out[0].port == 1);
    EXPECT(out[1].error == SS_ERR_ADDR_EMPTY);
    EXPECT(out[2].error == SS_OK && out[2].host_off == 1 && out[2].host_len == 3 &&
           out[2].port == 2 && out[2].flags == SS_ADDR_IPV6);
    EXPECT(out[3].error == SS_ERR_ADDR_PATH_EMPTY && out[3].err_off == 7 &&
           out[3].err_len == 0);

    /* Decreasing ends give empty addresses, never a wild read. */
    const uint32_t bad_ends[] = {5, 2};
    EXPECT(ss_parse_addresses("x:1:2", bad_ends, 2, out) == 2);
    EXPECT(out[0].error == SS_ERR_ADDR_COLONS && out[1].error == SS_ERR_ADDR_EMPTY);
}

static void test_names(void)
{
    EXPECT(ss_transport_name(SS_TRANSPORT_TLS) && strcmp(ss_transport_name(SS_TRANSPORT_TLS), "tls") == 0);
    EXPECT(ss_transport_name(SS_TRANSPORT_TLSV1_2) &&
           strcmp(ss_transport_name(SS_TRANSPORT_TLSV1_2), "tlsv1.2") == 0);
    EXPECT(ss_transport_name(0) == NULL && ss_transport_name(13) == NULL);
    EXPECT(ss_error_name(SS_ERR_ADDR_PORT_RANGE) &&
           strcmp(ss_error_name(SS_ERR_ADDR_PORT_RANGE), "SS_ERR_ADDR_PORT_RANGE") == 0);
    EXPECT(ss_error_name(-100) == NULL && ss_error_message(-120) == NULL);
    for (int code = SS_ERR_ADDR_PORT_UNEXPECTED; code <= SS_ERR_ADDR_EMPTY; code++)
        EXPECT(ss_error_name(code) != NULL && ss_error_message(code) != NULL);
}

int main(void)
{
    test_hosts_and_ports();
    test_host_port_errors();
    test_unix_paths();
    test_batch();
    test_names();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
