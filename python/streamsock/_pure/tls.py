"""TLS of the pure backend (the twin of csrc/tls.c): Python's ``ssl`` contexts
built from TLSSettings, OpenSSL's reasons as the C core words them, and the
checks Python's ssl cannot make during a handshake, made after it."""

from __future__ import annotations

import os
import re
import ssl
import warnings
from typing import TYPE_CHECKING

from .. import errors as _e
from ..address import ip_literal
from .trust import TrustEvaluator

if TYPE_CHECKING:
    from ..certificate import Certificate
    from ..context import TLSSettings

_X509_V_ERR_HOSTNAME_MISMATCH = 62
_X509_V_ERR_IP_ADDRESS_MISMATCH = 64
_REASON = re.compile(r"^\[[^\]]*\]\s*(.*?)\s*\(_ssl\.c:\d+\)$")


class PureTLS:
    """A compiled TLS context of the pure backend: ssl.SSLContext plus the
    options Python's ssl module has no hook for (checked after the handshake)."""

    __slots__ = ("ssl_context", "checked_context", "settings", "sni", "_trust")

    def __init__(self, settings: TLSSettings) -> None:
        self.settings = settings
        self.sni: list[tuple[str, ssl.SSLContext]] = []
        self.checked_context: ssl.SSLContext | None = None  # a client's that checks the name in the handshake
        self._trust: TrustEvaluator | None = None
        try:
            self.ssl_context = self._build(settings, settings.local_cert, settings.local_pk)
            if not settings.server and settings.verify_peer and not settings.allow_self_signed:
                self.checked_context = self._build(settings, settings.local_cert, settings.local_pk)
                self.checked_context.check_hostname = True
            for name, cert, key in settings.sni_certs:
                self.sni.append((name, self._build(settings, cert, key)))
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise _e.error(_e.TLS_CONFIG, f"invalid TLS configuration: {ssl_reason(exc)}") from exc
        if settings.server:  # records the SNI name (tls_info) and picks SNI_server_certs
            self.ssl_context.sni_callback = self._pick_certificate
        if settings.server and not settings.local_cert and not settings.sni_certs:
            raise _e.error(_e.TLS_CONFIG, "a TLS server needs local_cert (or SNI_server_certs)")

    @staticmethod
    def _build(s: TLSSettings, cert: str | None, key: str | None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if s.server else ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False  # names are checked per connection (peer_name, SNI_enabled)
        ctx.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0) | ssl.OP_NO_RENEGOTIATION
        if s.disable_compression:
            ctx.options |= ssl.OP_NO_COMPRESSION
        # Python's ssl prefers the server's cipher order in every new context;
        # OpenSSL, PHP and the C core the client's, unless asked.
        if s.honor_cipher_order:
            ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        else:
            ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
        with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated, and asked for explicitly
            warnings.simplefilter("ignore", DeprecationWarning)
            if s.min_version:
                ctx.minimum_version = ssl.TLSVersion(s.min_version)
            if s.max_version:
                ctx.maximum_version = ssl.TLSVersion(s.max_version)
        if s.ciphers or s.security_level >= 0:
            ciphers = s.ciphers or "DEFAULT"
            if s.security_level >= 0:
                ciphers += f":@SECLEVEL={s.security_level}"
            ctx.set_ciphers(ciphers)
        # allow_self_signed needs a per-error decision Python's ssl cannot make
        # during the handshake: verify afterwards instead (see _check_peer).
        verify = s.verify_peer and not (s.allow_self_signed and not s.server)
        ctx.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
        if s.verify_peer or not s.server:
            if s.cafile or s.capath:
                ctx.load_verify_locations(cafile=s.cafile, capath=s.capath)
            else:
                ctx.load_default_certs(ssl.Purpose.SERVER_AUTH if not s.server else ssl.Purpose.CLIENT_AUTH)
        if cert:
            ctx.load_cert_chain(cert, key, password=s.passphrase)
        if s.alpn:
            ctx.set_alpn_protocols(_alpn_names(s.alpn))
        if s.no_ticket:
            ctx.options |= ssl.OP_NO_TICKET
        if s.groups:
            _set_group(ctx, s.groups)
        if s.server and s.dh_param:
            try:
                ctx.load_dh_params(s.dh_param)
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(f"Failed reading DH params from `{s.dh_param}': {ssl_reason(exc)}") from None
        return ctx

    @property
    def trust(self) -> TrustEvaluator:
        """Verifies chains against this context's CA store when the handshake did not."""
        if self._trust is None:
            self._trust = TrustEvaluator(self.settings)
        return self._trust

    def _pick_certificate(self, ssl_object: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        # Our own mark on Python's object, which declares no such attribute: tls_info reads it back.
        ssl_object.streamsock_sni = server_name  # type: ignore[attr-defined]
        if server_name:
            for pattern, ctx in self.sni:
                if _name_matches(pattern, server_name):
                    ssl_object.context = ctx
                    break
        return None


# OpenSSL's group-list names that are not the curves' short names Python's ssl looks up.
_NIST_CURVES = {"P-256": "prime256v1", "P-384": "secp384r1", "P-521": "secp521r1"}


def _set_group(ctx: ssl.SSLContext, groups: str) -> None:
    """ecdh_curve: Python's ssl sets one group (SSL_CTX_set1_groups with one
    NID), so the pure backend takes a list of one; the native one takes any."""
    names = [name for name in groups.split(":") if name]
    if len(names) != 1:
        raise ValueError(f"Invalid ecdh_curve `{groups}': the pure backend takes one group, not a list")
    try:
        ctx.set_ecdh_curve(_NIST_CURVES.get(names[0], names[0]))
    except (ValueError, ssl.SSLError):
        raise ValueError(f"Invalid ecdh_curve `{groups}'") from None


def _alpn_names(wire: bytes) -> list[str]:
    names, i = [], 0
    while i < len(wire):
        n = wire[i]
        names.append(wire[i + 1 : i + 1 + n].decode("ascii"))
        i += 1 + n
    return names


def _name_matches(pattern: str, name: str) -> bool:
    pattern, name = pattern.lower(), name.lower()
    if pattern == name:
        return True
    if pattern.startswith("*.") and pattern.count(".") >= 2:  # never "*.com"
        head, dot, rest = name.partition(".")
        return bool(head and dot) and "." + rest == pattern[1:]
    return False


def ssl_reason(exc: BaseException) -> str:
    """OpenSSL's reason text, as the C core reports it ("wrong version number")."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {_verify_text(exc.verify_code, exc.verify_message)}"
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return "the peer closed the connection"
    text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
    m = _REASON.match(text)
    return m.group(1) if m else text


def _verify_text(code: int, message: str) -> str:
    # Python rewrites these two; the C core reports OpenSSL's own words.
    if code == _X509_V_ERR_HOSTNAME_MISMATCH:
        return "hostname mismatch"
    if code == _X509_V_ERR_IP_ADDRESS_MISMATCH:
        return "IP address mismatch"
    return message


def cert_matches(cert: Certificate, name: str) -> bool:
    """RFC 6125 as OpenSSL does it: SAN first (CN only without SAN), one-label
    wildcards, IP literals against IP SANs."""
    ip = ip_literal(name)
    sans = cert.san
    if ip is not None:
        import ipaddress

        want = ipaddress.ip_address(ip)
        return any(kind == "IP Address" and ipaddress.ip_address(value) == want for kind, value in sans)
    dns = [value for kind, value in sans if kind == "DNS"]
    if not dns and not any(kind == "IP Address" for kind, _ in sans):
        cn = cert.subject.get("CN")
        dns = [cn] if cn else []
    return any(_name_matches(pattern, name.rstrip(".")) for pattern in dns)


def self_signed(name: str, days: int) -> tuple[str, str]:
    """(certificate PEM, key PEM) made by the ``openssl`` command: Python's
    standard library cannot make certificates."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        command = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                   "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name},IP:127.0.0.1,IP:::1",
                   "-addext", "basicConstraints=critical,CA:FALSE", "-days", str(max(days, 1)),
                   "-keyout", key, "-out", cert]
        try:
            subprocess.run(command, capture_output=True, check=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            raise _e.error(_e.TLS, f"could not make a self-signed certificate with the openssl command: {exc}") \
                from exc
        with open(cert) as c, open(key) as k:
            return c.read(), k.read()
