"""Training on data and checkpoints as they really come: a constant validation column, a model
whose predictions are constant, a resume with changed data settings, official fine-tuned MAE
checkpoints. docs/faults.md names these tests."""
from __future__ import annotations

import argparse
import json
import logging
import math

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from eri_downstream.config import RESUME_KEYS as ERI_KEYS, ERIConfig
from eri_downstream.dataset import EMOTIONS, VideoEntry, write_table
from eri_downstream.folds import read_submission
from eri_downstream.store import FeatureStore
from finetune_affectnet.config import FinetuneConfig, resume_keys as finetune_keys
from finetune_affectnet.model import build_classifier
from pretrain_mae.config import PretrainConfig, resume_keys as pretrain_keys
from pretrain_mae.main import initial_weights
from pretrain_mae.model import build_mae
from shared.checkpoints import load_into
from shared.config import to_dict
from shared.errors import UserError
from shared.export import save_timm_folder
from shared.metrics import pearson_report
from shared.training.checkpoint import Checkpointer
from fault_utils import NoData, accelerator, tiny_pretrain
from run_utils import run_stage

SCRIPT = "eri_downstream/train.py"


def feature_store(root, *, constant_surprise: bool = False, zero_features: bool = False):
    """16 train, 8 val, 4 test videos whose labels follow their mean visual feature."""
    rng, fs, entries = np.random.default_rng(0), FeatureStore(root), []
    mix = rng.normal(size=(8, 7))
    for split, n in (("train", 16), ("val", 8), ("test", 4)):
        for _ in range(n):
            file_id = f"{len(entries):05d}"
            v = rng.normal(size=(int(rng.integers(6, 12)), 8)) + rng.normal(size=8)
            labels = 1 / (1 + np.exp(-v.mean(0) @ mix / 2))
            if constant_surprise and split == "val":
                labels[EMOTIONS.index("Surprise")] = 0.0  # Hume-Reaction has many exact zeros
            for step, x in (("visual", v), ("audio", rng.normal(size=(10, 4)))):
                x = np.zeros_like(x) if zero_features else x
                fs.save(step, file_id, torch.tensor(x, dtype=torch.float32), status="ok")
            entries.append(VideoEntry(file_id, split, None if split == "test" else [round(float(x), 6) for x in labels],
                                      "", "", None, None))
    write_table(entries, fs.table)
    return root


def eri_args(store, out, *extra):
    return [f"data.store={store}", f"run.output_dir={out}", "model.modalities=[visual, audio]", "data.k=4",
            "data.batch_size=8", "data.num_workers=0", "epochs=2", "restart_epochs=2", "ema_decay=0",
            "run.mixed_precision=no", "run.trackers=[]", "run.log_every=1", *extra]


# -- an undefined metric (kind 6) ---------------------------------------------------------------
def test_a_constant_validation_column_is_said_at_the_start_and_the_run_finishes(tmp_path):
    """The issue's input: every validation video has Surprise = 0. Pearson is NaN there for any
    model; the run said nothing, saved no best model and died after the last epoch. Now one line
    at the start names the column, selection uses the other 6, the NaN stays in the report, and
    the best weights, report and submission are written. Then a resume of that run with
    data.batch_size 4 instead of 8 (kind 8) is refused in one line naming the key."""
    store, out = feature_store(tmp_path / "store", constant_surprise=True), tmp_path / "run"
    proc = run_stage(SCRIPT, *eri_args(store, out))
    assert "validation column(s) Surprise constant (all 0 over 8 videos): Pearson undefined there, shown as NaN; " \
           "selecting on the mean over the other 6 emotions" in proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert math.isnan(report["per_emotion"]["Surprise"]) and math.isnan(report["mean"])
    assert report["nan"] == [{"emotion": "Surprise", "reason": "constant truth"}]
    defined = [v for k, v in report["per_emotion"].items() if k != "Surprise"]
    assert report["defined"] == [e for e in EMOTIONS if e != "Surprise"]
    assert report["mean_defined"] == pytest.approx(np.mean(defined), abs=1e-9)
    assert (out / "best.safetensors").is_file() and len(read_submission(out / "submission.csv")[0]) == 4
    assert "| Surprise | nan |" in (out / "per_emotion.md").read_text()

    (out / "report.json").unlink()  # as if the job had been stopped before its end
    proc = run_stage(SCRIPT, "--resume", "auto", *eri_args(store, out, "data.batch_size=4"), check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("train.py: error: --resume ")
    assert "data.batch_size is 4 now but 8 in that state" in last and "resume with data.batch_size=8" in last


def test_a_model_with_constant_predictions_still_ends_with_its_report(tmp_path):
    """Sibling: features that are all zero make every prediction column constant: Pearson is
    NaN for all 7 at every epoch. The run finishes; selection counts the columns as r = 0."""
    store, out = feature_store(tmp_path / "store", zero_features=True), tmp_path / "run"
    run_stage(SCRIPT, *eri_args(store, out))
    report = json.loads((out / "report.json").read_text())
    assert [n["reason"] for n in report["nan"]] == ["constant prediction"] * 7
    assert report["mean_defined"] == 0.0 and math.isnan(report["mean"])
    assert (out / "best.safetensors").is_file() and (out / "submission.csv").is_file()


def test_selection_leaves_out_truth_and_counts_the_models_undefined_columns_as_zero():
    rng = np.random.default_rng(0)
    true, pred = rng.random((20, 7)), rng.random((20, 7))
    true[:, 6], pred[:, 0] = 0.0, 0.5
    report = pearson_report(pred, true, EMOTIONS)
    r = [report["per_emotion"][e] for e in EMOTIONS]
    assert report["defined"] == EMOTIONS[:6] and math.isnan(r[0]) and math.isnan(r[6])
    assert report["mean_defined"] == pytest.approx((0.0 + sum(r[1:6])) / 6, abs=1e-12)


# -- resuming with changed data settings (kind 8) ----------------------------------------------
def changed(value):
    """Another value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, (list, tuple)):
        return [*value, "extra"]
    if isinstance(value, dict):
        return {**value, 1: 2}
    return "other"


@pytest.mark.parametrize("config, keys", [(PretrainConfig, pretrain_keys(PretrainConfig())),
                                          (FinetuneConfig, finetune_keys(FinetuneConfig())), (ERIConfig, ERI_KEYS)],
                         ids=["stage 1", "stage 2", "stage 3b"])
def test_every_stage_refuses_a_resume_whose_data_settings_changed(tmp_path, config, keys):
    acc, model, _ = accelerator(torch.nn.Linear(2, 1))
    checkpointer = Checkpointer(acc, tmp_path)
    saved = to_dict(config())
    checkpointer.save(6, {"stream": {}}, saved)
    assert checkpointer.restore("auto", NoData(), saved, keys)[0] == 6  # the same settings: resumed
    for key in keys:
        section, _, name = key.rpartition(".")
        new = json.loads(json.dumps(saved))
        (new[section] if section else new)[name] = changed((saved[section] if section else saved)[name])
        with pytest.raises(UserError, match=rf"--resume \S+step_00000006: {key} is .* now but .* in that state"):
            checkpointer.restore("auto", NoData(), new, keys)
    assert "data.batch_size" in keys and "run.seed" in keys
    assert not any(k.endswith(("total_steps", "epochs", "output_dir", "num_workers")) for k in keys)


def test_a_resume_with_other_settings_says_which(tmp_path, caplog):
    """Other settings may resume (a new lr, more epochs), but never without a word."""
    acc, model, _ = accelerator(torch.nn.Linear(2, 1))
    checkpointer = Checkpointer(acc, tmp_path)
    saved = to_dict(ERIConfig())
    checkpointer.save(6, {"stream": {}}, saved)
    new = json.loads(json.dumps(saved))
    new["optim"]["lr"], new["data"]["text_features"], new["run"]["output_dir"] = 2e-4, "sentence", "elsewhere"
    with caplog.at_level(logging.WARNING):
        assert checkpointer.restore("auto", NoData(), new, ERI_KEYS)[0] == 6
    said = [r.getMessage() for r in caplog.records if "settings other than its own" in r.getMessage()]
    assert len(said) == 1 and said[0].endswith("data.text_features: text -> sentence; optim.lr: 0.0001 -> 0.0002"), said
    caplog.clear()
    checkpointer.restore("auto", NoData(), saved, ERI_KEYS)
    assert not any("settings other than its own" in r.getMessage() for r in caplog.records)


# -- official checkpoint variants (kind 9) -----------------------------------------------------
def finetuned_official(path, mae) -> str:
    """The layout of facebookresearch/mae's fine-tuned checkpoints (global pooling): the encoder
    without `norm`, plus `fc_norm` and a 1000-class `head`, pickled with the training args."""
    sd = {k: v for k, v in mae.state_dict().items() if not k.startswith(("decoder", "mask_token", "norm."))}
    sd.update({"fc_norm.weight": torch.full((32,), 2.0), "fc_norm.bias": torch.full((32,), 0.5),
               "head.weight": torch.randn(1000, 32), "head.bias": torch.zeros(1000)})
    torch.save({"model": sd, "args": argparse.Namespace(global_pool=True, nb_classes=1000)}, path)
    return str(path)


def test_an_official_finetuned_checkpoint_starts_stage_1_and_resuming_it_checks_the_data(tmp_path):
    """The issue's input: a fine-tuned MAE checkpoint (fc_norm + head, no norm) as model.init was
    refused for its 2 missing norm tensors. Now it loads: the encoder blocks come from it, norm
    stays at init (fc_norm acts on the averaged feature, not on tokens) and the log says so."""
    torch.manual_seed(0)
    source = build_mae("mae_vit_test")
    path = finetuned_official(tmp_path / "mae_finetuned_vit_test.pth", source)
    mae = build_mae("mae_vit_test")
    report = load_into(mae, initial_weights(path))
    assert torch.equal(mae.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)
    assert torch.equal(mae.norm.weight, torch.ones(32)) and torch.equal(mae.norm.bias, torch.zeros(32))
    assert report.pooled_finetune and sorted(report.missing)[-2:] == ["norm.bias", "norm.weight"]
    assert "norm stays at init and fc_norm is not mapped" in report.summary()

    out = tmp_path / "run"
    proc = run_stage("pretrain_mae/main.py", *tiny_pretrain(out, 2), f"model.init={path}")
    assert f"initialised from {path}: loaded" in proc.stderr and "norm stays at init" in proc.stderr
    proc = run_stage("pretrain_mae/main.py", "--resume", "auto", *tiny_pretrain(out, 4), "data.batch_size=4",
                     f"model.init={path}", check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "data.batch_size is 4 now but 2 in that state" in last


def test_a_finetuned_folder_starts_stage_1_and_stage_2_logs_what_it_loaded(tmp_path, caplog):
    """Siblings: a fine-tuned (average-pooled, fc_norm) timm folder as stage-1 model.init; and
    stage 2, which built a load summary and never printed it."""
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0, global_pool="avg")
    torch.manual_seed(1)
    encoder = VisionTransformer(**args)
    folder = save_timm_folder(encoder, tmp_path / "finetuned", architecture="vit_tiny_patch16_224", model_args=args,
                              mean=(0.5,) * 3, std=(0.25,) * 3)
    mae = build_mae("mae_vit_test")
    report = load_into(mae, initial_weights(str(folder)))
    assert report.pooled_finetune and torch.equal(mae.blocks[0].attn.qkv.weight, encoder.blocks[0].attn.qkv.weight)
    with caplog.at_level(logging.INFO, logger="finetune_affectnet"):
        _, info = build_classifier(str(folder), 8)
    assert f"encoder {info.summary()}" in caplog.text and "loaded " in info.summary()
