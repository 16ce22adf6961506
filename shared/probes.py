"""Heads fitted to convergence on frozen features, their penalty chosen on training data alone.

Regression: ridge regression in closed form, the penalty chosen by GCV. Classification and
multilabel: L2-penalised logistic regression by full-batch L-BFGS, the penalty chosen by
k-fold cross-validated log-loss.

A regression head trained by gradient steps on a few hundred examples over- or under-fits
by chance, and its validation R2 then says more about the head than about the encoder: on
the bundled pharmacy site it read 0.07 where ridge on the same features reads 0.18, and
after fine-tuning -0.12 where ridge reads 0.17. Ridge on the frozen features, with the
penalty picked by generalized cross-validation on the training data alone, is the converged
linear probe that linear-probing-then-fine-tuning (Kumar et al. 2022) asks for, in one SVD.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

PENALTIES = torch.logspace(-4, 4, 33, dtype=torch.float64)  # relative to the mean squared singular value


def ridge_gcv(features: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Weights (outputs x d), bias (outputs) and the chosen penalty for ``targets ~ features``.

    Features are centred (the bias is not penalised); the penalty minimises the GCV score
    ``n * ||y - y_hat||^2 / (n - df)^2`` over a log grid, computed for every penalty from one SVD.
    """
    x = features.detach().to(torch.float64)
    y = targets.detach().to(torch.float64).reshape(len(x), -1)
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    u, s, vt = torch.linalg.svd(xc, full_matrices=False)
    uty = u.T @ yc                                   # (k, outputs)
    s2 = s ** 2
    scale = s2.mean().clamp(min=1e-12)
    n = len(x)
    best = (float("inf"), 0.0)
    resid_outside = (yc ** 2).sum() - (uty ** 2).sum()  # the part of y no direction of x reaches
    for penalty in PENALTIES * scale:
        shrink = s2 / (s2 + penalty)                  # (k,)
        resid = ((1 - shrink)[:, None] * uty).pow(2).sum() + resid_outside
        df = shrink.sum() + 1                         # + the intercept
        gcv = float(n * resid / (n - df).clamp(min=1e-6) ** 2)
        if gcv < best[0]:
            best = (gcv, float(penalty))
    penalty = best[1]
    coef = vt.T @ ((s / (s2 + penalty))[:, None] * uty)  # (d, outputs)
    bias = y_mean - x_mean @ coef
    return coef.T.to(features.dtype), bias.to(features.dtype), penalty / float(scale)


# logistic penalties (on standardised features), searched from the largest down: half-decades, because
# on the bundled sites the held-out loss moves by 4% between neighbouring decades and its minimum
# sat at the old grid's top (1.0) at every site
LOGISTIC_PENALTIES = tuple(10.0 ** (k / 2) for k in range(-8, 5))  # 1e-4 ... 1e2


def logistic_cv(features: torch.Tensor, targets: torch.Tensor, multilabel: bool = False, folds: int = 3,
                penalties: tuple[float, ...] = LOGISTIC_PENALTIES, seed: int = 0,
                class_weights: torch.Tensor | None = None, classes: int | None = None,
                held_out_cost: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A linear classifier fitted to convergence: L2-penalised logistic regression (softmax, or one
    sigmoid per label for multilabel), full-batch L-BFGS, the penalty chosen by k-fold
    cross-validated log-loss on the training data. Returns weight (classes x d), bias, penalty.

    The penalties are walked as a regularisation path (glmnet's warm starts): from the largest
    down, each fold's fit starts from its fit at the previous penalty, and the final fit on all
    rows from the folds' mean at the chosen one. The problem is convex, so a warm start changes
    only how many L-BFGS steps reach the optimum, not the optimum. The walk stops once the
    held-out loss has risen at two penalties in a row (it is unimodal along the path in practice),
    which skips the small penalties whose near-separable fits cost the most steps.

    ``classes``: the head's number of classes, when some may be missing from these rows (a site
    with label skew); without it, the largest class seen decides. ``held_out_cost(logits, y)``:
    what the penalty minimises on the held-out folds instead of the log-loss (lower is better);
    the whole path is then walked, since a metric can dip twice near the top of the path and
    rise again (stopping there served a multi-label head that predicted no label at all)."""
    x = features.detach().to(torch.float64)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std  # standardised for the optimiser; folded back into the weights below
    y = targets.detach()
    if classes is None:
        classes = y.shape[1] if multilabel else int(y.max()) + 1
    cw = None if class_weights is None else class_weights.to(torch.float64)
    path = sorted(penalties, reverse=True)
    best_penalty, start = path[0], None
    if len(z) >= 2 * folds:
        order = torch.randperm(len(z), generator=torch.Generator().manual_seed(seed))
        splits = []
        for k in range(folds):
            keep = torch.ones(len(z), dtype=torch.bool)
            keep[order[k::folds]] = False
            splits.append((keep, ~keep))
        fits: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * folds
        best_score, best_fits, rises, last = float("inf"), None, 0, float("inf")
        for penalty in path:
            fits = [_fit_logistic(z[keep], y[keep], classes, penalty, multilabel, cw, init=fit)
                    for (keep, _), fit in zip(splits, fits)]
            score = sum(held_out_cost(z[held] @ w.T + b, y[held]) if held_out_cost is not None
                        else _log_loss(z[held] @ w.T + b, y[held], multilabel, cw)
                        for (_, held), (w, b) in zip(splits, fits)) / folds
            if score < best_score - 1e-9:
                best_score, best_penalty, best_fits = score, penalty, fits
            rises = rises + 1 if score > last else 0
            last = score
            if rises >= 2 and held_out_cost is None:  # a metric (F1) is not unimodal along the path: walk it all
                break
        start = (torch.stack([w for w, _ in best_fits]).mean(0), torch.stack([b for _, b in best_fits]).mean(0))
    w, b = _fit_logistic(z, y, classes, best_penalty, multilabel, cw, init=start)
    weight = w / std
    bias = b - (mean / std) @ w.T
    return weight.to(features.dtype), bias.to(features.dtype), best_penalty


def _log_loss(logits: torch.Tensor, y: torch.Tensor, multilabel: bool, weights: torch.Tensor | None = None) -> float:
    if multilabel:
        return float(torch.nn.functional.binary_cross_entropy_with_logits(logits, y.to(logits.dtype)))
    return float(torch.nn.functional.cross_entropy(logits, y.long(), weight=weights))


def _fit_logistic(z: torch.Tensor, y: torch.Tensor, classes: int, penalty: float, multilabel: bool,
                  weights: torch.Tensor | None = None,
                  init: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The penalised optimum by L-BFGS, from ``init`` (weight, bias) or from zeros."""
    if init is None:
        w = torch.zeros(classes, z.shape[1], dtype=z.dtype, requires_grad=True)
        b = torch.zeros(classes, dtype=z.dtype, requires_grad=True)
    else:
        w, b = (t.detach().clone().requires_grad_(True) for t in init)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=200, tolerance_grad=1e-7, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = z @ w.T + b
        if multilabel:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y.to(z.dtype))
        else:
            loss = torch.nn.functional.cross_entropy(logits, y.long(), weight=weights)
        loss = loss + 0.5 * penalty * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()
