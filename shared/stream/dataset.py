"""The face stream: uint8 batches from weighted shard sources, split over ranks and workers.

Each rank builds its own `FaceStream(sources, config, rank, world_size)` and iterates it; the
stream makes its own DataLoader (Accelerate's `prepare` is not for iterable pipelines). Every
worker of every rank yields the same number of full batches, so no rank waits at the end of an
epoch. `state_dict()` is the stream's position (epoch, batches consumed, each worker's raw
cursor, error counts); after `load_state_dict` the stream continues with exactly the batches
an uninterrupted run would have produced.

Batches are dicts: image uint8 (B, 3, H, W) (channels-last in memory: zero-copy from the
decoder), valid bool (B,) (False for padding in exact mode), label int64 (B,) (-1 when the
shard has no class), key list[str], meta list[dict]. With `output="decoded"` or `"jpeg"`, "plan"
(`decode.pack_plans`: decoded pixels or JPEG bytes, crop boxes and flips) replaces "image", and
`shared.training.device_input` makes the images on the device: the same crops and flips.
"""
from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from . import order
from .decode import OUTPUTS, Augment, decode_sample, pack_plans, plan_sample
from .reading import ErrorLog, derive_seed, placeholder
from .sources import Source, class_subset
from ..errors import UserError
from ..shards.leakage import read_exclusions

log = logging.getLogger(__name__)
MODES = ("resampled", "exact")


@dataclass
class StreamConfig:
    mode: str = "resampled"  # resampled (pretraining) | exact (fine-tuning, evaluation)
    batch_size: int = 64  # per rank
    batches_per_epoch: int | None = None  # resampled: per rank, equal on every rank
    shuffle: bool = True  # exact: shuffle each epoch (training) or keep order (evaluation)
    shuffle_buffer: int = 2000  # per worker in resampled mode, per lane in exact mode
    lanes: int | None = None  # exact: fixed -> the same global batches on any number of ranks (see order)
    block_size: int = 20000  # resampled: samples per re-seeded block; bounds the cost of a resume
    seed: int = 0
    num_workers: int = 4
    pin_memory: bool = False
    prefetch_factor: int = 4
    augment: Augment = field(default_factory=Augment)
    exclude: list[str] = field(default_factory=list)  # exclusion lists from `face-shards leakage`
    label_map: dict[int, int] | None = None  # class code -> label; samples of other codes are left out
    balance_classes: bool = False  # resampled: every class equally often in expectation
    # pixels: augmented in the workers | decoded: cropped, resized, flipped on the device | jpeg: decoded there too
    output: str = "pixels"

    def __post_init__(self):
        if isinstance(self.augment, dict):
            self.augment = Augment(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.augment.items()})
        if self.mode not in MODES:
            raise UserError(f"stream mode {self.mode!r}; expected one of {MODES}")
        if self.mode == "resampled" and not self.batches_per_epoch:
            raise UserError("resampled mode needs batches_per_epoch (per rank): training length is counted in steps")
        if self.balance_classes and self.mode != "resampled":
            raise UserError("balance_classes samples with replacement: it needs mode=resampled")
        if self.output not in OUTPUTS:
            raise UserError(f"stream output {self.output!r}; expected one of {OUTPUTS}")
        if self.output != "pixels" and (self.augment.kind == "none" or self.augment.auto_augment):
            raise UserError(f"output={self.output!r} resizes on the device: it needs an augment kind that resizes "
                            "(mae, resize, eval) and no RandAugment, which runs on the CPU")
        if self.batch_size < 1 or self.num_workers < 0:
            raise UserError(f"batch_size must be >= 1 and num_workers >= 0 (got {self.batch_size}, {self.num_workers})")


@dataclass
class Position:
    epoch: int = 0
    batch: int = 0  # batches of this epoch already delivered on this rank
    cursors: list[int] = field(default_factory=list)  # raw samples each worker (resampled) or lane consumed


class _Workers(IterableDataset):
    """One epoch of one rank, from a given position; runs inside the DataLoader workers."""

    def __init__(self, stream: "FaceStream", position: Position):
        self.sources, self.cfg = stream.sources, stream.config
        self.rank, self.world_size, self.num_slots = stream.rank, stream.world_size, stream.workers_per_rank
        self.lanes, self.feeds = stream.lanes, stream.feeds_per_worker
        self.batches = stream.batches_per_epoch
        self.exclude, self.keep, self.repeats = stream.exclude, stream.keep, stream.repeats
        self.label_map = stream.config.label_map
        self.position = position

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        cfg, pos = self.cfg, self.position
        # The DataLoader asks its workers in turn starting from worker 0, and batch k belongs to
        # slot k % W; rotating the roles makes worker 0 own the first batch after a resume.
        worker = ((info.id if info is not None else 0) + pos.batch) % self.num_slots
        errors = ErrorLog()
        cursors = pos.cursors[worker * self.feeds:(worker + 1) * self.feeds]
        common = dict(seed=cfg.seed, epoch=pos.epoch, shuffle_buffer=cfg.shuffle_buffer, exclude=self.exclude,
                      errors=errors, keep=self.keep)
        if cfg.mode == "resampled":  # one feed per worker
            feeds = [(order.resampled_samples(self.sources, rank=self.rank, worker=worker, start=cursors[0],
                                              block_size=cfg.block_size, repeats=self.repeats, **common),
                      (self.rank, worker))]
        else:  # one feed per lane; its samples' augmentations are seeded by lane, not by rank
            lanes = order.lane_ids(self.rank, worker, self.world_size, self.num_slots, self.lanes)
            feeds = [(order.lane_samples(self.sources, lane=lane, lanes=self.lanes, start=start,
                                         shuffle=cfg.shuffle, **common), ("lane", lane))
                     for lane, start in zip(lanes, cursors)]
        chunk = cfg.batch_size // len(feeds)
        first = pos.batch + (worker - pos.batch) % self.num_slots  # this slot's next batch index
        for _ in range(first, self.batches, self.num_slots):
            images, valid, labels, keys, metas = [], [], [], [], []
            for f, (raw, key) in enumerate(feeds):
                goal = len(images) + chunk
                while len(images) < goal:
                    sample = next(raw, None)
                    if sample is None:  # exact mode: the lane's share is used up; pad
                        sample = placeholder("padding")
                    else:
                        cursors[f] += 1
                    rng = random.Random(derive_seed(cfg.seed, "augment", *key, pos.epoch, cursors[f]))
                    decoded = self._decode(sample, rng, errors)
                    if decoded is None:
                        continue
                    image, meta, label = decoded
                    images.append(image)
                    valid.append(image is not None)
                    labels.append(label)
                    keys.append(sample["__key__"])
                    metas.append(meta)
            if cfg.output == "pixels":
                pixels = {"image": _stack(images, cfg.augment.size)}
            else:
                pixels = {"plan": pack_plans(images, cfg.augment)}
            yield {**pixels, "valid": torch.tensor(valid),
                   "label": torch.tensor(labels, dtype=torch.int64), "key": keys, "meta": metas,
                   "_worker": worker, "_cursors": list(cursors), "_errors": errors.count,
                   "_messages": errors.take_unreported()}

    def _decode(self, sample: dict, rng: random.Random, errors: ErrorLog):
        """(image, meta, label); for a corrupt sample None in resampled mode (skipped) and a
        padding entry in exact mode (every slot keeps its planned size)."""
        cfg = self.cfg
        try:
            if cfg.output == "pixels":
                image, meta, label = decode_sample(sample, cfg.augment, rng)
            else:  # the same draws from rng; decoding and/or resampling left to the device
                image, meta, label = plan_sample(sample, cfg.augment, rng, decode=cfg.output == "decoded")
        except Exception as exn:  # noqa: BLE001 - a corrupt sample is counted and skipped
            errors.add(f"{sample.get('__url__', '?')} {sample.get('__key__')}: {type(exn).__name__}: {exn}")
            if cfg.mode == "resampled":
                return None
            return None, {}, -1
        if self.label_map is not None and image is not None:
            label = self.label_map[label]
        if cfg.mode == "resampled" and meta.get("holdout"):
            raise UserError(f"{sample.get('__url__')}: sample {sample['__key__']} is held-out evaluation data "
                            "and can never be used for pretraining; leave that split out of the sources")
        return image, meta, label


def _as_is(batch: dict) -> dict:
    """Batches are made in the workers; the default per-batch conversion would walk every
    sample's metadata for nothing."""
    return batch


def _stack(images: list[np.ndarray | None], size: int) -> torch.Tensor:
    shape = next((im.shape for im in images if im is not None), (size, size, 3))
    blank = np.zeros(shape, np.uint8)
    batch = np.stack([im if im is not None else blank for im in images])
    return torch.from_numpy(batch).permute(0, 3, 1, 2)  # (B, 3, H, W), channels-last memory


def balanced_repeats(sources: list[Source], keep: frozenset[int] | None) -> dict[int, float]:
    """Expected copies per class code so that every class is drawn equally often: mean / count."""
    totals: dict[int, int] = {}
    for source in sources:
        for shard in class_subset(source, keep if keep is not None else _all_codes(source)).classes:
            for code, n in shard.items():
                totals[code] = totals.get(code, 0) + n
    totals = {c: n for c, n in totals.items() if n > 0}
    mean = sum(totals.values()) / len(totals)
    return {code: mean / n for code, n in totals.items()}


def _all_codes(source: Source) -> set[int]:
    return {c for shard in source.classes or [] for c in shard}


class FaceStream:
    def __init__(self, sources: list[Source], config: StreamConfig, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} outside world size {world_size}")
        self.sources, self.config = sources, config
        self.rank, self.world_size = rank, world_size
        self.workers_per_rank = max(1, config.num_workers)
        self.exclude = frozenset(k for path in config.exclude for k in read_exclusions(path))
        self.keep = frozenset(config.label_map) if config.label_map is not None else None
        if self.keep is not None and config.mode == "exact":
            sources = self.sources = [class_subset(s, self.keep) for s in sources]
        self.repeats = balanced_repeats(sources, self.keep) if config.balance_classes else None
        if config.mode == "exact":
            self.lanes = order.exact_lanes(world_size, self.workers_per_rank, config.lanes)
            self.feeds_per_worker = self.lanes // (world_size * self.workers_per_rank)
            if config.batch_size % self.feeds_per_worker:
                raise UserError(f"batch size {config.batch_size} per rank is not a multiple of the "
                                f"{self.feeds_per_worker} lanes each worker reads ({self.lanes} lanes)")
            self.total, per_lane = order.exact_plan(sources, self.lanes, config.batch_size // self.feeds_per_worker)
            self.batches_per_epoch = per_lane * self.workers_per_rank
        else:
            self.lanes, self.feeds_per_worker = None, 1
            self.total, self.batches_per_epoch = None, int(config.batches_per_epoch)
        self.position = Position(cursors=[0] * self.num_feeds)
        self.errors = 0
        self.error_messages: list[str] = []

    def __len__(self) -> int:
        return self.batches_per_epoch

    @property
    def num_feeds(self) -> int:
        return self.workers_per_rank * self.feeds_per_worker

    def __iter__(self) -> Iterator[dict]:
        """Batches of the current epoch from the current position; then moves to the next epoch."""
        pos = dataclasses.replace(self.position, cursors=list(self.position.cursors))
        seen_errors = [0] * self.workers_per_rank
        # Our own generator: a DataLoader otherwise draws its worker seeds from the global torch
        # RNG, which would make a resumed run's later random draws (MAE masks) differ.
        generator = torch.Generator().manual_seed(derive_seed(self.config.seed, "loader", self.rank, pos.epoch) % 2**63)
        loader = DataLoader(_Workers(self, pos), batch_size=None, num_workers=self.config.num_workers,
                            pin_memory=self.config.pin_memory, generator=generator, collate_fn=_as_is,
                            prefetch_factor=self.config.prefetch_factor if self.config.num_workers else None)
        for batch in loader:
            worker = batch.pop("_worker")
            k = self.feeds_per_worker
            self.position.cursors[worker * k:(worker + 1) * k] = batch.pop("_cursors")
            count = batch.pop("_errors")
            self.errors += count - seen_errors[worker]
            seen_errors[worker] = count
            for message in batch.pop("_messages"):
                log.warning("face stream (rank %d): skipped %s", self.rank, message)
                if len(self.error_messages) < 20:
                    self.error_messages.append(message)
            self.position.batch += 1
            yield batch
        self.position = Position(self.position.epoch + 1, 0, [0] * self.num_feeds)

    def state_dict(self) -> dict:
        return {"epoch": self.position.epoch, "batch": self.position.batch, "cursors": list(self.position.cursors),
                "errors": self.errors, "mode": self.config.mode, "world_size": self.world_size,
                "workers": self.workers_per_rank, "seed": self.config.seed, "lanes": self.lanes}

    def load_state_dict(self, state: dict) -> None:
        saved = (state["mode"], state["world_size"], state["workers"], state["seed"], state.get("lanes"))
        now = (self.config.mode, self.world_size, self.workers_per_rank, self.config.seed, self.lanes)
        if saved != now:
            raise UserError(f"the saved stream position is for (mode, world size, workers per rank, seed, lanes) = {saved}, "
                            f"this run has {now}; resume with the same settings")
        self.position = Position(state["epoch"], state["batch"], list(state["cursors"]))
        self.errors = state["errors"]
