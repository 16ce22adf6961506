"""The frozen-prefix cache computes exactly what the uncached path computes, and knows when it is stale."""

from __future__ import annotations

import copy

import pytest
import torch

from fedtl.client.local_training import load_site_data, prepare_tasks
from fedtl.client.prefix_cache import PrefixCache, frozen_prefix_layers
from fedtl.client.trainer import LocalTrainer, TrainerOptions
from fedtl.shared.config import load_site_config
from fedtl.shared.update_modes import UpdateMode, exchanged_names
from tests.conftest import make_site


@pytest.fixture
def setup(tmp_path, tiny_encoder_factory):
    config = load_site_config(make_site(tmp_path, types=("classification", "regression"), n=60, head_epochs=3))
    encoder = tiny_encoder_factory()
    names = set(exchanged_names([n for n, _ in encoder.named_parameters()], UpdateMode.parse("last:1")))
    return config, encoder, names


def fit(config, encoder, names, cache):
    torch.manual_seed(0)  # the heads start the same on both paths
    tasks = prepare_tasks(load_site_data(config), encoder, None, config.training.max_length)
    training = config.training.model_copy(update={"max_steps": 4})
    trainer = LocalTrainer(encoder, tasks, training, TrainerOptions(
        encoder_trainable=names.__contains__, frozen_layers=frozen_prefix_layers(encoder, names), prefix_cache=cache))
    result = trainer.fit()
    return trainer, result, {n: p.detach().clone() for n, p in encoder.named_parameters()}


def test_cached_and_uncached_paths_give_the_same_features_losses_metrics_and_weights(setup):
    config, encoder, names = setup
    assert frozen_prefix_layers(encoder, names) == 1
    plain_trainer, plain, plain_weights = fit(config, copy.deepcopy(encoder), names, None)
    cache = PrefixCache(2**30)
    cached_trainer, cached, cached_weights = fit(config, copy.deepcopy(encoder), names, cache)
    assert cached_trainer.cached and not plain_trainer.cached and cache.nbytes() > 0
    for split in ("train", "val"):
        for task, feats in cached_trainer.features(split).items():
            torch.testing.assert_close(feats, plain_trainer.features(split)[task], rtol=1e-5, atol=1e-6)
    for stage in ("before", "probe", "final"):
        for task, metrics in plain.metrics[stage].items():
            for name, value in metrics.items():
                assert cached.metrics[stage][task][name] == pytest.approx(value, rel=1e-4, abs=1e-6), (stage, name)
    for task, loss in plain.train_loss.items():
        assert cached.train_loss[task] == pytest.approx(loss, rel=1e-4)
    for name, value in plain_weights.items():
        torch.testing.assert_close(cached_weights[name], value, rtol=1e-4, atol=1e-6)


def test_the_cache_rebuilds_when_the_prefix_changes_and_stays_off_over_its_cap(setup):
    config, encoder, names = setup
    cache = PrefixCache(2**30)
    fit(config, encoder, names, cache)
    key = cache.key
    fit(config, encoder, names, cache)  # the suffix trained, the prefix did not: same cache
    assert cache.key == key
    with torch.no_grad():
        encoder.backbone.embeddings.word_embeddings.weight.add_(0.1)
    fit(config, encoder, names, cache)
    assert cache.key != key
    small = PrefixCache(1024)
    trainer, _, _ = fit(config, encoder, names, small)
    assert not trainer.cached and "cap" in small.disabled_reason


def test_no_frozen_prefix_when_embeddings_or_the_first_layer_train(tiny_encoder_factory):
    encoder = tiny_encoder_factory()
    all_names = [n for n, _ in encoder.named_parameters()]
    for mode in ("full", "bias"):
        assert frozen_prefix_layers(encoder, set(exchanged_names(all_names, UpdateMode.parse(mode)))) == 0
    assert frozen_prefix_layers(encoder, set(exchanged_names(all_names, UpdateMode.parse("last:2")))) == 0


def test_adam_moments_carry_over_from_one_round_to_the_next(setup):
    """A site keeps its encoder's AdamW state across rounds (no full-size first steps each round)."""
    config, encoder, names = setup
    state: dict = {}
    tasks = prepare_tasks(load_site_data(config), encoder, None, config.training.max_length)
    training = config.training.model_copy(update={"max_steps": 3})
    for expected_steps in (3, 6):
        LocalTrainer(encoder, tasks, training,
                     TrainerOptions(encoder_trainable=names.__contains__, optimizer_state=state)).fit()
        assert set(state) == names
        assert all(float(s["step"]) == expected_steps for s in state.values())


@pytest.mark.parametrize("shape", ["linear", "constant"])
def test_rounds_spanning_one_schedule_follow_one_long_run(shape):
    """Round k of n continues the schedule where round k-1 stopped: the same lrs as one n x steps run."""
    from fedtl.client.trainer import lr_multipliers
    from fedtl.shared.config import TrainingConfig

    cfg = TrainingConfig(lr_schedule=shape, warmup_ratio=0.1)
    long = [lr_multipliers(cfg, 48)(step) for step in range(48)]
    rounds = [lr_multipliers(cfg, 12, (k, 4))(step) for k in range(4) for step in range(12)]
    assert rounds == pytest.approx(long)
    restarted = [lr_multipliers(cfg, 12)(step) for _ in range(4) for step in range(12)]
    assert restarted != pytest.approx(long)  # a fresh warm-up every round
    if shape == "linear":
        assert long[-1] < long[12] < long[4]
