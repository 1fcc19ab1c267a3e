"""Fault injection in training: non-finite losses, a full disk or a file-size limit and kill -9
during a checkpoint write, a state of another architecture. docs/faults.md lists each fault."""
from __future__ import annotations

import errno
import importlib
import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pretrain_mae.model import build_mae
from run_utils import ROOT, stage_command
from shared.errors import RunError, UserError, one_line, run_cli
from shared.training.checkpoint import Checkpointer
from shared.training.loop import Hook, train
from fault_utils import PRETRAIN, NoData, accelerator, last_line, own_signal_handlers, tiny_pretrain


# -- the training loop ------------------------------------------------------------------------
def test_nonfinite_loss_skips_the_step_and_k_in_a_row_stop_with_the_last_good_state(tmp_path, caplog):
    torch.manual_seed(0)
    acc, model, optimizer = accelerator(torch.nn.Linear(4, 1))
    checkpointer = Checkpointer(acc, tmp_path)
    bad_steps = {3} | set(range(6, 100))  # one bad step, then a run gone bad for good
    seen: dict[int, torch.Tensor] = {}

    def loss_fn(model, batch, micro_step):
        loss = (model(torch.ones(2, 4)) - 100).pow(2).mean()  # far from converged in 20 steps
        return loss * math.nan if micro_step + 1 in bad_steps else loss, {}

    def snapshot(step):
        seen[step] = torch.cat([p.detach().flatten().clone() for p in model.parameters()])

    with pytest.raises(RunError) as info:
        train(acc, model, optimizer, NoData(), loss_fn, total_steps=20, lr_at=lambda s: 1e-3,
              checkpointer=checkpointer, config={}, samples_per_step=2, log_every=1, save_every=2,
              hooks=[Hook(1, snapshot)], metrics_file=tmp_path / "metrics.jsonl", max_nonfinite_steps=3)
    message = one_line(info.value)
    assert message == str(info.value)
    assert message.startswith("the loss or gradient was NaN or infinite for 3 steps in a row (steps 6-8, "
                              "run.max_nonfinite_steps=3); none of them updated the model and the newest saved "
                              f"state, {checkpointer.dir / 'step_00000004'}, is intact")
    assert torch.equal(seen[3], seen[2]) and not torch.equal(seen[4], seen[3])  # skipped, then training again
    assert torch.equal(seen[7], seen[5]) and torch.isfinite(seen[7]).all()
    assert sorted(p.name for p in checkpointer.dir.iterdir()) == ["step_00000002", "step_00000004"]  # not 6
    assert torch.equal(load_file(checkpointer.dir / "step_00000004" / "model.safetensors")["weight"].flatten(),
                       seen[4][:4])
    rows = {r["step"]: r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())}
    assert rows[3]["nonfinite_steps"] == 1 and "loss" not in rows[3] and math.isfinite(rows[4]["loss"])
    assert "step 3: loss nan" in caplog.text and "step skipped (no update; 1 in a row" in caplog.text


# -- checkpoints ------------------------------------------------------------------------------
def test_no_space_left_while_saving_keeps_the_previous_state_and_resumes_from_it(tmp_path, monkeypatch):
    acc, model, _ = accelerator(torch.nn.Linear(4, 1))
    checkpointer = Checkpointer(acc, tmp_path)
    with torch.no_grad():
        model.weight.fill_(1.0)
    checkpointer.save(1, {"stream": {}}, {})

    def disk_full(folder, **kwargs):
        (Path(folder) / "model.safetensors").write_bytes(b"half a tensor")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(folder) / "model.safetensors"))

    monkeypatch.setattr(acc, "save_state", disk_full)
    with pytest.raises(RunError) as info:
        checkpointer.save(2, {"stream": {}}, {})
    message = one_line(info.value)
    assert message.startswith(f"could not write the training state of step 2 in {checkpointer.dir} "
                              "(No space left on device: ")
    assert f"the partial state was removed, the previous complete state {checkpointer.dir / 'step_00000001'} " \
           "is intact and --resume auto continues from it" in message
    assert sorted(p.name for p in checkpointer.dir.iterdir()) == ["step_00000001"]
    monkeypatch.undo()
    with torch.no_grad():
        model.weight.fill_(7.0)
    assert checkpointer.restore("auto", NoData()) == (1, checkpointer.dir / "step_00000001")
    assert torch.equal(model.weight, torch.ones(1, 4))


def test_a_file_size_limit_during_a_stage_checkpoint_keeps_the_previous_state(tmp_path):
    """A real disk-full surrogate: RLIMIT_FSIZE makes the write of the state's largest file fail
    (EFBIG, once SIGXFSZ is ignored instead of killing the process)."""
    run = tmp_path / "run"
    with own_signal_handlers():  # the first run, without the limit, in this process: one interpreter less
        assert run_cli(importlib.import_module("pretrain_mae.main").main, tiny_pretrain(run, 4)) == 0
    states = run / "checkpoints"
    limit = 16 * 1024
    assert (states / "step_00000004" / "model.safetensors").stat().st_size > limit
    cmd, env = stage_command(PRETRAIN, ["--resume", "auto", *tiny_pretrain(run, 8)])
    proc = subprocess.run(cmd, env={**env, "PYTHONDONTWRITEBYTECODE": "1"}, cwd=ROOT, capture_output=True,
                          text=True, timeout=300,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert last_line(proc.stderr).startswith(f"main.py: error: could not write the training state of step 6 in "
                                             f"{states} (")
    assert "File too large" in last_line(proc.stderr)
    assert f"the previous complete state {states / 'step_00000004'} is intact" in last_line(proc.stderr)
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in states.iterdir()) == ["step_00000002", "step_00000004"]
    acc, model, _ = accelerator(build_mae("mae_vit_test"))
    assert Checkpointer(acc, run).latest() == states / "step_00000004"


KILLED_WRITER = """
import sys, torch
from accelerate import Accelerator, PartialState
from shared.training.checkpoint import Checkpointer
acc = Accelerator(cpu=True, mixed_precision="no")
model = torch.nn.Linear(2048, 2048)
model, _ = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
checkpointer = Checkpointer(acc, sys.argv[1], keep_last=2)
for step in range(1, 100000):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(step)
    checkpointer.save(step, {"stream": {}}, {"step": step})
"""


def kill_during_a_write(run: Path) -> bool:
    """Start a process that writes 16 MiB states in a loop and SIGKILL it while a state is being
    written; True when the kill landed mid-write (the partial folder was left behind)."""
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(run)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    states, deadline = run / "checkpoints", time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if any(states.glob(".tmp-step_0*/*")) and len(list(states.glob("step_*/meta.json"))) >= 2:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.001)
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode == -signal.SIGKILL and any(states.glob(".tmp-step_0*"))


def test_kill_9_during_a_checkpoint_write_never_leaves_a_state_to_resume(tmp_path):
    run = tmp_path / "run"
    assert any(kill_during_a_write(run) for _ in range(3)), "could not kill the writer in the middle of a write"
    acc, model, _ = accelerator(torch.nn.Linear(2048, 2048))
    checkpointer = Checkpointer(acc, run)
    newest = checkpointer.latest()
    step = json.loads((newest / "meta.json").read_text())["step"]
    assert all(torch.equal(t, torch.full_like(t, step)) for t in load_file(newest / "model.safetensors").values())
    assert checkpointer.restore("auto", NoData()) == (step, newest)
    assert torch.equal(model.bias, torch.full((2048,), float(step)))
    assert not list(checkpointer.dir.glob(".tmp-step_*"))  # the partial state is cleared on resume


def test_a_state_of_another_architecture_names_missing_unexpected_and_resized_keys(tmp_path):
    acc, model, _ = accelerator(build_mae("mae_vit_test", decoder_depth=2))  # a decoder block the other lacks
    Checkpointer(acc, tmp_path / "small").save(1, {"stream": {}}, {"model": {"name": "mae_vit_test"}})
    acc, model, _ = accelerator(build_mae("mae_vit_test", depth=3, embed_dim=48, num_heads=4))
    checkpointer = Checkpointer(acc, tmp_path / "big")
    state = tmp_path / "small" / "checkpoints" / "step_00000001"
    with pytest.raises(UserError) as info:
        checkpointer.restore(str(state), NoData())
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{state} does not fit this model (saved by another "
                                                      "architecture or stage?): 12 missing: blocks.2.")
    assert "(+8 more); 12 unexpected: decoder_blocks.1." in message
    assert "of another shape: cls_token [1, 1, 32] vs model [1, 1, 48]" in message
    assert f"resume it with the configuration it was saved with ({state / 'config.yaml'})" in message
    # nothing to resume: a fresh start; a folder that is no training state (an export): refused
    assert checkpointer.restore("auto", NoData()) == (0, None)
    (tmp_path / "export").mkdir()
    with pytest.raises(UserError, match=r"export: not a complete training state \(no meta.json\)"):
        checkpointer.restore(str(tmp_path / "export"), NoData())
    meta = json.loads((state / "meta.json").read_text())
    (state / "meta.json").write_text(json.dumps({**meta, "world_size": 2}))  # saved by two processes
    with pytest.raises(UserError, match=r"was saved by 2 processes, this run has 1; resume with the same number"):
        checkpointer.restore(str(state), NoData())




class ReshapableData(NoData):
    """Data that can take the positions a run of another size saved (as exact streams can)."""

    def __init__(self):
        self.loaded = None

    def load_saved_states(self, states: list[dict]) -> None:
        self.loaded = states


def test_states_saved_on_another_number_of_processes(tmp_path):
    """Saved by 3 processes, resumed on 1: the data gets every process's position in rank
    order; FSDP shards of another number of processes are refused in one line."""
    acc, model, _ = accelerator(build_mae("mae_vit_test"))
    Checkpointer(acc, tmp_path).save(7, {"stream": {"rank": 0}}, {})
    state = tmp_path / "checkpoints" / "step_00000007"
    meta = json.loads((state / "meta.json").read_text())
    (state / "meta.json").write_text(json.dumps({**meta, "world_size": 3}))
    for r in (1, 2):  # what the other two processes wrote
        (state / f"rank_{r}.json").write_text(json.dumps({"step": 7, "stream": {"rank": r}}))
    data = ReshapableData()
    assert Checkpointer(acc, tmp_path).restore("auto", data) == (7, state)
    assert data.loaded == [{"rank": 0}, {"rank": 1}, {"rank": 2}]
    with pytest.raises(UserError, match=r"was saved by 3 processes, this run has 1; resume with the same number "
                                        r"of processes \(only exact streams .* this run's data is NoData\)"):
        Checkpointer(acc, tmp_path).restore("auto", NoData())
    (state / "pytorch_model_fsdp_0").mkdir()
    with pytest.raises(UserError) as info:
        Checkpointer(acc, tmp_path).restore("auto", ReshapableData())
    assert str(info.value) == (f"{state} holds FSDP states sharded over 3 processes (pytorch_model_fsdp_0), this run "
                               "has 1; resume on 3 processes (or save whole states: fsdp_state_dict_type "
                               "FULL_STATE_DICT)")


def test_the_global_batch_is_split_over_any_number_of_processes_that_divides_it():
    from shared.training.batching import split_global_batch
    assert split_global_batch(None, 2, 4, 3) == (4, 3, 24)  # no global batch: the config's own
    assert split_global_batch(6, 1, 3) == (3, 2, 6)  # one process: two micro-batches of 3
    assert split_global_batch(6, 2, 3) == (3, 1, 6)
    assert split_global_batch(6, 3, 3) == (2, 1, 6)
    assert split_global_batch(12, 2, 4, grad_accum=3) == (2, 3, 12)
    with pytest.raises(UserError) as info:
        split_global_batch(6, 4, 3)
    assert str(info.value) == ("data.global_batch=6 cannot be split evenly over 4 processes; choose a multiple of 4 "
                               "or run on a number of processes that divides it")
