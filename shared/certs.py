"""Development TLS material for a federation: a private CA and a server certificate.

For trying TLS on a laptop or a lab network. Production deployments should use their own
PKI; fedtl only needs ``ca.crt`` (sites) and ``server.pem`` + ``server.key`` (coordinator).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from pathlib import Path

from fedtl.shared.atomic import write_bytes_atomic


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedtl dev"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


LOOPBACK = ("localhost", "127.0.0.1", "::1")  # the coordinator's own processes reach its SuperLink here


_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def check_host(host: str) -> str:
    """A host name or IP address for the server certificate; ValueError says what is wrong."""
    if "://" in host or "/" in host:
        bare = host.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
        raise ValueError(f"give the host alone, not a URL (e.g. {bare or 'coordinator.example.org'})")
    try:
        ipaddress.ip_address(host.strip("[]"))
        return host.strip("[]")
    except ValueError:
        pass
    if ":" in host:
        raise ValueError(f"give the host without a port (e.g. {host.rsplit(':', 1)[0]})")
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
        raise ValueError("not a DNS name or IP address (letters, digits and '-' between dots)")
    return host


def generate_dev_certs(out: Path, hosts: list[str], days: int = 365) -> dict[str, Path]:
    """Write ca.crt, ca.key, server.pem, server.key to ``out``; the server cert covers ``hosts``.

    It also names ``LOOPBACK``, so tools on the coordinator's machine (Flower's ``flwr`` CLI,
    `fedtl status` there) can reach its APIs at localhost with the same CA.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if not hosts:
        raise ValueError("name at least one host (DNS name or IP) the coordinator is reached at")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = (
        x509.CertificateBuilder().subject_name(_name("fedtl dev CA")).issuer_name(_name("fedtl dev CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    names = []
    for host in dict.fromkeys([*hosts, *LOOPBACK]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca_cert.subject)
        .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_format = (serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    paths = {"ca": out / "ca.crt", "ca_key": out / "ca.key", "cert": out / "server.pem", "key": out / "server.key"}
    write_bytes_atomic(paths["ca"], ca_cert.public_bytes(pem))
    write_bytes_atomic(paths["ca_key"], ca_key.private_bytes(pem, *key_format), mode=0o600)
    write_bytes_atomic(paths["cert"], server_cert.public_bytes(pem))
    write_bytes_atomic(paths["key"], server_key.private_bytes(pem, *key_format), mode=0o600)
    return paths


class TLSMaterialError(ValueError):
    """A TLS file that cannot serve: missing, not PEM, the wrong kind, expired, or not matching."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TLSMaterialError(f"{what} {path}: not found") from None
    except IsADirectoryError:
        raise TLSMaterialError(f"{what} {path}: is a folder, not a PEM file") from None
    except OSError as exc:
        raise TLSMaterialError(f"{what} {path}: cannot read ({exc.strerror or exc})") from None


def load_certificate(path: Path, what: str):
    """A PEM X.509 certificate, still valid; ``what`` (a flag or file role) is named in errors."""
    from cryptography import x509

    data = _read(path, what)
    if b"PRIVATE KEY-----" in data and b"CERTIFICATE-----" not in data:
        raise TLSMaterialError(f"{what} {path}: holds a private key, not a certificate (was a key copied "
                               "under the certificate's name?)")
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise TLSMaterialError(f"{what} {path}: not a PEM certificate ('-----BEGIN CERTIFICATE-----')") from None
    now = dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc < now:
        raise TLSMaterialError(f"{what} {path}: expired on {cert.not_valid_after_utc:%Y-%m-%d}; make new "
                               "material (`fedtl certs`)")
    return cert


def load_key(path: Path, what: str):
    """An unencrypted PEM private key."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    data = _read(path, what)
    try:
        return load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSMaterialError(f"{what} {path}: the key is encrypted; the SuperLink needs an unencrypted key") from None
    except ValueError:
        hint = " (it holds a certificate)" if b"CERTIFICATE-----" in data else ""
        raise TLSMaterialError(f"{what} {path}: not a PEM private key{hint}") from None


def check_server_material(ca: Path, cert: Path, key: Path) -> None:
    """The coordinator's ca.crt, server.pem and server.key parse, match, and chain: checked before start."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    ca_cert = load_certificate(ca, "CA certificate")
    server_cert = load_certificate(cert, "server certificate")
    server_key = load_key(key, "server key")
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if server_key.public_key().public_bytes(*spki) != server_cert.public_key().public_bytes(*spki):
        raise TLSMaterialError(f"server key {key} does not belong to server certificate {cert}")
    try:
        server_cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise TLSMaterialError(f"server certificate {cert} was not signed by CA certificate {ca}; sites that "
                               "trust that CA would refuse it") from None
