"""The training loop of every stage: micro-batches, accumulation, clipping, logging, states.

A stage hands it a `loss_fn(model, batch, step) -> (loss, logs)` and its data (an iterable of
batches per epoch with `state_dict()`), and gets back the last step. Everything else is here,
once: the per-step learning rate, mixed precision, gradient accumulation without needless
all-reduces, the gradient norm, device-side running means (no host sync except at log steps),
throughput and data-wait logging, a tqdm bar, periodic hooks (figures, evaluation) and full
training states every `save_every` steps and at the end.
"""
from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from tqdm import tqdm

from .checkpoint import Checkpointer
from .meter import Throughput
from .schedule import set_lr


@dataclass
class Hook:
    every: int
    fn: Callable[[int], None]  # called with the step just finished


@torch.no_grad()
def param_checksum(model) -> float:
    """A float64 fingerprint of the parameters. Saved per rank with every state: ranks of a
    data-parallel run must agree on it exactly, or they have diverged."""
    total = torch.zeros((), dtype=torch.float64, device=next(model.parameters()).device)
    for i, p in enumerate(model.parameters(), 1):
        total += (p.detach().double() * (1 + i / 1000)).sum()  # weighted: swapped tensors differ
    return total.item()


def forever(data: Iterable) -> Iterator:
    """Batches across epoch ends; each pass over `data` is one epoch of the stream. (An epoch
    resumed at its very end is empty; two empty ones in a row mean the data is.)"""
    empty = 0
    while True:
        n = 0
        for n, batch in enumerate(data, 1):
            yield batch
        empty = 0 if n else empty + 1
        if empty > 1:
            raise RuntimeError("the data source yielded no batch in a whole epoch")


def train(acc, model, optimizer, data, loss_fn: Callable[[Any, dict, int], tuple[torch.Tensor, dict]], *,
          total_steps: int, lr_at: Callable[[int], float], checkpointer: Checkpointer, config: dict,
          samples_per_step: int, start_step: int = 0, stop_after: int | None = None, grad_accum: int = 1,
          grad_clip: float | None = None, log_every: int = 20, save_every: int = 1000,
          hooks: Iterable[Hook] = (), metrics_file: str | Path | None = None,
          stop: Callable[[int], bool] | None = None) -> int:
    """Train from `start_step` to `total_steps` (or `stop_after` steps of this invocation, the
    state saved, for time-limited jobs). `loss_fn` gets the global micro-batch index
    (step * grad_accum + micro), which is what per-micro-batch randomness should be seeded by.
    `stop(step)` returning True (see preemption.StopRequest) saves the state and ends early."""
    model.train()
    end = total_steps if stop_after is None else min(total_steps, start_step + stop_after)
    batches = forever(data)
    meter = Throughput()
    running: dict[str, torch.Tensor] = {}
    logged_steps = 0
    bar = tqdm(total=total_steps, initial=start_step, disable=not acc.is_main_process,
               unit="step", dynamic_ncols=True)
    step = start_step
    while step < end:
        lr = lr_at(step)
        set_lr(optimizer, lr)
        for micro in range(grad_accum):
            with meter.waiting():
                batch = next(batches)
            # only the last micro-batch all-reduces gradients
            sync = contextlib.nullcontext() if micro == grad_accum - 1 else acc.no_sync(model)
            with sync, acc.autocast():
                loss, logs = loss_fn(model, batch, step * grad_accum + micro)
            acc.backward(loss / grad_accum)
            for key, value in {"loss": loss, **logs}.items():
                running[key] = running.get(key, 0) + value.detach().float() / grad_accum
        grad_norm = acc.clip_grad_norm_(model.parameters(), grad_clip if grad_clip else math.inf)
        running["grad_norm"] = running.get("grad_norm", 0) + grad_norm.detach().float()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        logged_steps += 1
        meter.add(samples_per_step)
        bar.update(1)

        if step % log_every == 0 or step == end:
            means = {k: acc.reduce(v / logged_steps, reduction="mean").item() for k, v in running.items()}
            means.update(meter.read(), lr=lr)
            acc.log(means, step=step)
            if metrics_file is not None and acc.is_main_process:
                with open(metrics_file, "a") as f:
                    f.write(json.dumps({"step": step, **means}) + "\n")
            bar.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{lr:.2e}", img_s=f"{means['images_per_s']:.0f}")
            running, logged_steps = {}, 0
        for hook in hooks:
            if step % hook.every == 0:
                hook.fn(step)
        stopping = stop is not None and stop(step)
        if step % save_every == 0 or step == end or stopping:
            checkpointer.save(step, {"stream": data.state_dict(), "param_checksum": param_checksum(model)}, config)
        if stopping:
            break
    bar.close()
    return step
