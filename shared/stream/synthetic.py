"""Synthetic uint8 image batches that depend only on (seed, epoch, batch, global position).

Rank r's batch k holds global positions r*B .. (r+1)*B-1 of the global batch k, so a run on
N processes sees exactly the images a one-process run with N times the batch sees: the data
for distributed-equivalence tests and for input-free speed measurements. Images are smooth
colour fields (a coarse random grid upsampled), which an autoencoder can learn.
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from .reading import derive_seed


class SyntheticStream:
    def __init__(self, *, batch_size: int, image_size: int, batches_per_epoch: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, grid: int = 4):
        self.batch_size, self.image_size, self.grid = batch_size, image_size, grid
        self.batches_per_epoch, self.seed = batches_per_epoch, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.batch = 0, 0

    def __len__(self) -> int:
        return self.batches_per_epoch

    def image(self, epoch: int, batch: int, position: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(derive_seed(self.seed, "synthetic", epoch, batch, position) % 2**63)
        coarse = torch.rand(1, 3, self.grid, self.grid, generator=g)
        field = F.interpolate(coarse, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return (field[0] * 255).round().to(torch.uint8)

    def __iter__(self) -> Iterator[dict]:
        while self.batch < self.batches_per_epoch:
            first = self.rank * self.batch_size
            images = torch.stack([self.image(self.epoch, self.batch, first + i) for i in range(self.batch_size)])
            self.batch += 1
            yield {"image": images, "valid": torch.ones(self.batch_size, dtype=torch.bool),
                   "label": torch.full((self.batch_size,), -1), "key": [""] * self.batch_size,
                   "meta": [{}] * self.batch_size}
        self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch = state["epoch"], state["batch"]
