"""Closed-form regression heads: ridge with its penalty chosen by GCV on training data."""

from __future__ import annotations

import numpy as np
import torch

from fedtl.shared.probes import ridge_gcv


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
