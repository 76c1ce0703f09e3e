"""TLS material of the data plane: a cluster CA, the workers' certificate, loading them for Flight.

Flight streams carry task data between workers, so across hosts they run over TLS with mutual
authentication: a worker's Flight server presents a certificate signed by the cluster CA and accepts
only clients presenting one too (``verify_client``); a worker's clients trust only that CA.

Workers move between hosts and addresses (and are reached by whatever name ``--advertise-host``
gives), so certificates do not name hosts: every worker certificate carries one cluster-wide server
name, ``WORKER_SERVER_NAME``, in its subjectAltName, and clients check the server against that name
(gRPC's ``override_hostname``) instead of the host they dial. What the certificate proves is "signed
by this cluster's CA", which is the trust a worker needs from a peer; the fetch token (data/
fetch_token.py) then says which output that peer may read.

``osiris-flight keys tls DIR`` (``create_cluster_tls``) writes ``ca.pem``, ``ca.key``, ``worker.pem``
and ``worker.key``; the private keys are written 0600. Operators may use certificates of their own
CA instead, as long as the server certificate's subjectAltName includes ``WORKER_SERVER_NAME`` and
it may be used for both server and client authentication. X.509 is done by ``cryptography``.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from osiris_flight.errors import InvalidInput, Problem

WORKER_SERVER_NAME = "osiris-flight-worker"
TLS_FILES = ("ca.pem", "ca.key", "worker.pem", "worker.key")
DEFAULT_DAYS = 1825


@dataclass(frozen=True)
class FlightTLS:
    """PEM bytes of this worker's certificate chain and key, and of the CA its peers must have."""

    cert_chain: bytes
    private_key: bytes
    ca: bytes
    server_name: str = WORKER_SERVER_NAME

    def __repr__(self) -> str:  # never print the private key
        return f"FlightTLS(server_name={self.server_name!r})"


def create_cluster_tls(directory: str | Path, days: int = DEFAULT_DAYS) -> dict[str, Path]:
    """Write a new cluster CA and one worker certificate signed by it into ``directory``.

    Refuses to overwrite any of the four files (a new CA would lock out every worker using the old
    one). Keys are ECDSA P-256; the worker certificate is valid for server and client authentication
    under ``WORKER_SERVER_NAME``. Returns the paths by file name.
    """
    root = Path(directory)
    paths = {name: root / name for name in TLS_FILES}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing:
        raise InvalidInput(
            Problem(
                f"{', '.join(existing)} already exist(s)",
                field="DIR",
                hint="remove them or choose another directory (a new CA locks out workers using the old one)",
            )
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInput(Problem(f"cannot create directory: {exc.strerror}", file=str(root))) from None
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "osiris-flight"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"osiris-flight cluster CA ({socket.gethostname()})"),
        ]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    worker_key = ec.generate_private_key(ec.SECP256R1())
    worker_cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "osiris-flight"),
                    x509.NameAttribute(NameOID.COMMON_NAME, WORKER_SERVER_NAME),
                ]
            )
        )
        .issuer_name(ca_name)
        .public_key(worker_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(WORKER_SERVER_NAME)]),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    files = {
        "ca.key": (_private_pem(ca_key), True),
        "ca.pem": (ca_cert.public_bytes(serialization.Encoding.PEM), False),
        "worker.key": (_private_pem(worker_key), True),
        "worker.pem": (worker_cert.public_bytes(serialization.Encoding.PEM), False),
    }
    for name, (data, secret) in files.items():
        try:
            _write(paths[name], data, secret=secret)
        except OSError as exc:
            raise InvalidInput(Problem(f"cannot write: {exc.strerror}", file=str(paths[name]))) from None
    return paths


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, *, secret: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def load_flight_tls(cert: str | None, key: str | None, ca: str | None) -> FlightTLS | None:
    """The TLS material the three files name (flags or ``cluster.tls_*``), checked: None when none is
    given; all three or none, each readable PEM, the key matching the certificate."""
    given = {"tls_cert": cert, "tls_key": key, "tls_ca": ca}
    if not any(given.values()):
        return None
    missing = [name for name, value in given.items() if not value]
    if missing:
        raise InvalidInput(
            Problem(
                "Flight TLS needs a certificate, its key and the cluster CA together",
                field=", ".join(f"cluster.{m} (--{m.replace('_', '-')})" for m in missing),
                hint="osiris-flight keys tls DIR writes all three",
            )
        )
    assert cert and key and ca
    data = {name: _read(path, name) for name, path in (("tls_cert", cert), ("tls_key", key), ("tls_ca", ca))}
    try:
        certificate = x509.load_pem_x509_certificate(data["tls_cert"])
    except ValueError:
        raise InvalidInput(Problem("not a PEM certificate", file=cert, field="tls_cert")) from None
    try:
        x509.load_pem_x509_certificates(data["tls_ca"])
    except ValueError:
        raise InvalidInput(Problem("not a PEM certificate", file=ca, field="tls_ca")) from None
    try:
        private = serialization.load_pem_private_key(data["tls_key"], password=None)
    except (ValueError, TypeError):
        raise InvalidInput(Problem("not an unencrypted PEM private key", file=key, field="tls_key")) from None
    if private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise InvalidInput(
            Problem(f"the key does not belong to the certificate {cert}", file=key, field="tls_key")
        )
    return FlightTLS(data["tls_cert"], data["tls_key"], data["tls_ca"])


def _read(path: str, name: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(
            Problem(f"cannot read: {exc.strerror}", file=path, field=name, hint="--" + name.replace("_", "-"))
        ) from None
