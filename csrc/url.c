/*
 * The transport-address parser: "scheme://host:port", "host:port", "[v6]:port",
 * "unix:///path". The rules are DESIGN.md's Semantics section; the pure-Python
 * twin is python/streamsock/address.py and the two must agree byte for byte
 * (tests/test_address_property.py checks it). Results are offsets into the
 * caller's buffer; nothing is allocated.
 */
#include <arpa/inet.h>
#include <string.h>

#include "internal.h"

struct transport_entry {
    const char *name;
    uint8_t name_len;
    uint8_t transport;
};

/* Ordered by how often scanners and clients use them. */
static const struct transport_entry transports[] = {
    {"tcp", 3, SS_TRANSPORT_TCP},         {"tls", 3, SS_TRANSPORT_TLS},
    {"ssl", 3, SS_TRANSPORT_SSL},         {"udp", 3, SS_TRANSPORT_UDP},
    {"unix", 4, SS_TRANSPORT_UNIX},       {"udg", 3, SS_TRANSPORT_UDG},
    {"tlsv1.2", 7, SS_TRANSPORT_TLSV1_2}, {"tlsv1.3", 7, SS_TRANSPORT_TLSV1_3},
    {"tlsv1.0", 7, SS_TRANSPORT_TLSV1_0}, {"tlsv1.1", 7, SS_TRANSPORT_TLSV1_1},
    {"sslv3", 5, SS_TRANSPORT_SSLV3},     {"sslv2", 5, SS_TRANSPORT_SSLV2},
};

#define N_TRANSPORTS (sizeof transports / sizeof transports[0])
#define SCHEME_MAX 7 /* the longest name above */
#define IPV6_TEXT_MAX 45 /* INET6_ADDRSTRLEN less its NUL */

const char *ss_transport_name(int transport)
{
    for (size_t i = 0; i < N_TRANSPORTS; i++)
        if (transports[i].transport == transport)
            return transports[i].name;
    return NULL;
}

static int is_scheme_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '+' || c == '.' || c == '-';
}

/* Characters never valid in a host name: ASCII controls, space, and URL
 * delimiters. Bytes >= 0x80 pass (IDNA is the resolver's business). */
static int is_bad_host_char(unsigned char c)
{
    return c <= 0x20 || c == 0x7f || c == '/' || c == '?' || c == '#' || c == '@' ||
           c == '[' || c == ']' || c == '\\';
}

static int is_zone_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '_' || c == '~' || c == '-';
}

static int is_ipv6_text_char(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
           c == ':' || c == '.';
}

static int lookup_transport(const char *s, size_t len)
{
    if (len > SCHEME_MAX)
        return 0;
    char lower[SCHEME_MAX];
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        lower[i] = (char)(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
    }
    for (size_t i = 0; i < N_TRANSPORTS; i++)
        if (transports[i].name_len == len && memcmp(transports[i].name, lower, len) == 0)
            return transports[i].transport;
    return 0;
}

/* An IPv6 literal with an optional "%zone" (RFC 4007; zone chars from RFC 6874). */
static int is_ipv6_literal(const char *s, size_t len)
{
    size_t addr_len = len;
    const char *pct = memchr(s, '%', len);
    if (pct) {
        addr_len = (size_t)(pct - s);
        size_t zone_len = len - addr_len - 1;
        if (zone_len == 0)
            return 0;
        for (size_t i = addr_len + 1; i < len; i++)
            if (!is_zone_char((unsigned char)s[i]))
                return 0;
    }
    if (len > SS_HOST_MAX || addr_len == 0 || addr_len > IPV6_TEXT_MAX)
        return 0;
    char text[IPV6_TEXT_MAX + 1];
    for (size_t i = 0; i < addr_len; i++) {
        if (!is_ipv6_text_char((unsigned char)s[i]))
            return 0;
        text[i] = s[i];
    }
    text[addr_len] = '\0';
    struct in6_addr unused;
    return inet_pton(AF_INET6, text, &unused) == 1;
}

static int fail(ss_address_t *out, int code, size_t off, size_t len)
{
    out->error = code;
    out->err_off = (uint32_t)off;
    out->err_len = (uint32_t)len;
    return code;
}

static int parse_path(const char *s, size_t n, size_t start, ss_address_t *out)
{
    size_t len = n - start;
    if (len == 0)
        return fail(out, SS_ERR_ADDR_PATH_EMPTY, start, 0);
    if (s[start] == '\0') {
        if (len > SS_UNIX_ABSTRACT_MAX)
            return fail(out, SS_ERR_ADDR_PATH_TOO_LONG, start, len);
        out->flags = SS_ADDR_ABSTRACT;
    } else {
        if (len > SS_UNIX_PATH_MAX)
            return fail(out, SS_ERR_ADDR_PATH_TOO_LONG, start, len);
        const char *nul = memchr(s + start, '\0', len);
        if (nul)
            return fail(out, SS_ERR_ADDR_PATH_NUL, (size_t)(nul - s), 1);
    }
    out->host_off = (uint32_t)start;
    out->host_len = (uint32_t)len;
    return SS_OK;
}

/* s[start, n) is the port text after ':'. */
static int parse_port(const char *s, size_t n, size_t start, ss_address_t *out)
{
    if (start == n)
        return fail(out, SS_ERR_ADDR_PORT_EMPTY, start, 0);
    uint32_t value = 0;
    int in_range = 1;
    for (size_t i = start; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < '0' || c > '9')
            return fail(out, SS_ERR_ADDR_PORT_SYNTAX, start, n - start);
        if (in_range) {
            value = value * 10 + (uint32_t)(c - '0');
            in_range = value <= 65535;
        }
    }
    if (!in_range)
        return fail(out, SS_ERR_ADDR_PORT_RANGE, start, n - start);
    out->port = (int32_t)value;
    return SS_OK;
}

static int parse_bracketed(const char *s, size_t n, size_t start, ss_address_t *out)
{
    const char *close = memchr(s + start + 1, ']', n - start - 1);
    if (!close)
        return fail(out, SS_ERR_ADDR_IPV6_BRACKET, start, n - start);
    size_t host_off = start + 1;
    size_t host_len = (size_t)(close - s) - host_off;
    if (!is_ipv6_literal(s + host_off, host_len))
        return fail(out, SS_ERR_ADDR_IPV6_INVALID, host_off, host_len);
    out->host_off = (uint32_t)host_off;
    out->host_len = (uint32_t)host_len;
    out->flags = SS_ADDR_IPV6;
    size_t after = host_off + host_len + 1;
    if (after == n)
        return SS_OK;
    if (s[after] != ':')
        return fail(out, SS_ERR_ADDR_AFTER_BRACKET, after, n - after);
    return parse_port(s, n, after + 1, out);
}

static int parse_host_port(const char *s, size_t n, size_t start, ss_address_t *out)
{
    if (start == n)
        return fail(out, SS_ERR_ADDR_HOST_EMPTY, start, 0);
    if (s[start] == '[')
        return parse_bracketed(s, n, start, out);

    const char *first = memchr(s + start, ':', n - start);
    size_t host_end = n;
    if (first) {
        size_t after = (size_t)(first - s) + 1;
        if (memchr(s + after, ':', n - after)) {
            /* Two or more colons and no brackets: an IPv6 literal, no port. */
            if (!is_ipv6_literal(s + start, n - start))
                return fail(out, SS_ERR_ADDR_COLONS, start, n - start);
            out->host_off = (uint32_t)start;
            out->host_len = (uint32_t)(n - start);
            out->flags = SS_ADDR_IPV6;
            return SS_OK;
        }
        host_end = after - 1;
    }
    if (host_end == start)
        return fail(out, SS_ERR_ADDR_HOST_EMPTY, start, 0);
    for (size_t i = start; i < host_end; i++) {
        if (is_bad_host_char((unsigned char)s[i]))
            return fail(out, SS_ERR_ADDR_HOST_CHAR, i, 1);
        /* A UTF-16 surrogate (ED A0..BF xx): no resolver can take it. Python
         * hands lone surrogates over this way (undecodable input bytes too). */
        if ((unsigned char)s[i] == 0xED && i + 1 < host_end && (unsigned char)s[i + 1] >= 0xA0)
            return fail(out, SS_ERR_ADDR_HOST_CHAR, i, host_end - i < 3 ? host_end - i : 3);
    }
    if (host_end - start > SS_HOST_MAX)
        return fail(out, SS_ERR_ADDR_HOST_TOO_LONG, start, host_end - start);
    out->host_off = (uint32_t)start;
    out->host_len = (uint32_t)(host_end - start);
    if (first)
        return parse_port(s, n, host_end + 1, out);
    return SS_OK;
}

int ss_parse_address(const char *s, size_t n, ss_address_t *out)
{
    memset(out, 0, sizeof *out);
    out->port = -1;
    if (n == 0)
        return fail(out, SS_ERR_ADDR_EMPTY, 0, 0);
    if (n > UINT32_MAX)
        return fail(out, SS_ERR_ADDR_TOO_LONG, 0, 0);

    size_t scheme_len = 0;
    while (scheme_len < n && is_scheme_char((unsigned char)s[scheme_len]))
        scheme_len++;
    size_t rest = 0;
    int transport = SS_TRANSPORT_TCP;
    if (scheme_len >= 2 && n - scheme_len >= 3 && memcmp(s + scheme_len, "://", 3) == 0) {
        transport = lookup_transport(s, scheme_len);
        if (!transport)
            return fail(out, SS_ERR_ADDR_UNKNOWN_TRANSPORT, 0, scheme_len);
        rest = scheme_len + 3;
    }
    out->transport = transport;
    if (transport == SS_TRANSPORT_UNIX || transport == SS_TRANSPORT_UDG)
        return parse_path(s, n, rest, out);
    return parse_host_port(s, n, rest, out);
}

size_t ss_parse_addresses(const char *buf, const uint32_t *ends, size_t count,
                          ss_address_t *out)
{
    size_t failed = 0;
    uint32_t start = 0;
    for (size_t i = 0; i < count; i++) {
        /* A malformed ends[] (decreasing) yields empty inputs, never a wild read. */
        uint32_t end = ends[i] > start ? ends[i] : start;
        if (ss_parse_address(buf + start, end - start, &out[i]) != SS_OK)
            failed++;
        start = end;
    }
    return failed;
}
