"""Stage 3b configuration: modalities and sizes, the feature store, the paper's recipe, CV."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.training.config import OptimConfig, RunConfig


@dataclass
class ModelSection:
    modalities: list[str] = field(default_factory=lambda: ["visual", "audio", "text"])
    overrides: dict[str, Any] = field(default_factory=dict)  # any ERIModelConfig field (sizes, temporal_se, ...)


@dataclass
class DataSection:
    store: str = ""  # the feature store written by eri_downstream/extract.py
    k: int = 32  # frames per video, one per segment
    temporal_augmentation: bool = True  # training: a random frame per segment (else the centre)
    max_audio_steps: int | None = None  # the public code's 800; None: all HuBERT steps
    batch_size: int = 16
    num_workers: int = 2
    mixup: float = 0.2  # Beta(alpha, alpha) mixup of features and labels; 0: off
    # every training and validation video's features in device memory, batches made there by
    # index: the same batches as the loader's, without file reads or copies (eri_downstream/device_cache.py)
    device_cache: bool = False
    end_to_end: bool = False  # visual input from the stored face crops through the frozen `encoder`
    encoder: str | None = None  # end to end: the encoder folder the visual cache would be made with
    image_augmentation: bool = True  # end to end: RandomRotation + RandomHorizontalFlip + ColorJitter
    # the store folder the text branch reads: "text" (the paper's DeBERTa token features) or
    # "sentence" (one mean-pooled embedding per transcript, any Hugging Face text encoder)
    text_features: str = "text"


@dataclass
class ERIConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, min_lr=1e-7, weight_decay=0.01,
                                                                   betas=(0.9, 0.999)))
    epochs: int = 50
    restart_epochs: int = 5  # CosineAnnealingWarmRestarts period
    patience: int = 10  # early stopping: epochs without a better validation mean Pearson
    ema_decay: float | None = 0.999
    folds: int = 0  # 0: train on train, select on val; N: N-fold CV over train + val, ensembled
    # with folds=N: train this fold only (a SLURM array task); a later run without it trains no
    # finished fold again and writes the CV table and the ensembled submission
    fold: int | None = None
    # "" (the task the store's table holds), or eri / emi (eri_downstream/configs/tasks.yaml):
    # then a store of another task is refused
    task: str = ""
    # the levers of later ABAW winners (eri_downstream/levers.py), off by default
    loss: str = "mse"  # mse (the paper) | mse+pearson | ccc
    modality_dropout: float = 0.0  # training: drop each modality of a sample with this probability
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/eri", total_steps=0, log_every=20))


# Settings that decide which samples each step reads: a resumed state must have been saved with
# the same values (shared.training.checkpoint refuses another one, naming the key). Paths are
# not compared (the same data may move); the world size and workers are checked by the state
# and the stream position themselves.
RESUME_KEYS = ("data.batch_size", "folds", "run.seed")  # not `fold`: each fold has its own folder
