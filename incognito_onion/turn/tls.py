"""A self-signed certificate for TURN over TLS when the self-hoster gives none.

Browsers check a TURNS server's certificate like a web page's (measured: Chromium 156 gathers
no relay candidate from ``turns:`` with a self-signed certificate), so for browsers on the open
internet give a real one (turn.tls_cert/tls_key, e.g. Let's Encrypt for the name in
turn.public_urls). The generated one serves clients told to trust it (Chromium:
``--ignore-certificate-errors-spki-list=<spki_sha256>``, which the tests use) and keeps the
TLS listener up. It is kept in the state dir (key 0600) and made again when it is missing,
unreadable or within 7 days of expiring.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..state import write_private

CERT_NAME = "turn-tls.crt"
KEY_NAME = "turn-tls.key"
VALID_DAYS = 90
RENEW_BEFORE = dt.timedelta(days=7)


def generate(common_name: str = "incognito-onion", days: int = VALID_DAYS,
             now: dt.datetime | None = None) -> tuple[bytes, bytes]:
    """A fresh P-256 key and a self-signed certificate for it, both PEM: ``(cert, key)``."""
    now = now or dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    sans: list[x509.GeneralName] = []
    try:
        sans.append(x509.IPAddress(ipaddress.ip_address(common_name)))
    except ValueError:
        sans.append(x509.DNSName(common_name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def needs_renewal(cert_pem: bytes, now: dt.datetime | None = None) -> bool:
    """True when ``cert_pem`` does not parse or expires within :data:`RENEW_BEFORE`."""
    now = now or dt.datetime.now(dt.UTC)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return True
    return cert.not_valid_after_utc - now < RENEW_BEFORE


def ensure_self_signed(state_dir: Path, common_name: str = "incognito-onion",
                       ) -> tuple[Path, Path]:
    """The generated certificate and key in ``state_dir``, made (again) when needed."""
    cert_path, key_path = state_dir / CERT_NAME, state_dir / KEY_NAME
    try:
        ok = key_path.exists() and not needs_renewal(cert_path.read_bytes())
    except OSError:
        ok = False
    if not ok:
        cert, key = generate(common_name)
        write_private(key_path, key)
        write_private(cert_path, cert)
    return cert_path, key_path


def spki_sha256(cert_pem: bytes) -> str:
    """base64 SHA-256 of the certificate's public key (SubjectPublicKeyInfo): what Chromium's
    ``--ignore-certificate-errors-spki-list`` takes to trust exactly this key."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def fingerprint_sha256(cert_pem: bytes) -> str:
    """``AB:CD:...`` SHA-256 fingerprint, for the log so a self-hoster can compare."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))
