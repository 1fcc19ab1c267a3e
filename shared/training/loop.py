"""The training loop of every stage: micro-batches, accumulation, clipping, logging, states.

A stage hands it a `loss_fn(model, batch, step) -> (loss, logs)` and its data (an iterable of
batches per epoch with `state_dict()`), and gets back the last step. Everything else is here,
once: the per-step learning rate, mixed precision, gradient accumulation without needless
all-reduces, the gradient norm, device-side running means (no host sync except at log steps and
the one-number finiteness check of each step, see NonFiniteGuard),
throughput and data-wait logging, a tqdm bar, periodic hooks (figures, evaluation) and full
training states every `save_every` steps and at the end.

Faults: a step whose loss or gradient is NaN or infinite is skipped (no update of the parameters
or of the optimizer state) with a warning, and `max_nonfinite_steps` of them in a row stop the
run with a RunError, leaving the states on disk as they were. Samples the data could not read
(corrupt JPEGs, truncated or empty shards: `data.errors`) are counted in every logged line.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from tqdm import tqdm

from ..errors import RunError
from .checkpoint import Checkpointer
from .meter import Throughput
from .schedule import set_lr

log = logging.getLogger(__name__)
TIMING = "timing.jsonl"  # beside the metrics file: throughput and memory per log step (a log, not an artifact)


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
            raise RunError("the data yielded no batch in a whole epoch: every sample of it is unreadable "
                           "or the data is empty; check the shard folders and the stream's error messages")


class NonFiniteGuard:
    """Decides, after the backward pass, whether a step may update the model: not when its loss
    or its gradient norm is NaN or infinite. `limit` such steps in a row stop the run (0: no
    check at all, and no host sync for it)."""

    def __init__(self, acc, limit: int, checkpointer: Checkpointer):
        self.acc, self.limit, self.checkpointer = acc, limit, checkpointer
        self.in_a_row = 0
        self.skipped = 0  # since the last log line

    def allows(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        if not self.limit:
            return True
        bad = ~torch.isfinite(loss)
        if self.acc.scaler is None:  # with fp16 the grad scaler skips overflowing gradients itself
            bad |= ~torch.isfinite(grad_norm)
        bad = bad.float().reshape(1)
        if self.acc.num_processes > 1:  # ranks see different losses; they must skip together
            bad = self.acc.reduce(bad, reduction="sum")
        # One host sync per step: whether to call optimizer.step() must be known on the host.
        # It waits for the backward pass to finish, a small stall next to a step's compute;
        # run.max_nonfinite_steps=0 turns the check, and the sync, off.
        if not bad.item():
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        self.skipped += 1
        if self.acc.scaler is not None:
            self.acc.scaler.update()  # the scaler unscaled these gradients; let it reset (and back off)
        log.warning("step %d: loss %s, gradient norm %s: not finite, step skipped (no update; %d in a row, "
                    "the run stops at %d)", step, f"{loss.item():.4g}", f"{grad_norm.item():.4g}",
                    self.in_a_row, self.limit)
        if self.in_a_row >= self.limit:
            newest = self.checkpointer.latest()
            kept = f"the newest saved state, {newest}, is intact" if newest else "no state had been saved yet"
            raise RunError(f"the loss or gradient was NaN or infinite for {self.in_a_row} steps in a row "
                           f"(steps {step - self.in_a_row + 1}-{step}, run.max_nonfinite_steps={self.limit}); "
                           f"none of them updated the model and {kept}; lower the learning rate or check "
                           "the data, then --resume auto")
        return False


def train(acc, model, optimizer, data, loss_fn: Callable[[Any, dict, int], tuple[torch.Tensor, dict]], *,
          total_steps: int, lr_at: Callable[[int], float], checkpointer: Checkpointer, config: dict,
          samples_per_step: int, start_step: int = 0, stop_after: int | None = None, grad_accum: int = 1,
          grad_clip: float | None = None, log_every: int = 20, save_every: int = 1000,
          hooks: Iterable[Hook] = (), metrics_file: str | Path | None = None,
          stop: Callable[[int], bool] | None = None, max_nonfinite_steps: int = 5) -> int:
    """Train from `start_step` to `total_steps` (or `stop_after` steps of this invocation, the
    state saved, for time-limited jobs). `loss_fn` gets the global micro-batch index
    (step * grad_accum + micro), which is what per-micro-batch randomness should be seeded by.
    `stop(step)` returning True (see preemption.StopRequest) saves the state and ends early.
    Non-finite steps are skipped; `max_nonfinite_steps` in a row raise a RunError (see
    NonFiniteGuard); a skipped step still consumes its batches and advances the schedule.

    `metrics_file` (JSON lines) gets, per log step, what the run computed (loss, lr, grad_norm,
    non-finite and unreadable counts): the same bytes for the same run. What the clock and the
    device measure (images_per_s, data_wait_fraction, peak_memory_gib) goes to TIMING beside
    it, the run's timing log; trackers get both."""
    model.train()
    end = total_steps if stop_after is None else min(total_steps, start_step + stop_after)
    batches = forever(data)
    meter = Throughput()
    guard = NonFiniteGuard(acc, max_nonfinite_steps, checkpointer)
    running: dict[str, torch.Tensor] = {}
    logged_steps = 0
    bar = tqdm(total=total_steps, initial=start_step, disable=not acc.is_main_process,
               unit="step", dynamic_ncols=True)
    step = start_step
    try:  # the bar is closed before any error is reported, so the error stays the last line
        while step < end:
            lr = lr_at(step)
            set_lr(optimizer, lr)
            values: dict[str, torch.Tensor] = {}
            for micro in range(grad_accum):
                with meter.waiting():
                    batch = next(batches)
                # only the last micro-batch all-reduces gradients
                sync = contextlib.nullcontext() if micro == grad_accum - 1 else acc.no_sync(model)
                with sync, acc.autocast():
                    loss, logs = loss_fn(model, batch, step * grad_accum + micro)
                acc.backward(loss / grad_accum)
                for key, value in {"loss": loss, **logs}.items():
                    values[key] = values.get(key, 0) + value.detach().float() / grad_accum
            grad_norm = acc.clip_grad_norm_(model.parameters(), grad_clip if grad_clip else math.inf)
            values["grad_norm"] = grad_norm.detach().float()
            if guard.allows(step + 1, values["loss"], values["grad_norm"]):
                optimizer.step()
                for key, value in values.items():  # skipped steps stay out of the logged means
                    running[key] = running.get(key, 0) + value
                logged_steps += 1
            optimizer.zero_grad(set_to_none=True)
            step += 1
            meter.add(samples_per_step)
            bar.update(1)

            if step % log_every == 0 or step == end:
                means = {k: acc.reduce(v / logged_steps, reduction="mean").item() for k, v in running.items()}
                means.update(lr=lr, **health(acc, guard, data))
                timing = {**meter.read(), **peak_memory(acc)}
                acc.log({**means, **timing}, step=step)
                if metrics_file is not None and acc.is_main_process:
                    for path, row in ((Path(metrics_file), means), (Path(metrics_file).with_name(TIMING), timing)):
                        with open(path, "a") as f:
                            f.write(json.dumps({"step": step, **row}) + "\n")
                bar.set_postfix(loss=f"{means.get('loss', math.nan):.4f}", lr=f"{lr:.2e}",
                                img_s=f"{timing['images_per_s']:.0f}")
                running, logged_steps = {}, 0
            for hook in hooks:
                if step % hook.every == 0:
                    hook.fn(step)
            stopping = stop is not None and stop(step)
            # no periodic state while steps are being skipped: the newest one stays the last good one
            periodic = step % save_every == 0 and not guard.in_a_row
            if periodic or step == end or stopping:
                checkpointer.save(step, {"stream": data.state_dict(), "param_checksum": param_checksum(model)}, config)
            if stopping:
                break
    finally:
        bar.close()
    if getattr(data, "errors", 0):
        log.warning("skipped %d unreadable samples in this run's data so far; first: %s", data.errors,
                    "; ".join(getattr(data, "error_messages", [])[:3]))
    return step


def health(acc, guard: NonFiniteGuard, data) -> dict[str, float]:
    """Per log line: steps skipped as non-finite since the last one and, for data that counts
    them, the unreadable samples skipped so far (summed over ranks)."""
    out = {"nonfinite_steps": float(guard.skipped)}
    guard.skipped = 0
    if hasattr(data, "errors"):
        errors = torch.tensor([float(data.errors)], device=acc.device)
        out["skipped_samples"] = (acc.reduce(errors, reduction="sum") if acc.num_processes > 1 else errors).item()
    return out


def peak_memory(acc) -> dict[str, float]:
    """{"peak_memory_gib": this process's high-water mark since the run started} on CUDA, else {}."""
    if acc.device.type == "cuda":
        return {"peak_memory_gib": torch.cuda.max_memory_allocated(acc.device) / 2**30}
    return {}


def read_metrics(path: str | Path) -> list[dict]:
    """The rows `train` wrote to its metrics file, one per logged step in step order; a resumed
    run appends the steps it repeats, and the last row of each step counts."""
    rows = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["step"]] = row
    return [rows[step] for step in sorted(rows)]

