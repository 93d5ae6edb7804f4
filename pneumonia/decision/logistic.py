"""Maximum-likelihood logistic fits of a binary outcome on one score: intercept and slope
(Cox's calibration line, Platt's scaling) or the intercept alone, by Newton's method."""

from __future__ import annotations

import torch


def logistic_line(x: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """The maximum-likelihood ``(intercept, slope)`` of ``P(y=1) = sigmoid(intercept + slope *
    x)``, by Newton's method with each step halved until the likelihood rises. ``targets`` may
    be soft (in [0, 1]: Platt's, :func:`platt_targets`, which keep the fit finite on separable
    images)."""
    x, t = x.double(), targets.double()
    design = torch.stack([torch.ones_like(x), x], dim=1)

    def loglik(beta: torch.Tensor) -> float:
        z = design @ beta
        return float((t * z - torch.nn.functional.softplus(z)).sum())

    beta = torch.tensor([0.0, 1.0], dtype=torch.float64)
    for _ in range(100):
        mu = torch.sigmoid(design @ beta)
        hessian = design.T @ (design * (mu * (1 - mu)).clamp_min(1e-12)[:, None])
        step = torch.linalg.solve(hessian + 1e-9 * torch.eye(2, dtype=torch.float64),
                                  design.T @ (t - mu))  # fmt: skip
        now = loglik(beta)
        while loglik(beta + step) < now and float(step.abs().max()) > 1e-12:
            step = step / 2
        beta = beta + step
        if float(step.abs().max()) < 1e-10:
            break
    return float(beta[0]), float(beta[1])


def logistic_offset(x: torch.Tensor, targets: torch.Tensor) -> float:
    """The maximum-likelihood ``a`` of ``P(y=1) = sigmoid(a + x)``: the intercept alone, with
    ``x`` as an offset (a concave 1-d problem, by Newton's method)."""
    x, t = x.double(), targets.double()
    offset = 0.0
    for _ in range(100):
        mu = torch.sigmoid(offset + x)
        step = float((t - mu).sum() / (mu * (1 - mu)).sum().clamp_min(1e-12))
        step = max(-1.0, min(1.0, step))
        offset += step
        if abs(step) < 1e-12:
            break
    return offset


def platt_targets(targets: torch.Tensor) -> torch.Tensor:
    """Platt's (1999) soft targets: ``(n+ + 1) / (n+ + 2)`` for positives and ``1 / (n- + 2)``
    for negatives, so that a logistic fit on few, separable images stays finite."""
    t = targets.double()
    positives, negatives = float(t.sum()), float(len(t) - t.sum())
    return torch.where(t > 0.5, (positives + 1) / (positives + 2), 1 / (negatives + 2))
