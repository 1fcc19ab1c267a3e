"""Config sections every stage shares; a stage's config composes them with its own."""
from __future__ import annotations

from dataclasses import dataclass, field

from shared.config_fields import one_of, ranged


@dataclass
class OptimConfig:
    base_lr: float = ranged(1.5e-4, ge=0)  # learning rate per 256 samples of effective batch
    lr: float | None = ranged(None, ge=0)  # absolute learning rate; when set, base_lr is not used
    min_lr: float = ranged(0.0, ge=0)  # end of the half-cosine
    warmup_steps: int = ranged(0, ge=0)  # linear warmup from 0, per optimizer step
    weight_decay: float = ranged(0.05, ge=0)  # biases and 1-D parameters are exempt
    betas: tuple[float, float] = ranged((0.9, 0.95), ge=0, lt=1)  # AdamW's moment decays
    eps: float = ranged(1e-8, gt=0)  # AdamW's denominator term
    grad_clip: float | None = ranged(None, gt=0)  # max global grad norm; None: no clipping (norm still logged)
    grad_accum: int = ranged(1, ge=1)  # micro-batches per optimizer step
    fused: bool | None = None  # fused AdamW; None: on when training on CUDA


@dataclass
class RunConfig:
    output_dir: str = "runs/run"  # the run's folder: config.yaml, metrics, checkpoints
    seed: int = ranged(0, ge=0)  # together with the config, determines the run
    total_steps: int = ranged(1000, ge=0)  # optimizer steps
    log_every: int = ranged(20, ge=1)  # optimizer steps between metric lines
    save_every: int = ranged(1000, ge=1)  # full training state every N steps (and at the end)
    keep_last: int = ranged(3, ge=1)  # training states kept on disk
    # steps between the ranks' agreement on a stop request (SIGTERM/SIGUSR1/STOP file)
    stop_check_every: int = ranged(10, ge=1)
    # NaN/inf loss or gradient: step skipped; this many in a row stop the run (0: no check)
    max_nonfinite_steps: int = ranged(5, ge=0)
    resume: str | None = None  # "auto" (newest complete state in output_dir/checkpoints), a state folder, or None
    # auto: bf16 on GPU, fp32 on CPU; no: fp32 everywhere
    mixed_precision: str = one_of("auto", "auto", "no", "bf16", "fp16")
    compile: bool = False  # torch.compile the model (around its DDP wrapper)
    # torch.compile's mode; null: torch's default
    compile_mode: str | None = one_of(None, None, "default", "reduce-overhead", "max-autotune",
                                      "max-autotune-no-cudagraphs")
    compile_backend: str = "inductor"  # any torch.compile backend (the CPU tests use aot_eager: no code generation)
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])  # tensorboard, wandb, ...
    project: str = "affect-lineage"  # tracker project name
