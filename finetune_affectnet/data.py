"""Stage 2 data: AffectNet shards, the class set, training and evaluation streams."""
from __future__ import annotations

from shared.errors import UserError
from shared.stream import Augment, FaceStream, StreamConfig, build_sources

from .config import EXPRESSIONS, DataSection


def class_set(cfg: DataSection) -> tuple[dict[int, int], list[str]]:
    """(expression code -> class index, class names). Codes 8-10 are never classes."""
    if cfg.label_map is not None:
        label_map = {int(k): int(v) for k, v in cfg.label_map.items()}
    elif cfg.classes in (7, 8):
        label_map = {code: code for code in range(cfg.classes)}
    else:
        raise UserError(f"data.classes={cfg.classes}: AffectNet has 8 (codes 0-7) or 7 (codes 0-6) expression "
                        "classes; for another set give data.label_map")
    if any(code >= 8 for code in label_map):
        raise UserError("data.label_map: codes 8 (None), 9 (Uncertain) and 10 (No-Face) are not expressions")
    n = max(label_map.values()) + 1
    if sorted(set(label_map.values())) != list(range(n)):
        raise UserError(f"data.label_map {label_map}: class indices must be 0..{n - 1}")
    names = cfg.class_names or ["/".join(EXPRESSIONS[c] for c in sorted(label_map) if label_map[c] == i)
                                for i in range(n)]
    if len(names) != n:
        raise UserError(f"data.class_names has {len(names)} names for {n} classes")
    return label_map, names


def build_streams(cfg: DataSection, *, image_size: int, mean, seed: int, rank: int, world_size: int,
                  pin_memory: bool, micro_batch: int | None = None,
                  global_batch: int | None = None) -> tuple[FaceStream, FaceStream]:
    """(training stream, evaluation stream). Training is class-balanced resampling when
    balance=sampling, else an exact shuffled pass (`global_batch` samples per step over all
    ranks, `micro_batch` per rank and batch); evaluation always reads the whole split once."""
    batch_size = micro_batch or cfg.batch_size
    if not cfg.shards:
        raise UserError("no data: set data.shards to the AffectNet folder written by `face-shards affectnet`")
    label_map, _ = class_set(cfg)
    train_sources = build_sources({"affectnet": cfg.shards}, splits=[cfg.train_split])
    val_sources = build_sources({"affectnet": cfg.shards}, splits=[cfg.val_split])
    common = dict(num_workers=cfg.num_workers, pin_memory=pin_memory, seed=seed, label_map=label_map,
                  shuffle_buffer=cfg.shuffle_buffer)
    train_aug = Augment(kind="finetune", size=image_size, scale=tuple(cfg.scale), interpolation=cfg.interpolation,
                        auto_augment=cfg.auto_augment, mean=tuple(mean))
    if cfg.balance == "sampling":
        train_samples = sum(sum(n for c, n in shard.items() if c in label_map)
                            for s in train_sources for shard in (s.classes or []))
        batches = max(1, -(-train_samples // (batch_size * world_size)))
        train_cfg = StreamConfig(mode="resampled", batch_size=batch_size, batches_per_epoch=batches,
                                 balance_classes=True, augment=train_aug, **common)
    elif cfg.balance in ("none", "loss"):
        train_cfg = StreamConfig(mode="exact", batch_size=batch_size, shuffle=True, lanes=cfg.lanes,
                                 global_batch=global_batch, augment=train_aug, **common)
    else:
        raise UserError(f"data.balance={cfg.balance!r}; expected none, sampling or loss")
    eval_aug = Augment(kind="eval", size=image_size, crop_pct=cfg.crop_pct, interpolation=cfg.interpolation)
    val_cfg = StreamConfig(mode="exact", batch_size=cfg.eval_batch_size, shuffle=False, augment=eval_aug, **common)
    return (FaceStream(train_sources, train_cfg, rank, world_size),
            FaceStream(val_sources, val_cfg, rank, world_size))


def class_counts(stream: FaceStream, label_map: dict[int, int], num_classes: int) -> list[int]:
    """Training samples per class, from the manifest (for class-weighted losses)."""
    counts = [0] * num_classes
    for source in stream.sources:
        for shard in source.classes or []:
            for code, n in shard.items():
                if code in label_map:
                    counts[label_map[code]] += n
    return counts
