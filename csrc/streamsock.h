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
    SS_ERR_ADDR_PORT_UNEXPECTED = -119
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

/* The linked OpenSSL's version text (OpenSSL_version(OPENSSL_VERSION)). */
const char *ss_openssl_version(void);

#endif
