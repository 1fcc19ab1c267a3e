"""Stage 1 data: the weighted face mixture, resampled or exact (or synthetic images)."""
from __future__ import annotations

from shared.errors import UserError
from shared.stream import Augment, FaceStream, StreamConfig, build_sources
from shared.stream.decode import OUTPUTS
from shared.stream.synthetic import SyntheticStream
from shared.training.device_input import auto_output

from .config import DataSection


def stream_output(cfg: DataSection, device_type: str) -> str:
    """What the stream hands over (`StreamConfig.output`): data.input_path, or the legacy
    device_decode / device_augment switches, or for "auto" the device's measured best."""
    legacy = "jpeg" if cfg.device_decode else "decoded" if cfg.device_augment else None
    if cfg.input_path not in ("auto", *OUTPUTS):
        raise UserError(f"data.input_path={cfg.input_path!r}; expected auto, {', '.join(OUTPUTS)}")
    if legacy and cfg.input_path not in ("auto", legacy):
        raise UserError(f"data.input_path={cfg.input_path} contradicts data.device_{'decode' if legacy == 'jpeg' else 'augment'}"
                        f"=true (input_path={legacy}); set one of them")
    if legacy or cfg.input_path != "auto":
        return legacy or cfg.input_path
    return auto_output(device_type)


def build_data(cfg: DataSection, *, image_size: int, seed: int, rank: int, world_size: int, pin_memory: bool,
               micro_batch: int | None = None, global_batch: int | None = None, device_type: str = "cpu"):
    """The stream of this rank: `micro_batch` per batch (default data.batch_size), and in exact
    mode `global_batch` samples per optimizer step over all ranks; its output for `device_type`
    (`stream_output`)."""
    batch_size = micro_batch or cfg.batch_size
    if cfg.synthetic:
        return SyntheticStream(batch_size=batch_size, image_size=image_size,
                               batches_per_epoch=cfg.batches_per_epoch, seed=seed, rank=rank, world_size=world_size)
    if not cfg.sources:
        raise UserError("no data: set data.sources (name -> shard folder or URL pattern), or data.synthetic=true")
    if cfg.augment not in ("mae", "resize"):
        raise UserError(f"data.augment={cfg.augment!r}; pretraining uses 'mae' or 'resize'")
    sources = build_sources(cfg.sources, cfg.weights, pretraining=True)
    augment = Augment(kind=cfg.augment, size=image_size, scale=tuple(cfg.scale), interpolation=cfg.interpolation)
    stream_cfg = StreamConfig(mode=cfg.mode, batch_size=batch_size, batches_per_epoch=cfg.batches_per_epoch,
                              global_batch=global_batch, lanes=cfg.lanes, shuffle_buffer=cfg.shuffle_buffer, block_size=cfg.block_size, seed=seed,
                              num_workers=cfg.num_workers, pin_memory=pin_memory, augment=augment,
                              exclude=list(cfg.exclude),
                              output=stream_output(cfg, device_type))
    return FaceStream(sources, stream_cfg, rank=rank, world_size=world_size)
