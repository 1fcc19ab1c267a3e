"""Helpers of the fault-injection tests (test_faults_*.py): small streams and accelerators,
damaged shards, and a stage run in this process."""
from __future__ import annotations

import contextlib
import io
import signal
import tarfile
from pathlib import Path

import torch
from accelerate import Accelerator

from shared.stream import Augment, StreamConfig

PRETRAIN = "pretrain_mae/main.py"


def stream_config(**kw) -> StreamConfig:
    base = dict(mode="resampled", batch_size=4, batches_per_epoch=8, num_workers=0, shuffle_buffer=4,
                block_size=1000, augment=Augment(kind="resize", size=16), seed=1)
    return StreamConfig(**{**base, **kw})


def garble_first_jpeg(shard: Path) -> str:
    """Rewrite a shard with its first JPEG replaced by garbage; returns that sample's key."""
    buf, bad = io.BytesIO(), None
    with tarfile.open(shard) as src, tarfile.open(fileobj=buf, mode="w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name.endswith(".jpg") and bad is None:
                data, bad = b"\xff\xd8 not a jpeg", member.name.split(".")[0]
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    shard.write_bytes(buf.getvalue())
    return bad


class NoData:
    """Stands in for a data stream: endless empty batches, an empty position."""

    def __iter__(self):
        while True:
            yield {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def accelerator(model, lr: float = 0.1):
    """A one-process CPU Accelerator with `model` and plain SGD prepared (no state across steps:
    an update is visible in the parameters alone)."""
    acc = Accelerator(cpu=True, mixed_precision="no")
    model, optimizer = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=lr))
    return acc, model, optimizer


def last_line(stderr: str) -> str:
    return [line for line in stderr.splitlines() if line.strip()][-1]


@contextlib.contextmanager
def own_signal_handlers():
    """A stage run in this process installs its preemption handlers (SIGTERM, SIGUSR1); put
    the test process's own back afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def tiny_pretrain(out: Path, steps: int) -> list[str]:
    return ["model.name=mae_vit_test", "data.synthetic=true", "data.batch_size=2", "optim.lr=1e-3",
            "optim.warmup_steps=0",
            f"run.total_steps={steps}", "run.save_every=2", "run.log_every=1", "run.mixed_precision=no",
            "run.trackers=[]", "figures.every=0", f"run.output_dir={out}"]

