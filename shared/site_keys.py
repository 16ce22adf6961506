"""Site identities: one EC key pair per site and the coordinator's list of allowed sites.

A site proves who it is with its private key (Flower's SuperNode authentication signs each
Fleet API call with it); the coordinator admits only the public keys in its allowed-sites
file. Keys are OpenSSH ECDSA P-384 keys, the format Flower's SuperNode reads, and the
allowed-sites file has the shape of OpenSSH's ``authorized_keys``: one
``ecdsa-sha2-nistp384 AAAA... site-name`` per line, ``#`` comments allowed. Adding a line
admits a site; deleting it revokes the site, also while a federation runs.

Fingerprints are OpenSSH's (``SHA256:`` and the unpadded base64 of the key blob's SHA-256),
so ``ssh-keygen -lf site.pub`` prints the same string an operator reads in fedtl's logs.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm

from fedtl.shared.atomic import write_bytes_atomic

ALLOWED_SITES = "allowed_sites.txt"
SITE_KEYS_DIR = "sites"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class SiteKeyError(ValueError):
    """A key or an allowed-sites file that cannot be used; the message names the file (and line)."""


@dataclass(frozen=True)
class AllowedSite:
    name: str
    public_key: object  # cryptography's EllipticCurvePublicKey
    line: int = 0

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    @property
    def pem(self) -> bytes:
        """The key as Flower stores and compares it (PEM SubjectPublicKeyInfo)."""
        return public_pem(self.public_key)


def check_site_name(name: str) -> str:
    if not _NAME.match(name):
        raise SiteKeyError(f"site name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
                           "letter or digit")
    return name


def fingerprint(public_key) -> str:
    """OpenSSH's SHA256 fingerprint of a public key (what ``ssh-keygen -lf`` prints)."""
    from cryptography.hazmat.primitives import serialization

    line = public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def pem_fingerprint(pem: bytes) -> str:
    """The fingerprint of a PEM public key (how Flower's logs show a key), or '?' if it does not parse."""
    from cryptography.hazmat.primitives import serialization

    try:
        return fingerprint(serialization.load_pem_public_key(pem))
    except (ValueError, TypeError):
        return "?"


def public_pem(public_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_curve(key, where: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise SiteKeyError(f"{where}: not an EC key ({type(public).__name__}); make one with "
                           "`fedtl certs --out DIR --site NAME`")
    if public.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
        raise SiteKeyError(f"{where}: EC curve {public.curve.name} is not a NIST curve Flower accepts")


def load_private_key(path: Path):
    """A site's private key (OpenSSH format), checked the way Flower's SuperNode will read it."""
    from cryptography.hazmat.primitives import serialization

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SiteKeyError(f"{path}: cannot read the site key ({exc.strerror or exc})") from None
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SiteKeyError(f"{path}: not an unencrypted OpenSSH private key ({exc}); make one with "
                           "`fedtl certs --out DIR --site NAME`") from None
    _check_curve(key, str(path))
    return key


def generate_site_key(folder: Path, name: str) -> tuple[Path, Path, bool]:
    """``folder/NAME`` (private, 0600) and ``folder/NAME.pub``; an existing pair is kept.

    Returns (private path, public path, created).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    check_site_name(name)
    private, public = folder / name, folder / f"{name}.pub"
    if private.exists():
        key = load_private_key(private)
        if not public.exists():
            write_bytes_atomic(public, _public_line(key.public_key(), name))
        return private, public, False
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                            serialization.NoEncryption())
    write_bytes_atomic(private, pem, mode=0o600)
    write_bytes_atomic(public, _public_line(key.public_key(), name))
    return private, public, True


def same_site_name(name: str) -> str:
    """A site's name as both spellings compare: case and the separators '-', '_' and '.' aside
    (`fedtl certs --site site-a` and a site.yaml named site_a are one site)."""
    return re.sub(r"[-_.]", "-", name.lower())


def check_key_is_sites(private: Path, site: str) -> str:
    """Load a site's private key and refuse one that is another site's; returns its fingerprint.

    `fedtl certs` writes ``NAME.pub`` beside ``NAME`` with the site's name as its comment: when
    that file is there, it must name ``site`` and hold this key's public half. A key used by
    the wrong site would be refused by the coordinator (or, worse, admitted under another name).
    """
    key = load_private_key(private)
    mine = fingerprint(key.public_key())
    public = private.with_name(private.name + ".pub")
    if public.exists():
        try:
            listed = parse_public_line(public.read_text(encoding="utf-8", errors="replace"), str(public))
        except SiteKeyError:
            return mine
        if listed.fingerprint != mine:
            raise SiteKeyError(f"{private}: its public key {public} holds another key ({listed.fingerprint}, "
                               f"not {mine}); the pair was mixed up")
        if same_site_name(listed.name) != same_site_name(site):
            raise SiteKeyError(f"{private}: this is site {listed.name!r}'s key (see {public}), but the config "
                               f"is for site {site!r}; give each site its own key (`fedtl certs --site {site}`)")
    return mine


def _public_line(public_key, name: str) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + \
        f" {name}\n".encode()


def parse_public_line(text: str, where: str) -> AllowedSite:
    """One ``ecdsa-sha2-nistp384 AAAA... NAME`` line (a ``.pub`` file or an allowed-sites entry)."""
    from cryptography.hazmat.primitives import serialization

    fields = text.split()
    if len(fields) < 3:
        raise SiteKeyError(f"{where}: expected '<key type> <base64 key> <site name>', got {text.strip()[:80]!r}")
    try:
        key = serialization.load_ssh_public_key(" ".join(fields[:2]).encode())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SiteKeyError(f"{where}: not an OpenSSH public key ({exc})") from None
    _check_curve(key, where)
    try:
        name = check_site_name(fields[2])
    except SiteKeyError as exc:
        raise SiteKeyError(f"{where}: {exc}") from None
    return AllowedSite(name, key)


def read_allowed_sites(path: Path) -> list[AllowedSite]:
    """Every site in an allowed-sites file; a bad line or a repeated name or key names its line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SiteKeyError(f"{path}: cannot read the allowed sites ({exc.strerror or exc})") from None
    return parse_allowed_sites(text, path)


def parse_allowed_sites(text: str, path: Path) -> list[AllowedSite]:
    sites: list[AllowedSite] = []
    by_name: dict[str, int] = {}
    by_key: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        site = parse_public_line(line, f"{path}, line {number}")
        site = AllowedSite(site.name, site.public_key, number)
        if site.name in by_name:
            raise SiteKeyError(f"{path}, line {number}: site {site.name!r} is already on line {by_name[site.name]}")
        if site.fingerprint in by_key:
            raise SiteKeyError(f"{path}, line {number}: this key ({site.fingerprint}) is already on line "
                               f"{by_key[site.fingerprint]}; each site needs its own key")
        by_name[site.name] = by_key[site.fingerprint] = number
        sites.append(site)
    return sites


def allow_site(path: Path, public_key_file: Path) -> AllowedSite:
    """Add a site's ``.pub`` to the allowed-sites file (atomically).

    An entry already there is kept; a new key for a site name already listed replaces that
    line (a key rotation: the old key is revoked).
    """
    path, public_key_file = Path(path), Path(public_key_file)
    try:
        entry = public_key_file.read_text().strip()
    except OSError as exc:
        raise SiteKeyError(f"{public_key_file}: cannot read ({exc.strerror or exc})") from None
    site = parse_public_line(entry, str(public_key_file))
    text = path.read_text() if path.exists() else (
        "# Sites allowed to join this coordinator, one OpenSSH public key and site name per line.\n"
        "# Delete a line to revoke that site; the coordinator applies changes while it runs.\n")
    lines = text.splitlines()
    for site_there in parse_allowed_sites(text, path):
        if site_there.name == site.name:
            if site_there.fingerprint == site.fingerprint:
                return site
            lines[site_there.line - 1] = entry
            break
    else:
        lines.append(entry)
    text = "\n".join(lines) + "\n"
    parse_allowed_sites(text, path)  # a key already there for another site names its line
    write_bytes_atomic(path, text.encode())
    return site
