/* Error codes to names and messages, from the one table in internal.h, and
 * error capture: errno, SSL_get_error, the OpenSSL error queue, verify result. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509.h>

#include "internal.h"

const char *ss_error_name(int code)
{
    switch ((enum ss_error)code) {
#define SS_NAME_CASE(c, msg) case c: return #c;
        SS_ERROR_TABLE(SS_NAME_CASE)
#undef SS_NAME_CASE
    }
    return NULL;
}

const char *ss_error_message(int code)
{
    switch ((enum ss_error)code) {
#define SS_MESSAGE_CASE(c, msg) case c: return msg;
        SS_ERROR_TABLE(SS_MESSAGE_CASE)
#undef SS_MESSAGE_CASE
    }
    return NULL;
}

int ss__fail(ss_error_info_t *err, int code, int sys_errno, const char *fmt, ...)
{
    err->code = code;
    err->sys_errno = sys_errno;
    err->ssl_error = 0;
    err->verify_result = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return code;
}

void ss__drain_openssl_errors(char *buf, size_t cap)
{
    size_t used = strlen(buf);
    unsigned long e;
    while ((e = ERR_get_error()) != 0) {
        const char *reason = ERR_reason_error_string(e);
        char fallback[32];
        if (!reason) {
            snprintf(fallback, sizeof fallback, "error %lu", e);
            reason = fallback;
        }
        if (used + 3 < cap && !strstr(buf, reason)) {
            int n = snprintf(buf + used, cap - used, "%s%s", used ? ": " : "", reason);
            if (n > 0)
                used = used + (size_t)n < cap ? used + (size_t)n : cap - 1;
        }
    }
}

int ss__fail_tls(ss_error_info_t *err, int code, SSL *ssl, int ret, const char *what)
{
    int saved_errno = errno;
    err->code = code;
    err->sys_errno = 0;
    err->ssl_error = ssl ? SSL_get_error(ssl, ret) : 0;
    err->verify_result = 0;
    snprintf(err->message, sizeof err->message, "%s", what);
    char reasons[256] = "";
    ss__drain_openssl_errors(reasons, sizeof reasons);
    if (ssl) {
        long verify = SSL_get_verify_result(ssl);
        if (verify != X509_V_OK && strstr(reasons, "certificate verify failed")) {
            err->code = SS_ERR_TLS_VERIFY;
            err->verify_result = (int32_t)verify;
            snprintf(reasons, sizeof reasons, "certificate verify failed: %s",
                     X509_verify_cert_error_string(verify));
        }
    }
    if (!reasons[0]) {
        if (err->ssl_error == SSL_ERROR_SYSCALL && saved_errno) {
            err->sys_errno = saved_errno;
            snprintf(reasons, sizeof reasons, "%s", strerror(saved_errno));
        } else if (err->ssl_error == SSL_ERROR_SYSCALL || err->ssl_error == SSL_ERROR_ZERO_RETURN) {
            err->code = code == SS_ERR_TLS ? SS_ERR_EOF : code;
            snprintf(reasons, sizeof reasons, "the peer closed the connection");
        }
    }
    if (reasons[0]) {
        size_t used = strlen(err->message);
        snprintf(err->message + used, sizeof err->message - used, ": %s", reasons);
    }
    return err->code;
}
