"""The SLURM scripts' protocol, with `srun` and `scontrol` stand-ins and the real launcher:
rendezvous from SLURM variables, the time-limit warning turned into a saved state and a
requeue, and the requeued job resuming to the end."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from run_utils import ROOT, wait_for_steps

STUBS = {
    "srun": '#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexport SLURM_NODEID=0\nexec "$@"\n',
    "scontrol": '#!/bin/bash\ncase "$1" in\n  show) echo 127.0.0.1 ;;\n'
                '  requeue) echo "requeue $2" >> "$SCONTROL_LOG" ;;\nesac\n',
}
ARGS = ["model.name=mae_vit_test", "data.synthetic=true", "data.batch_size=4", "optim.warmup_steps=2",
        "run.total_steps=40", "run.save_every=1000", "run.log_every=1", "run.stop_check_every=1",
        "run.mixed_precision=no", "run.trackers=[]", "figures.every=0"]


def slurm_env(tmp_path: Path) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in STUBS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "SLURM_JOB_ID": "4242", "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "node001",
            "SLURM_SUBMIT_DIR": str(ROOT), "GPUS_PER_NODE": "1", "RUN_DIR": str(tmp_path / "run"),
            "SCONTROL_LOG": str(tmp_path / "scontrol.log"), "OMP_NUM_THREADS": "1"}


def test_time_limit_warning_requeues_and_the_requeued_job_finishes(tmp_path):
    env, run = slurm_env(tmp_path), tmp_path / "run"
    script = ["bash", str(ROOT / "launch" / "slurm" / "pretrain_mae.sbatch"), *ARGS]
    job = subprocess.Popen(script, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    job.log = job.stdout
    wait_for_steps(run, 3, job, timeout=240)
    job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@600 delivers to the batch shell
    out, _ = job.communicate(timeout=240)
    assert job.returncode == 0, out[-3000:]
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    stopped = int(out.split("state saved at step ")[1].split(";")[0])
    assert (run / "checkpoints" / f"step_{stopped:08d}" / "meta.json").is_file() and stopped < 40

    again = subprocess.run(script, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"  # not requeued again
    assert (run / "export" / "encoder" / "config.json").is_file()
    assert (run / "checkpoints" / "step_00000040").is_dir()
