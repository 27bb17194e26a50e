"""Certificate: every field against `openssl x509`, PEM, fingerprint specs, and malformed DER.

The certificates come from trustme, from the `cryptography` builder (test-only: names
and algorithms trustme cannot make) and from a small DER encoder below (what no
builder will emit: v1, negative serials, odd string types). Expected values come
from running `openssl x509` on the same bytes, except where the test chose them.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import ipaddress
import pickle
import re
import socket
import ssl
import subprocess
import time

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsock import certificate as certmod
from streamsock.certificate import Certificate

UTC = dt.timezone.utc
NOW = dt.datetime.now(UTC).replace(microsecond=0)
DAY = dt.timedelta(days=1)

# -- a DER encoder, for certificates no builder will make --------------------------


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    octets = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def tlv(tag: int, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return bytes([tag]) + _length(len(body)) + body


def der_int(n: int) -> bytes:
    return tlv(0x02, n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big", signed=True))


def der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray()
    for value in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        group = [value & 0x7F]
        value >>= 7
        while value:
            group.append(0x80 | (value & 0x7F))
            value >>= 7
        out += bytes(reversed(group))
    return tlv(0x06, bytes(out))


def der_name(*rdns: list[tuple[str, bytes]]) -> bytes:
    """A Name from RDNs, each a list of (dotted OID, encoded value)."""
    return tlv(0x30, *(tlv(0x31, *(tlv(0x30, der_oid(oid), value) for oid, value in rdn)) for rdn in rdns))


def utf8(text: str) -> bytes:
    return tlv(0x0C, text.encode())


@functools.cache
def _spki() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _nested(depth: int, tag: int = 0x30) -> bytes:
    data = b""
    for _ in range(depth):
        data = tlv(tag, data)
    return data


def der_extension(oid: str, value: bytes, critical: bool = False) -> bytes:
    return tlv(0x30, der_oid(oid), tlv(0x01, b"\xff") if critical else b"", tlv(0x04, value))


SIMPLE_NAME = der_name([("2.5.4.3", utf8("built"))])


def build_cert(
    *,
    version: int | None = 3,
    serial: bytes = der_int(1),
    issuer: bytes = SIMPLE_NAME,
    subject: bytes = SIMPLE_NAME,
    not_before: bytes = tlv(0x17, b"250101000000Z"),
    not_after: bytes = tlv(0x17, b"350101000000Z"),
    extensions: list[bytes] | None = None,
    tail: bytes = b"",
    signature_oid: str = "1.2.840.10045.4.3.2",
    signature: bytes = tlv(0x03, b"\x00" + bytes(72)),
) -> bytes:
    """A certificate with a dummy signature: openssl x509 prints it without checking."""
    algorithm = tlv(0x30, der_oid(signature_oid))
    fields = [] if version is None else [tlv(0xA0, der_int(version - 1))]
    fields += [serial, algorithm, issuer, tlv(0x30, not_before, not_after), subject, _spki()]
    if extensions is not None:
        fields.append(tlv(0xA3, tlv(0x30, *extensions)))
    return tlv(0x30, tlv(0x30, *fields, tail), algorithm, signature)


# -- the certificates ---------------------------------------------------------------


def _crypto_cert(name: x509.Name, key, algorithm=None, *, extensions=(), **sign_args) -> bytes:
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(dt.datetime(2060, 6, 30, 12, 30, 45, tzinfo=UTC))  # GeneralizedTime from 2050 on
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical)
    return builder.sign(key, algorithm, **sign_args).public_bytes(serialization.Encoding.DER)


def _tricky_name() -> x509.Name:
    a, rdn = x509.NameAttribute, x509.RelativeDistinguishedName
    return x509.Name(
        [
            rdn([a(NameOID.DOMAIN_COMPONENT, "org")]),
            rdn([a(NameOID.DOMAIN_COMPONENT, "example")]),
            rdn([a(NameOID.COUNTRY_NAME, "DE")]),
            rdn([a(NameOID.ORGANIZATION_NAME, 'a,b+c"d\\e<f>g;h=i/j')]),
            rdn([a(NameOID.ORGANIZATIONAL_UNIT_NAME, "#lead"), a(NameOID.COMMON_NAME, " spaced ")]),
            rdn([a(NameOID.LOCALITY_NAME, "ctl\x01x\x7fy\nz")]),
            rdn([a(NameOID.STATE_OR_PROVINCE_NAME, "caf\u00e9 \U0001f600 \u4f8b")]),
            rdn([a(NameOID.STREET_ADDRESS, "bmp\u00e9\u4f8b", _ASN1Type.BMPString)]),
            rdn([a(NameOID.POSTAL_CODE, "univ\u00e9\U0001f600", _ASN1Type.UniversalString)]),
            rdn([a(x509.ObjectIdentifier("1.2.3.4.5"), "unknown oid")]),
            rdn([a(NameOID.EMAIL_ADDRESS, "someone@example.org")]),
            rdn([a(NameOID.SERIAL_NUMBER, "12345")]),
            rdn([a(NameOID.GIVEN_NAME, "")]),
            rdn([a(NameOID.USER_ID, "uid=7")]),
        ]
    )


IDENTITIES = {  # trustme leaf name -> the identities it was issued for
    "localhost": ["localhost"],
    "ipv4": ["127.0.0.1"],
    "ipv6": ["::1"],
    "wildcard": ["*.example.org"],
    "many-names": [
        "localhost",
        "127.0.0.1",
        "::1",
        "2001:db8::8a2e:370:7334",
        "::ffff:192.0.2.1",
        "*.example.org",
        "café.example.com",
        "user@example.com",
        "10.0.0.0/8",  # a network: an 8-octet iPAddress, which san leaves out
    ],
}


def _ip_text(address: str) -> str:
    """RFC 5952 text, IPv4-mapped addresses in dotted form (as inet_ntop writes them)."""
    packed = ipaddress.ip_address(address).packed
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


def _expected_san(identities: list[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for identity in identities:
        if "/" in identity:
            continue
        try:
            out.append(("IP Address", _ip_text(identity)))
        except ValueError:
            if "@" in identity:
                out.append(("email", identity))
            else:
                out.append(("DNS", identity.encode("idna").decode("ascii") if "*" not in identity else identity))
    return tuple(out)


@functools.cache
def corpus() -> dict[str, bytes]:
    """Every certificate checked against openssl, by name."""
    ca = trustme.CA()
    rsa_ca = trustme.CA(key_type=trustme.KeyType.RSA, organization_name="RSA Root", organization_unit_name="Unit")
    child = ca.create_child_ca()
    pems = {
        "ca": ca.cert_pem.bytes(),
        "rsa-ca": rsa_ca.cert_pem.bytes(),
        "intermediate": child.cert_pem.bytes(),
        "from-intermediate": child.issue_cert("localhost").cert_chain_pems[0].bytes(),
        "rsa-leaf": rsa_ca.issue_cert("localhost", key_type=trustme.KeyType.RSA).cert_chain_pems[0].bytes(),
        "common-name": ca.issue_cert(
            "localhost", common_name="localhost", organization_name="Example, Inc.", organization_unit_name="R+D"
        )
        .cert_chain_pems[0]
        .bytes(),
        "expired": ca.issue_cert("localhost", not_before=NOW - 30 * DAY, not_after=NOW - DAY)
        .cert_chain_pems[0]
        .bytes(),
        "not-yet-valid": ca.issue_cert("localhost", not_before=NOW + DAY, not_after=NOW + 30 * DAY)
        .cert_chain_pems[0]
        .bytes(),
    }
    for name, identities in IDENTITIES.items():
        pems[name] = ca.issue_cert(*identities).cert_chain_pems[0].bytes()
    certs = {name: ssl.PEM_cert_to_DER_cert(pem.decode()) for name, pem in pems.items()}

    plain = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plain")])
    certs["tricky-names"] = _crypto_cert(_tricky_name(), ed25519.Ed25519PrivateKey.generate())
    certs["ed448"] = _crypto_cert(plain, ed448.Ed448PrivateKey.generate())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    certs["rsa-pss"] = _crypto_cert(
        plain,
        rsa_key,
        hashes.SHA256(),
        rsa_padding=padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
    )
    certs["rsa-sha512"] = _crypto_cert(plain, rsa_key, hashes.SHA512())
    certs["ecdsa-sha384"] = _crypto_cert(plain, ec.generate_private_key(ec.SECP384R1()), hashes.SHA384())
    certs["dsa"] = _crypto_cert(plain, dsa.generate_private_key(key_size=2048), hashes.SHA256())
    certs["mixed-san"] = _crypto_cert(
        plain,
        ed25519.Ed25519PrivateKey.generate(),
        extensions=[
            (
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("a.example"),
                        x509.DirectoryName(plain),
                        x509.UniformResourceIdentifier("https://example.org/x?y=1"),
                        x509.OtherName(x509.ObjectIdentifier("1.2.3.4"), b"\x0c\x01x"),
                        x509.RFC822Name("mail@example.org"),
                        x509.RegisteredID(x509.ObjectIdentifier("1.2.3.5")),
                        x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
                        x509.IPAddress(ipaddress.ip_network("192.0.2.0/24")),
                    ]
                ),
                False,
            ),
            (x509.BasicConstraints(ca=True, path_length=None), True),
        ],
    )
    certs["ca-pathlen-0"] = _crypto_cert(
        plain,
        ec.generate_private_key(ec.SECP256R1()),
        hashes.SHA256(),
        extensions=[(x509.BasicConstraints(ca=True, path_length=0), True)],
    )

    certs["v1"] = build_cert(version=None)
    certs["v1-explicit"] = build_cert(version=1)
    certs["negative-serial"] = build_cert(serial=der_int(-12345))
    certs["zero-serial"] = build_cert(serial=der_int(0))
    certs["big-serial"] = build_cert(serial=der_int(2**300 + 12345))
    certs["big-negative-serial"] = build_cert(serial=der_int(-(2**200)))
    certs["utc-century-edges"] = build_cert(
        not_before=tlv(0x17, b"500101000000Z"), not_after=tlv(0x17, b"491231235959Z")
    )
    certs["generalized-times"] = build_cert(
        not_before=tlv(0x18, b"19491231235959Z"), not_after=tlv(0x18, b"99991231235959Z")
    )
    certs["string-types"] = build_cert(
        subject=der_name(
            [("2.5.4.3", tlv(0x13, b"Printable 'x' (y) = z?"))],
            [("2.5.4.5", tlv(0x12, b"0123 456"))],
            [("2.5.4.10", tlv(0x14, b"T61 caf\xe9"))],  # OpenSSL reads T61String as Latin-1
            [("1.2.840.113549.1.9.1", tlv(0x16, b"ia5@example.org"))],
            [("2.5.4.11", tlv(0x1E, "BMP \u00e9\u4f8b".encode("utf-16-be")))],
            [("2.5.4.7", tlv(0x1C, "Universal \U0001f600".encode("utf-32-be")))],
            [("2.5.4.8", utf8("UTF-8 \u00fc"))],
        ),
        extensions=[],
    )
    certs["repeated-attributes"] = build_cert(
        subject=der_name(
            [("0.9.2342.19200300.100.1.25", tlv(0x16, b"com"))],
            [("0.9.2342.19200300.100.1.25", tlv(0x16, b"example"))],
            [("0.9.2342.19200300.100.1.25", tlv(0x16, b"www"))],
            [("2.5.4.11", utf8("first")), ("2.5.4.11", utf8("second"))],
            [("2.5.4.3", utf8("last"))],
        ),
        issuer=der_name(),  # an empty issuer name
    )
    certs["empty-rdns"] = build_cert(  # not X.501, but OpenSSL skips empty RDNs
        subject=tlv(0x30, tlv(0x31), tlv(0x31, tlv(0x30, der_oid("2.5.4.3"), utf8("a"))), tlv(0x31)),
        issuer=tlv(0x30, tlv(0x31)),
    )
    certs["non-string-values"] = build_cert(
        subject=der_name(
            [("2.5.4.45", tlv(0x03, b"\x00\x01/+\x02"))],  # x500UniqueIdentifier is a BIT STRING
            [("2.5.4.3", _nested(50))],
            [("2.5.4.10", tlv(0x0B, b"tag eleven"))],
            [("2.5.4.11", utf8("plain"))],
        )
    )
    certs["ca-flag-only"] = build_cert(
        extensions=[der_extension("2.5.29.19", tlv(0x30, tlv(0x01, b"\xff")), critical=True)]
    )
    certs["empty-basic-constraints"] = build_cert(extensions=[der_extension("2.5.29.19", tlv(0x30))])
    certs["unknown-algorithm"] = build_cert(signature_oid="1.2.3.4.5.6")
    return certs


CORPUS_NAMES = [
    "ca", "rsa-ca", "intermediate", "from-intermediate", "rsa-leaf", "common-name", "expired",
    "not-yet-valid", *IDENTITIES, "tricky-names", "ed448", "rsa-pss", "rsa-sha512", "ecdsa-sha384",
    "dsa", "mixed-san", "ca-pathlen-0", "v1", "v1-explicit", "negative-serial", "zero-serial",
    "big-serial", "big-negative-serial", "utc-century-edges", "generalized-times", "string-types",
    "repeated-attributes", "empty-rdns", "non-string-values", "ca-flag-only", "empty-basic-constraints", "unknown-algorithm",
]  # fmt: skip


def cert(name: str) -> Certificate:
    return Certificate(corpus()[name])


def test_corpus_names_are_complete():
    assert sorted(corpus()) == sorted(CORPUS_NAMES)


# -- what openssl x509 says ---------------------------------------------------------

NAMEOPT = "esc_2253,esc_ctrl,utf8,dump_nostr,dump_der,sep_comma_plus_space,sname"


def openssl(der: bytes, *args: str, noout: bool = True) -> str:
    command = ["openssl", "x509", "-inform", "DER", *(["-noout"] if noout else []), *args]
    done = subprocess.run(command, input=der, capture_output=True, check=True, timeout=60)
    return done.stdout.decode("utf-8")


def _unescape(value: str) -> str:
    return re.sub(r"\\([0-9A-F]{2}|.)", lambda m: chr(int(m[1], 16)) if len(m[1]) == 2 else m[1], value)


_NAME_PART = re.compile(r"([^=]+)=((?:\\[0-9A-F]{2}|\\[^0-9A-F]|[^\\,+])*)(, | \+ |$)")


def _openssl_name_items(text: str, *, strings_only: bool = False) -> list[tuple[str, str]]:
    """Split openssl's one-line name (NAMEOPT) back into (key, value) pairs."""
    items, pos = [], 0
    while pos < len(text):
        match = _NAME_PART.match(text, pos)
        assert match, f"cannot split {text[pos:]!r}"
        if not (strings_only and match[2].startswith("#")):  # an unescaped # starts a hex dump
            items.append((match[1], _unescape(match[2])))
        pos = match.end()
    return items


def _openssl_date(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%b %d %H:%M:%S %Y GMT").replace(tzinfo=UTC)


def _openssl_san(text: str) -> tuple[tuple[str, str], ...]:
    out = []
    for entry in text.split(", ") if text else []:
        kind, _, value = entry.partition(":")
        if kind == "IP Address" and not value.startswith("<"):
            out.append((kind, _ip_text(value)))  # 3.0 prints IPv6 uncompressed
        elif kind in ("DNS", "URI", "email"):
            out.append((kind, value))
    return tuple(out)


@functools.cache
def openssl_view(der: bytes) -> dict:
    view: dict = {}
    text = openssl(der, "-text")
    view["version"] = int(re.search(r"^ *Version: (\d) ", text, re.M)[1])
    view["signature_algorithm"] = re.search(r"^ *Signature Algorithm: (.+)$", text, re.M)[1].strip()
    view["public_key_algorithm"] = re.search(r"^ *Public Key Algorithm: (.+)$", text, re.M)[1].strip()
    fields = openssl(der, "-subject", "-issuer", "-serial", "-dates", "-nameopt", NAMEOPT)
    for line in fields.replace("\\\n", "").splitlines():  # long serials are wrapped with a backslash
        key, _, value = line.partition("=")
        view[key] = value
    view["compat_name"] = openssl(der, "-subject", "-nameopt", "compat").strip().partition("=")[2]
    for algorithm in ("md5", "sha1", "sha256"):
        line = openssl(der, "-fingerprint", f"-{algorithm}").strip()
        view[algorithm] = line.partition("=")[2]
    subject_hash, issuer_hash = openssl(der, "-subject_hash", "-issuer_hash").split()
    view["same_name_hash"] = subject_hash == issuer_hash
    sections: dict[str, list[str]] = {}
    heading = ""
    for line in openssl(der, "-ext", "subjectAltName,basicConstraints").splitlines():
        if line.startswith(" "):
            sections[heading].append(line.strip())
        elif line.strip():
            heading = line.split(":")[0]
            sections[heading] = []
    san = sections.get("X509v3 Subject Alternative Name")
    view["san_text"] = None if san is None else " ".join(san)
    view["basic_constraints"] = " ".join(sections.get("X509v3 Basic Constraints", [])) or None
    view["pem"] = openssl(der, "-outform", "PEM", noout=False)
    return view


# -- every field against openssl ----------------------------------------------------


@pytest.fixture(params=CORPUS_NAMES)
def pair(request) -> tuple[Certificate, dict]:
    der = corpus()[request.param]
    return Certificate(der), openssl_view(der)


def test_subject_and_issuer_text(pair):
    c, view = pair
    assert c.subject_text == view["subject"]
    assert c.issuer_text == view["issuer"]


def test_subject_and_issuer_items(pair):
    c, view = pair
    assert list(c.subject_items) == _openssl_name_items(view["subject"])
    assert list(c.issuer_items) == _openssl_name_items(view["issuer"])


def test_subject_and_issuer_dicts_keep_the_last_value(pair):
    c, view = pair
    assert c.subject == dict(_openssl_name_items(view["subject"]))
    assert c.issuer == dict(_openssl_name_items(view["issuer"]))


def test_serial_number(pair):
    c, view = pair
    assert c.serial_number == int(view["serial"], 16)


def test_dates(pair):
    c, view = pair
    assert c.not_before == _openssl_date(view["notBefore"])
    assert c.not_after == _openssl_date(view["notAfter"])
    assert c.not_before.tzinfo is UTC and c.not_after.tzinfo is UTC


def test_version_and_algorithms(pair):
    c, view = pair
    assert c.version == view["version"]
    assert c.signature_algorithm == view["signature_algorithm"]
    assert c.public_key_algorithm == view["public_key_algorithm"]


def test_fingerprints(pair):
    c, view = pair
    for algorithm in ("md5", "sha1", "sha256"):
        assert c.fingerprint(algorithm) == view[algorithm].replace(":", "").lower()
        assert c.matches_fingerprint(view[algorithm])  # "AB:CD:..." exactly as openssl prints it
    assert c.fingerprint() == c.fingerprint("sha256")


def test_subject_alt_names(pair):
    c, view = pair
    assert c.san == (_openssl_san(view["san_text"]) if view["san_text"] is not None else ())


def test_basic_constraints_and_self_signed(pair):
    c, view = pair
    assert c.is_ca == (view["basic_constraints"] or "").startswith("CA:TRUE")
    # subject_hash == issuer_hash is OpenSSL's name comparison; for these certificates
    # it agrees with comparing the DER.
    assert c.is_self_signed == view["same_name_hash"]


def test_pem(pair):
    c, view = pair
    assert c.pem.strip() == view["pem"].strip()
    assert Certificate.from_pem(view["pem"]) == c


def test_to_dict(pair):
    c, view = pair
    d = c.to_dict()
    assert d["name"] == view["compat_name"]
    assert d["version"] == view["version"] - 1  # PHP reports the raw field
    assert d["validFrom_time_t"] == int(_openssl_date(view["notBefore"]).timestamp())
    assert d["validTo_time_t"] == int(_openssl_date(view["notAfter"]).timestamp())
    assert int(d["serialNumberHex"], 16) == int(view["serial"], 16)
    assert d["serialNumberHex"] == d["serialNumberHex"].upper()
    serial = int(view["serial"], 16)
    if serial.bit_length() < 128:
        assert d["serialNumber"] == str(serial)
    else:
        assert int(d["serialNumber"].replace("0x", ""), 16) == serial and "0x" in d["serialNumber"]
    assert d["signatureTypeLN"] == view["signature_algorithm"]
    items = _openssl_name_items(view["subject"], strings_only=True)
    for key, value in d["subject"].items():
        assert (value if isinstance(value, list) else [value]) == [v for k, v in items if k == key]
    assert set(d["subject"]) == {k for k, _ in items}  # PHP leaves out values that are not strings
    extensions = d["extensions"]
    if view["san_text"] is None:
        assert "subjectAltName" not in extensions
    else:
        expected = ", ".join(f"{kind}:{value}" for kind, value in _openssl_san(view["san_text"]))
        assert extensions["subjectAltName"] == expected
    assert extensions.get("basicConstraints") == view["basic_constraints"]


# -- fields the tests chose ------------------------------------------------------


@pytest.mark.parametrize("name", list(IDENTITIES))
def test_san_is_what_trustme_was_asked_for(name):
    assert cert(name).san == _expected_san(IDENTITIES[name])


def test_chosen_fields():
    c = cert("common-name")
    assert c.subject["CN"] == "localhost" and c.subject["O"] == "Example, Inc." and c.subject["OU"] == "R+D"
    assert c.subject_text == r"O=Example\, Inc., OU=R\+D, CN=localhost"
    assert c.to_dict()["name"] == r"/O=Example, Inc./OU=R\+D/CN=localhost"
    assert cert("negative-serial").serial_number == -12345
    assert cert("negative-serial").to_dict()["serialNumber"] == "-12345"
    assert cert("zero-serial").to_dict()["serialNumberHex"] == "0"
    big = cert("big-negative-serial").to_dict()
    assert big["serialNumber"] == "-0x" + format(2**200, "X").rjust(52, "0")
    assert big["serialNumberHex"] == "-" + format(2**200, "X").rjust(52, "0")
    assert cert("v1").version == 1 and cert("v1-explicit").version == 1 and cert("ca").version == 3
    assert cert("v1").to_dict()["extensions"] == {}
    assert cert("utc-century-edges").not_before == dt.datetime(1950, 1, 1, tzinfo=UTC)
    assert cert("utc-century-edges").not_after == dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert cert("utc-century-edges").to_dict()["validFrom"] == "500101000000Z"
    assert cert("generalized-times").not_after == dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert cert("generalized-times").to_dict()["validTo"] == "99991231235959Z"
    assert cert("unknown-algorithm").signature_algorithm == "1.2.3.4.5.6"
    assert cert("ed448").signature_algorithm == "ED448" == cert("ed448").public_key_algorithm
    assert cert("rsa-leaf").public_key_algorithm == "rsaEncryption"
    assert cert("rsa-leaf").signature_algorithm == "sha256WithRSAEncryption"
    assert cert("localhost").signature_algorithm == "ecdsa-with-SHA256"
    assert cert("localhost").public_key_algorithm == "id-ecPublicKey"


def test_repeated_attributes():
    c = cert("repeated-attributes")
    assert c.subject_items == (
        ("DC", "com"), ("DC", "example"), ("DC", "www"), ("OU", "first"), ("OU", "second"), ("CN", "last"),
    )  # fmt: skip
    assert c.subject == {"DC": "www", "OU": "second", "CN": "last"}
    assert c.subject_text == "DC=com, DC=example, DC=www, OU=first + OU=second, CN=last"
    assert c.to_dict()["subject"] == {"DC": ["com", "example", "www"], "OU": ["first", "second"], "CN": "last"}
    assert c.to_dict()["name"] == "/DC=com/DC=example/DC=www/OU=first+OU=second/CN=last"
    assert c.issuer == {} and c.issuer_items == () and c.issuer_text == ""


def test_chain_roles():
    assert cert("ca").is_ca and cert("ca").is_self_signed
    assert cert("intermediate").is_ca and not cert("intermediate").is_self_signed
    assert not cert("localhost").is_ca and not cert("localhost").is_self_signed
    assert cert("intermediate").issuer == cert("ca").subject
    assert cert("from-intermediate").issuer == cert("intermediate").subject
    assert cert("ca-pathlen-0").to_dict()["extensions"]["basicConstraints"] == "CA:TRUE, pathlen:0"
    assert cert("ca").to_dict()["extensions"]["basicConstraints"] == "CA:TRUE, pathlen:9"
    assert cert("v1").is_ca is False and cert("empty-basic-constraints").is_ca is False


@pytest.mark.parametrize("name", CORPUS_NAMES)
def test_openssl_reads_the_summary_the_der_reader_reads(name):
    """The native backend's certificates (csrc/certinfo.c, OpenSSL) against the DER reader's, field by field."""
    native = pytest.importorskip("streamsock._native")
    der = corpus()[name]
    described, read = native.certificate(der), Certificate(der)
    assert described == read
    for field in read.summary._fields:
        assert getattr(described.summary, field) == getattr(read.summary, field), field
    assert described.subject == read.subject and described.to_dict() == read.to_dict()  # read lazily from the DER


def test_openssl_refuses_what_it_cannot_parse():
    native = pytest.importorskip("streamsock._native")
    der = corpus()["localhost"]
    for broken in (b"", der[:-1], der + b"\0", b"\x30\x03\x02\x01\x01"):
        with pytest.raises(ValueError, match="malformed certificate"):
            native.certificate(broken)


def test_public_key_sizes():
    assert cert("rsa-leaf").public_key_bits == 2048 and cert("dsa").public_key_bits == 2048
    assert cert("ecdsa-sha384").public_key_bits == 384 and cert("localhost").public_key_bits == 256
    assert (cert("tricky-names").public_key_bits, cert("ed448").public_key_bits) == (256, 456)  # Ed25519, Ed448
    assert cert("common-name").common_name == "localhost" and cert("repeated-attributes").common_name == "last"


def test_name_tables_match_openssl():
    txt2obj = getattr(getattr(ssl, "_ssl", None), "txt2obj", None)
    if txt2obj is None:
        pytest.skip("this Python's ssl module has no txt2obj")
    for oid, short in certmod._NAME_SN.items():
        assert txt2obj(oid, False)[1] == short, oid
    for oid, (short, long) in certmod._ALGORITHMS.items():
        assert txt2obj(oid, False)[1:3] == (short, long), oid


def test_non_string_attribute_values_are_hex_dumped():
    nested = _nested(3000)  # deep, but never descended into
    c = Certificate(build_cert(subject=der_name([("2.5.4.3", nested)], [("2.5.4.10", tlv(0x02, b"\x05"))])))
    assert c.subject["CN"] == "#" + nested.hex().upper()
    assert c.subject["O"] == "#020105"
    assert c.subject_text.endswith(", O=#020105")
    assert c.to_dict()["subject"] == {}
    assert cert("non-string-values").subject["x500UniqueIdentifier"] == "#030500012F2B02"


# -- validity -------------------------------------------------------------------


def test_valid_at():
    assert cert("localhost").valid_at()
    assert not cert("expired").valid_at()
    assert not cert("not-yet-valid").valid_at()
    c = cert("expired")
    assert c.valid_at(c.not_before) and c.valid_at(c.not_after)  # both ends inclusive
    assert not c.valid_at(c.not_before - dt.timedelta(seconds=1))
    assert not c.valid_at(c.not_after + dt.timedelta(seconds=1))
    plus5 = dt.timezone(dt.timedelta(hours=5))
    assert c.valid_at(c.not_after.astimezone(plus5))
    with pytest.raises(ValueError, match="timezone-aware"):
        c.valid_at(dt.datetime(2020, 1, 1))
    with pytest.raises(TypeError):
        c.valid_at("2020-01-01")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["localhost", "expired", "not-yet-valid", "ca"])
def test_expiry_agrees_with_openssl_checkend(name):
    der = corpus()[name]
    done = subprocess.run(
        ["openssl", "x509", "-inform", "DER", "-noout", "-checkend", "0"], input=der, capture_output=True
    )
    not_expired = done.returncode == 0
    assert not_expired == (Certificate(der).not_after > dt.datetime.now(UTC))
    if name != "not-yet-valid":
        assert Certificate(der).valid_at() == not_expired


# -- fingerprint specs ------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha256"])
def test_fingerprint_string_forms(algorithm):
    c = cert("localhost")
    digest = hashlib.new(algorithm, c.der).hexdigest()
    colons = ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))
    for spec in (digest, digest.upper(), colons, colons.upper(), digest.encode()):
        assert c.matches_fingerprint(spec), spec
    wrong = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    assert not c.matches_fingerprint(wrong)
    assert not cert("ca").matches_fingerprint(digest)


def test_fingerprint_mapping_forms():
    c = cert("rsa-leaf")
    sha256, sha1 = hashlib.sha256(c.der).hexdigest(), hashlib.sha1(c.der).hexdigest()
    assert c.matches_fingerprint({"sha256": sha256})
    assert c.matches_fingerprint({"sha256": sha256.upper(), "sha1": sha1})
    assert c.matches_fingerprint({"SHA256": sha256})
    assert c.matches_fingerprint({"sha512": hashlib.sha512(c.der).hexdigest()})
    assert c.matches_fingerprint({"sha3_256": hashlib.sha3_256(c.der).hexdigest()})
    assert not c.matches_fingerprint({"sha256": sha256, "sha1": "0" * 40})  # every entry must match
    assert not c.matches_fingerprint({"sha1": "0" * 40})


def test_fingerprint_algorithms():
    c = cert("localhost")
    assert c.fingerprint() == hashlib.sha256(c.der).hexdigest()
    assert c.fingerprint("SHA1") == hashlib.sha1(c.der).hexdigest()
    assert c.fingerprint("blake2b") == hashlib.blake2b(c.der).hexdigest()
    with pytest.raises(ValueError, match="unknown hash algorithm 'nope'"):
        c.fingerprint("nope")
    with pytest.raises(ValueError, match="no fixed digest length"):
        c.fingerprint("shake_128")
    with pytest.raises(TypeError):
        c.fingerprint(None)  # type: ignore[arg-type]


SHA256 = "0" * 64
BAD_SPECS = [
    ("", "is empty"),
    (":::", "is empty"),
    ("zz" * 16, "not hexadecimal"),
    ("0x" + "0" * 30, "not hexadecimal"),
    (" " + "0" * 32, "not hexadecimal"),
    ("0" * 48, "48 hex digits; expected 32 \\(md5\\), 40 \\(sha1\\) or 64 \\(sha256\\)"),
    ("0" * 31, "31 hex digits"),
    ({}, "mapping is empty"),
    ({"nope": SHA256}, "unknown hash algorithm 'nope'"),
    ({"sha256": "0" * 40}, r"peer_fingerprint\['sha256'\] has 40 hex digits; a sha256 digest has 64"),
    ({"sha256": 5}, r"peer_fingerprint\['sha256'\] must be a hex string, not int"),
    ({"sha256": ""}, "is empty"),
    ({1: SHA256}, "keys must be algorithm names"),
    ({"shake_256": "00"}, "no fixed digest length"),
    ({"sha1": "1" * 40, "nope": SHA256}, "unknown hash algorithm"),  # a mismatch does not hide an error
    (None, "not NoneType"),
    (["0" * 64], "not list"),
    (64, "not int"),
]


@pytest.mark.parametrize("spec, message", BAD_SPECS, ids=[repr(s)[:30] for s, _ in BAD_SPECS])
def test_bad_fingerprint_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        cert("localhost").matches_fingerprint(spec)


# -- PEM --------------------------------------------------------------------------


def test_pem_round_trip_and_chains():
    ca = trustme.CA()
    child = ca.create_child_ca()
    leaf = child.issue_cert("localhost")
    chain = [Certificate.from_pem(p.bytes()) for p in leaf.cert_chain_pems]
    assert [c.der for c in chain] == [ssl.PEM_cert_to_DER_cert(p.bytes().decode()) for p in leaf.cert_chain_pems]
    bundle = leaf.private_key_and_cert_chain_pem.bytes() + ca.cert_pem.bytes()
    loaded = Certificate.load_pem_chain(bundle)
    assert loaded == [*chain, Certificate.from_pem(ca.cert_pem.bytes())]
    assert Certificate.load_pem_chain(bundle.decode()) == loaded
    assert Certificate.from_pem(bundle) == chain[0]  # the key block before it is skipped
    assert Certificate.from_pem(chain[1].pem) == chain[1]
    assert Certificate.from_pem(chain[0].pem.replace("\n", "\r\n")) == chain[0]
    assert Certificate.from_pem("# comment: caf\u00e9\n" + chain[0].pem) == chain[0]
    assert Certificate.load_pem_chain("") == []
    assert Certificate.load_pem_chain(leaf.private_key_pem.bytes()) == []
    assert chain[0].pem == ssl.DER_cert_to_PEM_cert(chain[0].der)


def test_pem_errors():
    pem = cert("localhost").pem
    with pytest.raises(ValueError, match="no PEM CERTIFICATE block"):
        Certificate.from_pem("nothing here")
    with pytest.raises(ValueError, match="has no END line"):
        Certificate.from_pem(pem[: pem.index("-----END")])
    with pytest.raises(ValueError, match="not valid base64"):
        Certificate.from_pem(pem.replace("\n", "\n@", 2))
    with pytest.raises(ValueError, match="malformed certificate"):
        Certificate.from_pem(ssl.DER_cert_to_PEM_cert(b"\x30\x03\x02\x01\x01"))
    with pytest.raises(ValueError, match="malformed certificate"):
        Certificate.load_pem_chain(pem + ssl.DER_cert_to_PEM_cert(cert("ca").der[:-1]))
    with pytest.raises(TypeError):
        Certificate.from_pem(42)  # type: ignore[arg-type]


# -- object protocol ----------------------------------------------------------------


def test_equality_hash_pickle_repr():
    der = corpus()["localhost"]
    a, b = Certificate(der), Certificate(bytearray(der))
    assert a == b and hash(a) == hash(b) and len({a, b, Certificate(memoryview(der))}) == 1
    assert a != cert("ca") and a != der and a != "x"
    assert pickle.loads(pickle.dumps(a)) == a
    assert a.der == der and isinstance(a.der, bytes)
    text = repr(cert("common-name"))
    c = cert("common-name")
    assert text == (
        f"<Certificate subject={c.subject_text!r} issuer={c.issuer_text!r} not_after={c.not_after.isoformat()}>"
    )
    assert text.startswith(r"<Certificate subject='O=Example\\, Inc., OU=R\\+D, CN=localhost' issuer='O=trustme")


def test_results_are_copies():
    c = cert("localhost")
    c.subject["CN"] = "evil"
    c.to_dict()["subject"]["O"] = "evil"
    assert "CN" not in c.subject and c.subject["O"] != "evil"


def test_construction_type_errors():
    for bad in ("text", 5, None, ["x"]):
        with pytest.raises(TypeError):
            Certificate(bad)  # type: ignore[arg-type]


# -- malformed input ------------------------------------------------------------------


def assert_rejected(data: bytes, match: str | None = None) -> ValueError:
    start = time.perf_counter()
    with pytest.raises(ValueError, match=match) as info:
        Certificate(data)
    assert time.perf_counter() - start < 1.0, f"{len(data)} bytes took too long"
    return info.value


def assert_parses_or_rejects(data: bytes) -> None:
    start = time.perf_counter()
    try:
        c = Certificate(data)
    except ValueError as exc:
        assert str(exc)
    else:  # whatever parsed is usable throughout
        repr(c), c.to_dict(), c.subject_text, c.issuer_text, c.san, c.pem, c.fingerprint("md5"), c.is_ca
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("name", ["localhost", "tricky-names", "mixed-san"])
def test_every_truncation_is_rejected(name):
    der = corpus()[name]
    start = time.perf_counter()
    for end in range(len(der)):
        assert_rejected(der[:end], "malformed certificate")
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("name", ["localhost", "mixed-san", "string-types"])
def test_every_single_byte_change(name):
    der = corpus()[name]
    for i in range(len(der)):
        for value in {0x00, 0x80, 0xFF, der[i] ^ 0x01, der[i] ^ 0x20}:
            assert_parses_or_rejects(der[:i] + bytes([value]) + der[i + 1 :])


def test_trailing_bytes_are_rejected():
    der = corpus()["localhost"]
    assert_rejected(der + b"\x00", "1 unexpected bytes at the end")
    assert_rejected(der + der, "unexpected bytes at the end")
    assert_rejected(build_cert(tail=b"\x05\x00"), "tbsCertificate: 2 unexpected bytes")


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "no data"),
        (b"\x30", "truncated before its length"),
        (b"\x30\x80" * 100_000, "indefinite length"),
        (b"\x30\xff" + b"\x00" * 200, "reserved length"),
        (b"\x30\x84\xff\xff\xff", "truncated in its length"),
        (b"\x30\x84\xff\xff\xff\xff", "length 4294967295 runs past the 0 bytes left"),
        (b"\x30\x84\xff\xff\xff\xff" + b"\x00" * 16, "length 4294967295 runs past the 16 bytes left"),
        (b"\x30\xfe" + b"\xff" * 126 + b"\x00" * 8, "runs past"),
        (b"\x3f" + b"\xff" * 100_000, "truncated"),
        (_nested(5000), "signatureAlgorithm: missing"),
        (_nested(5000, 0xA0), "expected SEQUENCE"),
        (b"\x31\x00", "expected SEQUENCE"),
        (tlv(0x30, tlv(0x30)), "signatureAlgorithm: missing"),
        (tlv(0x30, tlv(0x30), tlv(0x30, der_oid("1.2.3")), tlv(0x03, b"\x00")), "serialNumber: missing"),
    ],
    ids=lambda v: v[:12].hex() if isinstance(v, bytes) else None,
)
def test_hostile_framing(data, message):
    assert_rejected(data, message)


def test_huge_inner_lengths():
    huge_serial = b"\x02\x84\x7f\xff\xff\xff\x01"
    assert_rejected(build_cert(serial=huge_serial), "serialNumber: length 2147483647 runs past")
    huge_name = b"\x30\xfe" + b"\xff" * 126
    assert_rejected(build_cert(subject=huge_name), "subject: length .* runs past")


def _with_raw_oid(contents: bytes) -> bytes:
    return build_cert(subject=tlv(0x30, tlv(0x31, tlv(0x30, tlv(0x06, contents), utf8("x")))))


def _with_extension(oid: str, value: bytes) -> bytes:
    return build_cert(extensions=[der_extension(oid, value)])


@pytest.mark.parametrize(
    "data, message",
    [
        (build_cert(version=8), "version field is 7"),
        (build_cert(signature=tlv(0x03, b"")), "signatureValue: empty BIT STRING"),
        (build_cert(signature=tlv(0x03, b"\x08\x00")), "signatureValue: BIT STRING claims 8 unused bits"),
        (build_cert(serial=tlv(0x02, b"")), "empty INTEGER"),
        (build_cert(serial=utf8("1")), "serialNumber: expected INTEGER"),
        (build_cert(not_before=tlv(0x17, b"251301000000Z")), "not a date"),
        (build_cert(not_before=tlv(0x17, b"250101000000+0100")), "not in the RFC 5280 form"),
        (build_cert(not_before=tlv(0x17, b"2501010000Z")), "not in the RFC 5280 form"),
        (build_cert(not_after=tlv(0x18, b"20250101000000.5Z")), "not in the RFC 5280 form"),
        (build_cert(not_after=tlv(0x18, b"00000101000000Z")), "not a date"),
        (build_cert(not_after=tlv(0x18, b"2025-1-1000000Z")), "not in the RFC 5280 form"),
        (build_cert(not_after=utf8("20250101000000Z")), "expected UTCTime or GeneralizedTime"),
        (build_cert(subject=der_name([("2.5.4.3", b"")])), "value: missing"),
        (_with_raw_oid(b""), "empty OBJECT IDENTIFIER"),
        (_with_raw_oid(b"\x55\x84"), "ends inside an arc"),
        (_with_raw_oid(b"\x55\x80\x03"), "leading zero"),
        (_with_raw_oid(b"\x55" + b"\xff" * 40 + b"\x01"), "arc is too long"),
        (build_cert(extensions=[der_extension("2.5.29.19", tlv(0x30))] * 2), "extension 2.5.29.19 appears twice"),
        (_with_extension("2.5.29.19", tlv(0x30, tlv(0x01, b"\xff\xff"))), "BOOLEAN must be one octet"),
        (_with_extension("2.5.29.19", tlv(0x30, der_int(1), der_int(2))), "basicConstraints: 3 unexpected"),
        (_with_extension("2.5.29.17", tlv(0x30, utf8("x"))), "GeneralName has non-context tag 0x0c"),
        (_with_extension("2.5.29.17", tlv(0x31)), "subjectAltName: expected SEQUENCE"),
        (_with_extension("2.5.29.17", tlv(0x30) + b"\x00"), "subjectAltName: 1 unexpected"),
        (build_cert(extensions=[tlv(0x30, der_oid("2.5.29.17"))]), "extension 2.5.29.17 value: missing"),
    ],
    ids=lambda v: None if isinstance(v, bytes) else v,
)
def test_malformed_fields(data, message):
    assert_rejected(data, message)


def test_unknown_and_skipped_parts_are_tolerated():
    # Non-minimal lengths are not DER but OpenSSL takes them; issuer/subject unique IDs are skipped.
    der = build_cert(tail=tlv(0x81, b"\x00\x01") + tlv(0x82, b"\x00\x02") + tlv(0xA3, tlv(0x30)))
    assert Certificate(der).version == 3 and Certificate(der).san == ()
    assert Certificate(build_cert(subject=der_name([("2.5.4.3", b"\x0c\x81\x01x")]))).subject == {"CN": "x"}
    assert Certificate(build_cert(subject=der_name([("2.5.4.3", b"\x0c\x82\x00\x01x")]))).subject == {"CN": "x"}


ANY_DER = st.sampled_from(["localhost", "tricky-names", "mixed-san", "rsa-leaf", "string-types"])
EDITS = st.lists(
    st.tuples(st.sampled_from(["set", "insert", "delete", "length"]), st.integers(0, 10_000), st.integers(0, 255)),
    min_size=1,
    max_size=6,
)


def _apply(der: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(der)
    for kind, where, value in edits:
        i = where % (len(data) + 1)
        if kind == "insert":
            data[i:i] = bytes([value])
        elif not data or i == len(data):
            continue
        elif kind == "set":
            data[i] = value
        elif kind == "delete":
            del data[i]
        else:  # make a length octet long-form and huge
            data[i : i + 1] = bytes([0x84, value, 0xFF, 0xFF, 0xFF])
    return bytes(data)


@settings(max_examples=400, deadline=None)
@given(name=ANY_DER, edits=EDITS)
def test_random_mutations(name, edits):
    assert_parses_or_rejects(_apply(corpus()[name], edits))


def _decode_tree(data: bytes) -> list[list]:
    """Well-formed DER (low tags only) as nested [tag, bytes | children] lists."""
    nodes, pos = [], 0
    while pos < len(data):
        tag, first = data[pos], data[pos + 1]
        head, length = 2, first
        if first & 0x80:
            head += first & 0x7F
            length = int.from_bytes(data[pos + 2 : pos + head], "big")
        body = data[pos + head : pos + head + length]
        value: bytes | list = body
        if tag & 0x20:
            value = _decode_tree(body)
        elif tag == 0x04 and body[:1] == b"\x30":  # extension values hold DER too
            try:
                inner = _decode_tree(body)
            except IndexError:
                inner = None
            if inner is not None and _encode_tree(inner) == body:
                value = inner
        nodes.append([tag, value])
        pos += head + length
    return nodes


def _encode_tree(nodes: list[list]) -> bytes:
    return b"".join(tlv(tag, value if isinstance(value, bytes) else _encode_tree(value)) for tag, value in nodes)


def _walk(nodes: list[list]) -> list[tuple[list, int]]:
    """Every node as (parent list, index), depth first."""
    out = []
    for i, node in enumerate(nodes):
        out.append((nodes, i))
        if isinstance(node[1], list):
            out.extend(_walk(node[1]))
    return out


TREE_EDITS = st.lists(
    st.tuples(
        st.integers(0, 10_000),
        st.sampled_from(["contents", "tag", "drop", "repeat", "empty", "append"]),
        st.binary(max_size=24),
        st.integers(0, 255),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=400, deadline=None)
@given(name=ANY_DER, edits=TREE_EDITS)
def test_random_structural_mutations(name, edits):
    """Edits to one element at a time, with every length around it kept consistent."""
    tree = _decode_tree(corpus()[name])
    for where, kind, data, tag in edits:
        nodes = _walk(tree)
        parent, i = nodes[where % len(nodes)]
        if kind == "contents":
            parent[i] = [parent[i][0], data]
        elif kind == "tag":
            parent[i] = [tag, parent[i][1]]
        elif kind == "drop":
            del parent[i]
        elif kind == "repeat":
            parent.insert(i, parent[i])
        elif kind == "empty":
            parent[i] = [parent[i][0], b"" if isinstance(parent[i][1], bytes) else []]
        else:
            parent.insert(i + 1, [tag, data])
        if not tree:
            return
    assert_parses_or_rejects(_encode_tree(tree))


def test_tree_codec_round_trips():
    for der in corpus().values():
        assert _encode_tree(_decode_tree(der)) == der


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=512))
def test_random_bytes(data):
    assert_parses_or_rejects(data)


@settings(max_examples=200, deadline=None)
@given(prefix=st.binary(max_size=8), body=st.binary(max_size=300))
def test_random_bytes_inside_a_sequence(prefix, body):
    assert_parses_or_rejects(tlv(0x30, prefix + body))
    algorithm, signature = tlv(0x30, der_oid("1.2.3")), tlv(0x03, b"\x00")
    assert_parses_or_rejects(tlv(0x30, tlv(0x30, prefix + body), algorithm, signature))


@settings(max_examples=200, deadline=None)
@given(pem=st.text(alphabet="-BEGINCRTFAD \nabc+/=01", max_size=300))
def test_random_pem(pem):
    for text in (pem, "-----BEGIN CERTIFICATE-----\n" + pem, pem + "-----END CERTIFICATE-----"):
        try:
            Certificate.load_pem_chain(text)
        except ValueError:
            pass


def test_large_input_is_linear():
    # 200k SAN entries: parsing stays well within the time budget.
    names = b"".join(tlv(0x82, b"h%d.example" % i) for i in range(200_000))
    der = build_cert(extensions=[der_extension("2.5.29.17", tlv(0x30, names))])
    start = time.perf_counter()
    assert len(Certificate(der).san) == 200_000
    assert time.perf_counter() - start < 5
