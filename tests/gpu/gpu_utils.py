"""What the GPU tests share: the device they run on, the stage commands, and the figures they
record for `launch/gpu_check.sh`'s report.

The tests need CUDA and are skipped without it (CI is CPU-only). `AFFECT_GPU_TESTS_DEVICE=cpu`
runs them on the CPU instead, as a dry run of their plumbing on a machine without a GPU: the same
commands and assertions, with torch.compile's aot_eager backend instead of inductor and the FSDP
case skipped (Accelerate runs FSDP on accelerators only).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
DRY_RUN = os.environ.get("AFFECT_GPU_TESTS_DEVICE") == "cpu"
ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU and not DRY_RUN else "cpu"
REPORT = os.environ.get("AFFECT_GPU_REPORT")  # a JSON-lines file the figures are appended to

requires_gpu = pytest.mark.skipif(not (ON_GPU or DRY_RUN),
                                  reason="needs a CUDA GPU (AFFECT_GPU_TESTS_DEVICE=cpu: a dry run on the CPU)")
COMPILE_BACKEND = "inductor" if DEVICE == "cuda" else "aot_eager"


def launch(script: str, *args: str, config_file: str | None = None, timeout: int = 900,
           env: dict | None = None) -> subprocess.CompletedProcess:
    """`accelerate launch [--config_file F] script args` with one process, as a user starts a
    stage on one GPU; raises with the output's tail when it fails."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--num_processes", "1"]
    cmd += ["--config_file", str(ROOT / config_file)] if config_file else ["--mixed_precision", "no",
                                                                           "--dynamo_backend", "no"]
    cmd += [str(ROOT / script), *args]
    if DEVICE == "cpu":
        cmd[cmd.index("--num_processes"):cmd.index("--num_processes")] = ["--cpu"]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc


def metrics(run_dir: Path) -> list[dict]:
    """Per logged step, what the run computed (metrics.jsonl) and what the clock and device
    measured (timing.jsonl: images_per_s, peak_memory_gib) in one row."""
    from shared.training.loop import TIMING, read_metrics
    timing = {row["step"]: row for row in read_metrics(run_dir / TIMING)}
    return [{**timing.get(row["step"], {}), **row} for row in read_metrics(run_dir / "metrics.jsonl")]


def record(test: str, **figures) -> None:
    """Figures of one test for the report (loss, images/s, peak memory, ...)."""
    print(f"{test}: {figures}")
    if REPORT:
        with open(REPORT, "a") as f:
            f.write(json.dumps({"test": test, "figures": figures}) + "\n")
