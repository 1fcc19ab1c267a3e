"""Stage 3 configuration: 3b's (modalities and sizes, the feature store, the paper's recipe, CV)
and 3a's (ExtractConfig: where the videos and the store are, the face, audio and text settings)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from shared.config_fields import one_of, ranged
from shared.errors import UserError
from shared.face_crop import FaceCrop
from shared.training.config import OptimConfig, RunConfig


@dataclass
class ModelSection:
    modalities: list[str] = one_of(["visual", "audio", "text"], "visual", "audio", "text")  # any non-empty subset
    overrides: dict[str, Any] = field(default_factory=dict)  # any ERIModelConfig field (sizes, temporal_se, ...)


@dataclass
class DataSection:
    store: str = ""  # the feature store written by eri_downstream/extract.py
    k: int = ranged(32, ge=1)  # frames per video, one per segment
    temporal_augmentation: bool = True  # training: a random frame per segment (else the centre)
    max_audio_steps: int | None = ranged(None, ge=1)  # the public code's 800; None: all HuBERT steps
    batch_size: int = ranged(16, ge=1)  # videos per step
    num_workers: int = ranged(2, ge=0)  # loader worker processes (0: in the main process)
    mixup: float = ranged(0.2, ge=0)  # Beta(alpha, alpha) mixup of features and labels; 0: off
    # every training and validation video's features in device memory, batches made there by
    # index: the same batches as the loader's, without file reads or copies (eri_downstream/device_cache.py)
    device_cache: bool = False
    end_to_end: bool = False  # visual input from the stored face crops through the frozen `encoder`
    encoder: str | None = None  # end to end: the encoder folder the visual cache would be made with
    image_augmentation: bool = True  # end to end: RandomRotation + RandomHorizontalFlip + ColorJitter
    # the store folder the text branch reads: "text" (the paper's DeBERTa token features) or
    # "sentence" (one mean-pooled embedding per transcript, any Hugging Face text encoder)
    text_features: str = one_of("text", "text", "sentence")


@dataclass
class ERIConfig:
    STAGE: ClassVar[str] = "eri_train"  # what a YAML file's `stage:` says (shared/config.py STAGES)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, min_lr=1e-7, weight_decay=0.01,
                                                                   betas=(0.9, 0.999)))
    epochs: int = ranged(50, ge=1)
    restart_epochs: int = ranged(5, ge=1)  # CosineAnnealingWarmRestarts period
    patience: int = ranged(10, ge=1)  # early stopping: epochs without a better validation mean Pearson
    ema_decay: float | None = ranged(0.999, ge=0, lt=1)
    folds: int = ranged(0, ge=0)  # 0: train on train, select on val; N: N-fold CV over train + val, ensembled
    # with folds=N: train this fold only (a SLURM array task); a later run without it trains no
    # finished fold again and writes the CV table and the ensembled submission
    fold: int | None = ranged(None, ge=0)
    # "" (the task the store's table holds), or eri / emi (eri_downstream/configs/tasks.yaml):
    # then a store of another task is refused
    task: str = one_of("", "", "eri", "emi")
    # the levers of later ABAW winners (eri_downstream/levers.py), off by default
    loss: str = one_of("mse", "mse", "mse+pearson", "ccc")  # mse (the paper) | mse+pearson | ccc
    # training: drop each modality of a sample with this probability (never all of them)
    modality_dropout: float = ranged(0.0, ge=0, lt=1)
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/eri", total_steps=0, log_every=20))

    def check(self) -> None:
        """Raise UserError for keys that are valid alone and not together (shared.config.load_config)."""
        modalities = self.model.modalities
        if not modalities or len(set(modalities)) != len(modalities):
            raise UserError(f"model.modalities={list(modalities)}: expected a non-empty subset of visual, audio, text "
                            "without repeats")
        if self.folds == 1:
            raise UserError("folds=1: cross-validation needs folds >= 2 (folds=0 trains on train and selects on val)")
        if self.fold is not None and not self.fold < self.folds:
            raise UserError(f"fold={self.fold} needs folds=N with 0 <= fold < N (folds={self.folds})")
        if self.modality_dropout and len(modalities) == 1:
            raise UserError(f"modality_dropout={self.modality_dropout} never drops a video's last modality, so with "
                            f"model.modalities={list(modalities)} it does nothing: set it to 0 or add a modality")
        if self.data.text_features != "text" and "text" not in modalities:
            raise UserError(f"data.text_features={self.data.text_features} is the text branch's input, and "
                            f"model.modalities={list(modalities)} has no text branch: add text or leave it at text")
        if self.optim.grad_accum != 1:  # one optimizer step per batch of videos, as the epoch hooks count them
            raise UserError(f"optim.grad_accum={self.optim.grad_accum}: stage 3b steps once per batch of videos; "
                            "raise data.batch_size instead (the paper's 16 videos fit any device)")


# Settings that decide which samples each step reads: a resumed state must have been saved with
# the same values (shared.training.checkpoint refuses another one, naming the key). Paths are
# not compared (the same data may move); the world size and workers are checked by the state
# and the stream position themselves.
RESUME_KEYS = ("data.batch_size", "folds", "run.seed")  # not `fold`: each fold has its own folder


@dataclass
class ExtractConfig:
    """Stage 3a (extract.py): one flat section; each key is also a flag (`--chunk-seconds 10`)."""

    STAGE: ClassVar[str] = "eri_extract"  # what a YAML file's `stage:` says (shared/config.py STAGES)
    # the raw dataset (ABAW5 data_info.csv or MuSe labels/partition); null: the built-in synthetic
    # reaction videos (with their transcripts and tiny audio / text models)
    data: str | None = None
    store: str | None = None  # the feature store folder (needed with data; null with the built-in videos: beside them)
    # the task (configs/tasks.yaml): null, the one the data's layout says; without data, which
    # built-in videos (null: eri); set, a dataset of another task is refused
    task: str | None = one_of(None, None, "eri", "emi")
    splits: list[str] = one_of(["train", "val", "test"], "train", "val", "test")  # the splits to process
    overwrite: bool = False  # redo finished videos too
    detector: str = one_of("mtcnn", "mtcnn", "haar")  # face detector: mtcnn | haar (eri_downstream/faces.py DETECTORS)
    fps: float = ranged(6.0, gt=0)  # face frames kept per second of video
    # face crops as face-shards makes them (shared/face_crop.py), so the frozen encoder sees faces
    # framed as in its stage-2 evaluation: keep both equal to the encoder's shards
    size: int = ranged(FaceCrop.size, ge=1)  # face crop side, pixels
    margin: float = ranged(FaceCrop.margin, ge=0)  # margin around the face box, a share of its side
    # visual: the stage-2 (or stage-1) export folder, e.g. runs/.../best/encoder (a timm folder)
    encoder: str | None = None
    batch_size: int = ranged(32, ge=1)  # frames per detector / encoder batch
    audio_model: str | None = None  # a hub id or folder; null: facebook/hubert-base-ls960 (built-in videos: theirs)
    chunk_seconds: float = ranged(30.0, gt=0)  # audio encoded in pieces this long
    asr: str = one_of("speech2text", "speech2text", "whisper")  # the speech recogniser of the transcripts step
    asr_model: str | None = None  # null: facebook/s2t-small-librispeech-asr or openai/whisper-small
    text_model: str | None = None  # a hub id or folder; null: microsoft/deberta-v3-large (built-in videos: theirs)
    # the sentence step (a lever): any Hugging Face text encoder, its tokens mean-pooled; null:
    # sentence-transformers/all-MiniLM-L6-v2 (built-in videos: their tiny text model)
    sentence_model: str | None = None
    max_length: int = ranged(512, ge=1)  # text tokens per transcript at most
