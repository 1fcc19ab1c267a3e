"""Preemption: a signalled or stop-filed run saves a complete state at a step boundary, asks
for a requeue, and `--resume auto` continues exactly (CPU, real processes)."""
from __future__ import annotations

import json
import signal

import pytest

from run_utils import metrics, run_stage, start_stage, wait_for_steps

PRETRAIN = "pretrain_mae/main.py"
FINETUNE = "finetune_affectnet/main.py"
EXIT_REQUEUE = 75


def pretrain_args(out, steps=40):
    return ["model.name=mae_vit_test", "data.synthetic=true", "data.batch_size=4", "optim.lr=1e-3",
            "optim.warmup_steps=2", f"run.total_steps={steps}", "run.save_every=1000", "run.log_every=1",
            "run.stop_check_every=1", "run.mixed_precision=no", "run.trackers=[]", "figures.every=0",
            f"run.output_dir={out}"]


def assert_same_losses(a, b, steps):
    a, b = metrics(a), metrics(b)
    for step in range(1, steps + 1):
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], abs=1e-6), step


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_saves_a_state_requeues_and_resumes_exactly(tmp_path, sig):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run_stage(PRETRAIN, *pretrain_args(whole))
    proc = start_stage(PRETRAIN, *pretrain_args(parts))
    wait_for_steps(parts, 5, proc)
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == EXIT_REQUEUE
    stopped = int((parts / "REQUEUE").read_text())
    assert 5 <= stopped < 40
    assert (parts / "checkpoints" / f"step_{stopped:08d}" / "meta.json").is_file()
    assert not (parts / "export").exists()
    run_stage(PRETRAIN, "--resume", "auto", *pretrain_args(parts))
    assert not (parts / "REQUEUE").exists() and (parts / "export" / "encoder").is_dir()
    assert_same_losses(whole, parts, 40)


def test_stop_file_stops_every_rank_at_the_same_step(tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run_stage(PRETRAIN, *pretrain_args(whole, 30), processes=2)
    proc = start_stage(PRETRAIN, *pretrain_args(parts, 30), processes=2)
    wait_for_steps(parts, 4, proc)
    (parts / "STOP").touch()
    proc.wait(timeout=120)  # the launcher reports its workers' status 75 as a failure: the marker is what counts
    stopped = int((parts / "REQUEUE").read_text())
    state = parts / "checkpoints" / f"step_{stopped:08d}"
    ranks = [json.loads((state / f"rank_{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["step"] == ranks[1]["step"] == stopped
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"]
    assert not (parts / "STOP").exists()
    run_stage(PRETRAIN, "--resume", "auto", *pretrain_args(parts, 30), processes=2)
    assert_same_losses(whole, parts, 30)


def test_finetuning_stops_and_resumes_too(tiny_encoder, expression_shards, tmp_path):
    args = [f"model.encoder={tiny_encoder}", f"data.shards={expression_shards}", "model.hidden_dim=16",
            "data.batch_size=8", "data.eval_batch_size=8", "data.num_workers=0", "data.auto_augment=null",
            "data.mixup=0.0", "data.cutmix=0.0", "data.reprob=0.0", "optim.lr=1e-3", "run.total_steps=40",
            "run.save_every=1000", "run.log_every=1", "run.stop_check_every=1", "eval.every=0",
            "ema_decay=0.9", "run.mixed_precision=no", "run.trackers=[]"]
    run_stage(FINETUNE, *args, f"run.output_dir={tmp_path / 'whole'}")
    proc = start_stage(FINETUNE, *args, f"run.output_dir={tmp_path / 'parts'}")
    wait_for_steps(tmp_path / "parts", 3, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == EXIT_REQUEUE
    run_stage(FINETUNE, "--resume", "auto", *args, f"run.output_dir={tmp_path / 'parts'}")
    assert_same_losses(tmp_path / "whole", tmp_path / "parts", 40)
