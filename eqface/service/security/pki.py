"""A local certificate authority for development stacks and tests: a CA, a server certificate for loopback names and
client certificates that carry a caller (CN = principal, O = tenant, OU = roles; see ``identity``).

EC P-256 keys, short validity (default 7 days), key files written with mode 0600. Production certificates come from
the cluster's issuer (cert-manager or the like), not from here.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from eqface.service.caller import Role

DEFAULT_VALIDITY = dt.timedelta(days=7)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """PEM, unencrypted, created 0600 (never readable by others, not even briefly)."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


class LocalCA:
    """A CA in ``directory`` (ca.pem, ca-key.pem) that issues server and client certificates next to it."""

    def __init__(self, directory: Path, validity: dt.timedelta = DEFAULT_VALIDITY) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        self.validity = validity
        self.cert_file = self.directory / "ca.pem"
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eqface local CA")])
        self.cert = (
            self._builder(self._name, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        write_key(self.directory / "ca-key.pem", self._key)

    def _builder(self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        now = dt.datetime.now(dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + self.validity)
        )

    def _issue(
        self, stem: str, subject: x509.Name, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]
    ) -> CertFiles:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = self._builder(subject, key.public_key())
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        builder = builder.add_extension(_key_usage(cert_sign=False), critical=True)
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        files = CertFiles(self.directory / f"{stem}.pem", self.directory / f"{stem}-key.pem")
        files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(files.key, key)
        return files

    def server(self, names: Iterable[str] = LOOPBACK_NAMES, stem: str = "server") -> CertFiles:
        """A server certificate for DNS names and IP addresses."""
        names = list(names)
        sans: list[x509.GeneralName] = []
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "localhost")])
        return self._issue(stem, subject, ExtendedKeyUsageOID.SERVER_AUTH, sans)

    def client(self, principal: str, tenant: str, roles: Iterable[Role], stem: str | None = None) -> CertFiles:
        """A client certificate naming a caller: CN = principal, O = tenant, one OU per role."""
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, principal)]
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, tenant))
        attributes += [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, r.value) for r in roles]
        return self.client_for(x509.Name(attributes), stem or f"client-{principal}")

    def client_for(self, subject: x509.Name, stem: str) -> CertFiles:
        """A client certificate for any subject name."""
        return self._issue(stem, subject, ExtendedKeyUsageOID.CLIENT_AUTH, [])


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not cert_sign,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
