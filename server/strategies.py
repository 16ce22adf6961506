"""Build the configured Flower Message API strategy.

fedtl drives the rounds itself (one exchange per round, evaluation only when asked) and
uses the strategy for what it is good at: sampling sites (``configure_train``, which also
adds FedProx's ``proximal-mu``) and aggregating replies (``aggregate_train``).
"""

from __future__ import annotations

import inspect

from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedMedian, FedProx, FedTrimmedAvg, FedYogi, Strategy

from fedtl.shared.federation_config import FederationConfig

STRATEGIES: dict[str, type[Strategy]] = {
    "fedavg": FedAvg,
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
        "server_momentum": s.server_momentum,
    }
    accepted = inspect.signature(STRATEGIES[s.name].__init__).parameters
    return {k: v for k, v in settings.items() if k in accepted}


def build_strategy(fed: FederationConfig) -> Strategy:
    return STRATEGIES[fed.strategy.name](**strategy_settings(fed))
