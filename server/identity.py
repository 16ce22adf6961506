"""Who a reply is from: the name the transport vouches for, not the one the reply claims.

A reply carries the site's name in its report, and anything in a reply is untrusted. With
site keys on, the SuperLink admitted the node by a key the coordinator registered under a
site name, so that name is the node's: the coordinator publishes the node id -> name map
(``site_nodes.json`` in the state folder) and a reply claiming any other name is rejected.
Without keys nothing vouches for a name, so the rule is the next best one: a node never
changes its name, and a name belongs to the first node that used it while that node stays
connected (a site that restarts gets a new node id and takes its name back once the old
node has timed out).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from fedtl.shared.atomic import write_bytes_atomic
from fedtl.shared.site_keys import same_site_name

log = logging.getLogger(__name__)
NODE_NAMES = "site_nodes.json"  # in the coordinator's state folder, while site keys are on


def write_node_names(path: Path, names: dict[int, str]) -> None:
    """Publish which node is which registered site (the coordinator, after each change)."""
    data = json.dumps({str(node): name for node, name in sorted(names.items())}, indent=1)
    write_bytes_atomic(path, data.encode(), mode=0o600)


def read_node_names(path: Path) -> dict[int, str]:
    """The published map; empty while it is missing or unreadable (a reply is then refused, not trusted)."""
    try:
        raw = json.loads(Path(path).read_text())
        return {int(node): str(name) for node, name in raw.items()}
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("cannot read the registered site names in %s: %s", path, exc)
        return {}


class SiteIdentity:
    """Decides whether a node may speak under the name its reply claims.

    ``registered``: the coordinator's ``site_nodes.json`` when site keys are on, else None.
    """

    def __init__(self, registered: Path | None = None):
        self.registered = registered
        self._registered_names: dict[int, str] = {}
        self.names: dict[int, str] = {}    # node id -> the name it answers under
        self.holders: dict[str, int] = {}  # name -> the node that holds it

    def registered_name(self, node: int) -> str | None:
        if self.registered is None:
            return None
        if node not in self._registered_names:  # a site admitted since the last read
            self._registered_names = read_node_names(self.registered)
        return self._registered_names.get(node)

    def refuse(self, node: int, claimed: str, connected: Callable[[], set[int]]) -> str | None:
        """Why ``node`` may not answer as ``claimed`` (None: it may). ``connected`` is asked only when needed."""
        if self.registered is not None:
            name = self.registered_name(node)
            if name is None:
                return f"node {node} has no registered site key"
            if same_site_name(claimed) != same_site_name(name):  # `fedtl certs --site site-a` for site_a
                return f"node {node} holds the key of site {name!r} but its reply claims to be {claimed!r}"
            return None
        if node in self.names and self.names[node] != claimed:
            return f"node {node} answered as site {self.names[node]!r} before; its reply now claims {claimed!r}"
        holder = self.holders.get(claimed)
        if holder is not None and holder != node and holder in connected():
            return f"site name {claimed!r} belongs to node {holder}, which is still connected"
        return None

    def bind(self, node: int, name: str) -> None:
        """``node`` answered as ``name`` and was accepted: the name is its own from now on."""
        self.names[node] = name
        self.holders[name] = node
