"""Preemption: a signalled or stop-filed run saves a complete state at a step boundary, asks
for a requeue, and `--resume auto` continues exactly (CPU, real processes)."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from run_utils import assert_same_training, metrics, run_stage, start_stage, wait_for_steps

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
            "data.mixup=0.0", "data.cutmix=0.0", "data.reprob=0.0", "optim.lr=1e-3", "optim.warmup_steps=0",
            "optim.betas=[0.9, 0.95]", "run.total_steps=40",
            "run.save_every=1000", "run.log_every=1", "run.stop_check_every=1", "eval.every=0",
            "ema_decay=0.9", "run.mixed_precision=no", "run.trackers=[]"]
    run_stage(FINETUNE, *args, f"run.output_dir={tmp_path / 'whole'}")
    proc = start_stage(FINETUNE, *args, f"run.output_dir={tmp_path / 'parts'}")
    wait_for_steps(tmp_path / "parts", 3, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == EXIT_REQUEUE
    run_stage(FINETUNE, "--resume", "auto", *args, f"run.output_dir={tmp_path / 'parts'}")
    assert_same_losses(tmp_path / "whole", tmp_path / "parts", 40)


def exact_args(out, shards, workers):
    """Stage 1 on the exact, weighted stream with a global batch of 6 whatever the processes."""
    sources = "{celeba: %s, casia: %s, imdb: %s}" % (shards["celeba"], shards["casia"], shards["imdb_wiki"])
    return ["model.name=mae_vit_test", f"data.sources={sources}", "data.weights=celeba:1,casia:1,imdb:1",
            "data.mode=exact", "data.global_batch=6", "data.batch_size=3", f"data.num_workers={workers}",
            "data.shuffle_buffer=4", "optim.lr=1e-3", "optim.warmup_steps=2", "optim.grad_clip=1.0",
            "run.total_steps=40", "run.save_every=1000", "run.log_every=1", "run.stop_check_every=1",
            "run.mixed_precision=no", "run.trackers=[]", "figures.every=0", f"run.output_dir={out}"]


def test_sigterm_on_two_processes_resumes_on_one_and_on_three(shards, tmp_path):
    """2 processes x 2 workers stopped by SIGTERM mid-epoch (an epoch is 10 steps); resumed on
    1 x 3 (two micro-batches of 3 per step) and on 3 x 1 (micro-batches of 2): every step's loss
    and the final weights are those of one uninterrupted process."""
    import shutil
    import torch
    from safetensors.torch import load_file
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run_stage(PRETRAIN, *exact_args(whole, shards, 3))
    proc = start_stage(PRETRAIN, *exact_args(parts, shards, 2), processes=2)
    wait_for_steps(parts, 3, proc)
    for child in (Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()):
        os.kill(int(child), signal.SIGTERM)  # the training processes themselves, as SLURM does
    proc.wait(timeout=120)
    stopped = int((parts / "REQUEUE").read_text())
    assert 3 <= stopped < 40 and stopped % 10, stopped
    final = load_file(whole / "checkpoints" / "step_00000040" / "model.safetensors")
    resumed = load_file(parts / "checkpoints" / f"step_{stopped:08d}" / "model.safetensors")
    for processes, workers in ((1, 3), (3, 1)):
        again = tmp_path / f"on{processes}"
        shutil.copytree(parts, again)
        (again / "metrics.jsonl").unlink()  # only the resumed steps
        out = run_stage(PRETRAIN, "--resume", "auto", *exact_args(again, shards, workers), processes=processes)
        line = (f"resuming at sample {stopped * 6 % 60} of epoch {stopped // 10} on {processes} processes x "
                f"{workers} workers, saved on 2 x 2")
        assert line in out.stderr
        a, b = metrics(whole), metrics(again)
        for step in range(stopped + 1, 41):
            assert b[step]["loss"] == pytest.approx(a[step]["loss"], abs=1e-5), (processes, step)
        weights = load_file(again / "checkpoints" / "step_00000040" / "model.safetensors")
        assert_same_training(weights, final, lr=1e-3, start=resumed)
        if processes == 1:  # one process sums each gradient as the uninterrupted run did: equal to 1e-4
            assert max((weights[k] - final[k]).abs().max().item() for k in final) < 1e-4


def test_finetuning_stopped_on_two_processes_resumes_on_one(tiny_encoder, expression_shards, tmp_path):
    """Stage 2 on the exact pass with drop path, random erasing, mixup and cutmix on: stopped on
    2 processes, resumed on 1 (two micro-batches per step): the losses and weights of one
    uninterrupted process, since every random draw is made per sample."""
    from safetensors.torch import load_file
    args = [f"model.encoder={tiny_encoder}", f"data.shards={expression_shards}", "model.hidden_dim=16",
            "model.drop_path=0.2", "model.dropout=0.1", "data.global_batch=8", "data.batch_size=4",
            "data.eval_batch_size=8", "data.balance=none", "data.auto_augment=null", "data.reprob=0.5",
            "data.mixup=0.8", "data.cutmix=1.0", "optim.lr=1e-3", "optim.warmup_steps=0", "optim.betas=[0.9, 0.95]",
            "optim.grad_clip=1.0", "run.total_steps=30",
            "run.save_every=1000", "run.log_every=1", "run.stop_check_every=1", "eval.every=0", "ema_decay=0.9",
            "run.mixed_precision=no", "run.trackers=[]"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run_stage(FINETUNE, *args, "data.num_workers=0", f"run.output_dir={whole}")
    proc = start_stage(FINETUNE, *args, "data.num_workers=2", f"run.output_dir={parts}", processes=2)
    wait_for_steps(parts, 3, proc)
    for child in (Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()):
        os.kill(int(child), signal.SIGTERM)
    proc.wait(timeout=120)
    stopped = int((parts / "REQUEUE").read_text())
    out = run_stage(FINETUNE, "--resume", "auto", *args, "data.num_workers=1", f"run.output_dir={parts}")
    assert "on 1 processes x 1 workers, saved on 2 x 2" in out.stderr
    assert_same_losses(whole, parts, 30)
    a = load_file(whole / "checkpoints" / "step_00000030" / "model.safetensors")
    b = load_file(parts / "checkpoints" / "step_00000030" / "model.safetensors")
    assert stopped < 30
    assert_same_training(a, b, lr=1e-3)
