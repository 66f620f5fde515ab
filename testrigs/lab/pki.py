"""The lab's certificate authority and the SPIFFE workload certificates it issues.

Role: Istio's CA (istiod) signs a certificate per workload whose URI SAN is the workload's
SPIFFE id, ``spiffe://cluster.local/ns/<ns>/sa/<sa>``; ztunnel presents it on HBONE and checks
peers against it. The lab does the same with its own throwaway CA, created by ``lab up`` in
the state directory and deleted with it. ``rbac.py`` matches these URIs as Envoy principals.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class CertFiles:
    """PEM files one proxy reads: its chain, its key, and the CA it trusts."""

    cert: Path
    key: Path
    ca: Path


def _write(path: Path, data: bytes, mode: int, owner: int | None = None) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    if owner is not None:
        os.chown(path, owner, owner)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _base(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=7))
    )


class LabCA:
    """A CA in ``directory`` (ca.crt world-readable, ca.key root-only)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.cert_path = directory / "ca.crt"
        self.key_path = directory / "ca.key"

    def create(self) -> None:
        self.directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cluster.local"),
                x509.NameAttribute(NameOID.COMMON_NAME, "mesh-auditor lab CA"),
            ]
        )
        cert = (
            _base(name, name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_usage(ca=True), critical=True)
            .sign(key, hashes.SHA256())
        )
        _write(self.key_path, _pem_key(key), 0o600)
        _write(self.cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)

    def issue(self, spiffe_id: str, directory: Path, owner: int) -> CertFiles:
        """A workload certificate for ``spiffe_id``, readable only by ``owner`` (the proxy's uid)."""
        ca_key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"{self.key_path} is not an EC key")
        key = ec.generate_private_key(ec.SECP256R1())
        # Istio's workload certificates carry an empty subject and the SPIFFE URI as the only SAN.
        cert = (
            _base(x509.Name([]), ca_cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(ca=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        files = CertFiles(directory / "cert.pem", directory / "key.pem", self.cert_path)
        _write(files.key, _pem_key(key), 0o600, owner)
        _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644, owner)
        return files


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not ca,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )
