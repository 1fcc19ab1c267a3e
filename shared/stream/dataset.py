"""The face stream: uint8 batches from weighted shard sources, split over ranks and workers.

Each rank builds its own `FaceStream(sources, config, rank, world_size)` and iterates it; the
stream makes its own DataLoader (Accelerate's `prepare` is not for iterable pipelines). Every
rank yields the same number of full batches, so no rank waits at the end of an epoch.
`state_dict()` is the stream's position; after `load_state_dict` the stream continues with
exactly the batches an uninterrupted run would have produced.

- resampled: each worker makes whole batches in turn; the position is the epoch, the batches
  consumed and each worker's raw cursor, and resuming needs the same shape (processes x workers):
  on another shape the stream goes on with the fresh draws of the next epoch and says so.
- exact: the epoch's order is global (see `exact`); every worker makes its part of every batch
  and the position is a global sample count, so a resume on any shape with the same global
  batch continues exactly (`load_saved_states` takes the states every process saved).

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
from .decode import OUTPUTS, Augment, decode_sample, merge_plans, pack_plans, plan_sample
from .exact import ExactLayout, check_counts, default_lanes, exact_raw, quotas
from .reading import ErrorLog, derive_seed, placeholder
from .sources import Source, class_subset
from ..errors import UserError
from ..shards.leakage import read_exclusions

log = logging.getLogger(__name__)
MODES = ("resampled", "exact")


@dataclass
class StreamConfig:
    mode: str = "resampled"  # resampled (pretraining) | exact (fine-tuning, evaluation)
    batch_size: int = 64  # per rank and micro-batch
    batches_per_epoch: int | None = None  # resampled: per rank, equal on every rank
    shuffle: bool = True  # exact: shuffle each epoch (training) or keep order (evaluation)
    shuffle_buffer: int = 2000  # per worker in resampled mode, per lane in exact mode
    # exact: samples per optimizer step over all ranks (default batch_size x world size); it and
    # the lanes (default: the largest divisor of it up to 64) fix the order, see `exact`
    global_batch: int | None = None
    lanes: int | None = None
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
    batch: int = 0  # batches (micro-batches) of this epoch already delivered on this rank
    cursors: list[int] = field(default_factory=list)  # resampled: raw samples each worker consumed


class _Workers(IterableDataset):
    """One epoch of one rank, from a given position; runs inside the DataLoader workers."""

    def __init__(self, stream: "FaceStream", position: Position):
        self.stream, self.sources, self.cfg = stream, stream.sources, stream.config
        self.rank, self.world_size, self.num_slots = stream.rank, stream.world_size, stream.workers_per_rank
        self.batches = stream.batches_per_epoch
        self.exclude, self.keep, self.repeats = stream.exclude, stream.keep, stream.repeats
        self.label_map = stream.config.label_map
        self.position = position

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker_id = info.id if info is not None else 0
        errors = ErrorLog()
        if self.cfg.mode == "exact":
            yield from self._exact(worker_id, errors)
        else:
            yield from self._resampled(worker_id, errors)

    def _exact(self, worker: int, errors: ErrorLog) -> Iterator[dict]:
        """This worker's part of every batch (the main process puts the parts together)."""
        pos = self.position
        for _, part in exact_raw(self.stream, self.rank, worker, pos.epoch, pos.batch, errors):
            items = []
            for sample, rng in part:
                decoded = self._decode(sample if sample is not None else placeholder("padding"), rng, errors)
                items.append((decoded, sample))
            yield self._pack([d for d, _ in items], [s["__key__"] if s else "" for _, s in items], worker, errors)

    def _resampled(self, worker_id: int, errors: ErrorLog) -> Iterator[dict]:
        """Whole batches, worker k making batches k, k + K, ... of the epoch."""
        cfg, pos = self.cfg, self.position
        # The DataLoader asks its workers in turn starting from worker 0, and batch k belongs to
        # slot k % W; rotating the roles makes worker 0 own the first batch after a resume.
        worker = (worker_id + pos.batch) % self.num_slots
        cursor = pos.cursors[worker]
        raw = order.resampled_samples(self.sources, seed=cfg.seed, rank=self.rank, worker=worker, epoch=pos.epoch,
                                      start=cursor, block_size=cfg.block_size, shuffle_buffer=cfg.shuffle_buffer,
                                      exclude=self.exclude, errors=errors, keep=self.keep, repeats=self.repeats)
        first = pos.batch + (worker - pos.batch) % self.num_slots  # this slot's next batch index
        for _ in range(first, self.batches, self.num_slots):
            decoded, keys = [], []
            while len(decoded) < cfg.batch_size:
                sample = next(raw)
                cursor += 1
                rng = random.Random(derive_seed(cfg.seed, "augment", self.rank, worker, pos.epoch, cursor))
                out = self._decode(sample, rng, errors)
                if out is not None:
                    decoded.append(out)
                    keys.append(sample["__key__"])
            yield {**self._pack(decoded, keys, worker, errors), "_cursor": cursor}

    def _pack(self, decoded: list[tuple], keys: list[str], worker: int, errors: ErrorLog) -> dict:
        images = [image for image, _, _ in decoded]
        if self.cfg.output == "pixels":
            pixels = {"image": _stack(images, self.cfg.augment.size)}
        else:
            pixels = {"plan": pack_plans(images, self.cfg.augment)}
        return {**pixels, "valid": torch.tensor([image is not None for image in images], dtype=torch.bool),
                "label": torch.tensor([label for _, _, label in decoded], dtype=torch.int64), "key": keys,
                "meta": [meta for _, meta, _ in decoded], "_worker": worker, "_errors": errors.count,
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
    batch = np.stack([im if im is not None else blank for im in images]) if images else np.zeros((0, *shape), np.uint8)
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
        self.layout = None
        if config.mode == "exact":
            check_counts(sources)
            global_batch = config.global_batch or config.batch_size * world_size
            self.layout = ExactLayout(total=sum(quotas(sources)), lanes=config.lanes or default_lanes(global_batch),
                                      global_batch=global_batch, world_size=world_size,
                                      micro_batch=config.batch_size, workers=self.workers_per_rank)
            self.total, self.lanes, self.batches_per_epoch = self.layout.total, self.layout.lanes, self.layout.batches
        else:
            self.total, self.lanes, self.batches_per_epoch = None, None, int(config.batches_per_epoch)
        self.position = self._start(0)
        self.errors = 0
        self.error_messages: list[str] = []

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _start(self, epoch: int) -> Position:
        cursors = [0] * self.workers_per_rank if self.config.mode == "resampled" else []
        return Position(epoch, 0, cursors)

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
        parts = []
        for item in loader:
            worker = item.pop("_worker")
            count = item.pop("_errors")
            self.errors += count - seen_errors[worker]
            seen_errors[worker] = count
            for message in item.pop("_messages"):
                log.warning("face stream (rank %d): skipped %s", self.rank, message)
                if len(self.error_messages) < 20:
                    self.error_messages.append(message)
            if self.config.mode == "resampled":
                self.position.cursors[worker] = item.pop("_cursor")
            else:  # exact: worker k sends part k of every batch, in turn
                parts.append(item)
                if len(parts) < self.workers_per_rank:
                    continue
                item, parts = _joined(parts, self.config.pin_memory), []
            self.position.batch += 1
            yield item
        self.position = self._start(self.position.epoch + 1)

    def state_dict(self) -> dict:
        state = {"epoch": self.position.epoch, "batch": self.position.batch, "cursors": list(self.position.cursors),
                 "errors": self.errors, "mode": self.config.mode, "world_size": self.world_size,
                 "workers": self.workers_per_rank, "seed": self.config.seed, "batch_size": self.config.batch_size}
        if self.layout is not None:
            state.update(self._order_settings(), accum=self.layout.accum,
                         samples=self.position.batch // self.layout.accum * self.layout.global_batch)
        return state

    def _order_settings(self) -> dict:
        """What fixes the exact order besides the data: equal settings, equal order."""
        return {"global_batch": self.layout.global_batch, "lanes": self.layout.lanes,
                "shuffle_buffer": self.config.shuffle_buffer, "shuffle": self.config.shuffle}

    def load_state_dict(self, state: dict) -> None:
        """This rank's own saved position (a run of the same shape)."""
        self.load_saved_states([state], own=state)

    def load_saved_states(self, states: list[dict], own: dict | None = None) -> None:
        """Resume from the positions every rank of the saved run saved (rank order); `own` is
        this rank's when the shape is the same. See the module docstring for what a resume
        onto another shape does."""
        first = states[0]
        if first["mode"] != self.config.mode or first["seed"] != self.config.seed:
            raise UserError(f"the saved stream position is for mode {first['mode']}, seed {first['seed']}; this run has "
                            f"mode {self.config.mode}, seed {self.config.seed}; resume with the same settings")
        saved_shape = (first["world_size"], first["workers"], first.get("batch_size", self.config.batch_size))
        same = saved_shape == (self.world_size, self.workers_per_rank, self.config.batch_size)
        mine = own if own is not None else states[self.rank] if same else first
        if self.config.mode == "exact":
            self._resume_exact(mine, states, same)
        elif same:
            self.position = Position(mine["epoch"], mine["batch"], list(mine["cursors"]))
        else:
            self.position = self._start(first["epoch"] + 1)
            log.info("resampled stream saved on %d x %d resumes on %d processes x %d workers with the fresh draws of "
                     "epoch %d (a resampled stream depends on the shape; mode=exact resumes exactly)",
                     first["world_size"], first["workers"], self.world_size, self.workers_per_rank, first["epoch"] + 1)
        if same or own is not None:
            self.errors = mine["errors"]
        else:  # the saved ranks' counts, once
            self.errors = sum(s["errors"] for s in states) if self.rank == 0 else 0

    def _resume_exact(self, mine: dict, states: list[dict], same: bool) -> None:
        saved = {k: mine.get(k) for k in self._order_settings()}
        if saved != self._order_settings():
            raise UserError(f"the saved stream position is for an exact order with {saved}; this run has "
                            f"{self._order_settings()}: keep the global batch, lanes and shuffle buffer of the run")
        if same:
            self.position = Position(mine["epoch"], mine["batch"])
            return
        if mine["batch"] % mine["accum"]:
            raise UserError(f"the stream was saved in the middle of an accumulated step (micro-batch {mine['batch']} "
                            f"of steps of {mine['accum']}); resume it on {mine['world_size']} process(es) with "
                            f"micro-batch {mine['batch_size']}")
        steps = mine["batch"] // mine["accum"]
        self.position = Position(mine["epoch"], steps * self.layout.accum)
        log.info("resuming at sample %d of epoch %d on %d processes x %d workers, saved on %d x %d",
                 steps * self.layout.global_batch, mine["epoch"], self.world_size, self.workers_per_rank,
                 mine["world_size"], mine["workers"])


def _joined(parts: list[dict], pin: bool) -> dict:
    """The workers' parts of one batch, in worker order, as one batch."""
    if len(parts) == 1:
        return parts[0]
    out = {"valid": torch.cat([p["valid"] for p in parts]), "label": torch.cat([p["label"] for p in parts]),
           "key": [k for p in parts for k in p["key"]], "meta": [m for p in parts for m in p["meta"]]}
    if "image" in parts[0]:
        nhwc = [p["image"].permute(0, 2, 3, 1) for p in parts]  # channels-last memory: a plain concat
        joined = torch.empty((sum(x.shape[0] for x in nhwc), *nhwc[0].shape[1:]), dtype=torch.uint8, pin_memory=pin)
        out["image"] = torch.cat(nhwc, out=joined).permute(0, 3, 1, 2)
    else:
        out["plan"] = merge_plans([p["plan"] for p in parts])
    return out
