"""Site keys, the allowed-sites file, refusals read from Flower's log, and the CLI's checks."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from fedtl.cli.main import app
from fedtl.server.site_registry import RefusalWatch
from fedtl.shared.site_keys import (
    SiteKeyError,
    allow_site,
    fingerprint,
    generate_site_key,
    load_private_key,
    public_pem,
    read_allowed_sites,
)
from tests.conftest import make_site

runner = CliRunner()


def test_a_site_key_is_private_and_its_fingerprint_is_openssh_s(tmp_path):
    private, public, created = generate_site_key(tmp_path, "alpha")
    assert created and oct(private.stat().st_mode & 0o777) == "0o600"
    key = load_private_key(private)
    kind, blob, name = public.read_text().split()
    assert (kind, name) == ("ecdsa-sha2-nistp384", "alpha")
    expected = "SHA256:" + base64.b64encode(hashlib.sha256(base64.b64decode(blob)).digest()).decode().rstrip("=")
    assert fingerprint(key.public_key()) == expected
    if shutil.which("ssh-keygen"):
        printed = subprocess.run(["ssh-keygen", "-lf", str(public)], capture_output=True, text=True, check=True)
        assert expected in printed.stdout
    again = generate_site_key(tmp_path, "alpha")
    assert again[2] is False and fingerprint(load_private_key(again[0]).public_key()) == expected


def test_allowed_sites_add_keep_and_rotate(tmp_path):
    allowed = tmp_path / "allowed_sites.txt"
    a = allow_site(allowed, generate_site_key(tmp_path / "k", "alpha")[1])
    b = allow_site(allowed, generate_site_key(tmp_path / "k", "beta")[1])
    allow_site(allowed, tmp_path / "k" / "alpha.pub")  # already there: kept once
    assert [(s.name, s.fingerprint) for s in read_allowed_sites(allowed)] == [("alpha", a.fingerprint),
                                                                                ("beta", b.fingerprint)]
    new_alpha = allow_site(allowed, generate_site_key(tmp_path / "k2", "alpha")[1])  # a new key for alpha
    sites = read_allowed_sites(allowed)
    assert [(s.name, s.fingerprint) for s in sites] == [("alpha", new_alpha.fingerprint), ("beta", b.fingerprint)]
    assert new_alpha.fingerprint != a.fingerprint
    assert sites[0].pem == public_pem(load_private_key(tmp_path / "k2" / "alpha").public_key())


def test_a_bad_allowed_sites_file_names_its_line(tmp_path):
    generate_site_key(tmp_path, "alpha")
    line = (tmp_path / "alpha.pub").read_text().strip()
    other = (generate_site_key(tmp_path, "beta")[1]).read_text().strip()
    path = tmp_path / "allowed.txt"
    cases = {
        "not a key": "line 2: not an OpenSSH public key",
        line.rsplit(" ", 1)[0]: "line 2: expected",
        other.replace("beta", "alpha"): "line 2: site 'alpha' is already on line 1",
        line.replace("alpha", "gamma"): "line 2: this key",
        line.replace("alpha", "bad/name"): "line 2: site name 'bad/name'",
    }
    for bad, says in cases.items():
        path.write_text(f"{line}\n{bad}\n")
        with pytest.raises(SiteKeyError, match=f"{path.name}, {says}"):
            read_allowed_sites(path)
    path.write_text(f"# a comment\n\n{line}\n")
    assert [s.line for s in read_allowed_sites(path)] == [3]


def test_a_private_key_that_flower_cannot_use_is_refused_by_name(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    junk = tmp_path / "junk"
    junk.write_text("hello")
    with pytest.raises(SiteKeyError, match="junk: not an unencrypted OpenSSH private key"):
        load_private_key(junk)
    ed = tmp_path / "ed"
    ed.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    with pytest.raises(SiteKeyError, match="ed: not an EC key"):
        load_private_key(ed)
    with pytest.raises(SiteKeyError, match="cannot read"):
        load_private_key(tmp_path / "missing")


def test_refusals_in_flower_s_log_are_reported_by_fingerprint_once_a_minute(tmp_path):
    _, public, _ = generate_site_key(tmp_path, "rogue")
    site = allow_site(tmp_path / "allowed.txt", public)
    pem = repr(site.pem)  # Flower logs the key as a Python bytes literal
    line = (f"ERROR :     [/flwr.proto.Fleet/ActivateNode][ApiError:2004] Attempted to register SuperNode with "
            f"public key: {pem}, exception: No SuperNode found with the given public key.\n")
    log_path = tmp_path / "superlink.log"
    log_path.write_text("INFO : starting\n" + line[:50])  # half a line: not read yet
    watch = RefusalWatch(log_path, repeat_after=60)
    assert watch.check(now=0.0) == []
    with log_path.open("a") as fh:
        fh.write(line[50:] + line)
    assert watch.check(now=1.0) == [site.fingerprint]  # twice in the log, reported once
    with log_path.open("a") as fh:
        fh.write(line)
    assert watch.check(now=30.0) == []
    with log_path.open("a") as fh:
        fh.write(line)
    assert watch.check(now=90.0) == [site.fingerprint]


def test_certs_makes_site_keys_and_keeps_what_exists(tmp_path):
    out = tmp_path / "certs"
    result = runner.invoke(app, ["certs", "--out", str(out), "--site", "alpha"])
    assert result.exit_code == 1 and "--host" in result.output
    result = runner.invoke(app, ["certs", "--out", str(out), "--host", "127.0.0.1", "--site", "alpha"])
    assert result.exit_code == 0, result.output
    ca = (out / "ca.crt").read_bytes()
    result = runner.invoke(app, ["certs", "--out", str(out), "--site", "beta"])
    assert result.exit_code == 0, result.output
    assert (out / "ca.crt").read_bytes() == ca
    assert [s.name for s in read_allowed_sites(out / "allowed_sites.txt")] == ["alpha", "beta"]
    result = runner.invoke(app, ["certs", "--out", str(out), "--site", "no/slash"])
    assert result.exit_code == 1 and "site name" in result.output


def test_site_and_coordinator_refuse_keys_without_tls(tmp_path):
    config = make_site(tmp_path / "site")
    key = generate_site_key(tmp_path, "alpha")[0]
    result = runner.invoke(app, ["site", "--config", str(config), "--coordinator", "127.0.0.1:9092", "--insecure",
                                 "--key", str(key)])
    assert result.exit_code == 1 and "--key needs TLS" in result.output
    result = runner.invoke(app, ["site", "--config", str(config), "--coordinator", "127.0.0.1:9092"])
    assert result.exit_code == 1 and "fedtl certs" in result.output
    result = runner.invoke(app, ["coordinator", "--config", str(config), "--insecure",
                                 "--allowed-sites", str(tmp_path / "allowed.txt")])
    assert result.exit_code == 1 and "--allowed-sites needs TLS" in result.output
    result = runner.invoke(app, ["coordinator", "--config", str(config)])
    assert result.exit_code == 1 and "fedtl certs" in result.output


def test_the_coordinator_certificate_names_its_host_and_loopback(tmp_path):
    """The coordinator's own processes and tools on its host reach it at localhost with the same CA."""
    import ipaddress

    from cryptography import x509

    from fedtl.shared.certs import generate_dev_certs

    generate_dev_certs(tmp_path, ["coordinator.example.org", "10.0.0.5"])
    cert = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["coordinator.example.org", "localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(a) for a in ("10.0.0.5", "127.0.0.1", "::1")]
