"""Stage 3b's feature cache in device memory (`data.device_cache=true`): every video's features
packed once onto the training device, batches gathered there by index.

    loader = DeviceEpochLoader(FeatureDataset(store, entries, train=True), batch_size=16, seed=0,
                               rank=0, world_size=1, device="cuda")
    for batch in loader: ...           # exactly EpochLoader(dataset, collate_fn=collate)'s batches

The batches are exactly those of `EpochLoader` + `FeatureDataset` + `collate`: the same videos in
the same order (the loader's own index arithmetic), the same K frames per video (the dataset's
segment sampling with the item's own random source, drawn for a whole epoch at once), the same
zero padding to the batch's longest sequence and the same masks, float32 on the device. What
changes is the work per batch: no file reads, no per-video tensors, no host-to-device copies;
a few gathers on the device (`tests/test_eri_device_cache.py` checks the batches and the run's
losses against the plain loader).

Memory: the store's float16 features of every video (the 15,806 Hume-Reaction training videos:
about 16 GB at 6 visual frames/s, 50 audio steps/s and up to 64 text tokens), plus the epoch's
frame table. Feature mode only: end to end (face crops through the encoder) has no feature cache.
"""
from __future__ import annotations

import concurrent.futures
from typing import Iterator, Sequence

import numpy as np
import torch

from eri_downstream.data import FeatureDataset, collate
from eri_downstream.loader import EpochLoader
from eri_downstream.store import FEATURE_STEPS


class Packed:
    """One modality of every video: (sum T_i, D) float16 rows on the device, each video a run."""

    def __init__(self, sequences: Sequence[torch.Tensor], device: torch.device):
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        first = sequences[0]
        self.data = torch.empty(int(offsets[-1]), *first.shape[1:], dtype=first.dtype, device=device)
        for start, s in zip(offsets, sequences):
            self.data[start:start + len(s)].copy_(s)
        self.lengths = lengths  # host: the batch's longest sequence without asking the device
        self.offsets_on_device = torch.from_numpy(offsets[:-1]).to(device)
        self.lengths_on_device = torch.from_numpy(lengths).to(device)
        self.steps = torch.arange(max(int(lengths.max()), 1), device=device)

    def padded(self, rows: torch.Tensor, longest: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Videos `rows` (B,) on the device -> float32 (B, longest, D) zero-padded, bool mask (B, longest)."""
        steps = self.steps[:longest]
        start = self.offsets_on_device[rows][:, None]  # (B, 1)
        mask = steps[None] < self.lengths_on_device[rows][:, None]  # (B, T)
        flat = torch.where(mask, start + steps[None], start)  # padding reads a real row, then zeroed
        return self.data[flat].float().masked_fill_(~mask[..., None], 0.0), mask

    def frames(self, rows: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Frames (B, K) of videos `rows` -> float32 (B, K, D)."""
        return self.data[self.offsets_on_device[rows][:, None] + frames].float()


class DeviceCache:
    """Every video of `dataset` (a FeatureDataset) on `device`; `batches(indices, b)` are
    `collate([dataset[i] for i in chunk])` for the chunks of `b` indices, made there."""

    def __init__(self, dataset: FeatureDataset, device: torch.device | str,
                 features: dict[str, Sequence[torch.Tensor]] | None = None):
        """`features`: every video's stored (T, D) features per modality, already loaded (the
        benchmarks' synthetic ones); by default they are read from the dataset's store."""
        if type(dataset) is not FeatureDataset:
            raise ValueError("the device cache holds stored features: end to end (face crops) has none")
        self.dataset, self.device = dataset, torch.device(device)
        entries = dataset.entries
        self.file_ids = [e.file_id for e in entries]
        self.labels = torch.stack([torch.tensor(e.labels if e.labels is not None else [0.0] * len(dataset.emotions),
                                                dtype=torch.float32) for e in entries]).to(self.device)
        self.has_labels = torch.tensor([e.labels is not None for e in entries]).to(self.device)
        self.packed = {m: Packed(features[m] if features is not None else [self._stored(m, e.file_id) for e in entries],
                                 self.device) for m in FEATURE_STEPS if m in dataset.modalities}
        self._next: dict[int, concurrent.futures.Future] = {}
        self._fixed: torch.Tensor | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="frames")

    def _stored(self, modality: str, file_id: str) -> torch.Tensor:
        features = self.dataset.stored_features(modality, file_id)
        return features if modality == "visual" else self.dataset.steps(modality, features)

    def frame_table(self, epoch: int) -> torch.Tensor:
        """(N, K) frame indices of every video in `epoch` on the device, as the dataset draws them.
        Training draws new frames every epoch: the next epoch's are drawn in a background thread
        while this one trains (a Python loop over every video, ~50 us each). Evaluation takes the
        centre frames, the same every epoch: drawn once."""
        if not self.dataset.train:
            if self._fixed is None:
                self._fixed = self._draw(0).to(self.device)
            return self._fixed
        future = self._next.pop(epoch, None) or self._pool.submit(self._draw, epoch)
        self._next = {epoch + 1: self._pool.submit(self._draw, epoch + 1)}
        return future.result().to(self.device, non_blocking=True)

    def _draw(self, epoch: int) -> torch.Tensor:
        d = self.dataset
        table = torch.tensor([d.frames(int(n), d.item_rng(i, epoch)) for i, n in enumerate(self.packed["visual"].lengths)],
                             dtype=torch.int64)
        return table.pin_memory() if self.device.type == "cuda" else table

    def batches(self, indices: Sequence[int], batch_size: int, frames: torch.Tensor | None = None) -> Iterator[dict]:
        """`collate` batches of `indices` in order, `batch_size` each (the last may be shorter);
        `frames`: the epoch's frame table (default: the dataset's current epoch)."""
        if "visual" in self.packed and frames is None:
            frames = self.frame_table(self.dataset.epoch)
        order = torch.tensor(list(indices), dtype=torch.int64)
        rows_on_device = order.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" \
            else order
        for start in range(0, len(order), batch_size):
            yield self.batch(order[start:start + batch_size].numpy(), rows_on_device[start:start + batch_size], frames)

    def batch(self, rows: np.ndarray, rows_on_device: torch.Tensor, frames: torch.Tensor | None) -> dict:
        out = {"file_id": [self.file_ids[i] for i in rows], "labels": self.labels[rows_on_device],
               "has_labels": self.has_labels[rows_on_device]}
        for modality, packed in self.packed.items():
            if modality == "visual":
                out["visual"] = packed.frames(rows_on_device, frames[rows_on_device])
                out["visual_mask"] = torch.ones(out["visual"].shape[:2], dtype=torch.bool, device=self.device)
            else:
                out[modality], out[f"{modality}_mask"] = packed.padded(rows_on_device, int(packed.lengths[rows].max()))
        return out


class DeviceEpochLoader(EpochLoader):
    """`EpochLoader` over a `DeviceCache`: the same batches in the same order, the same position
    (state_dict, resume), made on the device."""

    def __init__(self, dataset: FeatureDataset, *, batch_size: int, seed: int, rank: int, world_size: int,
                 device: torch.device | str, shuffle: bool = True, features: dict | None = None):
        super().__init__(dataset, batch_size=batch_size, collate_fn=collate, seed=seed, rank=rank,
                         world_size=world_size, shuffle=shuffle)
        self.cache = DeviceCache(dataset, device, features)

    def __iter__(self) -> Iterator[dict]:
        self.dataset.set_epoch(self.epoch)
        indices = self.indices(self.epoch)[self.batch * self.batch_size:]
        for batch in self.cache.batches(indices, self.batch_size):
            self.batch += 1
            yield batch
        self.epoch, self.batch = self.epoch + 1, 0
