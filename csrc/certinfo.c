/*
 * Certificate details for probe records and Certificate values: what OpenSSL
 * has already parsed, laid out as one block (ss_cert_info_t, then the texts
 * and DER it points at) that the caller reads in place, without a copy.
 */
#include "internal.h"

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <limits.h>
#include <string.h>
#include <time.h>

/* The block being filled: out[0..cap), used so far; full once a part did not fit. */
struct block {
    unsigned char *out;
    size_t cap;
    size_t used;
    int full;
};

/* Room for len more bytes, or NULL (and the block marked full). */
static unsigned char *reserve(struct block *b, size_t len)
{
    if (b->full || len > b->cap - b->used || b->used + len > UINT32_MAX) {
        b->full = 1;
        return NULL;
    }
    unsigned char *at = b->out + b->used;
    b->used += len;
    return at;
}

static void put(struct block *b, const void *data, size_t len, uint32_t *off, uint32_t *out_len)
{
    unsigned char *at = reserve(b, len);
    if (!at)
        return;
    if (len)
        memcpy(at, data, len);
    *off = (uint32_t)(at - b->out);
    *out_len = (uint32_t)len;
}

/* The name on one line, as `openssl x509 -nameopt esc_2253,esc_ctrl,utf8,
 * dump_nostr,dump_der,sep_comma_plus_space,sname` prints it. */
static int put_name(struct block *b, const X509_NAME *name, uint32_t *off, uint32_t *len)
{
    static const unsigned long flags = XN_FLAG_SEP_CPLUS_SPC | XN_FLAG_FN_SN | ASN1_STRFLGS_ESC_2253 |
                                       ASN1_STRFLGS_ESC_CTRL | ASN1_STRFLGS_UTF8_CONVERT |
                                       ASN1_STRFLGS_DUMP_UNKNOWN | ASN1_STRFLGS_DUMP_DER;
    BIO *bio = BIO_new(BIO_s_mem());
    if (!bio)
        return SS_ERR_NOMEM;
    int rc = SS_OK;
    char *text = NULL;
    if (X509_NAME_print_ex(bio, name, 0, flags) < 0)
        rc = SS_ERR_TLS;
    long n = BIO_get_mem_data(bio, &text);
    if (rc == SS_OK && n >= 0)
        put(b, text, (size_t)n, off, len);
    BIO_free(bio);
    return rc;
}

static int put_common_name(struct block *b, const X509_NAME *name, uint32_t *off, uint32_t *len)
{
    int last = -1;
    for (int at = -1; (at = X509_NAME_get_index_by_NID(name, NID_commonName, at)) >= 0;)
        last = at;
    if (last < 0)
        return SS_OK;
    unsigned char *utf8 = NULL;
    int n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, last)));
    if (n < 0)
        return SS_OK; /* not a string type: no common name to give */
    put(b, utf8, (size_t)n, off, len);
    OPENSSL_free(utf8);
    return SS_OK;
}

static void put_san_entry(struct block *b, unsigned char kind, const ASN1_STRING *value)
{
    int n = ASN1_STRING_length(value);
    if (n < 0 || n > 0xFFFF || (kind == 2 && n != 4 && n != 16))
        return; /* an IP entry of another length is an address and mask: not a name */
    unsigned char *at = reserve(b, 3 + (size_t)n);
    if (!at)
        return;
    at[0] = kind;
    at[1] = (unsigned char)n;
    at[2] = (unsigned char)(n >> 8);
    memcpy(at + 3, ASN1_STRING_get0_data(value), (size_t)n);
}

static int put_san(struct block *b, X509 *cert, uint32_t *off, uint32_t *len)
{
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    size_t start = b->used;
    for (int i = 0; names && i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *name = sk_GENERAL_NAME_value(names, i);
        switch (name->type) {
        case GEN_DNS:
            put_san_entry(b, 1, name->d.dNSName);
            break;
        case GEN_IPADD:
            put_san_entry(b, 2, name->d.iPAddress);
            break;
        case GEN_EMAIL:
            put_san_entry(b, 3, name->d.rfc822Name);
            break;
        case GEN_URI:
            put_san_entry(b, 4, name->d.uniformResourceIdentifier);
            break;
        default:
            break;
        }
    }
    GENERAL_NAMES_free(names);
    *off = (uint32_t)start;
    *len = (uint32_t)(b->used - start);
    return SS_OK;
}

static int put_serial(struct block *b, const X509 *cert, uint32_t *off, uint32_t *len)
{
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
    char *hex = bn ? BN_bn2hex(bn) : NULL;
    BN_free(bn);
    if (!hex)
        return SS_ERR_NOMEM;
    put(b, hex, strlen(hex), off, len);
    OPENSSL_free(hex);
    return SS_OK;
}

static int64_t epoch_seconds(const ASN1_TIME *when)
{
    struct tm tm;
    if (!when || ASN1_TIME_to_tm(when, &tm) != 1)
        return 0;
    return (int64_t)timegm(&tm);
}

/* An algorithm's long name, or its dotted OID when OpenSSL has no name for it. */
static void algorithm_name(const ASN1_OBJECT *oid, char *out, size_t cap)
{
    if (OBJ_obj2txt(out, (int)cap, oid, 0) <= 0)
        out[0] = '\0';
}

static int digests(X509 *cert, ss_cert_info_t *info, const unsigned char *der, size_t der_len)
{
    unsigned char *spki = NULL;
    int spki_len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &spki);
    unsigned int sha1_len = 0;
    /* OpenSSL keeps each certificate's SHA-1 from when it parsed it: X509_digest hands it over. */
    int ok = spki_len > 0 && EVP_Digest(der, der_len, info->sha256, NULL, EVP_sha256(), NULL) == 1 &&
             X509_digest(cert, EVP_sha1(), info->sha1, &sha1_len) == 1 && sha1_len == sizeof info->sha1 &&
             EVP_Digest(spki, (size_t)spki_len, info->spki_sha256, NULL, EVP_sha256(), NULL) == 1;
    OPENSSL_free(spki);
    return ok ? SS_OK : SS_ERR_TLS;
}

int64_t ss__cert_describe(X509 *cert, unsigned char *out, size_t cap)
{
    ss_cert_info_t info;
    memset(&info, 0, sizeof info);
    struct block b = {out, cap, 0, 0};
    if (!reserve(&b, sizeof info))
        return SS_ERR_NOMEM;

    int der_len = i2d_X509(cert, NULL);
    if (der_len <= 0)
        return SS_ERR_TLS;
    unsigned char *der = reserve(&b, (size_t)der_len);
    if (!der)
        return SS_ERR_NOMEM;
    unsigned char *p = der;
    i2d_X509(cert, &p);
    info.der_off = (uint32_t)(der - out);
    info.der_len = (uint32_t)der_len;

    const X509_NAME *subject = X509_get_subject_name(cert), *issuer = X509_get_issuer_name(cert);
    int rc = put_name(&b, subject, &info.subject_off, &info.subject_len);
    if (rc == SS_OK)
        rc = put_name(&b, issuer, &info.issuer_off, &info.issuer_len);
    if (rc == SS_OK)
        rc = put_common_name(&b, subject, &info.common_name_off, &info.common_name_len);
    if (rc == SS_OK)
        rc = put_san(&b, cert, &info.san_off, &info.san_len);
    if (rc == SS_OK)
        rc = put_serial(&b, cert, &info.serial_off, &info.serial_len);
    if (rc == SS_OK)
        rc = digests(cert, &info, der, (size_t)der_len);
    if (rc != SS_OK)
        return rc;
    if (b.full)
        return SS_ERR_NOMEM;

    info.version = (int32_t)X509_get_version(cert) + 1;
    info.not_before = epoch_seconds(X509_get0_notBefore(cert));
    info.not_after = epoch_seconds(X509_get0_notAfter(cert));

    ASN1_OBJECT *key_oid = NULL;
    X509_PUBKEY_get0_param(&key_oid, NULL, NULL, NULL, X509_get_X509_PUBKEY(cert));
    if (key_oid)
        algorithm_name(key_oid, info.key_type, sizeof info.key_type);
    EVP_PKEY *key = X509_get0_pubkey(cert);
    info.key_bits = key ? EVP_PKEY_get_bits(key) : 0;
    ERR_clear_error(); /* a key OpenSSL cannot load is described, not an error */

    const X509_ALGOR *signature = NULL;
    const ASN1_OBJECT *signature_oid = NULL;
    X509_get0_signature(NULL, &signature, cert);
    X509_ALGOR_get0(&signature_oid, NULL, NULL, signature);
    if (signature_oid)
        algorithm_name(signature_oid, info.signature_algorithm, sizeof info.signature_algorithm);

    const unsigned char *subject_der = NULL, *issuer_der = NULL;
    size_t subject_der_len = 0, issuer_der_len = 0;
    info.self_signed = X509_NAME_get0_der(subject, &subject_der, &subject_der_len) == 1 &&
                       X509_NAME_get0_der(issuer, &issuer_der, &issuer_der_len) == 1 &&
                       subject_der_len == issuer_der_len && memcmp(subject_der, issuer_der, subject_der_len) == 0;

    info.block_len = (uint32_t)b.used;
    memcpy(out, &info, sizeof info);
    return (int64_t)b.used;
}

int64_t ss_cert_describe_der(const unsigned char *der, size_t der_len, unsigned char *out, size_t cap)
{
    if (der_len > LONG_MAX)
        return SS_ERR_TLS;
    const unsigned char *p = der;
    X509 *cert = d2i_X509(NULL, &p, (long)der_len);
    if (!cert || p != der + der_len) {
        X509_free(cert);
        ERR_clear_error();
        return SS_ERR_TLS;
    }
    int64_t rc = ss__cert_describe(cert, out, cap);
    X509_free(cert);
    return rc;
}
