"""Converged heads: ridge with its penalty chosen by GCV, logistic regression with its penalty chosen by
cross-validation along a warm-started path, both on training data alone."""

from __future__ import annotations

import numpy as np
import torch

from fedtl.shared import probes
from fedtl.shared.probes import logistic_cv, ridge_gcv


def data(n=200, d=20, noise=0.0, seed=0, sample_seed=None):
    """y = x.w + 3 + noise, with w fixed by ``seed`` and the sample drawn by ``sample_seed``."""
    w = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed if sample_seed is None else sample_seed)
    x = torch.randn(n, d, generator=g)
    y = x @ w + 3.0 + noise * torch.randn(n, generator=g)
    return x, y, w


def test_noiseless_data_is_recovered_with_almost_no_penalty():
    x, y, w = data()
    weight, bias, penalty = ridge_gcv(x, y)
    torch.testing.assert_close(weight[0], w, rtol=1e-3, atol=1e-3)
    assert abs(float(bias[0]) - 3.0) < 1e-2 and penalty < 1e-2


def test_noise_buys_a_larger_penalty_and_the_solution_is_the_ridge_solution_for_it():
    x, y, _ = data(n=60, d=40, noise=5.0)
    weight, bias, penalty = ridge_gcv(x, y)
    assert penalty > ridge_gcv(*data(n=60, d=40, noise=0.1)[:2])[2]
    xc = (x - x.mean(0)).double().numpy()
    yc = (y - y.mean()).double().numpy()
    s2_mean = float((np.linalg.svd(xc, compute_uv=False) ** 2).mean())
    direct = np.linalg.solve(xc.T @ xc + penalty * s2_mean * np.eye(40), xc.T @ yc)
    np.testing.assert_allclose(weight[0].double().numpy(), direct, rtol=1e-4, atol=1e-5)


def test_a_ridge_head_generalises_better_than_least_squares_on_noisy_small_data():
    x, y, w = data(n=50, d=40, noise=4.0, seed=1)
    xt, yt, _ = data(n=2000, d=40, noise=0.0, seed=1, sample_seed=99)  # same weights, new clean sample
    weight, bias, _ = ridge_gcv(x, y)
    ols = np.linalg.lstsq(np.c_[x.numpy(), np.ones(50)], y.numpy(), rcond=None)[0]
    ridge_err = float(((xt @ weight[0] + bias[0] - yt) ** 2).mean())
    ols_err = float(((xt.numpy() @ ols[:-1] + ols[-1] - yt.numpy()) ** 2).mean())
    assert ridge_err < ols_err


def classes_data(n=150, d=12, classes=3, spread=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = spread * torch.randn(classes, d, generator=g)
    y = torch.arange(n) % classes
    return centres[y] + torch.randn(n, d, generator=g), y


def reference_fit(z, y, classes, penalty, multilabel=False, weights=None):
    """Penalised logistic regression written out with torch's own losses, from zeros."""
    w = torch.zeros(classes, z.shape[1], dtype=z.dtype, requires_grad=True)
    b = torch.zeros(classes, dtype=z.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = z @ w.T + b
        if multilabel:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        else:
            loss = torch.nn.functional.cross_entropy(logits, y, weight=weights)
        loss = loss + 0.5 * penalty * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def cold_logistic_cv(x, y, classes, penalties, folds=3, seed=0):
    """The reference: every penalty and fold fitted from zeros, every penalty scored."""
    z = (x.double() - x.double().mean(0)) / x.double().std(0)
    order = torch.randperm(len(z), generator=torch.Generator().manual_seed(seed))
    scores = []
    for penalty in penalties:
        loss = 0.0
        for k in range(folds):
            keep = torch.ones(len(z), dtype=torch.bool)
            keep[order[k::folds]] = False
            w, b = reference_fit(z[keep], y[keep], classes, penalty)
            loss += probes._log_loss(z[~keep] @ w.T + b, y[~keep], False) / folds
        scores.append(loss)
    best = penalties[int(np.argmin(scores))]
    w, b = reference_fit(z, y, classes, best)
    return w, b, best, scores


def test_the_warm_started_path_finds_the_cold_fits_penalty_and_optimum():
    x, y = classes_data()
    weight, bias, penalty = logistic_cv(x, y, classes=3)
    grid = tuple(sorted(probes.LOGISTIC_PENALTIES))
    w, b, best, scores = cold_logistic_cv(x, y, 3, grid)
    assert penalty == best
    assert 0 < grid.index(best) < len(grid) - 1, f"the optimum should be inside the grid: {scores}"
    std, mean = x.double().std(0), x.double().mean(0)  # fold the reference back into raw features
    torch.testing.assert_close(x @ weight.T + bias, (x.double() @ (w / std).T + b - (mean / std) @ w.T).float(),
                               rtol=1e-3, atol=1e-3)


def test_overlapping_classes_buy_a_larger_logistic_penalty():
    clear = logistic_cv(*classes_data(spread=2.0), classes=3)[2]
    overlapping = logistic_cv(*classes_data(spread=0.3), classes=3)[2]
    assert overlapping > clear


def test_the_weighted_and_multilabel_fits_are_plain_penalised_logistic_regression():
    x, y = classes_data(n=90, classes=4)
    z = ((x - x.mean(0)) / x.std(0)).double()
    labels = torch.nn.functional.one_hot(y, 4).double()
    labels[::5, 0] = 1.0  # some rows with two labels
    start = (torch.full((4, z.shape[1]), 0.3, dtype=z.dtype), torch.ones(4, dtype=z.dtype))
    cases = [(y, False, torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64)), (labels, True, None)]
    for targets, multilabel, weights in cases:
        prob = torch.sigmoid if multilabel else lambda logits: torch.softmax(logits, 1)  # softmax: bias up to a shift
        wr, br = reference_fit(z, targets, 4, 0.05, multilabel, weights)
        for init in (None, start):  # from zeros, and warm-started from elsewhere: the same optimum
            w, b = probes._fit_logistic(z, targets, 4, 0.05, multilabel, weights, init=init)
            torch.testing.assert_close(prob(z @ w.T + b), prob(z @ wr.T + br), rtol=1e-4, atol=1e-4)


def test_the_penalty_follows_the_held_out_cost_it_is_given():
    """A cost that never improves keeps the first penalty of the path (the largest), where the
    default (held-out log-loss) walks on to a smaller one: the cost, not the log-loss, decides."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 6, generator=g)
    y = ((x[:, 0] + 2.0 * torch.randn(120, generator=g)) > 0).long()
    _, _, by_loss = logistic_cv(x, y)
    _, _, by_cost = logistic_cv(x, y, held_out_cost=lambda logits, targets: 0.0)
    assert by_cost == max(probes.LOGISTIC_PENALTIES) > by_loss


def test_multilabel_heads_choose_their_penalty_by_their_metric_and_classifiers_by_log_loss(monkeypatch):
    from fedtl.shared.config import TaskType
    from fedtl.shared.heads import HeadSpec

    asked = []
    real = HeadSpec._metric_cost
    monkeypatch.setattr(HeadSpec, "_metric_cost", lambda self, logits, y: asked.append(self.type) or real(self, logits, y))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 4, generator=g)
    HeadSpec("m", TaskType.multilabel, 4, ["a", "b"]).fit_converged(x, (torch.randn(60, 2, generator=g) > 0).float())
    HeadSpec("c", TaskType.classification, 4, ["a", "b"]).fit_converged(x, (x[:, 0] > 0).long())
    assert asked and set(asked) == {TaskType.multilabel}
    HeadSpec("c", TaskType.classification, 4, ["a", "b"]).fit_converged(x, (x[:, 0] > 0).long(), select_by="metric")
    assert TaskType.classification in asked
