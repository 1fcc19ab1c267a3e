"""Stage 1 configuration: the model, the face mixture, the optimizer (MAE recipe) and the run."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from shared.config_fields import one_of, ranged
from shared.encoders import IMAGENET_MEAN, IMAGENET_STD
from shared.training.config import OptimConfig, RunConfig



@dataclass
class ModelSection:
    name: str = "mae_vit_base_patch16"  # a file of pretrain_mae/model_configs/
    overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {img_size: 112, norm_pix_loss: false}
    mask_ratio: float = ranged(0.75, ge=0, lt=1)  # the share of patches hidden from the encoder
    init: str | None = None  # start from: an official MAE / MAE-Face .pth, a .safetensors, a timm folder or name
    grad_checkpointing: bool = False
    # timm's LayerNorm in the autocast dtype: one kernel instead of a float32 norm + a cast (a speed
    # switch for bf16 runs; the statistics then see bf16-rounded inputs). No effect in float32.
    fast_norm: bool = False


@dataclass
class DataSection:
    sources: dict[str, Any] = field(default_factory=dict)  # name -> shard folder | URL pattern | {urls, splits}
    weights: str | None = None  # "affectnet:1,celeba:1,casia:2,imdb_wiki:1" (fractions of samples)
    exclude: list[str] = field(default_factory=list)  # exclusion lists from `face-shards leakage`
    synthetic: bool = False  # smooth synthetic images instead of shards (tests, speed runs)
    # resampled: shards drawn at random by weight; exact: every planned sample once per epoch in one
    # global order (the weights say each source's share), resumable on any number of processes
    mode: str = one_of("resampled", "resampled", "exact")
    batch_size: int = ranged(64, ge=1)  # per process and micro-batch (with global_batch: the most per micro-batch)
    # samples per optimizer step over all processes; set, it stays fixed whatever the number of
    # processes (the micro-batches per step adapt): what resuming on another shape needs
    global_batch: int | None = ranged(None, ge=1)
    # exact: read lanes (default: the largest divisor of the global batch up to 64)
    lanes: int | None = ranged(None, ge=1)
    # resampled, per process: the stream's checkpointable unit, not a dataset epoch
    batches_per_epoch: int = ranged(1000, ge=1)
    num_workers: int = ranged(8, ge=0)  # loader worker processes per process (0: in the main process)
    shuffle_buffer: int = ranged(2000, ge=1)  # samples mixed in memory
    block_size: int = ranged(20000, ge=1)  # samples per block of the stream's shard plan
    # mae: RandomResizedCrop + flip; resize: plain resize + flip (face MAE variants)
    augment: str = one_of("mae", "mae", "resize")
    scale: tuple[float, float] = ranged((0.2, 1.0), gt=0, le=1)  # RandomResizedCrop's area range
    interpolation: str = one_of("bicubic", "bicubic", "bilinear")  # the resize's
    # Where the crops are made, the same crops and flips either way: "pixels" (the loader workers
    # decode, crop, resize, flip), "decoded" (the workers decode; the device crops, resizes, flips)
    # or "jpeg" (the device decodes too, nvJPEG: for GPU nodes short of CPU cores). "auto": the
    # measured best for the device (shared/training/device_input.py AUTO_OUTPUT: pixels).
    input_path: str = one_of("auto", "auto", "pixels", "decoded", "jpeg")
    device_augment: bool = False  # the same as input_path=decoded
    device_decode: bool = False  # the same as input_path=jpeg
    # prepare device batches (copy, nvJPEG decode, resize) in a thread ahead of the training loop
    prepare_in_thread: bool = False
    mean: tuple[float, float, float] = ranged(IMAGENET_MEAN, ge=0, le=1)  # per channel, of [0, 1] pixels
    std: tuple[float, float, float] = ranged(IMAGENET_STD, gt=0)


@dataclass
class FigureSection:
    every: int = ranged(1000, ge=0)  # steps between reconstruction figures (0: never)
    images: int = ranged(4, ge=1)  # faces per figure


@dataclass
class PretrainConfig:
    STAGE: ClassVar[str] = "pretrain_mae"  # what a YAML file's `stage:` says (shared/config.py STAGES)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(base_lr=1.5e-4, weight_decay=0.05,
                                                                   betas=(0.9, 0.95), warmup_steps=2000))
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/pretrain_mae", total_steps=40000))
    total_samples: int | None = ranged(None, ge=1)  # when set, total_steps = ceil(total_samples / samples per step)
    stop_after: int | None = ranged(None, ge=1)  # end this invocation after N steps (state saved); resume continues
    figures: FigureSection = field(default_factory=FigureSection)


# Settings that decide which samples each step reads: a resumed state must have been saved with
# the same values (shared.training.checkpoint refuses another one, naming the key). Paths are
# not compared (the same data may move); the world size and workers are checked by the state
# and the stream position themselves.
RESUME_KEYS = ("data.mode", "data.weights", "data.exclude", "data.synthetic", "data.batches_per_epoch",
               "data.shuffle_buffer", "data.block_size", "data.global_batch", "data.lanes", "run.seed")
SPLIT_KEYS = ("data.batch_size", "optim.grad_accum")  # without data.global_batch, they make the step


def resume_keys(cfg: PretrainConfig) -> tuple[str, ...]:
    """The keys a resume must keep: with data.global_batch the micro-batch and accumulation only
    split each step over the hardware (another shape may need others), without it they make it."""
    return RESUME_KEYS + (() if cfg.data.global_batch else SPLIT_KEYS)
