"""The site worker in-process: a real RecordDict in, the protocol's reply out (tiny encoder)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import RecordDict

from fedtl.client.worker import SiteWorker
from fedtl.client.worker_api import Timing
from fedtl.shared.config import load_site_config
from fedtl.shared.protocol import ARRAYS, CONFIG, METRICS, REPORT, ReportKey, RoundConfig, Section, SiteMetric, task_key
from fedtl.shared.records import from_record, to_record
from fedtl.shared.update_modes import UpdateMode, exchanged_names


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    from tests.conftest import make_site

    path = make_site(tmp_path_factory.mktemp("site"), name="clinic", types=("classification", "regression"),
                     n=80, head_epochs=5)
    return SiteWorker(load_site_config(path), "tiny")


def message(worker: SiteWorker, mode: str = "last:1", round_: int = 1, **overrides) -> RecordDict:
    names = exchanged_names(worker.param_names, UpdateMode.parse(mode))
    params = dict(worker.encoder.named_parameters())
    arrays = {n: params[n].detach().numpy().copy() for n in names}
    arrays.update(overrides)
    config = RoundConfig(update_mode=mode, encoder="tiny", server_round=round_, max_steps=3)
    return RecordDict({ARRAYS: to_record(arrays), CONFIG: config.to_record()})


def test_train_replies_with_a_delta_of_exactly_the_sent_tensors_metrics_and_report(worker):
    content = message(worker)
    reply = worker.handle("train", content, Timing())
    sent, delta = from_record(content[ARRAYS]), from_record(reply[ARRAYS])
    assert sorted(delta) == sorted(sent)
    assert all(delta[n].shape == sent[n].shape and delta[n].dtype == np.float32 for n in sent)
    assert any(np.abs(d).max() > 0 for d in delta.values())  # the encoder part trained
    metrics = reply[METRICS]
    for key in (SiteMetric.NUM_EXAMPLES, SiteMetric.TRAIN_LOSS, SiteMetric.SCORE, SiteMetric.SCORE_SITE,
                SiteMetric.UPDATE_NORM, SiteMetric.SECONDS):
        assert key in metrics, key
    assert metrics[SiteMetric.NUM_EXAMPLES] > 0
    report = reply[REPORT]
    assert report[ReportKey.SITE] == "clinic" and list(report[ReportKey.TASKS]) == ["label", "score"]
    assert list(report[ReportKey.PRIMARY]) == ["macro_f1", "r2"]
    assert task_key(Section.VAL, "label", "macro_f1") in report and task_key(Section.BASELINE, "score", "r2") in report
    assert report[ReportKey.SITE_MODEL] in ("federated", "baseline")
    # the whole round at the site (round 1: with its baseline) spans the trainer's part
    handled, total = report[f"{Section.SECONDS}/handled"], report[f"{Section.SECONDS}/total"]
    assert handled >= total + report[f"{Section.SECONDS}/baseline"] > 0
    # only encoder tensors leave: no head names, in any record
    assert not [n for n in delta if not n.startswith("backbone.")]
    assert set(reply.keys()) == {ARRAYS, METRICS, REPORT}


def test_evaluate_replies_with_metrics_only(worker):
    reply = worker.handle("evaluate", message(worker, round_=2), Timing())
    assert ARRAYS not in reply.array_records
    assert reply[METRICS][SiteMetric.NUM_EXAMPLES] > 0 and task_key(Section.VAL, "score", "r2") in reply[REPORT]


def test_tensors_that_do_not_fit_the_update_mode_are_refused(worker):
    names = exchanged_names(worker.param_names, UpdateMode.parse("last:1"))
    with pytest.raises(ValueError, match="shape"):
        worker.handle("train", message(worker, **{names[0]: np.zeros((1, 1), np.float32)}), Timing())
    with pytest.raises(ValueError, match="do not fit update mode"):
        worker.handle("train", message(worker, **{"backbone.extra": np.zeros(1, np.float32)}), Timing())


def test_unknown_message_types_and_configs_without_the_protocol_keys_are_refused(worker):
    with pytest.raises(ValueError, match="cannot handle message type"):
        worker.handle("query", message(worker), Timing())
    content = message(worker)
    del content[CONFIG]["update-mode"]
    with pytest.raises(ValueError, match="update-mode"):
        worker.handle("train", content, Timing())


def test_a_round_knows_its_place_in_the_federations_lr_schedule(worker):
    """num_rounds crosses the wire; round k of n trains as part k of one schedule, unless the site opts out."""
    config = RoundConfig.from_record(RoundConfig(update_mode="last:1", encoder="tiny", server_round=3,
                                                 num_rounds=5).to_record())
    assert config.num_rounds == 5
    assert worker._schedule_position(config) == (2, 5)
    assert worker._schedule_position(RoundConfig(update_mode="last:1", encoder="tiny", server_round=1)) == (0, 1)
    assert worker._schedule_position(RoundConfig(update_mode="last:1", encoder="tiny", server_round=9,
                                                 num_rounds=5)) == (4, 5)  # rounds past the plan: the schedule's end
    own = worker.config.training
    try:
        worker.config.training = own.model_copy(update={"lr_schedule_span": "round"})
        assert worker._schedule_position(config) == (0, 1)
    finally:
        worker.config.training = own


def test_a_finetuned_baseline_is_trained_alone_on_the_federations_budget_and_served_task_by_task(tmp_path, monkeypatch):
    """training.baseline: finetuned: in round 1 the site fine-tunes a copy of the pretrained encoder
    alone (rounds x steps in one schedule), leaving the federated encoder untouched; each task keeps
    that or, where it validates better, the probe on the pretrained encoder (tensors and heads under
    baseline/); the site serves the baseline for every task it validates better on than the federation's."""
    from safetensors.numpy import load_file

    from fedtl.client.predict import SiteModel, TaskInputs, export_site_model
    from fedtl.client.trainer import LocalTrainer
    from tests.conftest import make_site

    cfg = load_site_config(make_site(tmp_path / "site", name="clinic", types=("classification", "regression"),
                                     n=80, head_epochs=5))
    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"baseline": "finetuned"})})
    worker = SiteWorker(cfg, "tiny")
    tuned_task, probe_task = (t.name for t in worker.tasks)
    primary = {t.name: t.spec.primary_metric for t in worker.tasks}
    names = exchanged_names(worker.param_names, UpdateMode.parse("last:1"))
    pretrained = {n: p.detach().numpy().copy() for n, p in worker.encoder.named_parameters()}
    steps: list[int] = []
    fit = LocalTrainer.fit

    def steering_fit(trainer):
        """Counts encoder steps; the baseline's fine-tuning validates best on one task, worst on the other."""
        result = fit(trainer)
        steps.append(result.steps.get("encoder", 0))
        if steps[-1] == 6:
            result.metrics["finetuned"][tuned_task][primary[tuned_task]] = 1e9
            result.metrics["finetuned"][probe_task][primary[probe_task]] = -1e9
        return result

    monkeypatch.setattr(LocalTrainer, "fit", steering_fit)
    config = RoundConfig(update_mode="last:1", encoder="tiny", server_round=1, num_rounds=3, max_steps=2)
    arrays = {n: pretrained[n] for n in names}
    worker.handle("train", RecordDict({ARRAYS: to_record(arrays), CONFIG: config.to_record()}), Timing())
    # the baseline alone: 3 rounds x 2 steps in one run, the probe for the task it hurt; then the round's 2
    assert steps == [6, 0, 2]
    assert worker.baseline[tuned_task][primary[tuned_task]] == 1e9
    assert worker.baseline[probe_task][primary[probe_task]] > -1e9  # the probe's score, not the fine-tuned one's
    tuned = load_file(worker.root / "baseline" / "encoder.safetensors")
    assert sorted(tuned) == sorted(names)
    frozen = [n for n in worker.param_names if n not in names]
    params = dict(worker.encoder.named_parameters())
    assert all(np.array_equal(params[n].detach().numpy(), pretrained[n]) for n in frozen)  # the copy trained
    # a federation that validates worse at every task: the baseline everywhere, task by task over its encoder
    worse = {task: {metric: -1e9 for metric in metrics} for task, metrics in worker.baseline.items()}
    entry = worker._choose_site_model(worse, 1)
    assert entry["model"] == "baseline"
    assert [(p["tasks"], p["encoder_tensors"]) for p in entry["parts"]] == [
        ([tuned_task], str(worker.root / "baseline" / "encoder.safetensors")), ([probe_task], None)]
    served = SiteModel.load(cfg)
    encoders = {t.config.name: dict(t.encoder.named_parameters()) for t in served.tasks}
    assert any(not np.array_equal(pretrained[n], tuned[n]) for n in names)  # two encoders to tell apart
    assert all(np.array_equal(encoders[tuned_task][n].detach().numpy(), tuned[n]) for n in names)
    assert all(np.array_equal(encoders[probe_task][n].detach().numpy(), pretrained[n]) for n in names)
    # better than the baseline at one task only: that task is served the federation's model
    mixed = dict(worse, **{probe_task: {metric: 1e9 for metric in worker.baseline[probe_task]}})
    entry = worker._choose_site_model(mixed, 1)
    assert entry["model"] == "mixed"
    assert {p["model"]: p["tasks"] for p in entry["parts"]} == {"federated": [probe_task], "baseline": [tuned_task]}
    assert entry["metrics"] == {tuned_task: worker.baseline[tuned_task], probe_task: mixed[probe_task]}
    # every candidate it weighed, with its validation metrics, for a task it could serve it to
    assert {name: sorted(c["metrics"]) for name, c in entry["candidates"].items()} == {
        "federated": sorted([tuned_task, probe_task]), "baseline-tuned": [tuned_task], "baseline": [probe_task]}
    assert entry["candidates"]["baseline-tuned"]["metrics"][tuned_task] == worker.baseline[tuned_task]
    served = SiteModel.load(cfg)
    encoders = {t.config.name: dict(t.encoder.named_parameters()) for t in served.tasks}
    federated = load_file(worker.root / "encoder.safetensors")
    assert any(not np.array_equal(federated[n], tuned[n]) for n in names)
    assert all(np.array_equal(encoders[tuned_task][n].detach().numpy(), tuned[n]) for n in names)
    assert all(np.array_equal(encoders[probe_task][n].detach().numpy(), federated[n]) for n in names)
    # exported (the site's MLflow model), the mixed model predicts what the site serves
    folder = export_site_model(entry, [TaskInputs.of(t) for t in cfg.tasks], cfg.training.max_length, tmp_path / "out")
    texts = {t.name: ["a first text to score", "and a second"] for t in cfg.tasks}
    assert SiteModel.from_folder(folder).predict(texts) == served.predict(texts)



def test_a_site_serves_the_best_on_validation_ties_to_the_first_listed_and_a_margin_favours_its_own():
    from fedtl.client.site_choice import choose

    assert choose({"federated": 0.70, "baseline": 0.72}) == "baseline"
    assert choose({"federated": 0.72, "baseline": 0.72}) == "federated"  # ties: the first listed
    assert choose({"federated": 0.73, "baseline-tuned": 0.72}, margin=0.02) == "baseline-tuned"
    assert choose({"federated": 0.75, "baseline-tuned": 0.72}, margin=0.02) == "federated"
