"""Site identities over TLS, with real SuperLink and SuperNodes: who may join, and who may not."""

from __future__ import annotations

import csv
import re
import shutil
from contextlib import nullcontext
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedtl.cli.main import app
from fedtl.shared.site_keys import ALLOWED_SITES, read_allowed_sites
from tests.capture import Capture, require_tcpdump, tcp_streams
from tests.conftest import write_csv
from tests.integration.harness import Federation
from tests.integration.test_federation import head_tensor_names, site_texts
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def make_certs(out: Path, *sites: str) -> None:
    result = CliRunner().invoke(app, ["certs", "--out", str(out), "--host", "127.0.0.1", "--host", "localhost",
                                      *[arg for site in sites for arg in ("--site", site)]])
    assert result.exit_code == 0, result.output


def says(path: Path, needle: str) -> bool:
    """``needle`` is in the log at ``path``, however rich wrapped its lines."""
    squash = lambda text: re.sub(r"[\s│]+", "", text)  # noqa: E731
    return path.exists() and squash(needle) in squash(path.read_text(errors="replace"))


def test_only_allowed_sites_join_a_tls_federation(tmp_path):
    """Two allowed sites finish 2 rounds; a site with a key the coordinator does not know is refused
    (both sides say so with its fingerprint) and a site without TLS never connects; neither stops
    the rounds. tcpdump on loopback sees no tensor name, text or label in the clear."""
    certs, rogue = tmp_path / "certs", tmp_path / "rogue-certs"
    make_certs(certs, "alpha", "beta")
    make_certs(rogue, "gamma")  # a key pair of the right kind that this coordinator never saw
    assert oct((certs / "server.key").stat().st_mode & 0o777) == "0o600"
    assert oct((certs / "sites" / "alpha").stat().st_mode & 0o777) == "0o600"
    allowed = {s.name: s.fingerprint for s in read_allowed_sites(certs / ALLOWED_SITES)}
    assert set(allowed) == {"alpha", "beta"}
    gamma_fp = read_allowed_sites(rogue / ALLOWED_SITES)[0].fingerprint

    fed = Federation(tmp_path)
    fed.certs = certs
    for name in ("alpha", "beta", "gamma", "delta"):
        fed.add_site(name, types=("classification",))
        labels = {"good": f"{name}-favourable", "bad": f"{name}-unfavourable"}  # labels worth looking for
        rows = list(csv.DictReader((tmp_path / name / "data.csv").open()))
        for row in rows:
            row["label"] = labels[row["label"]]
        write_csv(tmp_path / name / "data.csv", rows)
    fed.write_config(rounds=2, min_sites=2, final_evaluate=False)
    ca = str(certs / "ca.crt")
    capture = Capture(fed.fleet_port, tmp_path / "fleet.pcap") if shutil.which("tcpdump") else nullcontext()
    with capture:
        try:
            fed.start_site("gamma", tls=["--root-certificates", ca, "--key", str(rogue / "sites" / "gamma")])
            fed.start_site("delta", tls=["--insecure"])
            for name in ("alpha", "beta"):
                fed.start_site(name, tls=["--root-certificates", ca, "--key", str(certs / "sites" / name)])
            fed.start_coordinator()
            assert fed.wait_coordinator(300) == 0, fed.log("coordinator")
            # the rogue site keeps trying: its refusal reaches both logs (it may lag the last round)
            wait_until(lambda: says(fed.root / "gamma.log", f"refused this site's key {gamma_fp}"), 60,
                       lambda: fed.log("gamma"))
            wait_until(lambda: says(fed.root / "delta.log", "cannot reach the coordinator"), 60, lambda: fed.log("delta"))
        finally:
            fed.stop_all()

    coordinator = fed.root / "coordinator.log"
    assert says(coordinator, "site authentication on: 2 site(s) allowed"), fed.log("coordinator")
    assert says(coordinator, f"refused a site whose key is not allowed: {gamma_fp}"), fed.log("coordinator")
    for name in ("alpha", "beta", "gamma", "delta"):
        assert "Traceback" not in fed.log(name), fed.log(name)
    rounds = fed.rounds()
    assert [r["round"] for r in rounds] == [1, 2]
    for record in rounds:
        assert set(record["sites"]) == {"alpha", "beta"}, record
        assert record["accepted"] == 2
    assert len(fed.site_history("alpha")) == 2 and len(fed.site_history("beta")) == 2
    assert fed.site_history("gamma") == [] and fed.site_history("delta") == []
    assert "--insecure" not in " ".join(fed.procs["alpha"].args)

    # what crossed loopback: TLS all the way, so no name, text or label of a site in the clear
    require_tcpdump()
    wire = b"".join(tcp_streams(tmp_path / "fleet.pcap").values())
    assert len(wire) > 100_000  # the rounds' traffic was captured
    assert b"encoder.layer.0" not in wire and b"embeddings.word_embeddings" not in wire
    heads = head_tensor_names(fed, "alpha", "beta")
    assert heads and not [n for n in heads if n.encode() in wire]
    texts = site_texts(fed, "alpha", "beta")
    assert texts and not [t for t in texts if t.encode() in wire]
    labels = {row["label"] for name in ("alpha", "beta") for row in csv.DictReader((tmp_path / name / "data.csv").open())}
    assert len(labels) == 4 and not [x for x in labels if x.encode() in wire]


def look_twice(coord) -> None:
    """Two polls: an edit is applied once the file reads the same twice (a half-written save never is)."""
    coord.watch_sites()
    coord.watch_sites()


def test_allowed_sites_file_edits_apply_while_the_superlink_runs(tmp_path):
    """Deleting a line revokes that site at the SuperLink; a broken file changes nothing and the
    coordinator goes on; the revoked key stays out, and a new key for the site admits it again."""
    from fedtl.server.coordinator import Coordinator, TLSFiles
    from fedtl.shared.federation_config import load_federation_config
    from fedtl.shared.site_keys import pem_fingerprint

    certs = tmp_path / "certs"
    make_certs(certs, "alpha", "beta")
    fed = Federation(tmp_path)
    config = fed.write_config()
    allowed = certs / ALLOWED_SITES
    coord = Coordinator(load_federation_config(config), config,
                        tls=TLSFiles(certs / "ca.crt", certs / "server.pem", certs / "server.key", allowed))

    def registered() -> dict[str, str]:
        return {n.name: pem_fingerprint(n.public_key) for n in coord.control().nodes()
                if n.status != "unregistered"}

    try:
        coord.start_superlink()
        expected = {s.name: s.fingerprint for s in read_allowed_sites(allowed)}
        assert registered() == expected
        original = allowed.read_text()
        without_beta = "".join(line for line in original.splitlines(keepends=True) if not line.endswith(" beta\n"))
        allowed.write_text(without_beta)
        look_twice(coord)
        assert registered() == {"alpha": expected["alpha"]}
        allowed.write_text(without_beta + "not a key\n")
        look_twice(coord)  # logged, not applied
        assert registered() == {"alpha": expected["alpha"]}
        allowed.write_text(original)  # Flower keeps a revoked key: beta needs a new one
        look_twice(coord)
        assert registered() == {"alpha": expected["alpha"]}
        for path in (certs / "sites" / "beta", certs / "sites" / "beta.pub"):
            path.unlink()
        make_certs(certs, "beta")  # a new key for beta replaces its line
        renewed = {s.name: s.fingerprint for s in read_allowed_sites(allowed)}
        assert renewed["alpha"] == expected["alpha"] and renewed["beta"] != expected["beta"]
        look_twice(coord)
        assert registered() == renewed
    finally:
        coord.shutdown()
