"""The benchmark suite runs and summarises: a short run of part of it, the summary table, and the
FLOP count behind the MFU figures (against PyTorch's own counter)."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from run_utils import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))  # the benchmarks import their helpers by module name
import common  # noqa: E402
import levers  # noqa: E402
import mfu  # noqa: E402
from pretrain_mae.model import build_mae  # noqa: E402


def runner():
    spec = importlib.util.spec_from_file_location("benchmarks_main", ROOT / "benchmarks" / "__main__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quick_suite_prints_a_summary_with_ratios(tmp_path):
    # the cheap part of the suite: one CPU ratio and the GPU rows (NOT MEASURED without CUDA)
    markdown = tmp_path / "summary.md"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--only", "input_pipeline,gpu_input",
                           "--only", "mae_step_gpu", "--markdown", str(markdown)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert out.startswith("machine: ") and "torch " in out.splitlines()[0]
    assert "command: " in out and "## Summary" in out
    table = markdown.read_text()
    assert table in out
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert re.search(r"\| \d+\.\d\dx \| ≥ 2x \| (PASS|FAIL) \|$", rows["input_pipeline"])
    gpu = "NOT MEASURED (no CUDA device)" if "no GPU" in out.splitlines()[0] else "PASS"
    for name in ("mae_step (GPU)", "mae_step (GPU) peak memory"):
        assert gpu in rows[name] or "FAIL" in rows[name], rows[name]
    assert any(name.startswith("gpu_input") for name in rows)


def test_summary_table_marks_every_outcome():
    rows = [
        {"name": "a", "what": "x vs y", "figures": "2 vs 1 img/s", "ratio": 2.0, "unit": "x", "target": "≥ 2x",
         "verdict": "PASS"},
        {"name": "b", "what": "x vs y", "figures": "0.9 vs 1", "ratio": 0.9, "unit": "x", "target": "≥ 1x",
         "verdict": "FAIL"},
        {"name": "c", "what": "memory", "figures": "-", "ratio": None, "unit": "GiB", "target": "≤ 40 GiB",
         "verdict": "NOT MEASURED", "note": "no CUDA device"},
        {"name": "d", "what": "frames", "figures": "5 frames/s", "ratio": 5.0, "unit": "frames/s", "target": None,
         "verdict": "INFO"},
    ]
    table = runner().summary(rows, "some CPU", quick=False).splitlines()
    assert table[2] == "| benchmark | compares | figures | ratio / value | target | result |"
    assert table[4] == "| a | x vs y | 2 vs 1 img/s | 2.00x | ≥ 2x | PASS |"
    assert table[5].endswith("| 0.90x | ≥ 1x | FAIL |")
    assert table[6].endswith("| - | ≤ 40 GiB | NOT MEASURED (no CUDA device) |")
    assert table[7].endswith("| 5.0 frames/s | - | INFO |")


def test_every_benchmark_is_listed_with_its_command():
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--list", "--quick"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[0] for line in proc.stdout.splitlines()]
    assert names == ["input_pipeline", "exact_stream", "mae_step_cpu", "mae_step_gpu", "mae_step_fast", "gpu_input",
                     "gpu_input_photo", "eri_epoch", "extract_speed", "fsdp_step", "profile_step", "profile_eri_epoch",
                     "mae_levers"]
    assert all("--quick" in line for line in proc.stdout.splitlines()[:10])


@pytest.mark.parametrize("name", ["mae_vit_test", "mae_vit_tiny_patch16"])
def test_mae_flops_match_pytorchs_flop_counter(name):
    model = build_mae(name)
    size, patches = model.mae_config["img_size"], model.patch_embed.num_patches
    images, noise = torch.randn(2, 3, size, size), torch.rand(2, patches)
    with FlopCounterMode(display=False) as forward:
        loss = model(images, mask_ratio=0.75, noise=noise)[0]
    assert forward.get_total_flops() / 2 == sum(mfu.mae_forward_flops(model).values())  # per image, exactly
    with FlopCounterMode(display=False) as backward:
        loss.backward()
    step = (forward.get_total_flops() + backward.get_total_flops()) / 2
    # forward x 3 overestimates only the input gradient the patch embedding never computes
    assert 0.85 < step / mfu.mae_flops_per_image(model) <= 1.0


def test_mfu_basis_and_target():
    vit_b = SimpleNamespace(mae_config=dict(mfu.VIT_B16_224))
    assert mfu.mae_flops_per_image(vit_b) / 1e9 == pytest.approx(58.69, abs=0.01)
    assert mfu.flops_used_for_mfu(vit_b)[0] == 56.3e9  # the stated constant for exactly ViT-B/16 at 224
    other = SimpleNamespace(mae_config={**mfu.VIT_B16_224, "img_size": 112})
    assert mfu.flops_used_for_mfu(other)[0] == mfu.mae_flops_per_image(other)
    assert mfu.peak_tflops("NVIDIA H100 PCIe")[0] == 756 and mfu.peak_tflops("NVIDIA A100-SXM4-80GB")[0] == 312
    assert mfu.peak_tflops("NVIDIA H200")[0] == 989 and mfu.peak_tflops("Some GPU")[0] is None
    assert mfu.peak_tflops("NVIDIA H200", 500.0)[0] == 500
    # the target is stated against 790 TFLOP/s on an H200: 45 % of it is ~6,300 images/s
    basis = mfu.target_peak_tflops("NVIDIA H200")[0]
    assert basis == 790 and round(0.45 * basis * 1e12 / 56.3e9) == 6314
    assert mfu.target_peak_tflops("NVIDIA H200 NVL")[0] == 835 and mfu.target_peak_tflops("NVIDIA A100")[0] == 312


def test_timing_helpers():
    assert common.split(10, 4) == [3, 3, 2, 2] and sum(common.split(56, 14)) == 56
    assert common.verdict(2.0, 2.0) == "PASS" and common.verdict(1.99, 2.0) == "FAIL"
    assert common.verdict(39.0, 40.0, higher_is_better=False) == "PASS"
    assert common.verdict(41.0, 40.0, higher_is_better=False) == "FAIL"


def test_bf16_master_weights_train_exactly_as_bf16_autocast():
    """bf16 weights with float32 masters in AdamW are autocast's arithmetic without its per-step
    casts: the same losses and the same float32 weights, bit for bit, step after step."""
    runs = []
    for bf16_weights in (False, True):
        torch.manual_seed(0)
        mae = build_mae("mae_vit_test")
        step = levers.build_step(mae, levers.Levers(bf16_weights=bf16_weights), torch.device("cpu"), 4, "bf16")
        gen = torch.Generator().manual_seed(1)
        images = torch.randn(4, 3, 32, 32, generator=gen)
        losses = [step(images, torch.rand(4, 16, generator=gen)).item() for _ in range(3)]
        weights = dict(mae.named_parameters())
        if bf16_weights:
            optimizer = step.optimizer
            assert mae.blocks[0].attn.qkv.weight.dtype == torch.bfloat16 and mae.norm.weight.dtype == torch.float32
            assert torch.equal(optimizer.low[0], optimizer.masters[0].to(torch.bfloat16))  # the masters, rounded
            masters = {id(p): m for p, m in zip(optimizer.low, optimizer.masters)}
            weights = {n: masters.get(id(p), p) for n, p in weights.items()}
        runs.append((losses, {n: p.detach().clone() for n, p in weights.items()}))
    (losses, weights), (losses_bf16, weights_bf16) = runs
    assert losses == losses_bf16 and len(set(losses)) == 3
    assert all(torch.equal(weights[n], weights_bf16[n]) for n in weights)
    with pytest.raises(ValueError, match="need dtype bf16"):
        levers.build_step(build_mae("mae_vit_test"), levers.Levers(bf16_weights=True), torch.device("cpu"), 4, "fp32")


def test_mae_step_levers_run_on_cpu_and_the_fast_rows_carry_the_issue_targets(capsys):
    import mae_step
    mae_step.main(["--device", "cpu", "--model", "mae_vit_test", "--batch-size", "4", "--steps", "2", "--repeats", "1",
                   "--warmup", "1", "--dtype", "bf16", "--fast-norm", "--bf16-weights"])
    out = capsys.readouterr().out
    assert "levers:  ours: scatter decoder, fast LayerNorm, bf16 weights + fp32 masters; transformers: eager" in out
    gap = float(re.search(r"\|loss ours - loss transformers\| on the first batch = (\S+)", out).group(1))
    assert gap < 1e-2  # the same function (bf16 rounding apart)
    fast = mae_step.rows(SimpleNamespace(fast=True), "cuda")
    assert fast["ratio"] == ("mae_step fast (GPU)", "≥ 1.5x", 1.5)
    assert fast["rate"] == ("mae_step fast (GPU) img/s", "≥ 7,000 img/s", 7000.0)


def test_the_eri_epoch_device_cache_holds_videos_of_the_real_shapes():
    import eri_epoch
    loader = eri_epoch.cache_loader(20, torch.device("cpu"))
    batches = list(loader)
    assert len(batches) == 2 and all(len(b["file_id"]) == 16 for b in batches)  # 20 videos: the last batch padded
    batch = batches[0]
    assert batch["visual"].shape == (16, 32, 768) and batch["visual"].dtype == torch.float32
    lengths = {m: batch[f"{m}_mask"].sum(1) for m in ("audio", "text")}
    assert 300 <= lengths["audio"].min() and lengths["audio"].max() <= 800
    assert batch["audio"].shape[1] == lengths["audio"].max() and batch["text"].shape[2] == 1024
    assert 1 <= lengths["text"].min() and lengths["text"].max() <= 64
