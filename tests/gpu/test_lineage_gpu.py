"""Every stage on one GPU, on the built-in data, to its export, loaded back on the GPU.

Stage 1 runs four ways (bf16 autocast; torch.compile; FSDP on one process through
launch/accelerate/fsdp_vit.yaml; JPEGs decoded, cropped and flipped on the device), stage 2
fine-tunes the bf16 export (compiled), stage 3a extracts faces with MTCNN and features with the
frozen stage-2 encoder on CUDA, and stage 3b trains the ERI model on them. Each records its
figures (losses, images/s, peak memory) for `launch/gpu_check.sh`'s report.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from shared.builtin_data import SHARD_SIZE

from .gpu_utils import COMPILE_BACKEND, DEVICE, DRY_RUN, launch, metrics, record, requires_gpu

pytestmark = requires_gpu

# a dry run on the CPU (bf16 there is slow) checks the plumbing with a tenth of the steps
STEPS, FINETUNE_STEPS, ERI_EPOCHS = (60, 80, 4) if DEVICE == "cuda" else (6, 8, 2)
SHORT = [] if DEVICE == "cuda" else ["optim.warmup_steps=1"]
BF16 = "run.mixed_precision=bf16"
STAGE1 = {
    "bf16": [],
    "compile": ["run.compile=true", f"run.compile_backend={COMPILE_BACKEND}"],
    "fsdp": [],  # launched with the FSDP accelerate config
    "device_decode": ["data.device_decode=true", "data.device_augment=true"],
}


def stage1(out, variant: str):
    args = ["--config", "pretrain_mae/configs/demo_cpu.yaml", f"run.output_dir={out}", BF16,
            f"run.total_steps={STEPS}", f"run.save_every={STEPS // 2}", f"figures.every={STEPS // 2}",
            f"run.log_every={max(1, STEPS // 12)}", "run.trackers=[]", *SHORT, *STAGE1[variant]]
    config = "launch/accelerate/fsdp_vit.yaml" if variant == "fsdp" else None
    return launch("pretrain_mae/main.py", *args, config_file=config)


@pytest.fixture(scope="module")
def stage1_runs(builtin, tmp_path_factory):
    """variant -> run folder, run on first use (the bf16 one feeds stage 2)."""
    runs = {}

    def get(variant: str):
        if variant not in runs:
            out = tmp_path_factory.mktemp("stage1") / variant
            stage1(out, variant)
            runs[variant] = out
        return runs[variant]
    return get


def load_timm(folder):
    import timm
    return timm.create_model(f"local-dir:{folder}", pretrained=True).to(DEVICE).eval()


@pytest.mark.parametrize("variant", list(STAGE1))
def test_stage1_trains_on_the_gpu_and_exports(variant, stage1_runs):
    if variant == "fsdp" and DRY_RUN:
        pytest.skip("Accelerate runs FSDP on accelerators only")
    from pretrain_mae.export import load_mae_safetensors
    out = stage1_runs(variant)
    rows = metrics(out)
    first, last = rows[0]["loss"], rows[-1]["loss"]
    assert rows[-1]["step"] == STEPS and last < first, (first, last)  # the bf16 loss falls
    peak = rows[-1].get("peak_memory_gib")
    assert DEVICE == "cpu" or peak > 0
    speed = sorted(r["images_per_s"] for r in rows[1:])[len(rows[1:]) // 2]  # median, compile warm-up left out
    record(f"stage 1 ({variant})", loss_first=round(first, 4), loss_last=round(last, 4),
           images_per_s=round(speed), peak_memory_gib=round(peak, 2) if peak else None)

    mae = load_mae_safetensors(out / "export" / "mae.safetensors").to(DEVICE).eval()
    encoder = load_timm(out / "export" / "encoder")
    x = torch.randn(2, 3, 64, 64, device=DEVICE)
    with torch.no_grad():
        assert torch.allclose(encoder.forward_features(x), mae.forward_features(x), atol=1e-5)
    if variant != "fsdp":  # FSDP's training states are sharded; the others hold the whole model
        trained = load_file(out / "checkpoints" / f"step_{STEPS:08d}" / "model.safetensors")
        assert all(torch.equal(mae.state_dict()[k].cpu(), v) for k, v in trained.items())
    assert (out / "figures" / f"reconstruction_{STEPS:08d}.png").is_file()


@pytest.fixture(scope="module")
def stage2_run(stage1_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage2") / "run"
    encoder = stage1_runs("bf16") / "export" / "encoder"
    launch("finetune_affectnet/main.py", "--config", "finetune_affectnet/configs/demo_cpu.yaml",
           f"model.encoder={encoder}", f"run.output_dir={out}", BF16, "run.compile=true",
           f"run.compile_backend={COMPILE_BACKEND}", f"run.total_steps={FINETUNE_STEPS}",
           f"eval.every={FINETUNE_STEPS // 2}", f"run.save_every={FINETUNE_STEPS // 2}", "ema_decay=0.99",
           "run.trackers=[]", *SHORT)
    return out


def test_stage2_fine_tunes_on_the_gpu_and_exports(stage2_run):
    from finetune_affectnet.model import load_classifier
    report = json.loads((stage2_run / "best" / "report.json").read_text())
    rows = metrics(stage2_run)
    assert report["samples"] > 0 and 0 <= report["top1"] <= 1
    record("stage 2 (bf16, compiled, EMA)", top1=round(report["top1"], 3), loss_first=round(rows[0]["loss"], 4),
           loss_last=round(rows[-1]["loss"], 4), peak_memory_gib=rows[-1].get("peak_memory_gib"))
    model = load_classifier(stage2_run / "export").to(DEVICE)
    with torch.no_grad():
        logits = model(torch.randn(4, 3, 64, 64, device=DEVICE))
    assert logits.shape == (4, len(report["class_names"])) and torch.isfinite(logits).all()


@pytest.fixture(scope="module")
def store(stage2_run, builtin):
    """Stage 3a on the built-in reaction videos: MTCNN and the frozen stage-2 encoder on the device."""
    launch("eri_downstream/extract.py", "all", f"encoder={stage2_run / 'best' / 'encoder'}", f"size={SHARD_SIZE}")
    return builtin / "features"


def test_stage3a_extracts_faces_and_features_on_the_gpu(store):
    from eri_downstream.dataset import read_table
    from eri_downstream.store import FeatureStore
    entries = read_table(store / "videos.csv")
    fs = FeatureStore(store)
    visual = [load_file(fs.features("visual", e.file_id))["features"] for e in entries]
    assert all(v.ndim == 2 and v.shape[1] == visual[0].shape[1] and torch.isfinite(v.float()).all() for v in visual)
    failures = (store / "faces_failures.csv").read_text().splitlines()[1:] if (store / "faces_failures.csv").is_file() else []
    record("stage 3a (MTCNN + frozen encoder)", videos=len(entries), face_failures=len(failures),
           visual_frames=sum(v.shape[0] for v in visual))
    assert len(failures) <= len(entries) // 10  # the built-in faces are found in nearly every video


def test_stage3b_trains_the_eri_model_on_the_gpu(store, tmp_path):
    out = tmp_path / "eri"
    launch("eri_downstream/train.py", "--config", "eri_downstream/configs/demo_cpu.yaml", f"data.store={store}",
           f"run.output_dir={out}", BF16, f"epochs={ERI_EPOCHS}", "run.trackers=[]")
    report = json.loads((out / "report.json").read_text())
    assert report["videos"] > 0 and (out / "submission.csv").is_file()
    record("stage 3b (bf16)", mean_pearson=round(report["mean"], 3), videos=report["videos"])
    best = load_file(out / "best.safetensors")
    assert all(torch.isfinite(v.float()).all() for v in best.values())
