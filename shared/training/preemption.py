"""Stopping cleanly before a time limit or a preemption, and asking to be requeued.

A stop is requested by SIGTERM or SIGUSR1 to a training process (SLURM's warning before the
time limit, a preemption, a user) or by a file `<run>/STOP` (what the SLURM scripts write
when their batch shell gets the warning, since a launcher does not forward every signal to its
workers). Every `check_every` steps the ranks agree on it (one all-reduce of a single number,
so no rank stops alone and every rank saves the same step); then the loop saves a complete
training state, the main process writes `<run>/REQUEUE` (the step), and the command exits with
EXIT_REQUEUE. The SLURM scripts requeue the job on that marker, and `--resume auto` continues.
"""
from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import torch

from ..atomic import write_text

EXIT_REQUEUE = 75  # EX_TEMPFAIL: try again later
STOP_FILE = "STOP"
REQUEUE_FILE = "REQUEUE"
log = logging.getLogger(__name__)


class StopRequest:
    def __init__(self, acc, run_dir: str | Path, check_every: int = 10,
                 signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR1)):
        self.acc, self.run_dir, self.check_every = acc, Path(run_dir), max(1, check_every)
        self.received: int | None = None
        self.stopped_at: int | None = None
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.received = signum  # only a flag: the loop acts at the next step boundary

    def __call__(self, step: int) -> bool:
        """Do all ranks agree to stop after `step`? (Every `check_every` steps; else False.)"""
        if step % self.check_every:
            return False
        local = self.received is not None or (self.run_dir / STOP_FILE).exists()
        votes = torch.tensor([float(local)], device=self.acc.device)
        if self.acc.num_processes > 1:
            votes = self.acc.reduce(votes, reduction="sum")
        if votes.item() > 0:
            self.stopped_at = step
            return True
        return False

    def acknowledge(self) -> None:
        """After the state is saved: clear the stop file, leave the requeue marker."""
        if self.acc.is_main_process and self.stopped_at is not None:
            (self.run_dir / STOP_FILE).unlink(missing_ok=True)
            write_text(self.run_dir / REQUEUE_FILE, f"{self.stopped_at}\n")
            why = signal.Signals(self.received).name if self.received else STOP_FILE
            log.warning("stop requested (%s): state saved at step %d; resume with --resume auto",
                        why, self.stopped_at)

    @staticmethod
    def clear_markers(run_dir: str | Path) -> None:
        """At start: a requeue marker or stop file of the previous job is spent."""
        for name in (REQUEUE_FILE, STOP_FILE):
            (Path(run_dir) / name).unlink(missing_ok=True)
