import numpy as np
import pytest
import torch

from fedtl.client.loss_weighting import LossWeighting
from fedtl.shared.config import TaskType
from fedtl.shared.heads import HeadSpec


def test_classification_head_loss_predict_metrics():
    spec = HeadSpec("t", TaskType.classification, 8, labels=["a", "b", "c"])
    head = spec.build()
    with torch.no_grad():
        out = head(torch.randn(5, 8))
    assert out.shape == (5, 3)
    targets = torch.tensor([0, 1, 2, 1, 0])
    assert spec.loss(out, targets) == pytest.approx(float(torch.nn.functional.cross_entropy(out, targets)))
    perfect = torch.nn.functional.one_hot(targets, 3).float() * 10
    assert spec.metrics(spec.predict(perfect), targets.numpy()) == {"accuracy": 1.0, "macro_f1": 1.0}
    assert spec.primary_metric == "macro_f1"


def test_multilabel_head_uses_bce_and_threshold_zero():
    spec = HeadSpec("t", TaskType.multilabel, 8, labels=["x", "y"])
    logits = torch.tensor([[3.0, -3.0], [-1.0, 2.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert np.array_equal(spec.predict(logits), targets.numpy())
    assert spec.loss(logits, targets) == pytest.approx(
        float(torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)))
    assert spec.metrics(spec.predict(logits), targets.numpy())["micro_f1"] == 1.0


def test_regression_head_standardises_targets_and_reports_original_units():
    spec = HeadSpec("t", TaskType.regression, 8, target_mean=10.0, target_std=2.0)
    targets = torch.tensor([10.0, 12.0, 8.0])
    standardised_out = torch.tensor([[0.0], [1.0], [-1.0]])
    assert float(spec.loss(standardised_out, targets)) == pytest.approx(0.0)
    pred = spec.predict(standardised_out)
    assert np.allclose(pred, [10.0, 12.0, 8.0])
    m = spec.metrics(pred, targets.numpy())
    assert m["rmse"] == pytest.approx(0.0, abs=1e-6) and m["r2"] == pytest.approx(1.0)


def test_head_spec_json_roundtrip_and_compatibility():
    spec = HeadSpec("t", TaskType.classification, 8, labels=["a", "b"])
    again = HeadSpec.from_json(spec.to_json())
    assert again == spec and again.compatible_with(spec)
    assert not spec.compatible_with(HeadSpec("t", TaskType.classification, 8, labels=["a", "c"]))


def test_static_loss_weighting_is_a_weighted_sum():
    w = LossWeighting(["a", "b"], {"a": 1.0, "b": 0.25}, learned=False)
    total = w({"a": torch.tensor(2.0), "b": torch.tensor(4.0)})
    assert float(total) == pytest.approx(3.0)
    assert list(w.parameters())[0].requires_grad is False


def test_uncertainty_weighting_downweights_the_noisier_task():
    w = LossWeighting(["clean", "noisy"], {"clean": 1.0, "noisy": 1.0}, learned=True)
    opt = torch.optim.SGD(w.parameters(), lr=0.1)
    for _ in range(200):  # fixed losses: optimum is log_var = log(L)
        opt.zero_grad()
        w({"clean": torch.tensor(0.1), "noisy": torch.tensor(5.0)}).backward()
        opt.step()
    weights = w.weights()
    assert weights["clean"] > 5 * weights["noisy"]
    assert float(w.log_vars[1].detach()) == pytest.approx(np.log(5.0), abs=0.1)
