"""Running a stage's entry point as a user would, in a subprocess, and reading what it wrote."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stage_command(script: str, args, processes: int = 1) -> tuple[list[str], dict]:
    """`python <script> args`, or torchrun with N processes (CPU, gloo); and its environment."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if processes == 1:
        return [sys.executable, str(ROOT / script), *args], env
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(ROOT / script), *args], env


def run_stage(script: str, *args: str, processes: int = 1, timeout: int = 600, check: bool = True):
    """Run a stage to its end; returns the CompletedProcess (raises with its output on failure)."""
    cmd, env = stage_command(script, args, processes)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def metrics(run_dir: Path) -> dict[int, dict]:
    """step -> the logged means of metrics.jsonl (a resumed run appends to it)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row for row in rows}


def start_stage(script: str, *args: str, processes: int = 1):
    """Start a stage in the background; returns the Popen, its output going to `proc.log`."""
    import tempfile
    cmd, env = stage_command(script, args, processes)
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    proc.log = log
    return proc


def wait_for_steps(run_dir: Path, steps: int, proc, timeout: float = 300) -> None:
    """Block until metrics.jsonl has `steps` lines (the run is well under way)."""
    import time
    deadline = time.time() + timeout
    path = run_dir / "metrics.jsonl"
    while time.time() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= steps:
            return
        if proc.poll() is not None:
            proc.log.seek(0)
            raise AssertionError(f"the run ended early ({proc.returncode}):\n{proc.log.read()[-4000:]}")
        time.sleep(0.05)
    raise AssertionError("the run did not get going in time")


def assert_same_training(a: dict, b: dict, lr: float, start: dict | None = None) -> None:
    """Two runs' weights (name -> tensor) are one training, across process counts or a resume.

    AdamW divides each gradient by sqrt(v): a gradient summed in another order (other micro-batches,
    other ranks) differs in its last bits, and moves a weight whose gradient is near zero by up to
    a fraction of one step of `lr`. So the bound is half a step; a wrong sample or a lost optimizer
    state moves many weights by several steps. With `start` (the weights both began from), training
    must have moved them at least 4x that bound, or the bound proves nothing.
    """
    gap = max((a[k] - b[k]).abs().max().item() for k in a)
    assert gap < 0.5 * lr, f"the runs' weights differ by up to {gap:.3g} (half a step at lr {lr:g}: {0.5 * lr:.3g})"
    if start is not None:
        moved = max((a[k] - start[k]).abs().max().item() for k in a if k in start)
        assert moved > 2 * lr, f"training moved the weights by only {moved:.3g}: too little to tell runs apart"
