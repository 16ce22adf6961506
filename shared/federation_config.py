"""Federation configuration (`federation.yaml`), validated at the edge with pydantic."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from fedtl.shared.codecs import Codec
from fedtl.shared.config import (
    MAX_SEED,
    Name,
    _resolve,
    resolve_encoder_spec,
    resolve_state_dir,
    resolve_tracking_uri,
)
from fedtl.shared.encoder_specs import encoder_folder, encoder_layers
from fedtl.shared.lora import LoraSettings, check_targets, encoder_linear_modules
from fedtl.shared.update_modes import UpdateMode
from fedtl.shared.yamlconfig import FieldError, load_model

StrategyName = Literal["fedavg", "fedexp", "fedavgm", "fedprox", "fedadam", "fedyogi", "trimmed_mean", "median"]


class StrategyConfig(BaseModel):
    """How the coordinator combines encoder updates (Flower's Message API strategies)."""

    model_config = ConfigDict(extra="forbid")

    name: StrategyName = Field(default="fedexp", description="how the sites' encoder updates are aggregated: "
        "fedexp (the default: FedAvg's mean, extrapolated as far as the updates are orthogonal; benchmarks/README.md) "
        "or one of Flower's strategies")
    proximal_mu: float = Field(default=0.01, ge=0, description="fedprox: weight of the proximal term at sites")
    eta: float = Field(default=0.01, gt=0, description="fedadam/fedyogi: server learning rate")
    eta_l: float = Field(default=0.01, gt=0, description="fedadam/fedyogi: client learning rate (informational)")
    beta_1: float = Field(default=0.9, ge=0, lt=1, description="fedadam/fedyogi: the server optimizer's first-moment decay")
    beta_2: float = Field(default=0.99, ge=0, lt=1, description="fedadam/fedyogi: the server optimizer's second-moment decay")
    tau: float = Field(default=1e-9, gt=0, description="fedadam/fedyogi: adaptivity")
    trim_beta: float = Field(default=0.2, gt=0, lt=0.5, description="trimmed_mean: fraction cut at each end")
    server_learning_rate: float = Field(default=1.0, gt=0, description="fedavg/fedavgm: the server's step on the "
                                        "averaged update (global + lr x (mean - global))")
    server_momentum: float = Field(default=0.9, ge=0, lt=1, description="fedavgm: server momentum")
    max_server_step: float = Field(default=2.0, ge=1, le=100, description="fedexp: cap on the step it chooses "
                                   "each round (a mean update near zero would ask for an unbounded one); with "
                                   "privacy on, fedexp takes the plain mean (the sites' noise is no signal)")
    fedexp_scale: float = Field(default=0.5, gt=0, le=1, description="fedexp: the step is this times "
                                "sum_i p_i ||d_i||^2 / ||mean d||^2, at least 1: 0.5 (the paper's) steps K/2 for K "
                                "orthogonal updates, 1 steps K (their sum: each site's task its whole step)")

    @model_validator(mode="after")
    def _options_of_this_strategy(self) -> StrategyConfig:
        for option in sorted(self.model_fields_set - {"name"}):
            users = STRATEGY_OPTIONS[option]
            if self.name not in users:
                raise FieldError(option, f"{option} is an option of strategy {' / '.join(users)}, not "
                                         f"{self.name}; remove it, or set strategy.name: {users[0]}")
        return self


STRATEGY_OPTIONS: dict[str, tuple[str, ...]] = {  # each strategy setting, and the strategies that read it
    "proximal_mu": ("fedprox",),
    **dict.fromkeys(("eta", "eta_l", "beta_1", "beta_2", "tau"), ("fedadam", "fedyogi")),
    "trim_beta": ("trimmed_mean",),
    "server_learning_rate": ("fedavg", "fedavgm"),
    "server_momentum": ("fedavgm",),
    **dict.fromkeys(("max_server_step", "fedexp_scale"), ("fedexp",)),
}


MAX_ROUNDS = 9999  # checkpoint and resume folders are named round-NNNN
MAX_SITES = 100_000
MAX_SECONDS = 7 * 24 * 3600.0  # a wait longer than a week is a typo
DEFAULT_HUB_PORT = 9094  # hub.address's port, and where `fedtl site --warm-start` looks by default
HUB_TOKEN_ENV = "FEDTL_HUB_TOKEN"  # hub.token when federation.yaml has none; what the hub's clients read too
HUB_TOKEN_MIN_LENGTH = 16
SECRET_FIELDS = (("hub", "token"),)  # federation.yaml fields that never reach MLflow or a log
REDACTED = "***"
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<password>[^@/\s]+)@",
                           re.IGNORECASE)


def redact_url(text: str) -> str:
    """``scheme://user:password@host`` with the password read ``***``."""
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)


def redact_secrets(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a federation.yaml mapping fit to publish (MLflow params, the logged config file):
    secret fields and the password in any ``scheme://user:password@host`` URL read ``***``."""

    def scrub(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        if isinstance(value, str):
            return redact_url(value)
        return value

    out = scrub(config)
    for path in SECRET_FIELDS:
        node = out
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(path[-1]) is not None:
            node[path[-1]] = REDACTED
    return out


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[v6]:PORT``) -> (host, port); ValueError says what is wrong."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{address!r} is not HOST:PORT, e.g. 0.0.0.0:9092")
    if not 0 < int(port) < 65536:
        raise ValueError(f"port {port} is out of range: HOST:PORT needs a port from 1 to 65535")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Only this machine can reach ``host`` (127.0.0.0/8, ::1, localhost); a name or wildcard cannot say so."""
    import ipaddress

    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _checked_address(value: str) -> str:
    split_address(value)
    return value


# a listening address in a config: HOST:PORT, checked by split_address (one place for every listener)
Address = Annotated[str, AfterValidator(_checked_address)]


def _same_interface(a: str, b: str) -> bool:
    """Would listeners on hosts ``a`` and ``b`` collide on one port (same host, or one on all)?"""
    wildcard = ("0.0.0.0", "::", "")
    return a.strip("[]") == b.strip("[]") or a.strip("[]") in wildcard or b.strip("[]") in wildcard


class PersonalizationConfig(BaseModel):
    """What each site ends up with. See README "Choosing a personalization method"."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["fedrep", "ditto", "similarity"] = Field(
        default="fedrep",
        description="fedrep: one global encoder, heads refitted on it at every site; ditto: each site also "
                    "trains and serves a personal encoder pulled towards the global one; similarity: the "
                    "coordinator sends each site a mixture of the sites' models weighted by how alike their "
                    "updates are")
    ditto_lambda: float = Field(default=0.01, ge=0, description="ditto: proximal weight (0: purely local, "
                                                              ".inf: serve the global encoder)")
    similarity_temperature: float = Field(default=0.1, gt=0, description="similarity: softmax temperature over "
                                          "update cosine; lower keeps more of a site's own model")

    @model_validator(mode="after")
    def _options_of_this_method(self) -> PersonalizationConfig:
        for option, method in (("ditto_lambda", "ditto"), ("similarity_temperature", "similarity")):
            if option in self.model_fields_set and self.method != method:
                raise FieldError(option, f"{option} is an option of method {method}, not {self.method}; remove "
                                         f"it, or set personalization.method: {method}")
        return self


class CodecConfig(BaseModel):
    """How encoder tensors are packed on the wire, per direction (``shared/codecs.py``).

    Lossy codecs keep error feedback: the site carries what its uplink encoding dropped into its
    next update; the coordinator sends the change of the global encoder since what the sites hold,
    so what one round's downlink dropped goes out with the next.
    """

    model_config = ConfigDict(extra="forbid")

    up: str = Field(default="none", description="site -> coordinator: none | fp16 | bf16 | int8 | int8:tensor | "
                                                "topk:F (the F largest of each tensor, with their indices)")
    down: str = Field(default="none", description="coordinator -> site: the same choices")

    @field_validator("up", "down")
    @classmethod
    def _known(cls, value: str) -> str:
        return str(Codec.parse(value))


class LoraConfig(BaseModel):
    """update_mode lora: the adapters every site trains and sends (``shared/lora.py``)."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(default=LoraSettings.rank, ge=1, description="r: the adapters' rank")
    alpha: float = Field(default=LoraSettings.alpha, gt=0, description="the update is scaled by alpha / rank")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="dropout on the adapters' input while training")
    lr_scale: float = Field(default=30.0, gt=0,
                            description="the sites' encoder_lr times this for the adapters (LoRA wants a higher "
                                        "rate than fine-tuning the weights; 30 was the best of 1, 3, 10, 30 and "
                                        "100 in benchmarks/communication.py, where 100 diverged)")
    targets: list[str] = Field(default_factory=lambda: list(LoraSettings().targets), min_length=1,
                               description="linear modules (names or name suffixes) that get adapters: "
                                           "attention (query, key, value, attention.output.dense) and "
                                           "feed-forward (intermediate.dense, output.dense)")
    aggregation: Literal["factors", "product"] = Field(
        default="factors", description="factors: the strategy averages A and B; product: the coordinator "
                                       "averages the sites' B @ A and factors it again (rank r, by SVD)")

    def settings(self) -> LoraSettings:
        return LoraSettings(self.rank, self.alpha, self.dropout, tuple(self.targets))


class PrivacyConfig(BaseModel):
    """Differential privacy of the sites' encoder updates (``shared/privacy.py``); off by default.

    Each site clips its update to ``clip_norm`` and adds Gaussian noise sized so that the
    federation's ``rounds`` spend at most ``epsilon`` at a site that takes part in every one
    (no credit for ``fraction``: the coordinator picks the sample, so sampling hides nothing from it).
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="clip and noise every site's encoder update")
    epsilon: float = Field(default=8.0, gt=0, description="the privacy budget for the whole federation")
    delta: float = Field(default=1e-5, gt=0, lt=1, description="probability the epsilon bound may fail; "
                                                                "well below 1 / number of sites' records")
    clip_norm: float = Field(default=1.0, gt=0, description="L2 bound of one site's update per round (all "
                                                            "exchanged tensors together)")

    @model_validator(mode="after")
    def _settings_need_it_on(self) -> PrivacyConfig:
        if not self.enabled and (settings := sorted(self.model_fields_set - {"enabled"})):
            raise FieldError(settings[0], f"privacy.{settings[0]} is set but privacy.enabled is false, so no "
                                          "update is clipped or noised; set privacy.enabled: true, or remove it")
        return self


class HubConfig(BaseModel):
    """fedtl's own API on the coordinator (``protos/fedtl/v1/hub.proto``): status, rounds, the encoder.

    On loopback by default. Another address exposes the encoder and every round's record to
    whoever reaches the port, so the coordinator then refuses to start without TLS (``--certs``)
    and a token."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="serve the hub beside the SuperLink")
    address: Address = Field(default=f"127.0.0.1:{DEFAULT_HUB_PORT}", description="HOST:PORT the hub listens on; "
                             "off loopback it needs the coordinator's TLS (--certs) and a token")
    token: str | None = Field(default=None, min_length=HUB_TOKEN_MIN_LENGTH,
                              description="calls must carry 'authorization: Bearer <token>' "
                                          "(none: token_file, else $FEDTL_HUB_TOKEN if set, else no token)")
    token_file: Path | None = Field(default=None, description="a file holding the token (a container or systemd "
                                    "secret), relative to this file; keeps the token out of federation.yaml")
    linger: float = Field(default=3.0, ge=0, description="seconds the hub keeps answering after the run ends")

    @field_validator("token_file")
    @classmethod
    def _resolve_token_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve(value, info)

    @model_validator(mode="after")
    def _one_token_source(self) -> HubConfig:
        if self.token is not None and self.token_file is not None:
            raise FieldError("token_file", "set hub.token or hub.token_file, not both")
        return self


class SuperLinkConfig(BaseModel):
    """Where the coordinator's Flower SuperLink listens."""

    model_config = ConfigDict(extra="forbid")

    fleet_address: Address = Field(default="0.0.0.0:9092", description="sites connect here (gRPC), HOST:PORT")
    control_host: str = Field(default="127.0.0.1", description="Flower's Control API host: loopback only (it has "
                              "no authentication here: whoever reaches it can submit runs and register site keys)")

    @field_validator("control_host")
    @classmethod
    def _control_on_loopback(cls, value: str) -> str:
        if not is_loopback(value):
            raise ValueError(f"{value!r} is reachable from other hosts; Flower's Control API submits runs and "
                             "registers site keys without authentication: keep it on 127.0.0.1")
        return value
    control_port: int = Field(default=9093, ge=1, le=65535, description="Flower's Control API port (runs are submitted there)")


class MlflowConfig(BaseModel):
    """Where and how the coordinator logs the federation to MLflow."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="log every round to MLflow")
    tracking_uri: str | None = Field(
        default=None, description="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db where the coordinator starts")
    experiment: str = Field(default="fedtl", min_length=1, description="the MLflow experiment the federation's runs go to")
    registered_model: str | None = Field(default="fedtl-encoder", description="register the final encoder; null: don't")
    checkpoint_every: int = Field(default=0, ge=0, le=MAX_ROUNDS,
                                  description="also log checkpoints every k rounds (0: final only)")
    system_metrics_seconds: float = Field(default=10.0, ge=0, le=3600, description="log the coordinator's CPU, "
                                          "memory, disk, network (and GPU) use as system/* metrics this often "
                                          "(MLflow's system metrics; 0: off)")

    @field_validator("tracking_uri")
    @classmethod
    def _resolve_sqlite(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else resolve_tracking_uri(value, info)


class FederationConfig(BaseModel):
    """`federation.yaml`: the encoder, the rounds and how updates are combined."""

    model_config = ConfigDict(extra="forbid")

    name: Name = Field(default="fedtl", description="the federation's name: its MLflow run, checkpoints and registered model")
    encoder: str = Field(default="minilm", description="minilm | tiny | path to a Hugging Face model folder")
    # update_mode, rounds and max_steps: the shape every learning benchmark ran (benchmarks/README.md)
    update_mode: str = Field(default="last:2", description="full | last:N | bias | lora (see lora:)")
    rounds: int = Field(default=4, ge=1, le=MAX_ROUNDS, description="federated rounds to run")
    min_sites: int = Field(default=2, ge=1, le=MAX_SITES, description="sites needed to start and to aggregate a round")
    min_available_sites: int | None = Field(
        default=None, ge=1, le=MAX_SITES,
        description="sites that must be connected before a round starts (default: min_sites; not fewer)")
    fraction: float = Field(default=1.0, gt=0, le=1, description="share of connected sites sampled per round")
    round_timeout: float = Field(default=900.0, gt=0, le=MAX_SECONDS, description="seconds to wait for a round's replies")
    sites_in_flight: int | None = Field(
        default=None, ge=1, le=MAX_SITES, description="at most this many sites working on a round at once, the rest "
        "waiting for a free slot (default: all). For many sites on one host: Flower hands a task whose "
        "ClientApp has not started within 30 s to a new ClientApp, and an overloaded host spirals")
    wait_for_sites: float = Field(default=600.0, gt=0, le=MAX_SECONDS, description="seconds to wait for min_sites at start")
    evaluate_every: int = Field(default=0, ge=0, le=MAX_ROUNDS,
                                description="separate evaluate exchange every k rounds (0: only at the end)")
    final_evaluate: bool = Field(default=True, description="evaluate the final global encoder at every site")
    checkpoint_every: int = Field(default=1, ge=1, le=MAX_ROUNDS, description="write a checkpoint every k rounds")
    max_update_norm: float | None = Field(default=None, gt=0, description="reject updates with a larger L2 norm")
    norm_bound: float | None = Field(
        default=10.0, gt=1, le=1e6, description="reject an update whose L2 norm is over this many times the sites' "
        "typical norm (the lower median of the last round's accepted updates; in the first round, of the first 5 "
        "replies), so no site outweighs the others by sending a huge update; null: off")
    max_site_examples: int = Field(
        default=1_000_000, ge=1, le=10**12, description="cap on the example count a site reports, which weights "
        "its update in aggregation: no site can claim all the weight by reporting 2^62")
    encoder_epochs: int | None = Field(default=None, ge=0, le=1000, description="override the sites' encoder epochs per round")
    max_steps: int | None = Field(default=12, ge=1, le=10**7, description="cap on a site's encoder steps per round "
                                  "(null: the sites' encoder_epochs decide)")
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="seed of the coordinator's sampling and "
                      "initialisation")
    state_dir: Path = Field(default=Path("coordinator"), description="checkpoints and round history")
    strategy: StrategyConfig = Field(default_factory=StrategyConfig, description="aggregation of the encoder updates")
    personalization: PersonalizationConfig = Field(default_factory=PersonalizationConfig, description="one global "
        "encoder, or a model per site (ditto, similarity)")
    codec: CodecConfig = Field(default_factory=CodecConfig, description="how encoder tensors are coded on the wire, each way")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA adapters (update_mode: lora)")
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig, description="differential privacy of the sites' "
        "updates: clip, noise, budget")
    hub: HubConfig = Field(default_factory=HubConfig, description="the coordinator's public API: status, rounds, encoder pulls")
    superlink: SuperLinkConfig = Field(default_factory=SuperLinkConfig, description="where Flower's SuperLink listens")
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig, description="where rounds are logged (a local SQLite "
        "store by default)")

    @field_validator("encoder")
    @classmethod
    def _encoder_exists(cls, value: str, info: ValidationInfo) -> str:
        spec = resolve_encoder_spec(value, info)
        encoder_folder(spec)  # EncoderError is a ValueError: reported with this field's line
        return spec

    @field_validator("update_mode")
    @classmethod
    def _valid_mode(cls, value: str, info: ValidationInfo) -> str:
        mode = UpdateMode.parse(value)
        encoder = info.data.get("encoder")
        if mode.kind == "last" and encoder is not None and mode.layers > (layers := encoder_layers(encoder)):
            raise ValueError(f"update mode {mode} trains the last {mode.layers} layers, but encoder {encoder!r} "
                             f"has {layers}; use last:1 to last:{layers}, or full")
        return str(mode)

    @field_validator("state_dir")
    @classmethod
    def _resolve_state_dir(cls, value: Path, info: ValidationInfo) -> Path:
        return resolve_state_dir(value, info)

    @model_validator(mode="after")
    def _lora_fits(self) -> FederationConfig:
        if self.mode.kind != "lora":
            return self
        try:
            check_targets(encoder_linear_modules(self.encoder), self.lora.targets)
        except ValueError as exc:
            raise FieldError("lora.targets", str(exc)) from None
        if self.lora.aggregation == "product" and self.strategy.name not in ("fedavg", "fedexp"):
            raise FieldError("lora.aggregation", "lora.aggregation product replaces the strategy's average of the "
                                                 "adapters (its mean, not extrapolated); it works with strategy fedavg "
                                                 f"or fedexp, not {self.strategy.name}")
        if self.lora.aggregation == "product" and self.strategy.server_learning_rate != 1.0:
            raise FieldError("lora.aggregation", "lora.aggregation product takes the plain mean of the adapters' "
                                                 "products: set strategy.server_learning_rate to 1 (it is "
                                                 f"{self.strategy.server_learning_rate}) or aggregate the factors")
        return self

    @model_validator(mode="after")
    def _lora_block_needs_lora(self) -> FederationConfig:
        if "lora" in self.model_fields_set and self.mode.kind != "lora":
            raise FieldError("lora", f"a lora: block configures update_mode lora, but update_mode is "
                                     f"{self.update_mode}; remove the block, or set update_mode: lora")
        return self

    @model_validator(mode="after")
    def _enough_available_sites(self) -> FederationConfig:
        if self.min_available_sites is not None and self.min_available_sites < self.min_sites:
            raise FieldError("min_available_sites", f"{self.min_available_sites} is below min_sites "
                                                    f"({self.min_sites}): a round needs min_sites connected; "
                                                    f"raise it to {self.min_sites} or remove it")
        return self

    @model_validator(mode="after")
    def _ports_distinct(self) -> FederationConfig:
        s = self.superlink
        listeners = [("superlink.fleet_address", *split_address(s.fleet_address)),
                     ("superlink.control_port", s.control_host, s.control_port)]
        if self.hub.enabled:
            listeners.append(("hub.address", *split_address(self.hub.address)))
        for i, (field, host, port) in enumerate(listeners):
            for other, other_host, other_port in listeners[:i]:
                if port == other_port and _same_interface(host, other_host):
                    raise FieldError(field, f"port {port} is also {other}'s; each listener needs its own port")
        return self

    @model_validator(mode="after")
    def _downlink_is_one_model(self) -> FederationConfig:
        if Codec.parse(self.codec.down).lossy and self.personalization.method == "similarity":
            raise FieldError("codec.down", f"codec.down {self.codec.down} sends every site the same encoder as "
                                           "changes since the last round, but personalization similarity sends "
                                           "each site its own model; use codec.down: none with similarity")
        return self

    @property
    def sites_to_start(self) -> int:
        return max(self.min_sites, self.min_available_sites or 0)

    @property
    def mode(self) -> UpdateMode:
        return UpdateMode.parse(self.update_mode)


def load_federation_config(path: Path | str) -> FederationConfig:
    return load_model(FederationConfig, path)
