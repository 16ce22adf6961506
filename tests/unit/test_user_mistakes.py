"""A user's mistake never costs data, and every bad flag or config is refused before anything starts.

A catalogue of mistakes people make with the `fedtl` command, by kind. Each case runs the real
command in a folder that holds the user's own files and checks: a non-zero exit, no Python
traceback, the culprit (flag, file, line, field) named, the folder byte-identical afterwards
(nothing written, nothing deleted), and no process left running. Every case is refused before
a process starts, so the module runs in seconds.
"""

from __future__ import annotations

import threading
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from fedtl.shared.safe_paths import MARKER
from tests.cli_runner import child_pids, invoke, refused, snapshot
from tests.conftest import make_site


@pytest.fixture
def users_folder(tmp_path, monkeypatch) -> Path:
    """The current folder, holding a user's notes and a thesis folder; HOME is a folder beside it."""
    folder = tmp_path / "work"
    (folder / "thesis" / "chapters").mkdir(parents=True)
    (folder / "notes.txt").write_text("do not lose me\n")
    (folder / "thesis" / "chapters" / "one.tex").write_text("\\chapter{One}\n")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("export A=1\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(folder)
    return folder


def untouched(folder: Path, before: dict[str, str], kids_before: set[int]) -> None:
    assert snapshot(folder) == before, "the command wrote, changed or deleted files"
    assert child_pids() <= kids_before, "the command left a process running"


def attempt(folder: Path, *args: str) -> tuple[int, str]:
    """Run a command that must be refused; it must leave ``folder`` exactly as it was."""
    before, kids = snapshot(folder.parent), child_pids()
    code, out = invoke(*args)
    untouched(folder.parent, before, kids)
    return code, out


# ---------------------------------------------------------------- data loss: fedtl pull --out
HUB = ("--coordinator", "127.0.0.1:9", "--insecure")  # never reached: these are refused first


@pytest.mark.parametrize("out, why", [(".", "the current folder"), ("..", "holds the current folder"),
                                      ("~", "your home folder"), ("~/", "your home folder"), ("/", "root"),
                                      ("thesis", "fedtl did not make it")])
def test_pull_never_replaces_a_folder_it_did_not_make(users_folder, out, why):
    refused(*attempt(users_folder, "pull", *HUB, "--out", out), "--out", why)


def test_pull_out_an_existing_file(users_folder):
    refused(*attempt(users_folder, "pull", *HUB, "--out", "notes.txt"), "--out", "notes.txt", "is a file")


def test_pull_out_under_a_file(users_folder):
    refused(*attempt(users_folder, "pull", *HUB, "--out", "notes.txt/encoder"), "--out", "notes.txt is a file")


def test_atomic_folder_refuses_to_replace_a_folder_it_did_not_make(tmp_path):
    from fedtl.shared.atomic import atomic_folder
    from fedtl.shared.safe_paths import UnsafePath

    target = tmp_path / "mine"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(UnsafePath, match="fedtl did not make it"):
        with atomic_folder(target, "fedtl pull") as tmp:
            (tmp / "model.safetensors").write_bytes(b"0")
    assert (target / "keep.txt").read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    # a folder it made is replaced whole, and carries the marker again
    made = tmp_path / "pulled"
    for content in (b"first", b"second"):
        with atomic_folder(made, "fedtl pull") as tmp:
            (tmp / "model.safetensors").write_bytes(content)
    assert (made / "model.safetensors").read_bytes() == b"second" and (made / MARKER).exists()
    with pytest.raises(UnsafePath, match="fedtl pull"):  # one command's folder is not another's
        with atomic_folder(made, "fedtl checkpoint"):
            pass


# ---------------------------------------------------------------- data loss: simulate and demo workdirs
def federation(folder: Path, text: str = "") -> Path:
    """A federation.yaml of four settings (lines 1-4) followed by ``text`` (from line 5)."""
    path = folder / "federation.yaml"
    last = "mlflow: {enabled: false}" if not text.startswith("mlflow:") else "hub: {enabled: true}"
    path.write_text(f"name: f\nencoder: tiny\nmin_sites: 2\n{last}\n" + text)
    return path


def test_simulate_never_clears_a_coordinators_state(users_folder):
    state = users_folder / "coordinator"
    (state / "checkpoints" / "round-0003").mkdir(parents=True)
    (state / "rounds.jsonl").write_text('{"round": 1}\n')
    config = federation(users_folder)
    refused(*attempt(users_folder, "simulate", "--config", str(config), "--sites", "2", "--workdir", "."),
            "--workdir", "fedtl did not make it")


def test_simulate_takes_a_workdir_it_made(tmp_path):
    from fedtl.harness.simulation import SIMULATED, SimulationPlan, check_plan
    from fedtl.shared.federation_config import load_federation_config
    from fedtl.shared.safe_paths import mark_folder

    fed = load_federation_config(federation(tmp_path))
    workdir = tmp_path / "sim"
    (workdir / "coordinator").mkdir(parents=True)
    mark_folder(workdir, SIMULATED)
    check_plan(fed, SimulationPlan(sites=2), workdir)  # no error: its own folder


def test_demo_never_writes_into_a_folder_it_did_not_make(users_folder):
    refused(*attempt(users_folder, "demo", "--encoder", "tiny", "--workdir", "."), "--workdir",
            "fedtl did not make it")


def test_demo_keeps_edited_example_sites(tmp_path, monkeypatch):
    from fedtl.cli.demo import DEMO
    from fedtl.shared.examples import copy_examples
    from fedtl.shared.safe_paths import mark_folder

    monkeypatch.chdir(tmp_path)
    workdir = tmp_path / "fedtl-demo"
    paths = copy_examples(workdir)
    mark_folder(workdir, DEMO)
    paths["clinic"].write_text(paths["clinic"].read_text() + "# my edit\n")
    refused(*attempt(workdir, "demo", "--encoder", "tiny", "--workdir", str(workdir)), "clinic.yaml", "edited",
            "--site")


# ---------------------------------------------------------------- data loss: fedtl examples
def test_examples_keep_an_edited_copy_unless_forced(tmp_path):
    out = tmp_path / "sites-demo"
    assert invoke("examples", str(out))[0] == 0
    assert invoke("examples", str(out))[0] == 0  # an unedited copy is refreshed quietly
    clinic = out / "sites" / "clinic.yaml"
    clinic.write_text("name: clinic\n# my edits\n")
    before = snapshot(tmp_path)
    refused(*invoke("examples", str(out)), "clinic.yaml", "edited", "--force")
    assert snapshot(tmp_path) == before
    assert invoke("examples", str(out), "--force")[0] == 0
    assert "my edits" not in clinic.read_text()


def test_examples_into_a_file(users_folder):
    refused(*attempt(users_folder, "examples", "notes.txt"), "notes.txt", "is a file")


# ---------------------------------------------------------------- settings that cannot apply
CANNOT_APPLY = [
    ("rounds: 1.0e+22\n", 5, "rounds", "integer"),
    ("rounds: 10000\n", 5, "rounds", "less than or equal to 9999"),
    ("strategy: {name: fedavg, proximal_mu: 0.1}\n", 5, "strategy.proximal_mu", "fedprox"),
    ("strategy:\n  name: fedprox\n  trim_beta: 0.1\n", 7, "strategy.trim_beta", "trimmed_mean"),
    ("update_mode: full\nlora: {rank: 4}\n", 6, "lora", "update_mode lora"),
    ("personalization: {method: fedrep, ditto_lambda: 0.5}\n", 5, "personalization.ditto_lambda", "ditto"),
    ("privacy: {epsilon: 2.0}\n", 5, "privacy.epsilon", "privacy.enabled"),
    ("mlflow: {tracking_uri: mlruns}\n", 5, "mlflow.tracking_uri", "no scheme"),
    ("superlink: {fleet_address: '0.0.0.0:9092'}\nhub: {address: '127.0.0.1:9092'}\n", 6, "hub.address",
     "superlink.fleet_address"),
    ("min_available_sites: 1\n", 5, "min_available_sites", "below min_sites"),
    ("seed: 99999999999999999999\n", 5, "seed", "4294967295"),
    ("round_timeout: .inf\n", 5, "round_timeout", "less than or equal"),
]


@pytest.mark.parametrize("text, line, field, why", CANNOT_APPLY, ids=[c[2] for c in CANNOT_APPLY])
def test_settings_that_cannot_apply_name_their_own_line_and_field(users_folder, text, line, field, why):
    config = federation(users_folder, text)
    refused(*attempt(users_folder, "coordinator", "--config", str(config), "--insecure"),
            "federation.yaml", f"line {line}", f"field '{field}'", why)


SITE_CANNOT_APPLY = [
    ("target_column: label}", "target_column: label, label_separator: ';'}", "tasks.0.label_separator", "multilabel"),
    ("target_column: label}", "target_column: label, validation_data: data.csv, validation_split: 0.3}",
     "tasks.0.validation_split", "validation_data"),
    ("target_column: label}", "target_column: label, labels: [good]}", "tasks.0.labels", "at least 2 labels"),
]


@pytest.mark.parametrize("old, new, field, why", SITE_CANNOT_APPLY, ids=[c[2] for c in SITE_CANNOT_APPLY])
def test_site_settings_that_cannot_apply_name_their_field(users_folder, old, new, field, why):
    config = make_site(users_folder / "site")
    config.write_text(config.read_text().replace(old, new))
    refused(*attempt(users_folder, "train-local", "--config", str(config), "--quiet"),
            "site.yaml", "line 14", f"field '{field}'", why)


def test_lora_targets_the_encoder_lacks(users_folder):
    config = federation(users_folder, "update_mode: lora\nlora:\n  rank: 4\n  targets: [qkv_proj]\n")
    refused(*attempt(users_folder, "coordinator", "--config", str(config), "--insecure"),
            "line 8", "field 'lora.targets'", "qkv_proj")


def test_a_typo_is_reported_on_its_own_line(users_folder):
    config = federation(users_folder, "strategyy:\n  name: fedprox\n")
    refused(*attempt(users_folder, "coordinator", "--config", str(config), "--insecure"),
            "line 5", "field 'strategyy'")


def test_a_yaml_alias_bomb_is_refused_at_once(users_folder):
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    config = users_folder / "bomb.yaml"
    config.write_text("\n".join(lines) + "\n")
    refused(*attempt(users_folder, "coordinator", "--config", str(config), "--insecure"),
            "bomb.yaml", "aliases")


def test_yaml_nested_too_deep(users_folder):
    config = users_folder / "deep.yaml"
    config.write_text("name: " + "[" * 200 + "]" * 200 + "\n")
    refused(*attempt(users_folder, "coordinator", "--config", str(config), "--insecure"), "deep.yaml", "nested")


def test_a_huge_site_seed(users_folder):
    config = make_site(users_folder / "site")
    config.write_text(config.read_text().replace("  seed: 0", "  seed: 18446744073709551616"))
    refused(*attempt(users_folder, "train-local", "--config", str(config), "--quiet"),
            "site.yaml", "field 'training.seed'")


# ---------------------------------------------------------------- checked before start, not after
def test_an_encoder_folder_without_weights(users_folder):
    model = users_folder / "my-model"
    model.mkdir()
    (model / "config.json").write_text('{"num_hidden_layers": 2}')
    (model / "vocab.txt").write_text("[PAD]\n")
    config = federation(users_folder, "")
    config.write_text(config.read_text().replace("encoder: tiny", "encoder: my-model"))
    refused(*attempt(users_folder, "coordinator", "--config", str(config), "--insecure"),
            "field 'encoder'", "no weights")


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("certs") / "certs"
    code, output = invoke("certs", "--out", str(out), "--host", "127.0.0.1", "--site", "clinic", "--site", "pharmacy")
    assert code == 0, output
    return out


def test_a_key_copied_as_the_certificate(users_folder, certs):
    bad = users_folder / "bad-certs"
    bad.mkdir()
    for name in ("ca.crt", "server.key"):
        (bad / name).write_bytes((certs / name).read_bytes())
    (bad / "server.pem").write_bytes((certs / "server.key").read_bytes())
    config = federation(users_folder)
    refused(*attempt(users_folder, "coordinator", "--config", str(config), "--certs", str(bad)),
            "--certs", "server.pem", "private key, not a certificate")


def test_a_server_key_of_another_certificate(users_folder, certs, tmp_path):
    other = tmp_path / "other"
    assert invoke("certs", "--out", str(other), "--host", "127.0.0.1")[0] == 0
    mixed = users_folder / "mixed"
    mixed.mkdir()
    for name in ("ca.crt", "server.pem"):
        (mixed / name).write_bytes((certs / name).read_bytes())
    (mixed / "server.key").write_bytes((other / "server.key").read_bytes())
    refused(*attempt(users_folder, "coordinator", "--config", str(federation(users_folder)), "--certs", str(mixed)),
            "server.key", "does not belong")


def test_a_site_without_its_root_certificate(users_folder):
    config = make_site(users_folder / "site")
    refused(*attempt(users_folder, "site", "--config", str(config), "--coordinator", "127.0.0.1:9092",
                     "--root-certificates", "ca.crt"), "--root-certificates", "ca.crt", "not found")


def test_a_site_with_another_sites_key(users_folder, certs):
    config = make_site(users_folder / "site", name="clinic")
    refused(*attempt(users_folder, "site", "--config", str(config), "--coordinator", "127.0.0.1:9092",
                     "--root-certificates", str(certs / "ca.crt"), "--key", str(certs / "sites" / "pharmacy")),
            "site 'pharmacy'", "'clinic'")


# ---------------------------------------------------------------- no traceback on paths of the wrong kind
def test_state_dir_under_a_file(users_folder):
    config = make_site(users_folder / "site")
    config.write_text(config.read_text().replace("state_dir: state", f"state_dir: {users_folder / 'notes.txt'}/s"))
    refused(*attempt(users_folder, "train-local", "--config", str(config), "--quiet"),
            "field 'state_dir'", "notes.txt is a file")


def test_workdir_under_a_file(users_folder):
    refused(*attempt(users_folder, "demo", "--encoder", "tiny", "--workdir", "notes.txt/demo"),
            "--workdir", "notes.txt is a file")


@pytest.mark.parametrize("command", ["train-local", "demo", "coordinator", "simulate"])
def test_json_naming_a_folder_is_refused_before_any_work(users_folder, command):
    config = make_site(users_folder / "site") if command == "train-local" else federation(users_folder)
    args = {"train-local": ["--config", str(config)], "demo": ["--encoder", "tiny", "--workdir", "w"],
            "coordinator": ["--config", str(config), "--insecure"], "simulate": ["--config", str(config)]}[command]
    refused(*attempt(users_folder, command, *args, "--json", "thesis"), "--json", "thesis", "is a folder")


def test_predict_output_a_folder(users_folder):
    config = make_site(users_folder / "site")
    refused(*attempt(users_folder, "predict", "--config", str(config), "--input", "notes.txt", "--output", "thesis"),
            "--output", "is a folder")


def test_predict_output_over_its_input(users_folder):
    config = make_site(users_folder / "site")
    data = str(users_folder / "site" / "data.csv")
    refused(*attempt(users_folder, "predict", "--config", str(config), "--input", data, "--output", data),
            "--output", "is the --input file")


def test_certs_out_an_existing_file(users_folder):
    refused(*attempt(users_folder, "certs", "--out", "notes.txt", "--host", "127.0.0.1"), "--out", "is a file")


# ---------------------------------------------------------------- nothing written before a refusal
@pytest.mark.parametrize("args, says", [
    (["--host", "127.0.0.1", "--site", "clinics/north"], "--site 'clinics/north'"),
    (["--host", "https://coord.example.org:9092"], "not a URL"),
    (["--host", "coord.example.org:9092"], "without a port"),
    (["--host", "127.0.0.1", "--days", "0"], "--days"),
    (["--host", "127.0.0.1", "--days", "-1"], "--days"),
])
def test_certs_checks_every_flag_before_writing(users_folder, args, says):
    refused(*attempt(users_folder, "certs", "--out", "certs", *args), says)


# ---------------------------------------------------------------- hub clients: addresses, bounded waits
@pytest.mark.parametrize("address, says", [
    ("127.0.0.1", "is not HOST:PORT"), ("127.0.0.1:99999", "out of range"),
    ("https://coord.example.org:9094", "not a URL"),
])
def test_hub_addresses_are_checked_before_connecting(users_folder, address, says):
    refused(*attempt(users_folder, "status", "--coordinator", address, "--insecure"), "--coordinator", says)


def test_site_coordinator_port_out_of_range(users_folder):
    config = make_site(users_folder / "site")
    refused(*attempt(users_folder, "site", "--config", str(config), "--coordinator", "127.0.0.1:99999", "--insecure"),
            "--coordinator", "out of range")


def test_a_hub_that_never_answers_is_given_up_on(tmp_path):
    import socket

    from fedtl.shared.hub_client import HubClient, HubError

    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        client = HubClient(f"127.0.0.1:{silent.getsockname()[1]}", connect_timeout=1.0)
        with pytest.raises(HubError, match="no answer within 1s"):
            client.pull(tmp_path / "out")
        client.close()
    assert not (tmp_path / "out").exists()


class FaultyHub:
    """A hub that streams the chunks it is given, then stalls (``stall``) or ends."""

    def __init__(self, chunks, stall: bool = False):
        from fedtl.v1 import hub_pb2_grpc

        outer = self
        self.chunks, self.stall, self.release = chunks, stall, threading.Event()

        class Servicer(hub_pb2_grpc.HubServicer):
            def PullEncoder(self, request, context):
                yield from outer.chunks
                if outer.stall:
                    outer.release.wait(30)

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        hub_pb2_grpc.add_HubServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def close(self) -> None:
        self.release.set()
        self.server.stop(0).wait()


def _chunk(path: str, data: bytes = b"abc", offset: int = 0, size: int | None = None):
    import hashlib

    from fedtl.v1 import hub_pb2

    size = len(data) if size is None else size
    return hub_pb2.EncoderChunk(round=1, path=path, file_size=size, sha256=hashlib.sha256(data).hexdigest(),
                                offset=offset, data=data, total_size=size, file_count=1)


@pytest.mark.parametrize("name", ["../outside.txt", "/tmp/outside.txt", "a/../../outside.txt"])
def test_pull_refuses_a_path_outside_the_folder(tmp_path, name):
    from fedtl.shared.hub_client import HubClient, HubError

    hub = FaultyHub([_chunk(name)])
    try:
        client = HubClient(f"127.0.0.1:{hub.port}", connect_timeout=5.0)
        with pytest.raises(HubError, match="outside the encoder folder"):
            client.pull(tmp_path / "work" / "out")
        client.close()
    finally:
        hub.close()
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "work" / "out").exists()


def test_pull_refuses_an_offset_past_what_it_has(tmp_path):
    from fedtl.shared.hub_client import HubClient, HubError

    hub = FaultyHub([_chunk("model.safetensors", offset=1 << 40, size=(1 << 40) + 3)])
    try:
        client = HubClient(f"127.0.0.1:{hub.port}", connect_timeout=5.0)
        with pytest.raises(HubError, match="refused"):
            client.pull(tmp_path / "out")
        client.close()
    finally:
        hub.close()


def test_a_pull_that_stalls_is_given_up_on(tmp_path):
    from fedtl.shared.hub_client import HubClient, HubError

    hub = FaultyHub([_chunk("config.json", b"{", size=10)], stall=True)
    try:
        client = HubClient(f"127.0.0.1:{hub.port}", timeout=1.0, connect_timeout=5.0)
        with pytest.raises(HubError, match="no data for 1s"):
            client.pull(tmp_path / "out")
        client.close()
    finally:
        hub.close()
    assert not (tmp_path / "out").exists()


def test_status_pointed_at_a_grpc_port_that_is_not_the_hub(users_folder):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))  # answers gRPC, serves nothing
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        refused(*attempt(users_folder, "status", "--coordinator", f"127.0.0.1:{port}", "--insecure"),
                "UNIMPLEMENTED", "not fedtl's hub", "9094")
    finally:
        server.stop(0).wait()


# ---------------------------------------------------------------- fedtl ui
def test_ui_tracking_uri_without_a_scheme(users_folder):
    refused(*attempt(users_folder, "ui", "--tracking-uri", "mlruns"), "--tracking-uri", "no scheme")


def test_ui_port_in_use(users_folder):
    import socket

    (users_folder / "mlflow.db").write_bytes(b"")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused(*attempt(users_folder, "ui", "--tracking-uri", f"sqlite:///{users_folder / 'mlflow.db'}",
                         "--port", str(port)), "--port", str(port))


# ---------------------------------------------------------------- the cause where the user looks
def test_a_supernodes_exit_reason_is_read_from_its_log():
    from fedtl.client.site_daemon import exit_reason

    log = ("INFO :      Starting Flower SuperNode\n"
           "ERROR :     Failed to read the root certificates: No such file or directory: 'ca.crt'\n"
           "INFO :      shutting down\n")
    assert exit_reason(log) == " (Failed to read the root certificates: No such file or directory: 'ca.crt')"
    assert exit_reason("INFO : Starting\n") == ""


def test_demo_takes_its_own_workdir_and_one_an_earlier_demo_left(tmp_path):
    from fedtl.cli.demo import DEMO, _earlier_workdir
    from fedtl.shared.safe_paths import UnsafePath, check_replaceable, mark_folder

    def ok(folder: Path) -> bool:
        try:
            check_replaceable(folder, DEMO, "--workdir", legacy=_earlier_workdir, itself=False)
            return True
        except UnsafePath:
            return False

    marked, earlier, foreign = tmp_path / "marked", tmp_path / "earlier", tmp_path / "foreign"
    for folder in (marked, earlier, foreign):
        (folder / "coordinator").mkdir(parents=True)
    mark_folder(marked, DEMO)
    (earlier / "federation.yaml").write_text(f"state_dir: {(earlier / 'coordinator').resolve()}\n")
    (foreign / "federation.yaml").write_text("state_dir: coordinator\n")  # a user's own federation
    assert ok(marked) and ok(earlier) and not ok(foreign) and ok(tmp_path / "new")


def test_a_coordinator_never_moves_or_deletes_checkpoints_it_did_not_write(users_folder):
    (users_folder / "coordinator" / "checkpoints" / "round-1").mkdir(parents=True)
    (users_folder / "coordinator" / "checkpoints" / "round-1" / "my-model.pt").write_bytes(b"weights")
    config = federation(users_folder)
    refused(*attempt(users_folder, "coordinator", "--config", str(config), "--insecure"),
            "state_dir", "checkpoints", "fedtl did not write")


def test_a_fresh_run_sets_the_earlier_runs_points_aside_and_keeps_its_own(tmp_path):
    """A reused state_dir: the new run's round-0001 must not be pruned as the oldest among the
    earlier run's round-0005..7, and --resume must find it."""
    from fedtl.server.resume import load_resume_point
    from tests.fakes import HonestSite
    from tests.unit.test_round_contract import run

    run(tmp_path, {1: HonestSite("a", seed=1)}, rounds=3)
    earlier = sorted(p.name for p in (tmp_path / "coordinator" / "resume").glob("round-*"))
    assert earlier == ["round-0002", "round-0003"]
    for name in earlier:  # the earlier run got further: its points are numbered higher than the new run's
        (tmp_path / "coordinator" / "resume" / name).rename(tmp_path / "coordinator" / "resume" / name.replace("000", "001"))
    run(tmp_path, {1: HonestSite("a", seed=2)}, rounds=1)
    state = tmp_path / "coordinator"
    assert sorted(p.name for p in (state / "resume").glob("round-*")) == ["round-0001"]
    assert sorted(p.name for p in (state / "resume.previous").glob("round-*")) == ["round-0012", "round-0013"]
    assert load_resume_point(state).round == 1


def test_a_sites_own_key_under_another_spelling_of_its_name_is_its_own(tmp_path, certs):
    from fedtl.shared.site_keys import SiteKeyError, check_key_is_sites

    key = certs / "sites" / "clinic"
    assert check_key_is_sites(key, "Clinic") == check_key_is_sites(key, "clinic")
    (tmp_path / "site-a").write_bytes(key.read_bytes())
    (tmp_path / "site-a.pub").write_text((certs / "sites" / "clinic.pub").read_text().replace(" clinic", " site-a"))
    check_key_is_sites(tmp_path / "site-a", "site_a")  # `fedtl certs --site site-a` for a site.yaml named site_a
    with pytest.raises(SiteKeyError, match="site 'site-a'"):
        check_key_is_sites(tmp_path / "site-a", "site_b")
