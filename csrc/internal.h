/*
 * Private definitions shared by the C sources. Nothing here crosses the FFI.
 */
#ifndef STREAMSOCK_INTERNAL_H
#define STREAMSOCK_INTERNAL_H

#include "streamsock.h"

/* The one error table: code, message. error.c expands it into the name and
 * message look-ups; the compiler's -Wswitch (with -Werror) rejects an enum
 * ss_error value missing here, and a duplicate case label rejects a repeat. */
#define SS_ERROR_TABLE(X)                                                                   \
    X(SS_OK, "success")                                                                     \
    X(SS_ERR_ADDR_EMPTY, "empty address")                                                   \
    X(SS_ERR_ADDR_TOO_LONG, "address longer than 4294967295 bytes")                         \
    X(SS_ERR_ADDR_UNKNOWN_TRANSPORT, "unknown socket transport")                            \
    X(SS_ERR_ADDR_HOST_EMPTY, "missing host")                                               \
    X(SS_ERR_ADDR_HOST_CHAR, "invalid character in host")                                   \
    X(SS_ERR_ADDR_HOST_TOO_LONG, "host longer than 255 bytes")                              \
    X(SS_ERR_ADDR_IPV6_BRACKET, "missing ']' after IPv6 address")                           \
    X(SS_ERR_ADDR_IPV6_INVALID, "not a valid IPv6 address")                                 \
    X(SS_ERR_ADDR_COLONS,                                                                   \
      "more than one ':' but not an IPv6 address (write an IPv6 address with a port as "    \
      "[addr]:port)")                                                                       \
    X(SS_ERR_ADDR_AFTER_BRACKET, "expected ':port' after ']'")                              \
    X(SS_ERR_ADDR_PORT_EMPTY, "missing port number after ':'")                              \
    X(SS_ERR_ADDR_PORT_SYNTAX, "port must be decimal digits")                               \
    X(SS_ERR_ADDR_PORT_RANGE, "port out of range 0-65535")                                  \
    X(SS_ERR_ADDR_PATH_EMPTY, "missing socket path")                                        \
    X(SS_ERR_ADDR_PATH_NUL, "NUL byte in socket path")                                      \
    X(SS_ERR_ADDR_PATH_TOO_LONG,                                                            \
      "socket path too long (at most 107 bytes, or 108 with the leading NUL of an "         \
      "abstract name)")                                                                     \
    X(SS_ERR_ADDR_PORT_MISSING, "missing port")                                             \
    X(SS_ERR_ADDR_PORT_TWICE, "port given twice (in the address and as an argument)")      \
    X(SS_ERR_ADDR_PORT_UNEXPECTED, "unix and udg sockets take no port")

#endif
