"""AdamW as the MAE recipes use it: no weight decay on biases and 1-D parameters (timm's rule)."""
from __future__ import annotations

import torch
from timm.optim import param_groups_weight_decay

from .config import OptimConfig


def adamw(model: torch.nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """The lr is set every step by the schedule; fused kernels on CUDA unless turned off."""
    groups = param_groups_weight_decay(model, cfg.weight_decay)
    fused = cfg.fused if cfg.fused is not None else device.type == "cuda"
    return torch.optim.AdamW(groups, lr=0.0, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused)
