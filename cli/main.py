"""`fedtl`: one command for coordinators, sites and people trying it out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedtl.cli.console import console, fail, output_file, progress, setup_logging, write_json

app = typer.Typer(
    name="fedtl",
    help="Federated multi-task transfer learning: share a pretrained encoder, keep heads and data private.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        from fedtl.shared import __version__

        typer.echo(f"fedtl {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    setup_logging(verbose)


@app.command("train-local")
def train_local_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="The site's site.yaml.")],
    encoder: Annotated[str | None, typer.Option(help="Override the encoder: minilm, tiny or a model folder.")] = None,
    fresh: Annotated[bool, typer.Option(help="Ignore stored local heads and encoder; start over.")] = False,
    json_out: Annotated[Path | None, typer.Option(
        "--json", callback=output_file, help="Write the metrics as JSON to this file ('-': stdout).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Train this site's heads and encoder on its own data only: the baseline for the federation."""
    from fedtl.cli.reports import local_metrics_table, local_summary_json
    from fedtl.client.head_store import HeadStoreError
    from fedtl.client.local_training import train_local
    from fedtl.shared.config import load_site_config
    from fedtl.shared.data import DataError
    from fedtl.shared.encoders import EncoderError
    from fedtl.shared.yamlconfig import ConfigError

    try:
        site = load_site_config(config)
        with progress(disable=quiet) as bars:
            summary = train_local(site, encoder_spec=encoder, fresh=fresh, progress=bars)
    except (ConfigError, DataError, EncoderError, HeadStoreError, RuntimeError) as exc:
        fail(str(exc))
    console.print(local_metrics_table(summary))
    if json_out is not None:
        write_json(json_out, local_summary_json(summary))


def _tls_files(certs: Path | None, insecure: bool, allowed_sites: Path | None = None):
    from fedtl.server.coordinator import TLSFiles
    from fedtl.shared.site_keys import ALLOWED_SITES

    if insecure and certs is not None:
        fail("choose either --insecure or --certs, not both")
    if not insecure and certs is None:
        fail("no TLS material: pass --certs DIR (ca.crt, server.pem, server.key; make them with "
             "`fedtl certs --out DIR --host HOST --site NAME`), or --insecure on a trusted network")
    if allowed_sites is not None and certs is None:
        fail("--allowed-sites needs TLS (--certs DIR): Flower authenticates sites only over TLS")
    if certs is None:
        return None
    from fedtl.shared.certs import TLSMaterialError, check_server_material

    if not certs.is_dir():
        fail(f"--certs {certs}: {'is a file' if certs.exists() else 'not found'}; give the folder that holds "
             "ca.crt, server.pem and server.key (from `fedtl certs --out DIR`)")
    files = TLSFiles(certs / "ca.crt", certs / "server.pem", certs / "server.key")
    for path in (files.ca, files.cert, files.key):
        if not path.exists():
            fail(f"{path}: not found (expected ca.crt, server.pem and server.key in {certs})")
    try:
        check_server_material(files.ca, files.cert, files.key)
    except TLSMaterialError as exc:
        fail(f"--certs {certs}: {exc}")
    if allowed_sites is None and (certs / ALLOWED_SITES).exists():
        allowed_sites = certs / ALLOWED_SITES
    if allowed_sites is not None and not allowed_sites.exists():
        fail(f"--allowed-sites {allowed_sites}: not found")
    if allowed_sites is None:
        console.print(f"[yellow]site authentication is off: any process that reaches the Fleet port can join. "
                      f"Give sites keys with `fedtl certs --out {certs} --site NAME`.[/]")
    files.allowed_sites = allowed_sites
    return files


@app.command()
def coordinator(
    config: Annotated[Path, typer.Option("--config", "-c", help="The federation's federation.yaml.")],
    resume: Annotated[bool, typer.Option(help="Continue from the latest checkpoint in state_dir.")] = False,
    insecure: Annotated[bool, typer.Option(help="Plain gRPC without TLS (trusted networks, demos).")] = False,
    certs: Annotated[Path | None, typer.Option(
        help="Folder with ca.crt, server.pem, server.key for TLS (and allowed_sites.txt, if there, for site keys).")] = None,
    allowed_sites: Annotated[Path | None, typer.Option(
        help="Only sites whose public keys are in this file may join (default: CERTS/allowed_sites.txt if it "
             "exists). Edit it while the federation runs to add or revoke sites.")] = None,
    json_out: Annotated[Path | None, typer.Option(
        "--json", callback=output_file, help="Write the round history as JSON here ('-': stdout).")] = None,
) -> None:
    """Start the SuperLink and run the federation in federation.yaml; show each round live."""
    from fedtl.cli.federation import run_coordinator

    tls = _tls_files(certs, insecure, allowed_sites)
    raise typer.Exit(run_coordinator(config, resume=resume, tls=tls, json_out=json_out))


@app.command()
def site(
    config: Annotated[list[Path], typer.Option(
        "--config", "-c", help="This site's site.yaml; repeat to serve several sites from one process "
                               "(they share torch's memory: many sites on one machine).")],
    coordinator: Annotated[str, typer.Option(help="The coordinator's Fleet API address, HOST:PORT.")],
    insecure: Annotated[bool, typer.Option(help="Plain gRPC without TLS (trusted networks, demos).")] = False,
    root_certificates: Annotated[Path | None, typer.Option(help="CA certificate that signed the coordinator's.")] = None,
    key: Annotated[list[Path] | None, typer.Option(
        help="This site's private key (from `fedtl certs --site NAME`), for coordinators that admit only "
             "allowed sites; with several --config, one --key per site, in the same order.")] = None,
    encoder: Annotated[str | None, typer.Option(help="Load this encoder at start instead of site.yaml's.")] = None,
    warm_start: Annotated[bool, typer.Option(
        help="Before the first round, pull the federation's latest global encoder from the coordinator's hub "
             "and start from it (the site then needs no copy of the coordinator's encoder).")] = False,
    hub: Annotated[str | None, typer.Option(
        help="With --warm-start: the hub's address, HOST:PORT (default: the coordinator's host, port 9094).")] = None,
    hub_token: Annotated[str | None, typer.Option(
        envvar="FEDTL_HUB_TOKEN", help="With --warm-start: the hub's token (federation.yaml hub.token), if set.")] = None,
    warm_start_wait: Annotated[float, typer.Option(
        min=0, help="With --warm-start: seconds to wait for the hub to answer before giving up.")] = 300.0,
    threads: Annotated[int | None, typer.Option(envvar="FEDTL_THREADS", help="CPU threads for training.")] = None,
) -> None:
    """Run a site daemon: the site worker plus a Flower SuperNode (per site), until SIGTERM or Ctrl-C."""
    from fedtl.cli.federation import run_site
    from fedtl.client.warm_start import HubAccess, WarmStartOptions
    from fedtl.shared.federation_config import DEFAULT_HUB_PORT, split_address

    if threads:
        import torch

        torch.set_num_threads(threads)

    if insecure and root_certificates is not None:
        fail("choose either --insecure or --root-certificates, not both")
    if not insecure and root_certificates is None:
        fail("no TLS material: pass --root-certificates ca.crt (the coordinator's operator has it, from "
             "`fedtl certs`), or --insecure on a trusted network")
    if key and insecure:
        fail("--key needs TLS (--root-certificates): Flower authenticates sites only over TLS")
    check_address(coordinator, "--coordinator", 9092)
    if root_certificates is not None:
        check_certificate_file(root_certificates, "--root-certificates")
    warm = None
    if hub is not None and not warm_start:
        fail("--hub goes with --warm-start")
    if warm_start:
        if encoder is not None:
            fail("choose either --encoder or --warm-start, not both")
        if hub is not None:
            check_address(hub, "--hub", DEFAULT_HUB_PORT)
        host, _ = split_address(hub or coordinator)
        address = hub or (f"[{host}]" if ":" in host else host) + f":{DEFAULT_HUB_PORT}"
        warm = WarmStartOptions(HubAccess(address, root_certificates, hub_token), warm_start_wait)
    raise typer.Exit(run_site(config, coordinator, insecure, root_certificates, encoder, list(key or []), warm))


@app.command()
def demo(
    rounds: Annotated[int | None, typer.Option(min=1, help="Federated rounds (default 3).")] = None,
    encoder: Annotated[str | None, typer.Option(help="minilm (default), tiny, or a Hugging Face model folder.")] = None,
    update: Annotated[str | None, typer.Option(help="Update mode: full, last:N (default last:2), bias or lora.")] = None,
    codec: Annotated[str | None, typer.Option(
        help="Codec both ways: none (default), fp16, bf16, int8, int8:tensor or topk:F.")] = None,
    site: Annotated[list[Path] | None, typer.Option(
        "--site", help="A site.yaml; repeat for more sites. Default: the bundled examples.")] = None,
    federation: Annotated[Path | None, typer.Option(help="A federation.yaml for the other settings.")] = None,
    workdir: Annotated[Path, typer.Option(help="Where the demo keeps sites, state and logs: a new or empty folder, "
                                               "or one an earlier demo made.")] = Path("fedtl-demo"),
    json_out: Annotated[Path | None, typer.Option(
        "--json", callback=output_file, help="Write the summary as JSON here ('-': stdout).")] = None,
) -> None:
    """Run a real federation on this machine: a SuperLink and one daemon per site, on 127.0.0.1."""
    from fedtl.cli.demo import run_demo

    raise typer.Exit(run_demo(workdir, list(site or []), federation, rounds, encoder, update, json_out, codec))


@app.command()
def simulate(
    config: Annotated[Path, typer.Option("--config", "-c", help="The federation's federation.yaml.")],
    sites: Annotated[int, typer.Option(min=1, help="Virtual sites to run.")] = 10,
    rounds: Annotated[int | None, typer.Option(min=1, help="Rounds (default: federation.yaml's).")] = None,
    task: Annotated[str, typer.Option(
        help="Bundled data the sites are cut from: polarity (lexicon, 7,520 rows), sentiment (clinic) "
             "or condition (pharmacy).")] = "polarity",
    alpha: Annotated[float, typer.Option(
        help="Label skew: each site's class mix ~ Dirichlet(alpha x class shares); "
                                      "small: few classes a site, large: like the whole data set.")] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of the cut into sites.")] = 0,
    cpus_per_site: Annotated[float, typer.Option(
        help="Ray CPUs per site in training: cores / this run at once.")] = 1.0,
    sites_in_memory: Annotated[int, typer.Option(
        min=1, help="Site workers each Ray actor keeps loaded; others reload from their state folder.")] = 16,
    workdir: Annotated[Path, typer.Option(
        help="Where the sites' data and state and the coordinator's state go: a new or empty folder, or one an "
             "earlier simulation made (its state is cleared).")] = Path("fedtl-simulation"),
    json_out: Annotated[Path | None, typer.Option(
        "--json", callback=output_file, help="Write the round history as JSON here ('-': stdout).")] = None,
) -> None:
    """Run the federation over N virtual sites on Flower's simulation engine (Ray), cut from bundled data."""
    from fedtl.cli.simulation import run_simulate

    raise typer.Exit(run_simulate(config, sites, rounds, task, alpha, seed, cpus_per_site, sites_in_memory, workdir,
                                  json_out))


@app.command()
def ui(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="A federation.yaml: use its MLflow store.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: ./mlflow.db).")] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port for the UI.")] = 5000,
    experiment: Annotated[str | None, typer.Option(
        help="Experiment the printed URL opens (default: --config's, else the most recently updated).")] = None,
) -> None:
    """Open the MLflow UI on the federation's tracking store; prints the URL of its runs table."""
    from fedtl.cli.mlflow_ui import run_ui

    raise typer.Exit(run_ui(config, tracking_uri, host, port, experiment))


@app.command()
def certs(
    out: Annotated[Path, typer.Option(help="Folder for the CA, the coordinator's certificate and the site keys.")],
    host: Annotated[list[str] | None, typer.Option(
        "--host", help="DNS name or IP sites use to reach the coordinator; repeat. Needed when OUT has no CA yet.")] = None,
    site: Annotated[list[str] | None, typer.Option(
        "--site", help="Make a key pair for this site and allow it (OUT/allowed_sites.txt); repeat.")] = None,
    days: Annotated[int, typer.Option(min=1, max=3650, help="Validity in days (1-3650).")] = 365,
) -> None:
    """Make a development CA, the coordinator's TLS certificate and site keys (not for production PKI).

    Run it again with more --site to add sites: existing certificates and keys are kept.
    """
    from fedtl.shared.certs import TLSMaterialError, check_host, generate_dev_certs, load_certificate
    from fedtl.shared.safe_paths import UnsafePath, check_folder
    from fedtl.shared.site_keys import ALLOWED_SITES, SITE_KEYS_DIR, SiteKeyError, allow_site, check_site_name, generate_site_key

    try:  # every flag is checked before the first file is written
        check_folder(out, "--out")
    except UnsafePath as exc:
        fail(str(exc))
    for name in site or []:
        try:
            check_site_name(name)
        except SiteKeyError as exc:
            fail(f"--site {name!r}: {exc}")
    hosts = []
    for name in host or []:
        try:
            hosts.append(check_host(name))
        except ValueError as exc:
            fail(f"--host {name!r}: {exc}")
    if (out / "ca.crt").exists():
        try:
            load_certificate(out / "ca.crt", "CA certificate")
        except TLSMaterialError as exc:
            fail(f"{exc}; move it away to make new material in {out}")
        if host:
            console.print(f"kept the CA and server certificate already in {out} (delete them to make new ones)")
    else:
        if not host:
            fail(f"{out} has no CA yet: name the coordinator's host with --host (DNS name or IP; repeat)")
        generate_dev_certs(out, hosts, days)
        console.print(f"coordinator: fedtl coordinator --config federation.yaml --certs {out}")
    for name in site or []:
        try:
            private, public, created = generate_site_key(out / SITE_KEYS_DIR, name)
            allowed = allow_site(out / ALLOWED_SITES, public)
        except SiteKeyError as exc:
            fail(str(exc))
        state = "made" if created else "kept"
        console.print(f"site {name}: {state} key {private} ({allowed.fingerprint}), allowed in {out / ALLOWED_SITES}")
        console.print(f"  fedtl site --config site.yaml --coordinator HOST:9092 --root-certificates {out / 'ca.crt'} "
                      f"--key {private}")
    if not site:
        console.print(f"each site:   fedtl site --config site.yaml --coordinator HOST:9092 --root-certificates "
                      f"{out / 'ca.crt'}")
    console.print(f"[yellow]keep {out / 'ca.key'} private; a site gets ca.crt and only its own key[/]")


def check_address(value: str, flag: str, example_port: int) -> str:
    """A HOST:PORT flag, refused before anything connects: not a URL, a port, in range."""
    from fedtl.shared.federation_config import split_address

    if "://" in value:
        host = value.split("://", 1)[1].split("/", 1)[0].rpartition(":")[0] or "HOST"
        fail(f"{flag} {value!r}: give HOST:PORT, not a URL (e.g. {host}:{example_port})")
    try:
        split_address(value)
    except ValueError as exc:
        fail(f"{flag} {value!r}: {exc}")
    return value


def _hub(coordinator: str, insecure: bool, root_certificates: Path | None, token: str | None):
    from fedtl.shared.federation_config import DEFAULT_HUB_PORT
    from fedtl.shared.hub_client import HubClient

    check_address(coordinator, "--coordinator", DEFAULT_HUB_PORT)
    if insecure == (root_certificates is not None):
        fail("pass --root-certificates ca.crt for a TLS coordinator, or --insecure for a plain one")
    if root_certificates is not None:
        check_certificate_file(root_certificates, "--root-certificates")
    return HubClient(coordinator, root_certificates, token, timeout=HUB_ANSWER_SECONDS,
                     connect_timeout=HUB_CONNECT_SECONDS)


def check_certificate_file(path: Path, flag: str) -> None:
    """A CA certificate a client trusts: there, and a PEM certificate, before anything connects."""
    from fedtl.shared.certs import TLSMaterialError, load_certificate

    try:
        load_certificate(path, flag)
    except TLSMaterialError as exc:
        fail(f"{exc} (the coordinator's operator has ca.crt, from `fedtl certs`)")


HUB_CONNECT_SECONDS = 10.0
HUB_ANSWER_SECONDS = 30.0
HubAddress = Annotated[str, typer.Option(
    help=f"The coordinator's hub address, HOST:PORT (federation.yaml hub.address). Waits at most "
         f"{HUB_CONNECT_SECONDS:.0f}s to connect and {HUB_ANSWER_SECONDS:.0f}s for each answer.")]
HubInsecure = Annotated[bool, typer.Option(help="The coordinator runs without TLS.")]
HubRoots = Annotated[Path | None, typer.Option(help="CA certificate that signed the coordinator's.")]
HubToken = Annotated[str | None, typer.Option(envvar="FEDTL_HUB_TOKEN", help="The hub's token (hub.token), if set.")]


@app.command()
def status(
    coordinator: HubAddress,
    insecure: HubInsecure = False,
    root_certificates: HubRoots = None,
    token: HubToken = None,
    watch: Annotated[bool, typer.Option(help="Follow the rounds live until the federation ends.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON (one object; with --watch one line per round).")] = False,
) -> None:
    """How a running federation is going: state, rounds, sites, MLflow run."""
    import json

    from fedtl.cli.reports import hub_status_table, rounds_table
    from fedtl.server.history import RoundRecord
    from fedtl.shared.hub_client import HubError

    client = _hub(coordinator, insecure, root_certificates, token)
    try:
        if watch:
            for record in client.watch():
                entry = json.loads(record.record_json)
                if json_out:
                    typer.echo(json.dumps(entry, sort_keys=True))
                else:
                    console.print(rounds_table([RoundRecord.model_validate(entry)], title=f"round {record.round}"))
        current = client.status()
        if json_out and not watch:
            from google.protobuf.json_format import MessageToDict

            typer.echo(json.dumps(MessageToDict(current, preserving_proto_field_name=True), indent=2, sort_keys=True))
        elif not json_out:
            console.print(hub_status_table(current))
    except HubError as exc:
        fail(str(exc))
    finally:
        client.close()


@app.command()
def pull(
    coordinator: HubAddress,
    out: Annotated[Path, typer.Option(help="Folder to write the encoder to (a Hugging Face model folder): a new or "
                                           "empty folder, or one an earlier pull wrote (it is replaced).")],
    round_: Annotated[int, typer.Option("--round", min=0, help="The round's checkpoint (0: the latest).")] = 0,
    insecure: HubInsecure = False,
    root_certificates: HubRoots = None,
    token: HubToken = None,
) -> None:
    """Download the federation's global encoder; transformers.AutoModel.from_pretrained(OUT) loads it."""
    from fedtl.shared.hub_client import PULLED, HubError
    from fedtl.shared.safe_paths import UnsafePath, check_replaceable

    out = out.expanduser()  # `--out=~` reaches us unexpanded: it means the home folder, not a folder named ~
    try:
        check_replaceable(out, PULLED, "--out")
    except UnsafePath as exc:
        fail(str(exc))
    client = _hub(coordinator, insecure, root_certificates, token)
    try:
        with progress() as bars:
            task = bars.add_task("pulling the encoder", total=None)
            pulled = client.pull(out, round_, lambda done, total: bars.update(task, completed=done, total=total))
    except (HubError, UnsafePath) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"--out {out}: cannot write the encoder there ({exc.strerror or exc})")
    finally:
        client.close()
    console.print(f"encoder of round {pulled} in {out}")


@app.command()
def predict(
    config: Annotated[Path, typer.Option("--config", "-c", help="The site's site.yaml.")],
    input_file: Annotated[Path | None, typer.Option("--input", help="Texts to predict: .csv, .tsv, .jsonl or "
                                                                   ".parquet with the tasks' text columns.")] = None,
    output: Annotated[Path | None, typer.Option(
        callback=output_file, help="Where to write (.csv, .tsv, .jsonl, .parquet); default: CSV on stdout.")] = None,
    serve: Annotated[int | None, typer.Option(min=1, max=65535, help="Answer gRPC Predict calls on this port "
                                                                     "(protos/fedtl/v1/predict.proto) until Ctrl-C.")] = None,
    host: Annotated[str, typer.Option(help="With --serve: the interface to listen on; off loopback it needs "
                                           "--tls-certificate, --tls-key and a token.")] = "127.0.0.1",
    tls_certificate: Annotated[Path | None, typer.Option(help="With --serve: the server's certificate chain (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="With --serve: its private key (PEM).")] = None,
    token_file: Annotated[Path | None, typer.Option(help="With --serve: a file holding the token callers must send "
                                                         "(authorization: Bearer ...).")] = None,
    token: Annotated[str | None, typer.Option(envvar="FEDTL_PREDICT_TOKEN", hidden=True)] = None,
) -> None:
    """Predict every task of a site with the model it serves (site_model.json); keeps the input columns."""
    from fedtl.client.head_store import HeadStoreError
    from fedtl.client.predict import PredictError, SiteModel, check_output, predict_file
    from fedtl.shared.config import load_site_config
    from fedtl.shared.data import DataError
    from fedtl.shared.encoders import EncoderError
    from fedtl.shared.yamlconfig import ConfigError

    if (input_file is None) == (serve is None):
        fail("pass --input FILE to predict a file, or --serve PORT to answer Predict calls")
    if input_file is not None and output is not None and output.resolve() == input_file.resolve():
        fail(f"--output {output} is the --input file: it would be replaced by the predictions; write another file")
    try:
        check_output(output)
        site = load_site_config(config)
        if serve is not None:
            raise typer.Exit(_serve_predictions(site, f"{host}:{serve}", _listener_tls(tls_certificate, tls_key),
                                                _token(token_file, token)))
        model = SiteModel.load(site)
        count = predict_file(model, input_file, output)
    except (ConfigError, DataError, EncoderError, HeadStoreError, PredictError) as exc:
        fail(str(exc))
    if output is not None:
        served = model.info
        console.print(f"{count} rows predicted with the {served['model']} model of round {served['round']} "
                      f"-> {output}")


def _listener_tls(certificate: Path | None, key: Path | None) -> tuple[bytes, bytes] | None:
    if (certificate is None) != (key is None):
        fail("pass both --tls-certificate and --tls-key, or neither")
    if certificate is None or key is None:
        return None
    try:
        return certificate.read_bytes(), key.read_bytes()
    except OSError as exc:
        fail(f"{exc.filename}: cannot read ({exc.strerror})")


def _token(token_file: Path | None, token: str | None) -> str | None:
    """--token-file's content, else $FEDTL_PREDICT_TOKEN; at least 16 characters."""
    from fedtl.shared.grpc_listeners import token_problem

    source = "$FEDTL_PREDICT_TOKEN"
    if token_file is not None:
        try:
            token, source = token_file.read_text().strip(), f"--token-file {token_file}"
        except OSError as exc:
            fail(f"--token-file {token_file}: cannot read ({exc.strerror})")
    if token is not None and (why := token_problem(token, source)) is not None:
        fail(why)
    return token


def _serve_predictions(site, address: str, tls: tuple[bytes, bytes] | None, token: str | None) -> int:
    import threading

    from fedtl.cli.console import handle_stop_signals
    from fedtl.client.predict_server import serve_predictions

    try:
        server, port = serve_predictions(site, address, tls, token)
    except RuntimeError as exc:
        fail(str(exc))
    stopped = threading.Event()
    handle_stop_signals(on_stop=stopped.set)
    console.print(f"site {site.name}: answering Predict on {address.rpartition(':')[0]}:{port} (Ctrl-C stops)")
    # Wake every half second: a SIGTERM delivered to one of gRPC's threads only runs its Python
    # handler when the main thread next runs bytecode, and an untimed wait never does.
    while not stopped.wait(0.5):
        pass
    server.stop(grace=2.0).wait()
    return 0


@app.command("examples")
def examples_cmd(
    out: Annotated[Path, typer.Argument(help="Folder to copy the example sites and data into.")],
    force: Annotated[bool, typer.Option(help="Overwrite example files you edited there (default: refuse and "
                                             "keep them).")] = False,
) -> None:
    """Copy the bundled example sites (configs + data) to a folder you can edit.

    Copying again over an earlier copy refreshes unchanged files and refuses to touch edited ones.
    """
    from fedtl.shared.examples import ExamplesError, copy_examples

    try:
        paths = copy_examples(out, force=force)
    except ExamplesError as exc:
        fail(str(exc))
    for name, path in paths.items():
        console.print(f"[bold]{name}[/]: {path}")
    console.print(f"Try: fedtl train-local --config {paths['clinic']}")


if __name__ == "__main__":
    app()
