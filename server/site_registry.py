"""Which sites may join: the allowed-sites file, kept in step with the SuperLink while it runs.

With SuperNode authentication on, Flower's SuperLink admits a SuperNode only if its public
key was registered through the Control API. ``SiteRegistry.sync`` registers every key in the
allowed-sites file and unregisters keys that left it, so an operator adds or revokes a site
by editing that file; the coordinator calls ``sync`` on every poll and it applies the file
only when it changed. A file that stops parsing mid-run changes nothing (the error is
logged once) until it is fixed.

Revoking is final for that key while the SuperLink runs (Flower keeps an unregistered key
and refuses to register it again): a site re-admitted after a revocation needs a new key.

Flower logs a refused SuperNode with its whole PEM key; ``RefusalWatch`` reads the
SuperLink's log and reports each refused key once per minute by its OpenSSH fingerprint,
the string the site's operator sees in ``fedtl site``'s own message.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from fedtl.server.control import FlowerControl
from fedtl.server.identity import write_node_names
from fedtl.shared.processes import LogTail
from fedtl.shared.site_keys import AllowedSite, SiteKeyError, pem_fingerprint, read_allowed_sites

log = logging.getLogger(__name__)
ACTIVE = ("registered", "online", "offline")  # node statuses that hold a key; "unregistered" does not


class SiteRegistry:
    def __init__(self, control: FlowerControl, allowed_sites: Path, names_file: Path | None = None):
        self.control = control
        self.path = Path(allowed_sites)
        self.names_file = names_file  # where the ServerApp reads which node is which site (server/identity.py)
        self._seen: bytes | None = None  # the file's content when last applied
        self._pending: bytes | None = None  # a new content read once, applied if the next read agrees
        self._bad: str | None = None
        self.sites: dict[str, AllowedSite] = {}  # fingerprint -> site, as registered

    @staticmethod
    def check(path: Path) -> list[AllowedSite]:
        """Read the file now; raises SiteKeyError (the coordinator refuses to start on it)."""
        sites = read_allowed_sites(path)
        if not sites:
            raise SiteKeyError(f"{path}: no site is allowed; add one with `fedtl certs --out DIR --site NAME`")
        return sites

    def retry(self) -> None:
        """Apply the file again on the next ``sync`` (the last one did not reach the SuperLink)."""
        self._seen, self._pending = None, self._seen

    def _changed(self) -> bool:
        """A new content that read the same twice in a row: an editor's half-written save (a
        truncated or empty file) is never applied, since applying it would revoke sites for good."""
        try:
            content = self.path.read_bytes()  # a few lines: reading beats trusting mtime's resolution
        except OSError:
            content = b""
        if content == self._seen:
            self._pending = None
            return False
        if content != self._pending:
            self._pending = content  # seen once: apply it if the next look finds it unchanged
            return False
        self._seen, self._pending = content, None
        return True

    def sync(self, force: bool = False) -> None:
        """Register the file's keys that the SuperLink lacks; unregister the ones the file dropped."""
        if not self._changed() and not force:
            return
        try:
            wanted = {site.fingerprint: site for site in read_allowed_sites(self.path)}
        except SiteKeyError as exc:
            if str(exc) != self._bad:
                log.error("allowed sites not changed: %s", exc)
                self._bad = str(exc)
            return
        self._bad = None
        nodes = {pem_fingerprint(node.public_key): node for node in self.control.nodes()}
        held = {fp: node for fp, node in nodes.items() if node.status in ACTIVE}
        for fp, node in held.items():
            if fp not in wanted:
                self.control.unregister_node(node.node_id)
                log.warning("site %s revoked: key %s is no longer in %s", node.name or "?", fp, self.path)
        for fp, site in wanted.items():
            if fp in nodes and fp not in held:  # Flower keeps a revoked key for the SuperLink's lifetime
                log.error("site %s cannot be admitted again with key %s, revoked earlier in this run: give it a new "
                          "key (delete its key files and run `fedtl certs --out DIR --site %s`)", site.name, fp, site.name)
            elif fp not in held:
                self.control.register_node(site.pem, site.name)
                log.info("site %s allowed: key %s", site.name, fp)
        self.sites = wanted
        self.publish_names()

    def publish_names(self) -> None:
        """Write which node id holds which allowed site's key, for the ServerApp's identity check."""
        if self.names_file is None:
            return
        names = {node.node_id: self.sites[fp].name for node in self.control.nodes()
                 if node.status in ACTIVE and (fp := pem_fingerprint(node.public_key)) in self.sites}
        write_node_names(self.names_file, names)


_REFUSED = re.compile(r"Attempted to register SuperNode with public key: b'(-----BEGIN PUBLIC KEY-----.*?"
                      r"-----END PUBLIC KEY-----\\n)'")


class RefusalWatch:
    """Report SuperNodes the SuperLink refused, by key fingerprint, from its log."""

    def __init__(self, superlink_log: Path, repeat_after: float = 60.0):
        self._log = LogTail(superlink_log)
        self.repeat_after = repeat_after
        self._last: dict[str, float] = {}

    def check(self, now: float | None = None) -> list[str]:
        """Fingerprints refused since the last check (each at most once per ``repeat_after``)."""
        now = time.monotonic() if now is None else now
        refused = []
        for match in _REFUSED.finditer(self._log.read()):
            fp = pem_fingerprint(match.group(1).replace("\\n", "\n").encode())
            if now - self._last.get(fp, -1e9) >= self.repeat_after:
                self._last[fp] = now
                refused.append(fp)
                log.warning("refused a site whose key is not allowed: %s (add its .pub to the allowed sites "
                            "to admit it)", fp)
        return refused
