"""Combine a site's task losses into one: static weights or learned uncertainty weights.

Uncertainty weighting (Kendall, Gal & Cipolla 2018) learns a log-variance s_t per task and
minimises sum_t exp(-s_t) * L_t + s_t, so noisy or large-scale losses are down-weighted.
"""

from __future__ import annotations

import torch
from torch import nn


class LossWeighting(nn.Module):
    def __init__(self, tasks: list[str], static_weights: dict[str, float], learned: bool):
        super().__init__()
        self.tasks = list(tasks)
        self.learned = learned
        self.register_buffer("static", torch.tensor([static_weights[t] for t in self.tasks], dtype=torch.float32))
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)), requires_grad=learned)

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        total = torch.zeros((), device=self.static.device)
        for i, task in enumerate(self.tasks):
            if task not in losses:
                continue
            if self.learned:
                total = total + self.static[i] * (torch.exp(-self.log_vars[i]) * losses[task] + self.log_vars[i])
            else:
                total = total + self.static[i] * losses[task]
        return total

    def weights(self) -> dict[str, float]:
        """Effective multiplier per task loss, for logs."""
        eff = self.static * (torch.exp(-self.log_vars.detach()) if self.learned else 1.0)
        return {t: float(w) for t, w in zip(self.tasks, eff)}
