import pytest
import torch

from fedtl.client.local_training import load_site_data, train_local
from fedtl.client.trainer import LocalTrainer, mean_primary, prepare_task, resolve_precision
from fedtl.shared.config import load_site_config


def build(site_factory, tiny_encoder_factory, **kwargs):
    cfg = load_site_config(site_factory(**kwargs))
    encoder = tiny_encoder_factory()
    tasks = [prepare_task(d, encoder, cfg.training.max_length) for d in load_site_data(cfg)]
    return cfg, encoder, tasks


def test_head_phase_beats_the_untrained_head(site_factory, tiny_encoder_factory):
    cfg, encoder, tasks = build(site_factory, tiny_encoder_factory, encoder_epochs=0)
    result = LocalTrainer(encoder, tasks, cfg.training).fit()
    assert result.metrics["probe"]["label"]["accuracy"] > result.metrics["before"]["label"]["accuracy"] + 0.2
    assert result.kept == "probe" and "encoder" not in result.steps


def test_encoder_phase_moves_the_encoder_and_all_task_types_learn(site_factory, tiny_encoder_factory):
    cfg, encoder, tasks = build(site_factory, tiny_encoder_factory,
                                types=("classification", "multilabel", "regression"), encoder_epochs=2)
    cfg.training.keep_best = False
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    result = LocalTrainer(encoder, tasks, cfg.training).fit()
    changed = [k for k, v in encoder.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) > 10
    final = result.final
    assert final["label"]["accuracy"] > 0.8
    assert final["tags"]["micro_f1"] > result.metrics["before"]["tags"]["micro_f1"]
    assert final["score"]["r2"] > 0.5
    assert set(result.train_loss) == {"label", "tags", "score"}
    assert result.steps["encoder"] == 2 * 6  # 96 training rows / batch 16, per epoch


def test_keep_best_restores_the_probe_when_finetuning_hurts(site_factory, tiny_encoder_factory):
    cfg, encoder, tasks = build(site_factory, tiny_encoder_factory)
    cfg.training.encoder_lr = 5.0  # wrecks the encoder on purpose
    cfg.training.finetune_head_lr = 5.0
    trainer = LocalTrainer(encoder, tasks, cfg.training)
    result = trainer.fit()
    assert mean_primary(result.metrics["finetuned"], tasks) < mean_primary(result.metrics["probe"], tasks)
    assert result.kept == "probe" and result.final == result.metrics["probe"]
    assert trainer.evaluate()["label"]["accuracy"] == pytest.approx(result.metrics["probe"]["label"]["accuracy"])


def test_training_is_reproducible_on_cpu(site_factory, tiny_encoder_factory):
    results = []
    for _ in range(2):
        cfg, encoder, tasks = build(site_factory, tiny_encoder_factory)
        results.append(LocalTrainer(encoder, tasks, cfg.training).fit())
    assert results[0].metrics == results[1].metrics
    assert results[0].train_loss == results[1].train_loss


def test_uncertainty_weighting_learns_task_weights(site_factory, tiny_encoder_factory):
    cfg, encoder, tasks = build(site_factory, tiny_encoder_factory, types=("classification", "regression"))
    cfg.training.loss_weighting = "uncertainty"
    cfg.training.keep_best = False
    result = LocalTrainer(encoder, tasks, cfg.training).fit()
    assert result.loss_weights["label"] != 1.0 and result.loss_weights["score"] != 1.0


def test_train_local_saves_heads_and_reloads_them(site_factory):
    cfg = load_site_config(site_factory(encoder_epochs=0))
    first = train_local(cfg, fresh=True)
    heads = cfg.state_dir / "local" / "heads"
    assert (heads / "label.safetensors").exists() and (heads / "label.json").exists()
    second = train_local(cfg)  # continues from the stored head
    assert second.result.metrics["before"]["label"]["accuracy"] == pytest.approx(
        first.result.final["label"]["accuracy"])


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert resolve_precision(cpu, "auto") is None and resolve_precision(cpu, "fp32") is None
    assert resolve_precision(cpu, "bf16") is torch.bfloat16
    with pytest.raises(RuntimeError, match="fp16 needs a CUDA"):
        resolve_precision(cpu, "fp16")


def test_tasks_sharing_inputs_share_each_encoder_forward(site_factory, tiny_encoder_factory):
    cfg, encoder, tasks = build(site_factory, tiny_encoder_factory, types=("classification", "regression"))
    trainer = LocalTrainer(encoder, tasks, cfg.training)
    assert [len(g) for g in trainer.groups] == [2]
    calls = []
    encoder.register_forward_hook(lambda *args: calls.append(1))
    trainer.train_encoder()
    assert len(calls) == 6  # 96 rows / batch 16, one forward per step for both heads


def test_a_site_holding_only_one_of_its_labels_still_trains(tmp_path, tiny_encoder_factory):
    """Label skew: a site lists three classes but holds rows of one (a crash in its first round once)."""
    (tmp_path / "data.csv").write_text("text,label\n" + "".join(f"note number {i},neg\n" for i in range(40)))
    (tmp_path / "site.yaml").write_text(
        "name: skewed\nstate_dir: state\nencoder: tiny\ntraining: {head_epochs: 5, batch_size: 8, max_length: 16}\n"
        "tasks:\n  - {name: label, type: classification, data: data.csv, text_columns: text, target_column: label,\n"
        "     labels: [neg, neu, pos]}\n")
    cfg = load_site_config(tmp_path / "site.yaml")
    encoder = tiny_encoder_factory()
    [task] = [prepare_task(d, encoder, cfg.training.max_length) for d in load_site_data(cfg)]
    result = LocalTrainer(encoder, [task], cfg.training).fit()
    assert task.head.linear.weight.shape[0] == 3
    assert result.final["label"]["accuracy"] == 1.0  # it predicts the one class it has seen


@pytest.mark.parametrize("encoder_epochs", [0, 1])
def test_heads_for_serving_are_refit_on_training_and_validation_rows_of_the_kept_model(
        site_factory, tiny_encoder_factory, encoder_epochs):
    cfg, encoder, tasks = build(site_factory, tiny_encoder_factory, types=("classification", "regression"),
                                encoder_epochs=encoder_epochs)
    trainer = LocalTrainer(encoder, tasks, cfg.training)
    result = trainer.fit()
    trained = {t.name: t.head.linear.weight.clone() for t in tasks}
    trainer.fit_heads_on_all_rows()
    train, val = trainer.features("train"), trainer.features("val")  # the kept encoder, as it is now
    for task in tasks:
        x = torch.cat([train[task.name], val[task.name]])
        y = torch.cat([torch.as_tensor(task.data.train.targets), torch.as_tensor(task.data.val.targets)])
        weight, bias = task.spec.fit_converged(x, y, cfg.training.seed)
        assert torch.allclose(task.head.linear.weight, weight, atol=1e-5)
        assert torch.allclose(task.head.linear.bias, bias, atol=1e-5)
        assert not torch.allclose(task.head.linear.weight, trained[task.name])  # the validation rows counted
    assert result.final == result.metrics["finetuned" if result.kept == "finetuned" else "probe"]  # scores untouched


def test_heads_trained_by_sgd_are_served_as_trained(site_factory, tiny_encoder_factory):
    cfg, encoder, tasks = build(site_factory, tiny_encoder_factory, encoder_epochs=0)
    cfg.training.head_fit = "sgd"
    trainer = LocalTrainer(encoder, tasks, cfg.training)
    trainer.fit()
    before = {t.name: t.head.linear.weight.clone() for t in tasks}
    assert trainer.fit_heads_on_all_rows() == 0.0
    assert all(torch.equal(t.head.linear.weight, before[t.name]) for t in tasks)
