"""Every training switch of every stage to the end of a run on CPU, export included.

Each switch runs the stage's real entry point for a few steps and must (1) compute what the
plain run computes (the same losses where the switch changes no arithmetic, close ones under
bf16 autocast) and (2) export exactly the weights it trained, loadable the way users load them.
torch.compile runs with the aot_eager backend here: dynamo and AOTAutograd wrap the model as
inductor does, without its C++ code generation (minutes on a CPU). FSDP, which Accelerate runs on
accelerators only, is checked at the level it touches our code: torch's FSDP on gloo, gathered
for export (`test_fsdp_shards_are_gathered_for_export`); tests/gpu runs the stages under it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from run_utils import ROOT, metrics, run_stage
from test_eri_train import store  # noqa: F401  (the module fixture: a learnable feature store)
from test_eri_train import tiny as eri_args
from test_finetune import tiny as finetune_args

COMPILE = ["run.compile=true", "run.compile_backend=aot_eager"]


def losses(run_dir) -> list[float]:
    return [row["loss"] for _, row in sorted(metrics(run_dir).items())]


def assert_same_losses(run_dir, baseline, rel: float) -> None:
    got, want = losses(run_dir), losses(baseline)
    assert len(got) == len(want) and got == pytest.approx(want, rel=rel, abs=1e-6), (got, want)
    if "bf16" in run_dir.name:  # autocast really ran: bf16 matmuls round differently
        assert got != want


def assert_no_wrapper_names(state: dict) -> None:
    assert not [k for k in state if k.startswith(("_orig_mod.", "module.", "_fsdp_wrapped_module."))]


# ---------------------------------------------------------------- stage 1: MAE pretraining

STAGE1 = {  # switch -> (overrides, relative tolerance of the losses against the plain run)
    "compile": (COMPILE, 1e-5),
    "bf16": (["run.mixed_precision=bf16"], 5e-2),
    "device_input": (["data.device_decode=true", "data.device_augment=true"], 2e-2),  # pixels a level apart
    "grad_checkpointing": (["model.grad_checkpointing=true"], 1e-5),
    "grad_accum": (["optim.grad_accum=2", "data.batch_size=4"], None),  # other masks: no loss to compare
    "fast_norm_bf16": (["run.mixed_precision=bf16", "model.fast_norm=true"], 5e-2),  # bf16 norms: close losses
    "input_path_thread": (["data.input_path=decoded", "data.prepare_in_thread=true"], 2e-2),
}


def stage1(out, shards, *extra):
    sources = "{celeba: %s, casia: %s}" % (shards["celeba"], shards["casia"])
    return ["model.name=mae_vit_test", f"data.sources={sources}", "data.batch_size=8", "data.num_workers=1",
            "data.shuffle_buffer=16", "data.block_size=64", "data.batches_per_epoch=10", "optim.lr=2e-3",
            "optim.warmup_steps=0", "run.mixed_precision=no", "run.trackers=[]", "run.log_every=1",
            "figures.every=3", "run.total_steps=3", "run.save_every=100", f"run.output_dir={out}", *extra]


@pytest.fixture(scope="module")
def plain_stage1(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "stage1"
    run_stage("pretrain_mae/main.py", *stage1(out, shards))
    return out


@pytest.mark.parametrize("switch", STAGE1)
def test_stage1_switch_trains_the_same_and_exports_what_it_trained(switch, shards, plain_stage1, tmp_path):
    import timm
    from pretrain_mae.export import load_mae_safetensors
    overrides, rel = STAGE1[switch]
    out = tmp_path / switch
    run_stage("pretrain_mae/main.py", *stage1(out, shards, *overrides))
    if rel is not None:
        assert_same_losses(out, plain_stage1, rel)
    trained = load_file(out / "checkpoints" / "step_00000003" / "model.safetensors")
    assert_no_wrapper_names(trained)
    mae = load_mae_safetensors(out / "export" / "mae.safetensors").state_dict()
    assert set(mae) == set(trained) and all(torch.equal(mae[k], trained[k]) for k in trained)
    encoder = timm.create_model(f"local-dir:{out / 'export' / 'encoder'}", pretrained=True).state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in encoder.items())
    assert (out / "figures" / "reconstruction_00000003.png").is_file()  # the figure hook saw the model too


# ---------------------------------------------------------------- stage 2: fine-tuning

STAGE2 = {
    "compile": (COMPILE, 1e-5),
    "bf16": (["run.mixed_precision=bf16"], 5e-2),
    "grad_checkpointing": (["model.grad_checkpointing=true"], 1e-5),
    "grad_accum": (["optim.grad_accum=2", "data.batch_size=8"], None),
}


def stage2(out, encoder, shards, *extra):
    return finetune_args(out, encoder, shards, "run.total_steps=3", "eval.every=3", "run.save_every=100",
                         "ema_decay=0.5", *extra)


@pytest.fixture(scope="module")
def plain_stage2(tiny_encoder, expression_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "stage2"
    run_stage("finetune_affectnet/main.py", *stage2(out, tiny_encoder, expression_shards))
    return out


@pytest.mark.parametrize("switch", STAGE2)
def test_stage2_switch_trains_the_same_and_exports_the_ema_weights(switch, tiny_encoder, expression_shards,
                                                                   plain_stage2, tmp_path):
    from finetune_affectnet.model import load_classifier
    overrides, rel = STAGE2[switch]
    out = tmp_path / switch
    run_stage("finetune_affectnet/main.py", *stage2(out, tiny_encoder, expression_shards, *overrides))
    if rel is not None:
        assert_same_losses(out, plain_stage2, rel)
    state = out / "checkpoints" / "step_00000003"
    trained = load_file(state / "model.safetensors")
    assert_no_wrapper_names(trained)
    # the EMA copy (our own file, written by Accelerate's save_state) is what is evaluated and exported
    ema = torch.load(state / "custom_checkpoint_0.pkl", weights_only=True)
    ema = {k.removeprefix("module."): v for k, v in ema.items()}
    exported = load_classifier(out / "export").state_dict()
    assert set(exported) == set(ema) and all(torch.equal(exported[k], ema[k]) for k in ema)
    assert any(not torch.equal(ema[k], trained[k]) for k in trained)  # EMA at 0.5: not the raw weights
    report = json.loads((out / "eval" / "step_00000003" / "ema" / "report.json").read_text())
    assert report["samples"] == 40


# ---------------------------------------------------------------- stage 3b: the ERI model

STAGE3B = {
    "compile": COMPILE,
    "bf16": ["run.mixed_precision=bf16"],
}


@pytest.mark.parametrize("switch", STAGE3B)
def test_stage3b_switch_reaches_its_report_and_best_weights(switch, store, tmp_path):  # noqa: F811
    from eri_downstream.model import ERIModel, ERIModelConfig
    out = tmp_path / switch
    run_stage("eri_downstream/train.py", *eri_args(store, out, "epochs=2", *STAGE3B[switch]))
    assert all(torch.isfinite(torch.tensor(losses(out))))
    best = load_file(out / "best.safetensors")
    assert_no_wrapper_names(best)
    ERIModel(ERIModelConfig(visual_dim=16, audio_dim=8, text_dim=8, num_frames=8)).load_state_dict(best, strict=True)
    report = json.loads((out / "report.json").read_text())
    assert report["videos"] == 16 and (out / "submission.csv").is_file()


def test_stage3b_refuses_gradient_accumulation_in_one_line(store, tmp_path):  # noqa: F811
    proc = run_stage("eri_downstream/train.py", *eri_args(store, tmp_path / "run", "optim.grad_accum=2"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("train.py: error: optim.grad_accum=2: stage 3b steps once")


# ---------------------------------------------------------------- settings refused before any work

@pytest.mark.parametrize("override, message", [
    ("run.mixed_precision=fp16", "run.mixed_precision=fp16 needs a GPU"),
    ("run.mixed_precision=fp32", "run.mixed_precision=fp32: must be one of auto, 'no', bf16, fp16"),  # at load
    ("run.compile_mode=fastest", "run.compile_mode=fastest: must be one of null, default, reduce-overhead"),
])
def test_impossible_precision_and_compile_settings_are_one_line(override, message):
    proc = run_stage("pretrain_mae/main.py", "data.synthetic=true", "run.trackers=[]", override, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------- FSDP, on gloo

FSDP_WORKER = """
import functools, sys, torch, torch.distributed as dist
from accelerate import Accelerator
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
from timm.models.vision_transformer import Block
from safetensors.torch import save_file
from pretrain_mae.model import build_mae
from shared.training.wrappers import gathered

acc = Accelerator(cpu=True)
torch.manual_seed(0)
model = FSDP(build_mae("mae_vit_test"), use_orig_params=True, device_id=torch.device("cpu"),
             auto_wrap_policy=functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={Block}))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
size = 32
x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(acc.process_index))
loss, _, _ = model(x, mask_ratio=0.75)
loss.backward()
optimizer.step()
compiled = torch.compile(model, backend="eager")  # a compile wrapper around FSDP, as run.compile makes
plain = gathered(acc, compiled, lambda: build_mae("mae_vit_test"))
if acc.is_main_process:
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, sys.argv[1])
with FSDP.summon_full_params(model):  # the reference: FSDP's own full view of the same weights
    if acc.is_main_process:
        save_file({n: p.detach().clone() for n, p in model.named_parameters()}, sys.argv[2])
"""


def test_fsdp_shards_are_gathered_for_export(tmp_path):
    from run_utils import stage_command
    script = tmp_path / "fsdp_worker.py"
    script.write_text(FSDP_WORKER)
    cmd, env = stage_command(str(script), [str(tmp_path / "gathered.safetensors"), str(tmp_path / "full.safetensors")],
                             processes=2)
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, want = load_file(tmp_path / "gathered.safetensors"), load_file(tmp_path / "full.safetensors")
    assert_no_wrapper_names(got)
    names = {k.replace("_fsdp_wrapped_module.", "") for k in want}
    assert names <= set(got)  # every trained parameter, under the model's own name
    for k, v in want.items():
        assert torch.equal(got[k.replace("_fsdp_wrapped_module.", "")], v), k


def test_sharded_runs_refuse_what_needs_the_whole_model():
    from accelerate.utils import DistributedType
    from shared.errors import UserError
    from shared.training.wrappers import refuse_sharding

    class Fsdp:
        distributed_type = DistributedType.FSDP

    with pytest.raises(UserError, match="ema_decay needs the whole model on every process"):
        refuse_sharding(Fsdp(), "ema_decay")


def test_fsdp_benchmark_takes_the_config_apart_on_gloo():
    """The benchmark that names the cost of FSDP on one GPU runs each variant (smoke, CPU)."""
    proc = subprocess.run([sys.executable, "benchmarks/fsdp_step.py", "--device", "cpu", "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line[len("result: "):]) for line in proc.stdout.splitlines() if line.startswith("result: ")]
    assert [r["name"].split(": ")[1] for r in rows] == ["accelerate", "no_shard", "no_mp_policy", "no_autocast",
                                                        "no_limit"]
    assert all(r["ratio"] > 0 for r in rows)
