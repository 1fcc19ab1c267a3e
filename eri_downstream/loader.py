"""Epochs over a map-style dataset, split over ranks, with a resumable position.

The epoch's order is one permutation seeded by (seed, epoch), padded by repeating its start to
a whole number of global batches (batch_size x world size). Global batch g is cut into one
block per rank, so N processes with batch B see exactly the batches one process sees with
batch N x B, every rank gets the same number of batches (none waits at the end of an epoch),
and a resumed run skips the batches already consumed by index, without loading them.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Subset


def epoch_order(size: int, *, seed: int, epoch: int, global_batch: int, shuffle: bool = True) -> list[int]:
    """Dataset indices of one epoch, padded to a multiple of `global_batch`."""
    if shuffle:
        order = torch.randperm(size, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    else:
        order = list(range(size))
    padding = -size % global_batch
    return order + (order * (padding // max(size, 1) + 1))[:padding]


class EpochLoader:
    def __init__(self, dataset: Dataset, *, batch_size: int, collate_fn: Callable, seed: int, rank: int,
                 world_size: int, num_workers: int = 0, shuffle: bool = True):
        if len(dataset) == 0:
            raise ValueError("EpochLoader: the dataset is empty")
        self.dataset, self.batch_size, self.collate_fn = dataset, batch_size, collate_fn
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.num_workers = num_workers
        self.epoch, self.batch = 0, 0

    def __len__(self) -> int:
        return -(-len(self.dataset) // (self.batch_size * self.world_size))

    def indices(self, epoch: int) -> list[int]:
        """This rank's indices of `epoch`, batch after batch."""
        g, b = self.batch_size * self.world_size, self.batch_size
        order = epoch_order(len(self.dataset), seed=self.seed, epoch=epoch, global_batch=g, shuffle=self.shuffle)
        return [i for start in range(0, len(order), g) for i in order[start + self.rank * b:start + (self.rank + 1) * b]]

    def __iter__(self) -> Iterator[dict]:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        indices = self.indices(self.epoch)[self.batch * self.batch_size:]
        loader = DataLoader(Subset(self.dataset, indices), batch_size=self.batch_size, shuffle=False,
                            collate_fn=self.collate_fn, num_workers=self.num_workers,
                            generator=torch.Generator().manual_seed(self.epoch))
        for batch in loader:
            self.batch += 1
            yield batch
        self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch = state["epoch"], state["batch"]
