"""Stage 2 configuration: encoder + head, AffectNet classes and sampling, the fine-tuning recipe."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from shared.config_fields import one_of, ranged
from shared.training.config import OptimConfig, RunConfig

# AffectNet expression codes (codes 8 None, 9 Uncertain, 10 No-Face are never classes)
EXPRESSIONS = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt"]


@dataclass
class ModelSection:
    encoder: str = ""  # a stage-1 export folder, an official MAE / MAE-Face .pth, a .safetensors or a timm name
    architecture: str | None = None  # timm architecture of a bare state-dict file (default vit_base_patch16_224)
    # avg: global average pooling + fresh fc_norm (MAE recipe); token: the cls token
    pool: str = one_of("avg", "avg", "token")
    hidden_dim: int = ranged(512, ge=0)  # the paper's two linear layers; 0: one linear layer
    dropout: float = ranged(0.0, ge=0, lt=1)  # before the head
    drop_path: float = ranged(0.1, ge=0, lt=1)  # stochastic depth of the encoder's blocks
    head_init_std: float = ranged(2e-5, ge=0)  # the head's initial weights' std
    linear_probe: bool = False  # frozen encoder, BatchNorm (no affine) + linear head
    grad_checkpointing: bool = False  # recompute each block's activations in the backward (memory for time)


@dataclass
class DataSection:
    shards: str = ""  # the AffectNet shard folder written by `face-shards affectnet`
    train_split: str = "train"  # split names of the shard folder
    val_split: str = "val"
    classes: int = one_of(8, 8, 7)  # 8: codes 0-7; 7: codes 0-6 (no contempt)
    label_map: dict[int, int] | None = None  # explicit expression code -> class index (overrides classes)
    class_names: list[str] | None = None  # default: AffectNet's names of the chosen codes
    # none; sampling: class-balanced resampling; loss: class-weighted loss
    balance: str = one_of("sampling", "none", "sampling", "loss")
    batch_size: int = ranged(64, ge=1)  # per process and micro-batch (with global_batch: the most per micro-batch)
    # samples per optimizer step over all processes; set, it stays fixed whatever the number of
    # processes (the micro-batches per step adapt): with balance=none|loss, a resume onto another
    # number of processes continues exactly
    global_batch: int | None = ranged(None, ge=1)
    eval_batch_size: int = ranged(128, ge=1)
    num_workers: int = ranged(8, ge=0)  # loader worker processes per process (0: in the main process)
    shuffle_buffer: int = ranged(2000, ge=1)  # samples mixed in memory
    # balance=none|loss: the exact pass's read lanes (default: the largest divisor of the global batch
    # up to 64); a run on any number of processes sees the same global batches
    lanes: int | None = ranged(None, ge=1)
    image_size: int | None = ranged(None, ge=1)  # default: the encoder's input size
    scale: tuple[float, float] = ranged((0.08, 1.0), gt=0, le=1)  # RandomResizedCrop's area range
    interpolation: str = one_of("bicubic", "bicubic", "bilinear")  # the resize's
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"  # timm RandAugment; null: none
    crop_pct: float = ranged(0.875, gt=0, le=1)  # evaluation: centre crop share before resizing
    reprob: float = ranged(0.25, ge=0, le=1)  # random erasing probability (on the device)
    mixup: float = ranged(0.8, ge=0)  # mixup alpha (0: off)
    cutmix: float = ranged(1.0, ge=0)  # cutmix alpha (0: off)
    label_smoothing: float = ranged(0.1, ge=0, lt=1)
    mean: tuple[float, float, float] | None = ranged(None, ge=0, le=1)  # default: the encoder's pretrained_cfg
    std: tuple[float, float, float] | None = ranged(None, gt=0)


@dataclass
class EvalSection:
    every: int = ranged(1000, ge=0)  # steps between evaluations over the whole validation split (and at the end)
    # the best checkpoint's metric
    metric: str = one_of("balanced_accuracy", "top1", "balanced_accuracy", "macro_f1")


@dataclass
class FinetuneConfig:
    STAGE: ClassVar[str] = "finetune_affectnet"  # what a YAML file's `stage:` says (shared/config.py STAGES)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(base_lr=5e-4, weight_decay=0.05,
                                                                   betas=(0.9, 0.999), warmup_steps=1000))
    layer_decay: float = ranged(0.75, gt=0, le=1)  # layer-wise lr decay (1: off)
    ema_decay: float | None = ranged(0.9998, ge=0, lt=1)  # EMA of weights (null: off); evaluated and exported when on
    epochs: float | None = ranged(None, gt=0)  # length in passes over the training split; else run.total_steps
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/finetune_affectnet", total_steps=20000))
    eval: EvalSection = field(default_factory=EvalSection)


# Settings that decide which samples each step reads: a resumed state must have been saved with
# the same values (shared.training.checkpoint refuses another one, naming the key). Paths are
# not compared (the same data may move); the world size and workers are checked by the state
# and the stream position themselves.
RESUME_KEYS = ("data.train_split", "data.classes", "data.label_map", "data.balance", "data.shuffle_buffer",
               "data.global_batch", "data.lanes", "run.seed")
SPLIT_KEYS = ("data.batch_size", "optim.grad_accum")  # without data.global_batch, they make the step


def resume_keys(cfg: FinetuneConfig) -> tuple[str, ...]:
    """The keys a resume must keep: with data.global_batch the micro-batch and accumulation only
    split each step over the hardware (another shape may need others), without it they make it."""
    return RESUME_KEYS + (() if cfg.data.global_batch else SPLIT_KEYS)
