"""How unlike the training images an image is: a shift score from the model's own features.

A model trained on one hospital's children's X-rays scored another hospital's adult X-rays at
chance, as confidently as its own test split, and nothing warned. A checkpoint therefore carries
a compact reference of its training images' penultimate features (:class:`ShiftReference`),
and every image it scores gets a ``shift_score`` (higher: less like the training images) and
``in_distribution`` (the score at or below a threshold that flags ``flag_rate`` of the
validation images, 5% by default).

Methods (``shift.method``):

- ``mahalanobis`` (Lee et al., NeurIPS 2018): the class means and one shared covariance of
  the training features (Ledoit-Wolf shrunk); the score is the smallest squared Mahalanobis
  distance to a class mean.
- ``knn`` (Sun et al., ICML 2022): features scaled to unit length; the score is the distance
  to the k-th nearest of up to :data:`KNN_BANK` training features.
- ``energy`` (Liu et al., NeurIPS 2020): minus the log-sum-exp of the logits; no reference.

The scores are plain tensor operations, so the exported network computes them too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from pneumonia.errors import InputValueError

METHODS = ("mahalanobis", "knn", "energy")
FLAG_RATE = 0.05  # of the validation images, flagged by the threshold (shift.flag_rate)
KNN_K = 10  # the k-th nearest training feature (Sun et al. scale k with the bank's size)
KNN_BANK = 2000  # training features kept for knn, chosen evenly (deterministic)
SHRINKAGE = 1e-3  # the least Ledoit-Wolf shrinkage, so that the covariance always inverts


def ledoit_wolf(centred: torch.Tensor) -> torch.Tensor:
    """The covariance of (N, D) centred features, shrunk towards a scaled identity by the
    Ledoit-Wolf amount (J. Multivariate Anal. 88, 2004): invertible and stable when N is not
    much larger than D (a few hundred training images of 512 or 2,048 features)."""
    n, d = centred.shape
    sample = centred.T @ centred / n
    scale = sample.diagonal().mean()
    spread = ((sample - scale * torch.eye(d, dtype=sample.dtype)) ** 2).sum() / d
    noise = ((centred**2).sum(dim=1) ** 2).sum() / n**2 - (sample**2).sum() / n
    shrinkage = float((noise / d).clamp(min=0) / spread.clamp_min(1e-12)) if d else 0.0
    shrinkage = min(1.0, max(shrinkage, SHRINKAGE))
    return (1 - shrinkage) * sample + shrinkage * scale * torch.eye(d, dtype=sample.dtype)


def mahalanobis_score(
    features: torch.Tensor, means: torch.Tensor, precision: torch.Tensor
) -> torch.Tensor:
    """(B, D) features -> (B,) smallest squared Mahalanobis distance to a class mean."""
    diff = features[:, None, :] - means[None, :, :]  # (B, C, D)
    return torch.einsum("bcd,de,bce->bc", diff, precision, diff).min(dim=1).values


def knn_score(features: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """(B, D) features -> (B,) distance of each unit-length feature to its k-th nearest in the
    (N, D) unit-length ``bank``."""
    unit = features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)
    distance = (2 - 2 * unit @ bank.T).clamp_min(0).sqrt()  # (B, N)
    return torch.topk(distance, k, dim=1, largest=False).values[:, -1]


def energy_score(logits: torch.Tensor) -> torch.Tensor:
    """(B, C) logits -> (B,) energy, minus the log-sum-exp: high where the model is unsure."""
    return -torch.logsumexp(logits.float(), dim=1)


def separation_auroc(inside: torch.Tensor, outside: torch.Tensor) -> float:
    """How well a score tells ``outside`` images from ``inside`` ones (higher: outside): the
    probability that an outside image scores above an inside one, ties counting half (the
    AUROC; scores are not probabilities, so torchmetrics' AUROC would squash them)."""
    out, inn = outside.double()[:, None], inside.double()[None, :]
    return float((out > inn).double().mean() + 0.5 * (out == inn).double().mean())


@dataclass
class ShiftReference:
    """What training looked like, for :meth:`score`, and the threshold that flags an image."""

    method: str
    threshold: float  # in_distribution: score <= threshold
    flag_rate: float  # the share of validation images the threshold flags
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    k: int = KNN_K

    def score(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """(B, D) penultimate features and (B, C) logits -> (B,) shift scores, on the CPU, in
        float32 whatever the model ran at (under bf16 autocast, a Mahalanobis distance of 500
        would be rounded to a multiple of 4)."""
        features, logits = features.detach().float().cpu(), logits.detach().float().cpu()
        with torch.autocast("cpu", enabled=False):
            if self.method == "mahalanobis":
                tensors = self.tensors
                return mahalanobis_score(features, tensors["means"], tensors["precision"])
            if self.method == "knn":
                return knn_score(features, self.tensors["bank"], self.k)
            return energy_score(logits)

    def in_distribution(self, scores: torch.Tensor) -> torch.Tensor:
        return scores <= self.threshold

    def to_record(self) -> dict[str, Any]:
        """What a checkpoint stores (tensors and plain values: safe to load)."""
        return {
            "method": self.method,
            "threshold": self.threshold,
            "flag_rate": self.flag_rate,
            "k": self.k,
            "tensors": {name: t.contiguous() for name, t in self.tensors.items()},
        }

    @classmethod
    def from_record(cls, record: dict[str, Any] | None) -> ShiftReference | None:
        if not record:
            return None
        return cls(
            method=record["method"],
            threshold=float(record["threshold"]),
            flag_rate=float(record["flag_rate"]),
            tensors=dict(record.get("tensors", {})),
            k=int(record.get("k", KNN_K)),
        )

    def describe(self) -> dict[str, Any]:
        """For metrics.json, reports and the export's sidecar."""
        return {
            "method": self.method,
            "threshold": self.threshold,
            "flag_rate": self.flag_rate,
            **({"k": self.k} if self.method == "knn" else {}),
        }


def reference_from_features(
    method: str,
    train_features: torch.Tensor,
    train_targets: torch.Tensor,
    val_features: torch.Tensor,
    val_logits: torch.Tensor,
    *,
    flag_rate: float = FLAG_RATE,
) -> ShiftReference:
    """The reference of ``method`` from the training images' features, and the threshold that
    flags ``flag_rate`` of the validation images.

    Args:
        train_targets: the training images' classes (0/1), for the class means.
    """
    if method not in METHODS:
        raise InputValueError(f"shift.method={method!r}; valid: {', '.join(METHODS)}")
    if not 0.0 < flag_rate < 1.0:
        raise InputValueError(f"shift.flag_rate={flag_rate} must lie strictly between 0 and 1")
    train = train_features.detach().double().cpu()
    tensors: dict[str, torch.Tensor] = {}
    if method == "mahalanobis":
        classes = sorted(set(train_targets.tolist()))
        means = torch.stack([train[train_targets == c].mean(dim=0) for c in classes])
        centred = torch.cat([train[train_targets == c] - means[i] for i, c in enumerate(classes)])
        covariance = ledoit_wolf(centred)
        tensors = {"means": means.float(), "precision": torch.linalg.inv(covariance).float()}
    elif method == "knn":
        pick = torch.linspace(0, len(train) - 1, min(KNN_BANK, len(train))).round().long()
        bank = train[pick]
        tensors = {"bank": (bank / bank.norm(dim=1, keepdim=True).clamp_min(1e-12)).float()}
    reference = ShiftReference(method, math.inf, flag_rate, tensors, min(KNN_K, len(train)))
    scores = reference.score(val_features, val_logits)
    reference.threshold = float(torch.quantile(scores.double(), 1 - flag_rate))
    return reference
