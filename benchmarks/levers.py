"""The MAE step's speed levers, as the benchmarks build them: one training step (forward in the
autocast dtype, backward, AdamW, zero_grad) of our MaskedAutoencoder with any set of levers.

    levers = Levers(compile_mode="default", fast_norm=True)
    step = build_step(build_mae("mae_vit_base_patch16").to(device), levers, device, batch_size=256)
    loss = step(images, noise)          # one training step; images (B, 3, S, S), noise (B, L)

A lever either computes the reference's function exactly (the decoder input by scatter, bf16
weights with float32 masters, a CUDA graph of the step) or is a switch a run may choose (timm's
fast LayerNorm under autocast, torch.compile, the batch size). `tests/test_benchmarks.py` checks
the exact ones on CPU: same losses, same weights.

- `decoder_scatter` (default on in the model): the decoder input written once, not cat + gather
  + cat + add (`MaskedAutoencoder._decoder_input_scatter`); off measures the reference's path.
- `fast_norm`: timm's LayerNorm in the autocast dtype (`model.fast_norm` in stage 1).
- `bf16_weights`: the Linear and Conv weights stored in bf16 (what autocast casts them to in every
  forward) with float32 master copies in the optimizer (`MasterWeights`); benchmark only.
- `compile_mode`: torch.compile of the model with that mode (`run.compile_mode` in stage 1).
- `cuda_graph`: the whole step (forward, backward, AdamW) captured once and replayed; CUDA only.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from shared.training.config import OptimConfig
from shared.training.optim import adamw

MASK_RATIO = 0.75


@dataclass(frozen=True)
class Levers:
    decoder_scatter: bool = True
    fast_norm: bool = False
    bf16_weights: bool = False
    compile_mode: str | None = None  # None: eager; "default", "reduce-overhead", "max-autotune", ...
    compile_backend: str = "inductor"  # the CPU smoke runs use aot_eager (no code generation)
    cuda_graph: bool = False

    def describe(self) -> str:
        parts = ["scatter decoder" if self.decoder_scatter else "reference decoder (cat + gather)"]
        parts += [name for name, on in (("fast LayerNorm", self.fast_norm), ("bf16 weights + fp32 masters",
                                                                              self.bf16_weights),
                                        ("CUDA graph of the whole step", self.cuda_graph)) if on]
        if self.compile_mode is not None:
            parts.append(f"torch.compile mode={self.compile_mode}" + (f" backend={self.compile_backend}"
                                                                       if self.compile_backend != "inductor" else ""))
        return ", ".join(parts)


# ----------------------------------------------------------------------------- bf16 weights


def matmul_modules(model: nn.Module) -> list[nn.Module]:
    """The modules autocast runs in the low-precision dtype, weights and biases cast every call."""
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


class MasterWeights:
    """AdamW on float32 masters of weights the model keeps in bf16.

    Under autocast every Linear and Conv casts its float32 weight and bias to bf16 in every
    forward (one copy kernel each) and its bf16 gradient back to float32 in the backward (one
    more). Here those parameters are bf16 to begin with (autocast's cast is then a no-op), their
    float32 masters carry the optimizer's arithmetic, and two multi-tensor copies per step move
    the gradients up and the updated weights down. The values are exactly autocast's: the weights
    are the masters rounded to bf16 (autocast's cast), the masters' gradients the bf16 gradients
    widened (autocast's backward cast), the update the same fused AdamW on float32. Norms,
    tokens and position tables stay float32, as autocast leaves them.

    Wraps an optimizer built on the float32 model (`make_optimizer(model)`), so its groups
    (weight decay) are the plain run's. `step`, `zero_grad`, `param_groups` and `state` as an
    optimizer has them.
    """

    def __init__(self, model: nn.Module, make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
                 dtype: torch.dtype = torch.bfloat16):
        self.optimizer = make_optimizer(model)
        modules = matmul_modules(model)
        self.low = [p for m in modules for p in m.parameters(recurse=False) if p.requires_grad]
        self.masters = [p.detach().float().clone() for p in self.low]
        for master in self.masters:
            master.grad = torch.zeros_like(master)
        swap = {id(p): m for p, m in zip(self.low, self.masters)}
        for group in self.optimizer.param_groups:
            group["params"] = [swap.get(id(p), p) for p in group["params"]]
        for m in modules:
            m.to(dtype)
        masters = {id(m) for m in self.masters}
        self.others = [p for g in self.optimizer.param_groups for p in g["params"] if id(p) not in masters]

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    @torch.no_grad()
    def step(self) -> None:
        torch._foreach_copy_([m.grad for m in self.masters], [p.grad for p in self.low])
        self.optimizer.step()
        torch._foreach_copy_(self.low, self.masters)  # round to nearest, as autocast's cast

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in (*self.low, *self.others):  # the masters' gradients are overwritten by every step
            p.grad = None


# ----------------------------------------------------------------------------- the step


def make_optimizer(model: nn.Module, device: torch.device, batch_size: int, capturable: bool = False):
    """Stage 1's AdamW (timm's weight-decay groups, fused on CUDA) at the recipe's lr for the batch."""
    optimizer = adamw(model, OptimConfig(), device)
    for group in optimizer.param_groups:
        group["lr"] = OptimConfig().base_lr * batch_size / 256  # the MAE recipe's linear scaling
        group["capturable"] = capturable  # a CUDA graph replays the step: its count lives on the device
    return optimizer


def autocast_for(device: torch.device, dtype: str, cache: bool = True):
    """The forward's precision context: bf16 autocast, or nothing for fp32."""
    if dtype == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext


class Step:
    """One training step of `model` with `levers`: `step(images, noise) -> loss` (not synced)."""

    def __init__(self, model: nn.Module, levers: Levers, device: torch.device, batch_size: int, dtype: str):
        self.model, self.levers, self.device = model, levers, device
        if hasattr(model, "set_fast_norm"):  # ours; transformers' ViTMAE takes no levers
            model.decoder_scatter = levers.decoder_scatter
            model.set_fast_norm(levers.fast_norm)
        capturable = levers.cuda_graph
        if levers.bf16_weights and dtype != "bf16":
            raise ValueError("bf16 weights stand in for bf16 autocast's casts: they need dtype bf16")
        if levers.bf16_weights:
            self.optimizer = MasterWeights(model, lambda m: make_optimizer(m, device, batch_size, capturable))
        else:
            self.optimizer = make_optimizer(model, device, batch_size, capturable)
        self.forward = model
        if levers.compile_mode is not None:
            mode = None if levers.compile_mode == "default" else levers.compile_mode
            self.forward = torch.compile(model, mode=mode, backend=levers.compile_backend)
        # a graph captures the casts of the step it records: autocast's weight cache must be off
        self.autocast = autocast_for(device, dtype, cache=not levers.cuda_graph)
        self.graph = None

    def loss(self, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.forward(images, mask_ratio=MASK_RATIO, noise=noise)[0]

    def eager(self, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        loss = self.loss(images, noise)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def __call__(self, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if not self.levers.cuda_graph:
            return self.eager(images, noise)
        if self.graph is None:
            self.graph = GraphedStep(self, images, noise)
        return self.graph(images, noise)


class GraphedStep:
    """The whole step recorded once in a CUDA graph and replayed with new inputs copied into its
    static ones (PyTorch's "whole network capture": warm-up on a side stream, gradients None at
    capture so the backward writes rather than accumulates, a capturable optimizer). Fixed
    shapes; no host sync inside the step. CUDA only."""

    def __init__(self, step: Step, images: torch.Tensor, noise: torch.Tensor, warmup: int = 3):
        if step.device.type != "cuda":
            raise RuntimeError("a CUDA graph of the step needs a CUDA device")
        self.images, self.noise = images.clone(), noise.clone()
        side = torch.cuda.Stream(step.device)
        side.wait_stream(torch.cuda.current_stream(step.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                step.eager(self.images, self.noise)
        torch.cuda.current_stream(step.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        step.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.loss = step.loss(self.images, self.noise)
            self.loss.backward()
            step.optimizer.step()

    def __call__(self, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if images.data_ptr() != self.images.data_ptr():
            self.images.copy_(images, non_blocking=True)
        self.noise.copy_(noise, non_blocking=True)
        self.graph.replay()
        return self.loss


def build_step(model: nn.Module, levers: Levers, device: torch.device, batch_size: int, dtype: str = "bf16") -> Step:
    """`model` (already on `device`, train mode) trained with `levers`; see the module docstring."""
    return Step(model.train(), levers, device, batch_size, dtype)
