"""Stage 3b's levers from later ABAW winners, each a switch that is off by default (the paper's
recipe: MSE on every modality, always present).

    loss: mse            the paper: mean squared error over the batch and the emotions
          mse+pearson    MSE + (1 - mean Pearson r): the metric itself, made differentiable
          ccc            1 - mean concordance correlation coefficient (Lin, Biometrics 1989)
    modality_dropout: p  training only: each modality of each sample is dropped with probability p
                         (its mask all False and its features zero, exactly what a video with
                         missing features looks like), never every modality of a sample

Pearson r and CCC are computed per emotion (column) over the batch, as the challenge computes
them over the evaluation set, then averaged over the emotions. Both need at least two samples
with different values: a constant column has r = 0 here (the variances get `EPS`), so it
neither explodes nor pulls the model anywhere.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

# each loss's name in figures and reports
LOSS_NAMES = {"mse": "MSE", "mse+pearson": "MSE + (1 - mean Pearson r)", "ccc": "1 - mean CCC"}
LOSSES = tuple(LOSS_NAMES)
EPS = 1e-8


def pearson_per_column(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, E), (B, E) -> (E,) sample Pearson r of each column: cov(x, y) / (sd(x) sd(y))."""
    x, y = pred - pred.mean(0), target - target.mean(0)  # (B, E)
    return (x * y).sum(0) / torch.sqrt((x * x).sum(0) * (y * y).sum(0) + EPS)


def ccc_per_column(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, E), (B, E) -> (E,) Lin's CCC of each column: 2 cov / (var(x) + var(y) + (mean(x) - mean(y))^2),
    with population (1/B) moments as Lin defines them."""
    mx, my = pred.mean(0), target.mean(0)  # (E,)
    x, y = pred - mx, target - my
    cov = (x * y).mean(0)
    return 2 * cov / ((x * x).mean(0) + (y * y).mean(0) + (mx - my) ** 2 + EPS)


def regression_loss(name: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The scalar training loss `name` (one of LOSSES) of predictions and targets (B, E) in [0, 1].
    ValueError for another name (the config check names the key before training starts)."""
    if name == "mse":
        return F.mse_loss(pred, target)
    if name == "mse+pearson":
        return F.mse_loss(pred, target) + (1 - pearson_per_column(pred, target).mean())
    if name == "ccc":
        return 1 - ccc_per_column(pred, target).mean()
    raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}")


def drop_modalities(batch: dict, modalities: Sequence[str], p: float, generator: torch.Generator) -> dict:
    """A copy of a collated batch where each of `modalities` of each sample is dropped with
    probability p; a sample that would lose all of them keeps one, drawn uniformly. With one
    modality, or p = 0, the batch is returned as it is. `generator` (CPU) decides everything,
    so a resumed run drops what the uninterrupted one dropped."""
    if p <= 0 or len(modalities) < 2:
        return batch
    n = len(batch["labels"])
    dropped = torch.rand(n, len(modalities), generator=generator) < p  # (B, M)
    everything = dropped.all(1)  # (B,)
    keep = torch.randint(len(modalities), (n,), generator=generator)  # (B,) the one kept if all drop
    dropped[everything, keep[everything]] = False
    out = dict(batch)
    for j, modality in enumerate(modalities):
        gone = dropped[:, j].to(batch[f"{modality}_mask"].device)  # (B,)
        out[f"{modality}_mask"] = batch[f"{modality}_mask"] & ~gone[:, None]
        out[modality] = batch[modality].masked_fill(gone[:, None, None], 0.0)
    return out


__all__ = ["LOSSES", "LOSS_NAMES", "pearson_per_column", "ccc_per_column", "regression_loss", "drop_modalities"]
