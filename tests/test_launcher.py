"""The stage commands (`affect-pretrain`, `affect-finetune`, `affect-extract`, `affect-train-eri`,
shared/launcher.py): bad input ends with the stage's one line and its status whichever way the
stage is started, and the status of the process that failed first is the command's."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time

import pytest
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from fault_utils import last_line, own_signal_handlers
from run_utils import ROOT, free_port
from shared.launcher import first_failure, launch, split_arguments

BAD = "data.shardz=1"
LINE = "unknown config key 'data.shardz'"
# stage module -> (command, a bad input and the end of its line)
STAGES = {"pretrain_mae.main": ("affect-pretrain", [BAD], LINE),
          "finetune_affectnet.main": ("affect-finetune", [BAD], LINE),
          "eri_downstream.train": ("affect-train-eri", [BAD], LINE),
          "eri_downstream.extract": ("affect-extract", ["faces", "--data", "/nonexistent/hume", "--store", "x"],
                                     "holds neither data_info.csv")}


@pytest.fixture
def environment():
    """The in-process launcher sets accelerate's variables in os.environ: put it back."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def entry_command(module: str, *args: str) -> list[str]:
    """What the console script runs (`affect-...` appears with `pip install -e .`)."""
    return [sys.executable, "-c", f"from {module} import entry; entry()", *args]


def ended_with_one_line(stderr: str, prog: str, message: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert last_line(stderr).startswith(f"{prog}: error: ") and message in last_line(stderr), stderr[-3000:]
    assert sum(message in line for line in lines) == 1, stderr[-3000:]  # once, whatever the processes
    assert "Traceback" not in stderr and "ChildFailedError" not in stderr and "CalledProcessError" not in stderr


@pytest.mark.parametrize("module", list(STAGES))
def test_every_stage_command_ends_with_its_line_and_status_2_on_one_process(module, capsys, environment):
    prog, args, message = STAGES[module]
    main = importlib.import_module(module).main
    with own_signal_handlers():
        status = launch(main, module, prog, ["--num_processes", "1", *args])
    assert status == 2
    ended_with_one_line(capsys.readouterr().err, prog, message)


def test_two_processes_end_with_one_line_and_the_stages_status():
    """Both processes fail on the bad key: one line, the stage's own status 2 (torchrun: 1)."""
    proc = subprocess.run(entry_command("pretrain_mae.main", "--num_processes", "2", "--main_process_port",
                                        str(free_port()), BAD), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    ended_with_one_line(proc.stderr, "affect-pretrain", LINE)


def test_accelerate_launch_says_the_stages_line_then_its_own_report():
    """`accelerate launch` (the multi-GPU way of the README) prints the stage's line, then its
    own CalledProcessError report, and exits 1 for any failure: the README says so and points
    to the stage commands. (`python main.py` ends with the line and status 2: test_pretrain.py,
    test_faults_commands.py.)"""
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "pretrain_mae/main.py", BAD], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "CalledProcessError" in proc.stderr
    assert sum(LINE in line for line in proc.stderr.splitlines()) == 1


def test_launcher_options_come_first_and_debug_and_help_stay_with_the_stage():
    assert split_arguments(["--num_processes", "2", "--mixed_precision=bf16", "--config", "x.yaml", "a=1"]) == (
        ["--num_processes", "2", "--mixed_precision=bf16"], ["--config", "x.yaml", "a=1"])
    assert split_arguments(["--debug", "--num-processes", "2", "a=1"]) == (["--num-processes", "2"], ["--debug", "a=1"])
    assert split_arguments(["all", "--data", "x", "--num_processes", "2"]) == ([], ["all", "--data", "x",
                                                                                  "--num_processes", "2"])


def failed(exitcodes: dict[int, int]) -> ChildFailedError:
    return ChildFailedError("stage", {rank: ProcessFailure(local_rank=rank, pid=100 + rank, exitcode=code,
                                                           error_file="") for rank, code in exitcodes.items()})


def test_the_status_is_the_first_failed_process_and_its_line_is_last(tmp_path, capsys):
    notes = tmp_path / "failures"
    assert first_failure(failed({0: -15, 1: 75}), notes, "affect-x") == 75  # preempted; rank 0 stopped by the launcher
    assert first_failure(failed({0: -9, 1: -9}), notes, "affect-x") == 128 + 9
    notes.mkdir()
    now = time.time()
    for rank, status, line, when in ((0, 1, "affect-x: error: RuntimeError: connection closed", now + 1),
                                     (1, 2, "affect-x: error: source celeba: /x does not exist", now)):
        (notes / f"rank_{rank}.json").write_text(json.dumps({"rank": rank, "status": status, "line": line,
                                                             "time": when}))
    capsys.readouterr()
    assert first_failure(failed({0: 1, 1: 2}), notes, "affect-x") == 2
    err = capsys.readouterr().err
    assert last_line(err) == "affect-x: error: source celeba: /x does not exist" and "process 1 failed first" in err
    (notes / "rank_1.json").unlink()  # rank 0 failed on its own: its line is on the console already
    assert first_failure(failed({0: 1, 1: -15}), notes, "affect-x") == 1
    assert capsys.readouterr().err == ""
    (notes / "rank_1.json").write_text(json.dumps({"rank": 1, "status": 2, "line": "affect-x: error: bad key",
                                                   "time": now}))
    (notes / "rank_0.json").write_text(json.dumps({"rank": 0, "status": 2, "line": "affect-x: error: bad key",
                                                   "time": now + 0.01}))  # both read the same bad input
    assert first_failure(failed({0: 2, 1: 2}), notes, "affect-x") == 2
    assert capsys.readouterr().err == ""


def test_every_console_script_starts_its_own_stage(monkeypatch):
    """pyproject's [project.scripts] `affect-*` -> `<stage>:entry`, which launches that stage's
    main under that name."""
    import re
    scripts = re.findall(r'^(affect-[\w-]+) = "([\w.]+):entry"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert sorted(prog for prog, _ in scripts) == sorted(["affect-publish", *(p for p, _, _ in STAGES.values())])
    for prog, module in scripts:
        if prog == "affect-publish":
            continue
        stage = importlib.import_module(module)
        seen = []
        monkeypatch.setattr(stage, "launch", lambda main, name, command: seen.append((main, name, command)) or 0)
        with pytest.raises(SystemExit) as end:
            stage.entry()
        assert end.value.code == 0 and seen == [(stage.main, module, prog)]
