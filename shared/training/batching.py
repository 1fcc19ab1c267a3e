"""The global batch of a run, split over however many processes it runs on."""
from __future__ import annotations

from ..errors import UserError


def split_global_batch(global_batch: int | None, processes: int, micro_batch: int,
                       grad_accum: int = 1) -> tuple[int, int, int]:
    """(micro-batch per process, micro-batches per step, global batch).

    Without a global batch: the configured micro-batch and accumulation, whose product with the
    processes is the global batch. With one: the fewest micro-batches per step (at least
    `grad_accum`) whose size fits in `micro_batch`, so the same global batch, and with an exact
    stream the same samples per step, on any number of processes that divides it. Raises a
    UserError (naming `data.global_batch`) when the processes do not divide it."""
    if not global_batch:
        return micro_batch, grad_accum, micro_batch * processes * grad_accum
    if global_batch < 1 or global_batch % processes:
        raise UserError(f"data.global_batch={global_batch} cannot be split evenly over {processes} processes; "
                        f"choose a multiple of {processes} or run on a number of processes that divides it")
    per_process = global_batch // processes
    accum = next(a for a in range(max(1, grad_accum), per_process + 1)
                 if per_process % a == 0 and per_process // a <= micro_batch) if per_process >= grad_accum else None
    if accum is None:
        raise UserError(f"data.global_batch={global_batch} gives {per_process} samples per process, fewer than "
                        f"optim.grad_accum={grad_accum} micro-batches")
    return per_process // accum, accum, global_batch
