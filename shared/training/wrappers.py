"""The model a stage trains, inside the wrappers training puts around it, and out again.

Training wraps a model in up to two layers: Accelerate's data-parallel container (DDP, or FSDP
with each timm `Block` a shard unit) and, with `run.compile`, torch.compile's `OptimizedModule`.
Each renames or hides the parameters (`module.`, `_orig_mod.`, flat shards), so everything that
looks at the weights (EMA updates, figures, exports, the best-model copy) goes through here:

    model, optimizer = prepare(acc, model, optimizer, cfg.run)   # what the loop trains
    net = unwrap(acc, model)                  # the model itself, live, with its own names
    plain = gathered(acc, model, build)       # the full weights in a plain model, on the main process

`unwrap` never hands a compiled wrapper to `accelerate.unwrap_model`, which re-points the wrapper
at the bare model as a side effect. Under FSDP the live parameters are shards: `gathered` collects
them with torch's FULL_STATE_DICT (what `Accelerator.get_state_dict` does) into `build()`.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..errors import UserError
from .config import RunConfig

COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def prepare(acc, model: nn.Module, optimizer, run: RunConfig):
    """`acc.prepare` the pair, then torch.compile the prepared model when `run.compile` (around
    DDP, as Accelerate's own dynamo option does, so DDP's bucketing still overlaps the backward).
    Returns (model to train, optimizer)."""
    model, optimizer = acc.prepare(model, optimizer)
    if run.compile:
        model = torch.compile(model, mode=run.compile_mode, backend=run.compile_backend)
    return model, optimizer


def check_compile(run: RunConfig) -> None:
    """One line for a compile setting torch would only reject after the first step."""
    if run.compile_mode not in COMPILE_MODES:
        raise UserError(f"run.compile_mode={run.compile_mode!r}; expected one of "
                        f"{', '.join(str(m) for m in COMPILE_MODES if m)} or null (torch's default)")
    if run.compile and run.compile_backend not in torch._dynamo.list_backends(exclude_tags=()):
        raise UserError(f"run.compile_backend={run.compile_backend!r} is not a torch.compile backend here; "
                        f"available: {', '.join(torch._dynamo.list_backends())}")


def unwrap(acc, model: nn.Module) -> nn.Module:
    """The model itself (its own parameter names), inside any compile / DDP container. Under
    FSDP its parameters are this process's shards: use `gathered` for the weights."""
    return acc.unwrap_model(getattr(model, "_orig_mod", model))


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    return any(isinstance(m, FSDP) for m in getattr(model, "_orig_mod", model).modules())


def gathered(acc, model: nn.Module, build: Callable[[], nn.Module]) -> nn.Module | None:
    """The trained model with all its weights, as a plain module, on the main process (None on
    the others). Without FSDP that is the live model (`unwrap`); with FSDP the shards are gathered
    to the main process's CPU and loaded into a fresh `build()`, so every process must call this."""
    if not is_sharded(model):
        return unwrap(acc, model) if acc.is_main_process else None
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    fsdp = getattr(model, "_orig_mod", model)
    # gathered into host memory, not the GPU's; on a CPU run there is nothing to move (and torch
    # 2.4's FSDP crashes moving CPU shards "to the CPU")
    config = FullStateDictConfig(offload_to_cpu=fsdp.compute_device.type != "cpu", rank0_only=True)
    with FSDP.state_dict_type(fsdp, StateDictType.FULL_STATE_DICT, config):
        state = fsdp.state_dict()  # collective: every process takes part
    if not acc.is_main_process:
        return None
    plain = build()
    plain.load_state_dict(state, strict=True)
    return plain.eval()


def refuse_sharding(acc, what: str) -> None:
    """One line for a feature that needs the whole model on every process (e.g. an EMA copy)."""
    from accelerate.utils import DistributedType
    if acc.distributed_type == DistributedType.FSDP:
        raise UserError(f"{what} needs the whole model on every process, which FSDP shards; "
                        "launch this without the FSDP config (DDP: launch/accelerate/one_node_8gpu.yaml)")
