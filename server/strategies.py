"""Build the configured Flower Message API strategy.

fedtl drives the rounds itself (one exchange per round, evaluation only when asked) and
uses the strategy for what it is good at: sampling sites (``configure_train``, which also
adds FedProx's ``proximal-mu``) and aggregating replies (``aggregate_train``). FedAvg with a
server step other than 1 is Flower's FedAvgM without momentum; FedExP is FedAvg's mean, which
the round's aggregator then extrapolates (``server/aggregation.py``).
"""

from __future__ import annotations

import inspect

from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedMedian, FedProx, FedTrimmedAvg, FedYogi, Strategy

from fedtl.server.aggregation import Extrapolation
from fedtl.shared.federation_config import FederationConfig, StrategyConfig

STRATEGIES: dict[str, type[Strategy]] = {
    "fedavg": FedAvg,
    "fedexp": FedAvg,  # the mean, extrapolated by the aggregator (Extrapolation)
    "fedavgm": FedAvgM,
    "fedprox": FedProx,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "trimmed_mean": FedTrimmedAvg,
    "median": FedMedian,
}


def strategy_settings(fed: FederationConfig) -> dict[str, object]:
    """Every setting the strategy is built with (also logged as run parameters)."""
    s = fed.strategy
    settings: dict[str, object] = {
        "fraction_train": fed.fraction,
        "fraction_evaluate": 1.0,
        "min_train_nodes": fed.min_sites,
        "min_evaluate_nodes": 1,
        "min_available_nodes": fed.sites_to_start,
        "proximal_mu": s.proximal_mu,
        "eta": s.eta,
        "eta_l": s.eta_l,
        "beta_1": s.beta_1,
        "beta_2": s.beta_2,
        "tau": s.tau,
        "beta": s.trim_beta,
        "server_learning_rate": s.server_learning_rate,
        "server_momentum": s.server_momentum if s.name == "fedavgm" else 0.0,
    }
    accepted = inspect.signature(strategy_class(fed).__init__).parameters
    return {k: v for k, v in settings.items() if k in accepted}


def strategy_class(fed: FederationConfig) -> type[Strategy]:
    """The Flower strategy of ``strategy.name``; fedavg with a server step is FedAvgM without momentum."""
    if fed.strategy.name == "fedavg" and fed.strategy.server_learning_rate != 1.0:
        return FedAvgM
    return STRATEGIES[fed.strategy.name]


def update_rule(strategy: StrategyConfig) -> tuple[str, float, float]:
    """What a strategy does with the sites' updates, as the rule and its two numbers: the mean with
    a server step and momentum (fedavg with a server step is FedAvgM without momentum,
    ``strategy_class``, so the two compare as one rule), or fedexp with its cap and scale."""
    if strategy.name in ("fedavg", "fedavgm"):
        return "mean", strategy.server_learning_rate, strategy.server_momentum if strategy.name == "fedavgm" else 0.0
    if strategy.name == "fedexp":
        return "fedexp", strategy.max_server_step, strategy.fedexp_scale
    return strategy.name, 0.0, 0.0


def extrapolation(fed: FederationConfig) -> Extrapolation | None:
    """fedexp: the server step the aggregator chooses each round; other strategies: none. Nor with
    privacy on: the sites' noise is orthogonal by construction and would read as disagreement
    worth stepping along (the step would scale the noise with it)."""
    if fed.strategy.name != "fedexp" or fed.privacy.enabled:
        return None
    return Extrapolation(fed.strategy.max_server_step, fed.strategy.fedexp_scale)


def build_strategy(fed: FederationConfig) -> Strategy:
    return strategy_class(fed)(**strategy_settings(fed))
