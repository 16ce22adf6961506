"""Development TLS material for a federation: a private CA and a server certificate.

For trying TLS on a laptop or a lab network. Production deployments should use their own
PKI; fedtl only needs ``ca.crt`` (sites) and ``server.pem`` + ``server.key`` (coordinator).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from fedtl.shared.atomic import write_bytes_atomic


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedtl dev"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


LOOPBACK = ("localhost", "127.0.0.1", "::1")  # the coordinator's own processes reach its SuperLink here


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
