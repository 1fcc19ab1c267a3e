"""Config sections every stage shares; a stage's config composes them with its own."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class OptimConfig:
    base_lr: float = 1.5e-4  # learning rate per 256 samples of effective batch
    lr: float | None = None  # absolute learning rate; when set, base_lr is not used
    min_lr: float = 0.0  # end of the half-cosine
    warmup_steps: int = 0  # linear warmup from 0, per optimizer step
    weight_decay: float = 0.05  # biases and 1-D parameters are exempt
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float | None = None  # max global grad norm; None: no clipping (norm still logged)
    grad_accum: int = 1  # micro-batches per optimizer step
    fused: bool | None = None  # fused AdamW; None: on when training on CUDA


@dataclass
class RunConfig:
    output_dir: str = "runs/run"
    seed: int = 0  # together with the config, determines the run
    total_steps: int = 1000  # optimizer steps
    log_every: int = 20
    save_every: int = 1000  # full training state every N steps (and at the end)
    keep_last: int = 3  # training states kept on disk
    stop_check_every: int = 10  # steps between the ranks' agreement on a stop request (SIGTERM/SIGUSR1/STOP file)
    max_nonfinite_steps: int = 5  # NaN/inf loss or gradient: step skipped; this many in a row stop the run (0: no check)
    resume: str | None = None  # "auto" (newest complete state in output_dir/checkpoints), a state folder, or None
    mixed_precision: str = "auto"  # auto: bf16 on GPU, fp32 on CPU; or no | bf16 | fp16
    compile: bool = False  # torch.compile the model (around its DDP wrapper)
    compile_mode: str | None = None  # null (torch's default) | default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs
    compile_backend: str = "inductor"  # any torch.compile backend (the CPU tests use aot_eager: no code generation)
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])  # tensorboard, wandb, ...
    project: str = "affect-lineage"  # tracker project name
