/* OpenSSL: what the linked library can do. */
#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include "internal.h"

/* Decided when the library is built (house rule 12): the headers of the
 * OpenSSL we link say which protocol versions it was compiled with. */
int ss_transport_available(int transport)
{
    switch (transport) {
    case SS_TRANSPORT_SSLV2:
        return 0; /* removed from OpenSSL in 1.1.0 */
    case SS_TRANSPORT_SSLV3:
#if defined(OPENSSL_NO_SSL3) || defined(OPENSSL_NO_SSL3_METHOD)
        return 0;
#else
        return 1;
#endif
    case SS_TRANSPORT_TLSV1_0:
#ifdef OPENSSL_NO_TLS1
        return 0;
#else
        return 1;
#endif
    case SS_TRANSPORT_TLSV1_1:
#ifdef OPENSSL_NO_TLS1_1
        return 0;
#else
        return 1;
#endif
    case SS_TRANSPORT_TLSV1_3:
#ifdef OPENSSL_NO_TLS1_3
        return 0;
#else
        return 1;
#endif
    case SS_TRANSPORT_TCP:
    case SS_TRANSPORT_UDP:
    case SS_TRANSPORT_SSL:
    case SS_TRANSPORT_TLS:
    case SS_TRANSPORT_TLSV1_2:
    case SS_TRANSPORT_UNIX:
    case SS_TRANSPORT_UDG:
        return 1;
    default:
        return -1;
    }
}

const char *ss_openssl_version(void)
{
    return OpenSSL_version(OPENSSL_VERSION);
}
