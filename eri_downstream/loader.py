"""Epochs over a map-style dataset, split over ranks, with a resumable position.

Every rank gets the same number of batches (DistributedSampler pads by repeating samples,
which is harmless for training); the order is a permutation seeded by (seed, epoch), so a
resumed run skips the batches already consumed by index, without loading them.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset


class EpochLoader:
    def __init__(self, dataset: Dataset, *, batch_size: int, collate_fn: Callable, seed: int, rank: int,
                 world_size: int, num_workers: int = 0, shuffle: bool = True):
        self.dataset, self.batch_size, self.collate_fn = dataset, batch_size, collate_fn
        self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
        self.num_workers = num_workers
        self.epoch, self.batch = 0, 0

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        self.sampler.set_epoch(self.epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        indices = list(self.sampler)[self.batch * self.batch_size:]
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
