"""X.509 certificates: the peer certificate of a TLS stream, read without OpenSSL.

:class:`Certificate` wraps the DER bytes of one certificate, as both backends
capture it for PHP's ``capture_peer_cert`` and check it for ``peer_fingerprint``:

>>> cert = Certificate.from_pem(pem_text)                     # doctest: +SKIP
>>> cert.subject["CN"], cert.san, cert.fingerprint("sha1")   # doctest: +SKIP
('localhost', (('DNS', 'localhost'), ('IP Address', '127.0.0.1')), '5e0f...')

Names, dates and algorithm names are spelled the way ``openssl x509`` prints
them. The DER reader walks the fixed shape of an RFC 5280 certificate without
recursion and checks every length against the bytes that remain, so any input
either parses or raises :class:`ValueError`, after work linear in its size.
Signatures are not checked: this describes a certificate, it does not verify one.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hashlib
import hmac
import re
import socket
import ssl
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple

__all__ = ["Certificate", "Summary"]

# Universal tags (identifier octets) of the DER types a certificate is made of.
_BOOLEAN = 0x01
_INTEGER = 0x02
_BIT_STRING = 0x03
_OCTET_STRING = 0x04
_OID = 0x06
_UTC_TIME = 0x17
_GENERALIZED_TIME = 0x18
_SEQUENCE = 0x30
_SET = 0x31
_CONTEXT_0 = 0xA0  # tbsCertificate.version, EXPLICIT
_CONTEXT_1 = 0x81  # issuerUniqueID, IMPLICIT BIT STRING
_CONTEXT_2 = 0x82  # subjectUniqueID
_CONTEXT_3 = 0xA3  # tbsCertificate.extensions, EXPLICIT

_TAG_NAMES = {
    _BOOLEAN: "BOOLEAN",
    _INTEGER: "INTEGER",
    _BIT_STRING: "BIT STRING",
    _OCTET_STRING: "OCTET STRING",
    _OID: "OBJECT IDENTIFIER",
    _UTC_TIME: "UTCTime",
    _GENERALIZED_TIME: "GeneralizedTime",
    _SEQUENCE: "SEQUENCE",
    _SET: "SET",
}

# Directory string types, and how OpenSSL turns their octets into characters:
# it reads T61String and the other 8-bit types as Latin-1, whatever the spec says.
_STRING_CODECS = {
    0x0C: "utf-8",  # UTF8String
    0x12: "latin-1",  # NumericString
    0x13: "latin-1",  # PrintableString
    0x14: "latin-1",  # T61String / TeletexString
    0x15: "latin-1",  # VideotexString
    0x16: "latin-1",  # IA5String
    0x19: "latin-1",  # GraphicString
    0x1A: "latin-1",  # VisibleString
    0x1B: "latin-1",  # GeneralString
    0x1C: "utf-32-be",  # UniversalString
    0x1E: "utf-16-be",  # BMPString
}

# Attribute types in names, by OpenSSL's short names (what openssl x509 -subject and
# PHP's openssl_x509_parse use as keys).
_NAME_SN = {
    "2.5.4.3": "CN",
    "2.5.4.4": "SN",
    "2.5.4.5": "serialNumber",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.9": "street",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.12": "title",
    "2.5.4.13": "description",
    "2.5.4.15": "businessCategory",
    "2.5.4.16": "postalAddress",
    "2.5.4.17": "postalCode",
    "2.5.4.18": "postOfficeBox",
    "2.5.4.20": "telephoneNumber",
    "2.5.4.41": "name",
    "2.5.4.42": "GN",
    "2.5.4.43": "initials",
    "2.5.4.44": "generationQualifier",
    "2.5.4.45": "x500UniqueIdentifier",
    "2.5.4.46": "dnQualifier",
    "2.5.4.65": "pseudonym",
    "2.5.4.72": "role",
    "2.5.4.97": "organizationIdentifier",
    "1.2.840.113549.1.9.1": "emailAddress",
    "1.2.840.113549.1.9.2": "unstructuredName",
    "1.2.840.113549.1.9.8": "unstructuredAddress",
    "0.9.2342.19200300.100.1.1": "UID",
    "0.9.2342.19200300.100.1.3": "mail",
    "0.9.2342.19200300.100.1.25": "DC",
    "1.3.6.1.4.1.311.60.2.1.1": "jurisdictionL",
    "1.3.6.1.4.1.311.60.2.1.2": "jurisdictionST",
    "1.3.6.1.4.1.311.60.2.1.3": "jurisdictionC",
}

# Signature and public-key algorithms: OID -> (OpenSSL short name, long name).
# openssl x509 -text prints the long name; PHP's signatureTypeSN is the short one.
_ALGORITHMS = {
    "1.2.840.113549.1.1.1": ("rsaEncryption", "rsaEncryption"),
    "1.2.840.113549.1.1.2": ("RSA-MD2", "md2WithRSAEncryption"),
    "1.2.840.113549.1.1.4": ("RSA-MD5", "md5WithRSAEncryption"),
    "1.2.840.113549.1.1.5": ("RSA-SHA1", "sha1WithRSAEncryption"),
    "1.2.840.113549.1.1.7": ("RSAES-OAEP", "rsaesOaep"),
    "1.2.840.113549.1.1.10": ("RSASSA-PSS", "rsassaPss"),
    "1.2.840.113549.1.1.11": ("RSA-SHA256", "sha256WithRSAEncryption"),
    "1.2.840.113549.1.1.12": ("RSA-SHA384", "sha384WithRSAEncryption"),
    "1.2.840.113549.1.1.13": ("RSA-SHA512", "sha512WithRSAEncryption"),
    "1.2.840.113549.1.1.14": ("RSA-SHA224", "sha224WithRSAEncryption"),
    "1.2.840.10045.2.1": ("id-ecPublicKey", "id-ecPublicKey"),
    "1.2.840.10045.4.1": ("ecdsa-with-SHA1", "ecdsa-with-SHA1"),
    "1.2.840.10045.4.3.1": ("ecdsa-with-SHA224", "ecdsa-with-SHA224"),
    "1.2.840.10045.4.3.2": ("ecdsa-with-SHA256", "ecdsa-with-SHA256"),
    "1.2.840.10045.4.3.3": ("ecdsa-with-SHA384", "ecdsa-with-SHA384"),
    "1.2.840.10045.4.3.4": ("ecdsa-with-SHA512", "ecdsa-with-SHA512"),
    "1.2.840.10040.4.1": ("DSA", "dsaEncryption"),
    "1.2.840.10040.4.3": ("DSA-SHA1", "dsaWithSHA1"),
    "2.16.840.1.101.3.4.3.1": ("dsa_with_SHA224", "dsa_with_SHA224"),
    "2.16.840.1.101.3.4.3.2": ("dsa_with_SHA256", "dsa_with_SHA256"),
    "2.16.840.1.101.3.4.3.9": ("id-ecdsa-with-sha3-224", "ecdsa_with_SHA3-224"),
    "2.16.840.1.101.3.4.3.10": ("id-ecdsa-with-sha3-256", "ecdsa_with_SHA3-256"),
    "2.16.840.1.101.3.4.3.11": ("id-ecdsa-with-sha3-384", "ecdsa_with_SHA3-384"),
    "2.16.840.1.101.3.4.3.12": ("id-ecdsa-with-sha3-512", "ecdsa_with_SHA3-512"),
    "2.16.840.1.101.3.4.3.13": ("id-rsassa-pkcs1-v1_5-with-sha3-224", "RSA-SHA3-224"),
    "2.16.840.1.101.3.4.3.14": ("id-rsassa-pkcs1-v1_5-with-sha3-256", "RSA-SHA3-256"),
    "2.16.840.1.101.3.4.3.15": ("id-rsassa-pkcs1-v1_5-with-sha3-384", "RSA-SHA3-384"),
    "2.16.840.1.101.3.4.3.16": ("id-rsassa-pkcs1-v1_5-with-sha3-512", "RSA-SHA3-512"),
    "1.3.101.110": ("X25519", "X25519"),
    "1.3.101.111": ("X448", "X448"),
    "1.3.101.112": ("ED25519", "ED25519"),
    "1.3.101.113": ("ED448", "ED448"),
    "1.2.156.10197.1.301": ("SM2", "sm2"),
    "1.2.156.10197.1.501": ("SM2-SM3", "SM2-with-SM3"),
}

_SUBJECT_ALT_NAME = "2.5.29.17"
_BASIC_CONSTRAINTS = "2.5.29.19"

# subjectAltName GeneralName choices kept, by their context tags (all IMPLICIT
# IA5String or OCTET STRING, hence primitive).
_SAN_TYPES = {0x81: "email", 0x82: "DNS", 0x86: "URI", 0x87: "IP Address"}

# peer_fingerprint strings name no algorithm: PHP picks it from the length.
_FINGERPRINT_LENGTHS = {32: "md5", 40: "sha1", 64: "sha256"}

# An OID arc longer than this cannot be a real one (2.25 UUID arcs need 19 octets);
# the cap keeps arc arithmetic linear.
_MAX_OID_ARC_OCTETS = 32

_PEM_BEGIN = "-----BEGIN CERTIFICATE-----"
_PEM_END = "-----END CERTIFICATE-----"
_HEX = re.compile(r"[0-9a-f]+")
_UTC = _dt.timezone.utc


# Bits of the public keys whose size is fixed by their algorithm or curve, as
# OpenSSL's EVP_PKEY_get_bits() gives them (a curve's order, not its encoding).
_FIXED_KEY_BITS = {
    "1.3.101.110": 253,  # X25519
    "1.3.101.111": 448,  # X448
    "1.3.101.112": 256,  # Ed25519
    "1.3.101.113": 456,  # Ed448
}
_CURVE_BITS = {
    "1.2.840.10045.3.1.7": 256,  # prime256v1 (P-256)
    "1.3.132.0.34": 384,  # secp384r1
    "1.3.132.0.35": 521,  # secp521r1
    "1.3.132.0.10": 256,  # secp256k1
    "1.3.132.0.33": 224,  # secp224r1
    "1.2.840.10045.3.1.1": 192,  # prime192v1
    "1.3.36.3.3.2.8.1.1.7": 256,  # brainpoolP256r1
    "1.3.36.3.3.2.8.1.1.11": 384,  # brainpoolP384r1
    "1.3.36.3.3.2.8.1.1.13": 512,  # brainpoolP512r1
    "1.2.156.10197.1.301": 256,  # SM2
}
_RSA_KEYS = ("1.2.840.113549.1.1.1", "1.2.840.113549.1.1.10")
_EC_KEYS = ("1.2.840.10045.2.1", "1.2.156.10197.1.301")
_DSA_KEY = "1.2.840.10040.4.1"
_COMMON_NAME = "2.5.4.3"


def _malformed(what: str, problem: str, offset: int) -> ValueError:
    return ValueError(f"malformed certificate: {what}: {problem} (at byte {offset})")


class _TLV(NamedTuple):
    """One DER element: its identifier octet and where it and its contents lie."""

    tag: int
    start: int
    body: int
    end: int


class _Reader:
    """Reads the DER elements in data[pos:end] one after another."""

    __slots__ = ("data", "pos", "end", "what")

    def __init__(self, data: bytes, pos: int, end: int, what: str) -> None:
        self.data, self.pos, self.end, self.what = data, pos, end, what

    def more(self) -> bool:
        return self.pos < self.end

    def peek(self) -> int:
        """The next identifier octet, or -1 at the end."""
        return self.data[self.pos] if self.pos < self.end else -1

    def read(self, what: str) -> _TLV:
        data, pos, end = self.data, self.pos, self.end
        start = pos
        if pos >= end:
            raise _malformed(what, "missing", pos)
        tag = data[pos]
        pos += 1
        if tag & 0x1F == 0x1F:  # high tag number: base-128 octets follow
            while pos < end and data[pos] & 0x80:
                pos += 1
            pos += 1
        if pos >= end:
            raise _malformed(what, "truncated before its length", start)
        first = data[pos]
        pos += 1
        if first < 0x80:
            length = first
        elif first == 0x80:
            raise _malformed(what, "indefinite length (not DER)", start)
        else:
            count = first & 0x7F
            if count == 0x7F:
                raise _malformed(what, "reserved length octet 0xff", start)
            if count > end - pos:
                raise _malformed(what, "truncated in its length", start)
            # Leading zero octets are not DER, but OpenSSL takes them: so do we.
            length = int.from_bytes(data[pos : pos + count], "big")
            pos += count
        if length > end - pos:
            raise _malformed(what, f"length {length} runs past the {end - pos} bytes left", start)
        self.pos = pos + length
        return _TLV(tag, start, pos, pos + length)

    def expect(self, tag: int, what: str) -> _TLV:
        tlv = self.read(what)
        if tlv.tag != tag:
            wanted = _TAG_NAMES.get(tag, f"tag 0x{tag:02x}")
            raise _malformed(what, f"expected {wanted}, found tag 0x{tlv.tag:02x}", tlv.start)
        return tlv

    def inner(self, tlv: _TLV, what: str) -> _Reader:
        return _Reader(self.data, tlv.body, tlv.end, what)

    def done(self) -> None:
        if self.pos < self.end:
            raise _malformed(self.what, f"{self.end - self.pos} unexpected bytes at the end", self.pos)


def _contents(data: bytes, tlv: _TLV) -> bytes:
    return data[tlv.body : tlv.end]


def _integer(data: bytes, tlv: _TLV, what: str) -> int:
    if tlv.body == tlv.end:
        raise _malformed(what, "empty INTEGER", tlv.start)
    return int.from_bytes(_contents(data, tlv), "big", signed=True)


def _boolean(data: bytes, tlv: _TLV, what: str) -> bool:
    if tlv.end - tlv.body != 1:
        raise _malformed(what, "BOOLEAN must be one octet", tlv.start)
    return data[tlv.body] != 0


def _bit_string(data: bytes, tlv: _TLV, what: str) -> None:
    if tlv.body == tlv.end:
        raise _malformed(what, "empty BIT STRING", tlv.start)
    if data[tlv.body] > 7:
        raise _malformed(what, f"BIT STRING claims {data[tlv.body]} unused bits", tlv.start)


def _oid(data: bytes, tlv: _TLV, what: str) -> str:
    body = _contents(data, tlv)
    if not body:
        raise _malformed(what, "empty OBJECT IDENTIFIER", tlv.start)
    if body[-1] & 0x80:
        raise _malformed(what, "OBJECT IDENTIFIER ends inside an arc", tlv.start)
    arcs: list[int] = []
    value = octets = 0
    for octet in body:
        if octets == 0 and octet == 0x80:
            raise _malformed(what, "OBJECT IDENTIFIER arc has a leading zero octet", tlv.start)
        octets += 1
        if octets > _MAX_OID_ARC_OCTETS:
            raise _malformed(what, "OBJECT IDENTIFIER arc is too long", tlv.start)
        value = (value << 7) | (octet & 0x7F)
        if not octet & 0x80:
            arcs.append(value)
            value = octets = 0
    first = min(arcs[0] // 40, 2)  # the first octet packs the top two arcs
    return ".".join(map(str, [first, arcs[0] - 40 * first, *arcs[1:]]))


def _algorithm(reader: _Reader, what: str) -> str:
    """An AlgorithmIdentifier's OID, its parameters skipped."""
    seq = reader.inner(reader.expect(_SEQUENCE, what), what)
    oid = _oid(seq.data, seq.expect(_OID, what), what)
    if seq.more():
        seq.read(f"{what} parameters")
    seq.done()
    return oid


def _public_key_bits(data: bytes, spki: _TLV) -> int:
    """The key's size as OpenSSL gives it; 0 for an algorithm not known here or a key it cannot read."""
    what = "subjectPublicKeyInfo"
    try:
        reader = _Reader(data, spki.body, spki.end, what)
        algorithm = reader.inner(reader.expect(_SEQUENCE, what), what)
        oid = _oid(data, algorithm.expect(_OID, what), what)
        parameters = algorithm.read(what) if algorithm.more() else None
        key = reader.expect(_BIT_STRING, what)
        if oid in _FIXED_KEY_BITS:
            return _FIXED_KEY_BITS[oid]
        if oid in _EC_KEYS and parameters is not None and parameters.tag == _OID:
            return _CURVE_BITS.get(_oid(data, parameters, what), 0)
        if oid in _RSA_KEYS:  # RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }
            inner = _Reader(data, key.body + 1, key.end, what)
            fields = inner.inner(inner.expect(_SEQUENCE, what), what)
            return _integer(data, fields.expect(_INTEGER, what), what).bit_length()
        if oid == _DSA_KEY and parameters is not None and parameters.tag == _SEQUENCE:  # Dss-Parms: p, q, g
            fields = _Reader(data, parameters.body, parameters.end, what)
            return _integer(data, fields.expect(_INTEGER, what), what).bit_length()
    except ValueError:
        pass
    return 0


def _time(data: bytes, tlv: _TLV, what: str) -> tuple[_dt.datetime, str]:
    body = _contents(data, tlv)
    # RFC 5280 4.1.2.5: UTCTime YYMMDDHHMMSSZ (YY < 50 is 20YY), GeneralizedTime YYYYMMDDHHMMSSZ.
    if tlv.tag not in (_UTC_TIME, _GENERALIZED_TIME):
        raise _malformed(what, f"expected UTCTime or GeneralizedTime, found tag 0x{tlv.tag:02x}", tlv.start)
    digits = body[:-1]
    if len(body) != (13 if tlv.tag == _UTC_TIME else 15) or not digits.isdigit() or body[-1:] != b"Z":
        raise _malformed(what, f"{_TAG_NAMES[tlv.tag]} {body!r} is not in the RFC 5280 form", tlv.start)
    if tlv.tag == _UTC_TIME:
        year = int(digits[:2])
        year += 2000 if year < 50 else 1900
        digits = digits[2:]
    else:
        year = int(digits[:4])
        digits = digits[4:]
    month, day, hour, minute, second = (int(digits[i : i + 2]) for i in range(0, 10, 2))
    try:
        when = _dt.datetime(year, month, day, hour, minute, second, tzinfo=_UTC)
    except ValueError as exc:
        raise _malformed(what, f"time {body!r} is not a date: {exc}", tlv.start) from None
    return when, body.decode("ascii")


class _Attribute(NamedTuple):
    """One attribute of a distinguished name."""

    key: str  # OpenSSL short name, or the dotted OID
    text: str
    raw: bytes  # the octets X509_NAME_oneline() prints
    rdn: int  # which RDN (SET) it belongs to
    dumped: bool  # not a string: text is "#" + hex of the whole encoding (RFC 4514, OpenSSL's dump_der)


def _attribute(data: bytes, key: str, value: _TLV, rdn: int) -> _Attribute:
    raw = _contents(data, value)
    codec = _STRING_CODECS.get(value.tag)
    if codec is not None:
        return _Attribute(key, raw.decode(codec, errors="replace"), raw, rdn, False)
    # What OpenSSL keeps as the value's data: a SEQUENCE whole, a BIT STRING without its unused-bits octet.
    if value.tag == _SEQUENCE:
        raw = data[value.start : value.end]
    elif value.tag == _BIT_STRING:
        raw = raw[1:]
    return _Attribute(key, "#" + data[value.start : value.end].hex().upper(), raw, rdn, True)


def _name(reader: _Reader, what: str) -> tuple[tuple[_Attribute, ...], bytes]:
    tlv = reader.expect(_SEQUENCE, what)
    data = reader.data
    rdns = reader.inner(tlv, what)
    attributes = []
    index = 0
    while rdns.more():
        rdn = rdns.inner(rdns.expect(_SET, what), what)
        while rdn.more():  # an empty SET is not X.501, but OpenSSL skips it: so do we
            pair = rdn.inner(rdn.expect(_SEQUENCE, what), what)
            oid = _oid(data, pair.expect(_OID, what), what)
            value = pair.read(f"{what} {oid} value")
            pair.done()
            attributes.append(_attribute(data, _NAME_SN.get(oid, oid), value, index))
        index += 1
    return tuple(attributes), data[tlv.start : tlv.end]


def _subject_alt_names(data: bytes, tlv: _TLV) -> tuple[tuple[str, str], ...]:
    what = "subjectAltName"
    outer = _Reader(data, tlv.body, tlv.end, what)
    names = outer.inner(outer.expect(_SEQUENCE, what), what)
    outer.done()
    found = []
    while names.more():
        name = names.read(what)
        if name.tag & 0xC0 != 0x80:
            raise _malformed(what, f"GeneralName has non-context tag 0x{name.tag:02x}", name.start)
        kind = _SAN_TYPES.get(name.tag)
        body = _contents(data, name)
        if kind == "IP Address":
            # Other lengths are address/mask pairs, which belong in name constraints;
            # OpenSSL prints them as "<invalid>", we leave them out.
            if len(body) in (4, 16):
                found.append((kind, ip_text(body)))
        elif kind is not None:
            found.append((kind, body.decode("latin-1")))
    return tuple(found)


def ip_text(packed: bytes) -> str:
    """An IP address's 4 or 16 bytes as text (inet_ntop: RFC 5952 for IPv6)."""
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


def _basic_constraints(data: bytes, tlv: _TLV) -> tuple[bool, int | None]:
    what = "basicConstraints"
    outer = _Reader(data, tlv.body, tlv.end, what)
    seq = outer.inner(outer.expect(_SEQUENCE, what), what)
    outer.done()
    ca, path_length = False, None
    if seq.peek() == _BOOLEAN:
        ca = _boolean(data, seq.read(what), what)
    if seq.peek() == _INTEGER:
        path_length = _integer(data, seq.read(what), what)
    seq.done()
    return ca, path_length


def _escape_rfc2253(value: str) -> str:
    """Escape a value the way OpenSSL's esc_2253 and esc_ctrl name options do."""
    out = []
    last = len(value) - 1
    for i, ch in enumerate(value):
        if ch in ',+"\\<>;' or (i == 0 and ch in "# ") or (i == last and ch == " "):
            out.append("\\" + ch)
        elif ch < " " or ch == "\x7f":
            out.append(f"\\{ord(ch):02X}")
        else:
            out.append(ch)
    return "".join(out)


def _name_text(attributes: tuple[_Attribute, ...]) -> str:
    out = []
    for i, attr in enumerate(attributes):
        if i:
            out.append(" + " if attr.rdn == attributes[i - 1].rdn else ", ")
        out.append(f"{attr.key}={attr.text if attr.dumped else _escape_rfc2253(attr.text)}")
    return "".join(out)


def _name_oneline(attributes: tuple[_Attribute, ...]) -> str:
    """X509_NAME_oneline() (OpenSSL 3): PHP's openssl_x509_parse()["name"]."""
    out = []
    for i, attr in enumerate(attributes):
        out.append("+" if i and attr.rdn == attributes[i - 1].rdn else "/")
        out.append(attr.key + "=")
        for octet in attr.raw:
            if octet < 0x20 or octet > 0x7E:
                out.append(f"\\x{octet:02X}")
            elif octet in b"/+":
                out.append("\\" + chr(octet))
            else:
                out.append(chr(octet))
    return "".join(out)


def _php_name(attributes: tuple[_Attribute, ...]) -> dict[str, str | list[str]]:
    """Like PHP: a repeated attribute becomes a list of its values; one that is not a string is left out."""
    out: dict[str, Any] = {}
    for attr in attributes:
        if attr.dumped:
            continue
        if attr.key not in out:
            out[attr.key] = attr.text
        elif isinstance(out[attr.key], list):
            out[attr.key].append(attr.text)
        else:
            out[attr.key] = [out[attr.key], attr.text]
    return out


def _bn2hex(value: int) -> str:
    """OpenSSL's BN_bn2hex(): whole octets, upper case, '-' for negatives."""
    magnitude = abs(value)
    digits = f"{magnitude:X}"
    if len(digits) % 2:
        digits = "0" + digits
    return ("-" if value < 0 else "") + (digits if magnitude else "0")


def _hex_digits(value: object, what: str) -> str:
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("latin-1")
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a hex string, not {type(value).__name__}")
    digits = value.replace(":", "").lower()
    if not digits:
        raise ValueError(f"{what} is empty")
    if not _HEX.fullmatch(digits):
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise ValueError(f"{what} is not hexadecimal: {shown!r}")
    return digits


def _pem_blocks(text: str | bytes) -> list[bytes]:
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("latin-1")  # only the base64 inside blocks matters
    elif not isinstance(text, str):
        raise TypeError(f"PEM text must be str or bytes, not {type(text).__name__}")
    blocks = []
    pos = 0
    while (begin := text.find(_PEM_BEGIN, pos)) >= 0:
        body = begin + len(_PEM_BEGIN)
        end = text.find(_PEM_END, body)
        if end < 0:
            raise ValueError(f"PEM CERTIFICATE block at offset {begin} has no END line")
        try:
            blocks.append(base64.b64decode("".join(text[body:end].split()), validate=True))
        except binascii.Error as exc:
            raise ValueError(f"PEM CERTIFICATE block at offset {begin} is not valid base64: {exc}") from None
        pos = end + len(_PEM_END)
    return blocks


class Summary(NamedTuple):
    """What a probe record tells of a certificate. The native backend reads it
    with OpenSSL in C (csrc/certinfo.c); the DER reader here gives the same fields
    the same way, and the test suite holds the two to each other."""

    subject_text: str
    issuer_text: str
    common_name: str | None  # the subject's last CN
    san: tuple[tuple[str, str], ...]
    serial_number: int
    not_before: _dt.datetime
    not_after: _dt.datetime
    version: int
    public_key_algorithm: str  # OpenSSL's long name, or the dotted OID
    public_key_bits: int  # 0 when unknown
    signature_algorithm: str
    self_signed: bool  # issuer and subject names equal octet for octet
    sha256: str  # lower-case hex of the DER's digest
    sha1: str
    spki_sha256: str  # of the DER SubjectPublicKeyInfo: what HPKP-style pins name


class Certificate:
    """One X.509 certificate: a value over its DER encoding.

    Immutable; equal and hashed by its DER bytes. ``Certificate(der)`` parses the
    whole certificate, so a malformed one raises :class:`ValueError` there. A
    certificate from the native backend arrives with its :class:`Summary` read by
    OpenSSL; the fields beyond it (``subject``, ``issuer``, ``is_ca``, ``to_dict()``)
    are read from the DER on first use, and raise :class:`ValueError` then if the
    reader here rejects what OpenSSL took.
    """

    __slots__ = (
        "_der",
        "_version",
        "_serial",
        "_signature_algorithm",
        "_public_key_algorithm",
        "_issuer",
        "_issuer_der",
        "_subject",
        "_subject_der",
        "_not_before",
        "_not_after",
        "_not_before_text",
        "_not_after_text",
        "_san",
        "_has_san",
        "_basic_constraints",
        "_spki",
        "_summary",
        "_load_summary",
        "_parsed",
    )

    def __init__(self, der: bytes) -> None:
        if isinstance(der, str):
            raise TypeError("Certificate() takes DER bytes; use Certificate.from_pem() for PEM text")
        der = memoryview(der).tobytes()
        if not der:
            raise ValueError("malformed certificate: no data")
        self._der = der
        self._parse()
        self._summary: Summary | None = None
        self._load_summary: Callable[[], Summary] = self._summarize

    @classmethod
    def _from_summary(cls, der: bytes, load_summary: Callable[[], Summary]) -> Certificate:
        """A certificate whose summary was read elsewhere (by OpenSSL), decoded on first use."""
        cert = object.__new__(cls)
        cert._der, cert._summary, cert._load_summary, cert._parsed = der, None, load_summary, False
        return cert

    def _full(self) -> Certificate:
        """Self, with every field read from the DER."""
        if not self._parsed:
            self._parse()
        return self

    def _summarize(self) -> Summary:
        common_names = [attr.text for attr in self._subject if attr.key == "CN" and not attr.dumped]
        der = self._der
        return Summary(
            _name_text(self._subject), _name_text(self._issuer), common_names[-1] if common_names else None,
            self._san, self._serial, self._not_before, self._not_after, self._version,
            _ALGORITHMS.get(self._public_key_algorithm, (None, self._public_key_algorithm))[1],
            _public_key_bits(der, self._spki),
            _ALGORITHMS.get(self._signature_algorithm, (None, self._signature_algorithm))[1],
            self._issuer_der == self._subject_der, hashlib.sha256(der).hexdigest(),
            hashlib.sha1(der, usedforsecurity=False).hexdigest(),
            hashlib.sha256(der[self._spki.start : self._spki.end]).hexdigest(),
        )

    def _parse(self) -> None:
        data = self._der
        top = _Reader(data, 0, len(data), "Certificate")
        cert = top.inner(top.expect(_SEQUENCE, "Certificate"), "Certificate")
        top.done()
        tbs = cert.inner(cert.expect(_SEQUENCE, "tbsCertificate"), "tbsCertificate")
        self._signature_algorithm = _algorithm(cert, "signatureAlgorithm")
        _bit_string(data, cert.expect(_BIT_STRING, "signatureValue"), "signatureValue")
        cert.done()

        self._version = 1
        if tbs.peek() == _CONTEXT_0:
            explicit = tbs.inner(tbs.read("version"), "version")
            version = _integer(data, explicit.expect(_INTEGER, "version"), "version")
            explicit.done()
            if version not in (0, 1, 2):
                raise ValueError(f"malformed certificate: version field is {version}, not 0-2 (v1-v3)")
            self._version = version + 1
        self._serial = _integer(data, tbs.expect(_INTEGER, "serialNumber"), "serialNumber")
        _algorithm(tbs, "signature")
        self._issuer, self._issuer_der = _name(tbs, "issuer")
        validity = tbs.inner(tbs.expect(_SEQUENCE, "validity"), "validity")
        self._not_before, self._not_before_text = _time(data, validity.read("notBefore"), "notBefore")
        self._not_after, self._not_after_text = _time(data, validity.read("notAfter"), "notAfter")
        validity.done()
        self._subject, self._subject_der = _name(tbs, "subject")
        self._spki = tbs.expect(_SEQUENCE, "subjectPublicKeyInfo")
        spki = tbs.inner(self._spki, "subjectPublicKeyInfo")
        self._public_key_algorithm = _algorithm(spki, "subjectPublicKeyInfo algorithm")
        _bit_string(data, spki.expect(_BIT_STRING, "subjectPublicKey"), "subjectPublicKey")
        spki.done()
        for unique_id in (_CONTEXT_1, _CONTEXT_2):
            if tbs.peek() == unique_id:
                tbs.read("uniqueIdentifier")

        self._san: tuple[tuple[str, str], ...] = ()
        self._has_san = False
        self._basic_constraints: tuple[bool, int | None] | None = None
        if tbs.peek() == _CONTEXT_3:
            self._parse_extensions(tbs)
        tbs.done()
        self._parsed = True

    def _parse_extensions(self, tbs: _Reader) -> None:
        data = self._der
        explicit = tbs.inner(tbs.read("extensions"), "extensions")
        extensions = explicit.inner(explicit.expect(_SEQUENCE, "extensions"), "extensions")
        explicit.done()
        seen = set()
        while extensions.more():
            ext = extensions.inner(extensions.expect(_SEQUENCE, "extension"), "extension")
            oid_tlv = ext.expect(_OID, "extension")
            oid = _oid(data, oid_tlv, "extension")
            if ext.peek() == _BOOLEAN:
                _boolean(data, ext.read(f"extension {oid} critical"), f"extension {oid}")
            value = ext.expect(_OCTET_STRING, f"extension {oid} value")
            ext.done()
            if oid in seen:  # RFC 5280 4.2: MUST NOT; which one would count?
                raise _malformed("extensions", f"extension {oid} appears twice", oid_tlv.start)
            seen.add(oid)
            if oid == _SUBJECT_ALT_NAME:
                self._san = _subject_alt_names(data, value)
                self._has_san = True
            elif oid == _BASIC_CONSTRAINTS:
                self._basic_constraints = _basic_constraints(data, value)

    # -- construction from PEM ------------------------------------------------

    @classmethod
    def from_pem(cls, text: str | bytes) -> Certificate:
        """The first ``CERTIFICATE`` block of PEM text (other blocks are ignored)."""
        blocks = _pem_blocks(text)
        if not blocks:
            raise ValueError("no PEM CERTIFICATE block found")
        return cls(blocks[0])

    @classmethod
    def load_pem_chain(cls, text: str | bytes) -> list[Certificate]:
        """Every ``CERTIFICATE`` block of PEM text, in order (empty if there are none)."""
        return [cls(der) for der in _pem_blocks(text)]

    # -- fields ---------------------------------------------------------------

    @property
    def der(self) -> bytes:
        return self._der

    @property
    def pem(self) -> str:
        return ssl.DER_cert_to_PEM_cert(self._der)

    @property
    def version(self) -> int:
        """1, 2 or 3 (the DER field holds one less)."""
        return self.summary.version

    @property
    def serial_number(self) -> int:
        return self.summary.serial_number

    @property
    def subject(self) -> dict[str, str]:
        """Attributes by OpenSSL short name (dotted OID if unknown); a repeated one keeps its last value."""
        return {attr.key: attr.text for attr in self._full()._subject}

    @property
    def issuer(self) -> dict[str, str]:
        return {attr.key: attr.text for attr in self._full()._issuer}

    @property
    def subject_items(self) -> tuple[tuple[str, str], ...]:
        """Every subject attribute as (name, value), in certificate order."""
        return tuple((attr.key, attr.text) for attr in self._full()._subject)

    @property
    def issuer_items(self) -> tuple[tuple[str, str], ...]:
        return tuple((attr.key, attr.text) for attr in self._full()._issuer)

    @property
    def subject_text(self) -> str:
        """One line in certificate order, as ``openssl x509 -subject`` prints it with ``-nameopt``
        ``esc_2253,esc_ctrl,utf8,dump_nostr,dump_der,sep_comma_plus_space,sname``: ``O=trustme, CN=localhost``.
        """
        return self.summary.subject_text

    @property
    def issuer_text(self) -> str:
        return self.summary.issuer_text

    @property
    def common_name(self) -> str | None:
        """The subject's CN (the last one when there are several), None when it has none."""
        return self.summary.common_name

    @property
    def san(self) -> tuple[tuple[str, str], ...]:
        """subjectAltName entries of type "DNS", "IP Address", "URI" and "email", in order."""
        return self.summary.san

    @property
    def not_before(self) -> _dt.datetime:
        return self.summary.not_before

    @property
    def not_after(self) -> _dt.datetime:
        return self.summary.not_after

    @property
    def signature_algorithm(self) -> str:
        return self.summary.signature_algorithm

    @property
    def public_key_algorithm(self) -> str:
        return self.summary.public_key_algorithm

    @property
    def public_key_bits(self) -> int:
        """The key's size in bits as OpenSSL counts it (256 for P-256, 253 for X25519); 0 when unknown."""
        return self.summary.public_key_bits

    @property
    def spki_sha256(self) -> str:
        """SHA-256 of the DER SubjectPublicKeyInfo, hex: the key's pin, unchanged when the certificate is renewed."""
        return self.summary.spki_sha256

    @property
    def summary(self) -> Summary:
        summary = self._summary
        if summary is None:
            summary = self._summary = self._load_summary()
        return summary

    @property
    def is_self_signed(self) -> bool:
        """Issuer and subject are the same name, octet for octet (the signature is not checked)."""
        return self.summary.self_signed

    @property
    def is_ca(self) -> bool:
        full = self._full()
        return full._basic_constraints is not None and full._basic_constraints[0]

    @property
    def is_expired(self) -> bool:
        """not_after has passed."""
        return self.summary.not_after < _dt.datetime.now(_UTC)

    # -- fingerprints and validity --------------------------------------------

    def fingerprint(self, algorithm: str = "sha256") -> str:
        """Lower-case hex digest of the DER bytes, by any fixed-length :mod:`hashlib` algorithm."""
        if not isinstance(algorithm, str):
            raise TypeError(f"algorithm must be a str, not {type(algorithm).__name__}")
        known = algorithm.lower()
        if known in ("sha256", "sha1"):
            return self.summary.sha256 if known == "sha256" else self.summary.sha1
        return _digest_hex(self._der, algorithm)

    def matches_fingerprint(self, spec: str | bytes | Mapping[str, str]) -> bool:
        """Check a PHP ``peer_fingerprint`` option against this certificate
        (see :func:`fingerprint_matches`)."""
        return fingerprint_matches(self._der, spec)

    def valid_at(self, when: _dt.datetime | None = None) -> bool:
        """Whether ``when`` (default: now) lies in [not_before, not_after], both inclusive (RFC 5280)."""
        if when is None:
            when = _dt.datetime.now(_UTC)
        elif not isinstance(when, _dt.datetime):
            raise TypeError(f"valid_at() takes a datetime, not {type(when).__name__}")
        elif when.utcoffset() is None:
            raise ValueError("valid_at() needs a timezone-aware datetime")
        return self.summary.not_before <= when <= self.summary.not_after

    # -- PHP's view -------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """What PHP's ``openssl_x509_parse()`` returns, for the fields read here.

        As in PHP: ``version`` is the raw field (2 for v3), a repeated name
        attribute is a list, ``serialNumber`` is decimal below 128 bits and
        ``0x``-prefixed hex above, and ``validFrom``/``validTo`` are the ASN.1
        time strings. ``extensions`` holds ``basicConstraints`` and
        ``subjectAltName`` when present, in OpenSSL's text form.
        """
        self._full()
        serial = self._serial
        if serial.bit_length() < 128:  # i2s_ASN1_INTEGER() switches to hex here
            serial_text = str(serial)
        else:
            hex_text = _bn2hex(serial)
            serial_text = "-0x" + hex_text[1:] if serial < 0 else "0x" + hex_text
        sig_sn, sig_ln = _ALGORITHMS.get(self._signature_algorithm, (self._signature_algorithm,) * 2)
        extensions = {}
        if self._basic_constraints is not None:
            ca, path_length = self._basic_constraints
            text = "CA:TRUE" if ca else "CA:FALSE"
            extensions["basicConstraints"] = text if path_length is None else f"{text}, pathlen:{path_length}"
        if self._has_san:
            extensions["subjectAltName"] = ", ".join(f"{kind}:{value}" for kind, value in self._san)
        return {
            "name": _name_oneline(self._subject),
            "subject": _php_name(self._subject),
            "issuer": _php_name(self._issuer),
            "version": self._version - 1,
            "serialNumber": serial_text,
            "serialNumberHex": _bn2hex(serial),
            "validFrom": self._not_before_text,
            "validTo": self._not_after_text,
            "validFrom_time_t": int(self._not_before.timestamp()),
            "validTo_time_t": int(self._not_after.timestamp()),
            "signatureTypeSN": sig_sn,
            "signatureTypeLN": sig_ln,
            "extensions": extensions,
        }

    # -- object protocol --------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Certificate):
            return NotImplemented
        return self._der == other._der

    def __hash__(self) -> int:
        return hash(self._der)

    def __reduce__(self) -> tuple[type[Certificate], tuple[bytes]]:
        return (Certificate, (self._der,))

    def __repr__(self) -> str:
        return (
            f"<Certificate subject={self.subject_text!r} issuer={self.issuer_text!r} "
            f"not_after={self.not_after.isoformat()}>"
        )


def _digest_hex(der: bytes, algorithm: str) -> str:
    try:
        digest = hashlib.new(algorithm.lower(), der, usedforsecurity=False)
    except (ValueError, TypeError):
        raise ValueError(f"unknown hash algorithm {algorithm!r}") from None
    if digest.digest_size == 0:  # shake_*: a fingerprint needs a fixed length
        raise ValueError(f"hash algorithm {algorithm!r} has no fixed digest length")
    return digest.hexdigest()


def parse_fingerprint_spec(spec: str | bytes | Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """PHP's ``peer_fingerprint`` as ``((algorithm, lower-case hex), ...)``.

    A hex string picks its algorithm by length (32 md5, 40 sha1, 64 sha256);
    a mapping ``{algorithm: hex}`` lists every digest that must match. Case and
    colons are ignored. A spec that cannot be checked raises ValueError.
    """
    if isinstance(spec, (str, bytes, bytearray)):
        digits = _hex_digits(spec, "peer_fingerprint")
        algorithm = _FINGERPRINT_LENGTHS.get(len(digits))
        if algorithm is None:
            raise ValueError(
                f"peer_fingerprint has {len(digits)} hex digits; expected 32 (md5), 40 (sha1) or 64 (sha256)"
            )
        return ((algorithm, digits),)
    if isinstance(spec, Mapping):
        if not spec:
            raise ValueError("peer_fingerprint mapping is empty: give at least one {algorithm: hex digest}")
        entries = []
        for algorithm, expected in spec.items():
            if not isinstance(algorithm, str):
                raise ValueError(f"peer_fingerprint keys must be algorithm names, not {algorithm!r}")
            digits = _hex_digits(expected, f"peer_fingerprint[{algorithm!r}]")
            size = len(_digest_hex(b"", algorithm))
            if len(digits) != size:
                raise ValueError(
                    f"peer_fingerprint[{algorithm!r}] has {len(digits)} hex digits; a {algorithm} digest has {size}"
                )
            entries.append((algorithm, digits))
        return tuple(entries)
    raise ValueError(
        "peer_fingerprint must be a hex string or a mapping of algorithm to hex string, "
        f"not {type(spec).__name__}"
    )


def fingerprint_matches(der: bytes, spec: str | bytes | Mapping[str, str]) -> bool:
    """True when every digest in ``spec`` matches the DER bytes. Works on the raw
    bytes, so a certificate this module cannot parse is still checked."""
    results = [hmac.compare_digest(_digest_hex(der, algorithm), digits) for algorithm, digits in
               parse_fingerprint_spec(spec)]
    return all(results)
