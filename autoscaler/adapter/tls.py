"""TLS for the adapter: the server context, self-signed serving certificates, and a small CA.

The CA helpers (`CertificateAuthority`) exist for tests and benchmarks that need a
requestheader CA and client certificates; the adapter itself only loads certificates.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
import tempfile
from dataclasses import dataclass
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger(__name__)

DEFAULT_HOSTS = ("localhost", "127.0.0.1")

_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM private key (unencrypted, PKCS#8)."""

    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: str | os.PathLike[str], stem: str) -> tuple[str, str]:
        """Write `<stem>.crt` and `<stem>.key` (mode 0600) into `directory`; return both paths."""
        cert_path = os.path.join(directory, f"{stem}.crt")
        key_path = os.path.join(directory, f"{stem}.key")
        with open(cert_path, "wb") as cert_file:
            cert_file.write(self.cert_pem)
        descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as key_file:
            key_file.write(self.key_pem)
        return cert_path, key_path


class CertificateAuthority:
    """A self-signed CA that issues server and client certificates."""

    def __init__(self, common_name: str, *, valid_days: int = 365) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_CA_KEY_USAGE, critical=True)
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue_client(self, common_name: str, *, organizations: Sequence[str] = (), valid_days: int = 30) -> KeyPair:
        """Issue a client certificate; Kubernetes reads the user from CN and the groups from O."""
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, group) for group in organizations]
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        return self._issue(x509.Name(attributes), ExtendedKeyUsageOID.CLIENT_AUTH, (), valid_days)

    def issue_server(self, hosts: Sequence[str] = DEFAULT_HOSTS, *, valid_days: int = 365) -> KeyPair:
        """Issue a serving certificate for DNS names and IP addresses."""
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
        return self._issue(name, ExtendedKeyUsageOID.SERVER_AUTH, hosts, valid_days)

    def _issue(self, subject: x509.Name, usage: x509.ObjectIdentifier, hosts: Sequence[str], valid_days: int) -> KeyPair:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if hosts:
            builder = builder.add_extension(x509.SubjectAlternativeName(_alt_names(hosts)), critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        return KeyPair(certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def self_signed_certificate(hosts: Sequence[str] = DEFAULT_HOSTS, *, valid_days: int = 365) -> KeyPair:
    """Create a self-signed serving certificate for `hosts` (DNS names or IP addresses)."""
    if not hosts:
        raise ValueError("self_signed_certificate needs at least one host name or address")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.SubjectAlternativeName(_alt_names(hosts)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def server_context(
    *,
    cert_file: str | None,
    key_file: str | None,
    client_ca_pem: bytes | None = None,
    hosts: Sequence[str] = DEFAULT_HOSTS,
) -> ssl.SSLContext:
    """Build the adapter's server-side TLS context.

    With neither file given, a self-signed certificate for `hosts` is generated in memory.
    With `client_ca_pem`, clients may present a certificate, which must then chain to one of
    those CAs, or OpenSSL rejects the handshake. Clients without one are still accepted and
    authenticate by bearer token.
    """
    if (cert_file is None) != (key_file is None):
        raise ValueError(f"give both or neither of the TLS certificate and key files (certificate {cert_file!r}, key {key_file!r})")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None and key_file is not None:
        try:
            context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as error:
            raise ValueError(f"cannot load the TLS certificate {cert_file!r} with key {key_file!r}: {error}") from error
    else:
        pair = self_signed_certificate(hosts)
        _load_pair(context, pair)
        logger.info("serving with a self-signed certificate for %s", ", ".join(hosts))

    if client_ca_pem:
        context.verify_mode = ssl.CERT_OPTIONAL
        context.load_verify_locations(cadata=client_ca_pem.decode("ascii"))
    return context


def load_certificates(pem: bytes) -> list[x509.Certificate]:
    """Parse every certificate of a PEM bundle; raise ValueError when there is none."""
    certificates = x509.load_pem_x509_certificates(pem)
    if not certificates:
        raise ValueError("the PEM bundle contains no certificate")
    return certificates


def _load_pair(context: ssl.SSLContext, pair: KeyPair) -> None:
    # ssl loads certificates only from files. The directory is removed right after loading,
    # and it works on a read-only root filesystem as long as /tmp is writable.
    with tempfile.TemporaryDirectory(prefix="grove-autoscaler-tls-") as directory:
        cert_path, key_path = pair.write(directory, "serving")
        context.load_cert_chain(cert_path, key_path)


def _alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)
