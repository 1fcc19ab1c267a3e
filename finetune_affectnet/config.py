"""Stage 2 configuration: encoder + head, AffectNet classes and sampling, the fine-tuning recipe."""
from __future__ import annotations

from dataclasses import dataclass, field

from shared.training.config import OptimConfig, RunConfig

# AffectNet expression codes (codes 8 None, 9 Uncertain, 10 No-Face are never classes)
EXPRESSIONS = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt"]


@dataclass
class ModelSection:
    encoder: str = ""  # a stage-1 export folder, an official MAE / MAE-Face .pth, a .safetensors or a timm name
    architecture: str | None = None  # timm architecture of a bare state-dict file (default vit_base_patch16_224)
    pool: str = "avg"  # avg: global average pooling + fresh fc_norm (MAE recipe); token: the cls token
    hidden_dim: int = 512  # the paper's two linear layers; 0: one linear layer
    dropout: float = 0.0
    drop_path: float = 0.1
    head_init_std: float = 2e-5
    linear_probe: bool = False  # frozen encoder, BatchNorm (no affine) + linear head
    grad_checkpointing: bool = False  # recompute each block's activations in the backward (memory for time)


@dataclass
class DataSection:
    shards: str = ""  # the AffectNet shard folder written by `face-shards affectnet`
    train_split: str = "train"
    val_split: str = "val"
    classes: int = 8  # 8: codes 0-7; 7: codes 0-6 (no contempt)
    label_map: dict[int, int] | None = None  # explicit expression code -> class index (overrides classes)
    class_names: list[str] | None = None  # default: AffectNet's names of the chosen codes
    balance: str = "sampling"  # none | sampling (class-balanced resampling) | loss (class-weighted loss)
    batch_size: int = 64  # per process and micro-batch (with global_batch: the most per micro-batch)
    # samples per optimizer step over all processes; set, it stays fixed whatever the number of
    # processes (the micro-batches per step adapt): with balance=none|loss, a resume onto another
    # number of processes continues exactly
    global_batch: int | None = None
    eval_batch_size: int = 128
    num_workers: int = 8
    shuffle_buffer: int = 2000
    # balance=none|loss: the exact pass's read lanes (default: the largest divisor of the global batch
    # up to 64); a run on any number of processes sees the same global batches
    lanes: int | None = None
    image_size: int | None = None  # default: the encoder's input size
    scale: tuple[float, float] = (0.08, 1.0)
    interpolation: str = "bicubic"
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"  # timm RandAugment; null: none
    crop_pct: float = 0.875  # evaluation: centre crop share before resizing
    reprob: float = 0.25  # random erasing probability (on the device)
    mixup: float = 0.8  # mixup alpha (0: off)
    cutmix: float = 1.0  # cutmix alpha (0: off)
    label_smoothing: float = 0.1
    mean: tuple[float, float, float] | None = None  # default: the encoder's pretrained_cfg
    std: tuple[float, float, float] | None = None


@dataclass
class EvalSection:
    every: int = 1000  # steps between evaluations over the whole validation split (and at the end)
    metric: str = "balanced_accuracy"  # the best checkpoint's metric: top1 | balanced_accuracy | macro_f1


@dataclass
class FinetuneConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(base_lr=5e-4, weight_decay=0.05,
                                                                   betas=(0.9, 0.999), warmup_steps=1000))
    layer_decay: float = 0.75  # layer-wise lr decay (1: off)
    ema_decay: float | None = 0.9998  # EMA of weights (null: off); evaluated and exported when on
    epochs: float | None = None  # length in passes over the training split; else run.total_steps
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
