"""Random draws of the model (drop path, dropout) made per sample, not per process.

timm's DropPath and torch's Dropout draw from each process's RNG, so the same global batch split
over another number of processes (a requeue onto another cluster shape) would drop other paths.
`per_sample_draws(model, seed)` swaps every active one for a module that takes its randoms from
a table drawn for the whole global step (seeded by the step and the module's name) and reads the
rows of the samples this process holds: sample p of step s gets the same draws on any shape.

    draws = per_sample_draws(model, seed)           # before accelerate's prepare
    ...
    draws.set(step, positions)                      # in the loss, before the forward
"""
from __future__ import annotations

import torch
from timm.layers import DropPath
from torch import nn

from ..stream.reading import derive_seed


class SampleDraws:
    """Where the current micro-batch's samples sit in their global step."""

    def __init__(self, seed: int, global_batch: int):
        self.seed, self.global_batch = seed, global_batch
        self.step: int | None = None
        self.positions: torch.Tensor | None = None

    def set(self, step: int, positions: torch.Tensor) -> None:
        """`positions` (B,) int64: each row's position in global step `step` (0 .. G - 1)."""
        self.step, self.positions = step, positions

    def uniform(self, name: str, per_sample: tuple[int, ...], device) -> torch.Tensor:
        """(B, *per_sample) uniforms in [0, 1) of the current rows, for module `name`."""
        if self.positions is None:
            raise RuntimeError("SampleDraws.set(step, positions) must come before a training forward")
        g = torch.Generator(device=device).manual_seed(derive_seed(self.seed, "per-sample", name, self.step) % 2**63)
        table = torch.rand((self.global_batch, *per_sample), generator=g, device=device)
        return table[self.positions.to(device)]


class SampleDropPath(nn.Module):
    def __init__(self, drop_prob: float, scale_by_keep: bool, draws: SampleDraws, name: str):
        super().__init__()
        self.drop_prob, self.scale_by_keep, self.draws, self.name = drop_prob, scale_by_keep, draws, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep_prob = 1 - self.drop_prob
        keep = (self.draws.uniform(self.name, (), x.device) < keep_prob).to(x.dtype)
        if self.scale_by_keep and keep_prob > 0:
            keep = keep / keep_prob
        return x * keep.view((-1,) + (1,) * (x.ndim - 1))


class SampleDropout(nn.Module):
    """Elementwise dropout from per-sample tables: G x (features) uniforms per call, meant for
    small activations such as a head's."""

    def __init__(self, p: float, draws: SampleDraws, name: str):
        super().__init__()
        self.p, self.draws, self.name = p, draws, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = (self.draws.uniform(self.name, tuple(x.shape[1:]), x.device) >= self.p).to(x.dtype)
        return x * keep / (1 - self.p)


def per_sample_draws(model: nn.Module, seed: int, global_batch: int) -> SampleDraws:
    """Swap the active DropPath and Dropout modules of `model` for per-sample ones; returns the
    SampleDraws to `set` before each training forward."""
    draws = SampleDraws(seed, global_batch)
    for name, module in list(model.named_modules()):
        if isinstance(module, DropPath) and module.drop_prob > 0:
            new = SampleDropPath(module.drop_prob, module.scale_by_keep, draws, name)
        elif isinstance(module, nn.Dropout) and module.p > 0:
            new = SampleDropout(module.p, draws, name)
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return draws
