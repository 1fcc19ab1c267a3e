"""Stage 1 end to end on CPU: learning, exact resume, two processes = one, export, figures."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from run_utils import assert_same_training, metrics, run_stage

SCRIPT = "pretrain_mae/main.py"


def tiny(out, shards, *extra):
    sources = "{celeba: %s, casia: %s, imdb: %s}" % (shards["celeba"], shards["casia"], shards["imdb_wiki"])
    return ["model.name=mae_vit_test", f"data.sources={sources}", "data.batch_size=8", "data.num_workers=1",
            "data.shuffle_buffer=16", "data.block_size=64", "data.batches_per_epoch=10", "optim.lr=2e-3",
            "optim.warmup_steps=2", "run.mixed_precision=no", "run.trackers=[]", "run.log_every=1",
            "figures.every=0", f"run.output_dir={out}", *extra]


def test_loss_falls_and_the_run_exports_and_draws(shards, tmp_path):
    out = tmp_path / "run"
    run_stage(SCRIPT, *tiny(out, shards, "run.total_steps=40", "run.save_every=20", "figures.every=20",
                            "run.trackers=[tensorboard]"))
    losses = [m["loss"] for _, m in sorted(metrics(out).items())]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5, losses
    row = metrics(out)[40]
    assert {"loss", "lr", "grad_norm"} <= set(row) and "images_per_s" not in row  # the clock's figures: timing.jsonl
    timing = [json.loads(line) for line in (out / "timing.jsonl").read_text().splitlines()]
    assert [r["step"] for r in timing] == list(range(1, 41))
    assert all(r["images_per_s"] > 0 and 0 <= r["data_wait_fraction"] <= 1 for r in timing)
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == ["reconstruction_00000020.png",
                                                                        "reconstruction_00000040.png"]
    assert list((out / "affect-lineage").rglob("events.out.tfevents.*"))
    # states every 20 steps, each with its resolved config
    states = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert states == ["step_00000020", "step_00000040"]
    assert "mae_vit_test" in (out / "checkpoints" / states[-1] / "config.yaml").read_text()

    # the exported encoder loads through timm and gives the trained encoder's features
    import timm
    from pretrain_mae.export import load_mae_safetensors
    encoder = timm.create_model(f"local-dir:{out / 'export' / 'encoder'}", pretrained=True).eval()
    mae = load_mae_safetensors(out / "export" / "mae.safetensors").eval()
    trained = load_file(out / "checkpoints" / "step_00000040" / "model.safetensors")
    assert all(torch.equal(mae.state_dict()[k], v) for k, v in trained.items())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(encoder.forward_features(x), mae.forward_features(x), atol=1e-6)
    assert tuple(encoder.pretrained_cfg["mean"]) == pytest.approx((0.485, 0.456, 0.406))

    # the export command on a training state gives the same encoder
    proc = subprocess.run([sys.executable, "-m", "pretrain_mae.export", str(out / "checkpoints" / "step_00000020"),
                           "--out", str(tmp_path / "exported")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    again = timm.create_model(f"local-dir:{tmp_path / 'exported' / 'encoder'}", pretrained=True).eval()
    at_20 = load_file(out / "checkpoints" / "step_00000020" / "model.safetensors")
    assert torch.equal(again.state_dict()["blocks.0.attn.qkv.weight"], at_20["blocks.0.attn.qkv.weight"])

    # continued pretraining from the exported encoder folder: encoder loaded, decoder from init
    proc = run_stage(SCRIPT, *tiny(tmp_path / "continued", shards, "run.total_steps=1", "optim.lr=0.0",
                                   f"model.init={out / 'export' / 'encoder'}"))
    assert "decoder left at init" in proc.stderr and "encoder-only" in proc.stderr
    continued = load_file(tmp_path / "continued" / "checkpoints" / "step_00000001" / "model.safetensors")
    assert torch.equal(continued["blocks.1.mlp.fc2.weight"], trained["blocks.1.mlp.fc2.weight"])


def test_resume_after_an_interruption_reproduces_the_losses(shards, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run_stage(SCRIPT, *tiny(whole, shards, "run.total_steps=14", "run.save_every=100"))
    run_stage(SCRIPT, *tiny(parts, shards, "run.total_steps=14", "run.save_every=100", "stop_after=6"))
    assert sorted(p.name for p in (parts / "checkpoints").glob("step_*")) == ["step_00000006"]
    assert not (parts / "export").exists()
    run_stage(SCRIPT, "--resume", "auto", *tiny(parts, shards, "run.total_steps=14", "run.save_every=100"))
    a, b = metrics(whole), metrics(parts)
    assert sorted(a) == sorted(b) == list(range(1, 15))
    for step in a:
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], abs=1e-6, rel=0), step
    final_a = load_file(whole / "checkpoints" / "step_00000014" / "model.safetensors")
    final_b = load_file(parts / "checkpoints" / "step_00000014" / "model.safetensors")
    assert all(torch.allclose(final_a[k], final_b[k], atol=1e-6) for k in final_a)


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    common = ["model.name=mae_vit_test", "data.synthetic=true", "optim.lr=1e-3", "optim.warmup_steps=0",
              "run.total_steps=5", "run.save_every=100", "run.mixed_precision=no", "run.trackers=[]",
              "run.log_every=1", "figures.every=0", "optim.grad_clip=1.0"]
    run_stage(SCRIPT, *common, "data.batch_size=8", f"run.output_dir={tmp_path / 'one'}")
    run_stage(SCRIPT, *common, "data.batch_size=4", f"run.output_dir={tmp_path / 'two'}", processes=2)
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    for step in range(1, 6):
        assert two[step]["loss"] == pytest.approx(one[step]["loss"], abs=1e-5)
    a = load_file(tmp_path / "one" / "checkpoints" / "step_00000005" / "model.safetensors")
    b = load_file(tmp_path / "two" / "checkpoints" / "step_00000005" / "model.safetensors")
    from pretrain_mae.model import build_mae
    torch.manual_seed(0)  # the run's seed: the initial weights
    c = build_mae("mae_vit_test").state_dict()
    assert_same_training(a, b, lr=1e-3, start=c)
    state = tmp_path / "two" / "checkpoints" / "step_00000005"
    assert json.loads((state / "meta.json").read_text())["world_size"] == 2
    ranks = [json.loads((state / f"rank_{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"]  # identical parameters on every rank


def test_bad_config_is_one_line_with_status_2(tmp_path):
    proc = run_stage(SCRIPT, "optim.base_lrr=1e-3", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith("unknown config key 'optim.base_lrr'; did you mean 'optim.base_lr'?")
    assert "Traceback" not in proc.stderr
    proc = run_stage(SCRIPT, "model.name=mae_vit_bsae_patch16", check=False)
    assert proc.returncode == 2 and "mae_vit_base_patch16" in proc.stderr
