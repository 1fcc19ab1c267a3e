"""Stage 2 end to end on CPU: learning, exact evaluation, class sets, export, resume."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from prediction_utils import check_classification, read_rows
from run_utils import assert_same_training, metrics, run_stage
from shard_utils import read_samples

SCRIPT = "finetune_affectnet/main.py"


def tiny(out, encoder, shards, *extra):
    return [f"model.encoder={encoder}", f"data.shards={shards}", "model.hidden_dim=32", "model.drop_path=0.0",
            "data.batch_size=16", "data.eval_batch_size=8", "data.num_workers=1", "data.shuffle_buffer=32",
            "data.auto_augment=null", "data.reprob=0.0", "data.mixup=0.0", "data.cutmix=0.0",
            "data.scale=[0.5, 1.0]", "optim.lr=3e-3", "optim.warmup_steps=5", "optim.betas=[0.9, 0.95]", "layer_decay=1.0",
            "ema_decay=null", "run.mixed_precision=no", "run.trackers=[]", "run.log_every=1",
            f"run.output_dir={out}", *extra]


def val_faces(shards, codes):
    """(uint8 images (N, 3, 32, 32), expression codes) of the validation split, read independently."""
    import io
    from PIL import Image
    samples = [s for s in read_samples(shards).values() if s["meta"]["split"] == "val" and s["cls"] in codes]
    images = np.stack([np.asarray(Image.open(io.BytesIO(s["jpg"])).convert("RGB")) for s in samples])
    return torch.from_numpy(images).permute(0, 3, 1, 2), np.array([s["cls"] for s in samples])


def test_learns_above_chance_and_reports_what_sklearn_computes(tiny_encoder, expression_shards, tmp_path):
    out = tmp_path / "run"
    run_stage(SCRIPT, *tiny(out, tiny_encoder, expression_shards, "run.total_steps=60", "eval.every=30",
                            "run.save_every=30"))
    final = json.loads((out / "eval" / "step_00000060" / "model" / "report.json").read_text())
    assert final["samples"] == 40 and len(final["class_names"]) == 8  # every validation face, once
    assert final["top1"] > 0.5  # chance: 0.125
    assert (out / "eval" / "step_00000060" / "model" / "confusion_matrix.png").stat().st_size > 10_000
    best = json.loads((out / "best" / "report.json").read_text())
    assert best["balanced_accuracy"] >= final["balanced_accuracy"]
    for folder in (out / "eval" / "step_00000030" / "model", out / "eval" / "step_00000060" / "model", out / "best"):
        assert check_classification(folder)["step"] in (30, 60)  # each report, from its predictions.csv
    assert set(metrics(out)) == set(range(1, 61))

    # the exported classifier, run on independently read faces, gives the reported numbers
    from finetune_affectnet.model import load_classifier
    from shared.training.images import normalize
    model = load_classifier(out / "export")
    images, codes = val_faces(expression_shards, set(range(8)))
    # the evaluation transform: centre 87.5 % crop, antialiased bicubic resize of the uint8 crop
    side, (h, w) = round(32 * 0.875), images.shape[2:]
    top, left = (h - side) // 2, (w - side) // 2
    crop = images[:, :, top:top + side, left:left + side].contiguous(memory_format=torch.channels_last)
    resized = torch.nn.functional.interpolate(crop, size=32, mode="bicubic", antialias=True)
    with torch.no_grad():
        pred = model(normalize(resized, (0.5,) * 3, (0.25,) * 3, "cpu")).argmax(-1).numpy()
    assert accuracy_score(codes, pred) == pytest.approx(final["top1"], abs=1e-9)
    assert balanced_accuracy_score(codes, pred) == pytest.approx(final["balanced_accuracy"], abs=1e-9)
    assert f1_score(codes, pred, average="macro") == pytest.approx(final["macro_f1"], abs=1e-9)


def test_seven_classes_leave_contempt_out(tiny_encoder, expression_shards, tmp_path):
    out = tmp_path / "run7"
    run_stage(SCRIPT, *tiny(out, tiny_encoder, expression_shards, "data.classes=7", "run.total_steps=4",
                            "eval.every=4", "run.save_every=100"))
    report = json.loads((out / "eval" / "step_00000004" / "model" / "report.json").read_text())
    assert report["samples"] == 35 and "contempt" not in report["class_names"] and len(report["class_names"]) == 7
    assert np.asarray(report["confusion_matrix"]).shape == (7, 7)


def test_two_processes_evaluate_every_face_once(tiny_encoder, expression_shards, tmp_path):
    out = tmp_path / "run2"
    run_stage(SCRIPT, *tiny(out, tiny_encoder, expression_shards, "run.total_steps=3", "eval.every=3",
                            "run.save_every=100", "ema_decay=0.9", "data.balance=loss"), processes=2)
    state = out / "checkpoints" / "step_00000003"
    ranks = [json.loads((state / f"rank_{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"]  # identical parameters on every rank
    val_keys = sorted(k for k, s in read_samples(expression_shards).items()
                      if s["meta"]["split"] == "val" and s["cls"] in range(8))
    for weights in ("model", "ema"):
        report = check_classification(out / "eval" / "step_00000003" / weights)  # gathered keys line up with the rows
        assert report["samples"] == 40 and sum(map(sum, report["confusion_matrix"])) == 40
        _, rows = read_rows(out / "eval" / "step_00000003" / weights / "predictions.csv")
        assert sorted(r["key"] for r in rows) == val_keys  # every validation face once, by its own key, from both ranks


def test_two_processes_match_one_with_the_same_global_batch(tiny_encoder, expression_shards, tmp_path):
    from safetensors.torch import load_file
    common = ("run.total_steps=6", "eval.every=6", "run.save_every=6", "data.balance=none", "data.lanes=2",
              "data.auto_augment=rand-m9-mstd0.5-inc1", "optim.warmup_steps=0")
    run_stage(SCRIPT, *tiny(tmp_path / "one", tiny_encoder, expression_shards, *common))
    run_stage(SCRIPT, *tiny(tmp_path / "two", tiny_encoder, expression_shards, *common, "data.batch_size=8"),
              processes=2)
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    for step in range(1, 7):
        assert two[step]["loss"] == pytest.approx(one[step]["loss"], abs=1e-5), step
    a = load_file(tmp_path / "one" / "checkpoints" / "step_00000006" / "model.safetensors")
    b = load_file(tmp_path / "two" / "checkpoints" / "step_00000006" / "model.safetensors")
    assert_same_training(a, b, lr=3e-3)
    reports = [json.loads((tmp_path / run / "eval" / "step_00000006" / "model" / "report.json").read_text())
               for run in ("one", "two")]
    assert reports[0]["samples"] == reports[1]["samples"] == 40
    # an 8-way classifier 6 steps from chance has near-ties, which 1e-5 noise may flip: at most one face
    moved = np.abs(np.subtract(reports[0]["confusion_matrix"], reports[1]["confusion_matrix"])).sum()
    assert moved <= 2


def test_resume_continues_the_same_run(tiny_encoder, expression_shards, tmp_path):
    args = ("run.total_steps=10", "eval.every=0", "run.save_every=5", "ema_decay=0.9", "data.auto_augment=rand-m9-mstd0.5-inc1",
            "data.reprob=0.25", "data.mixup=0.8", "data.cutmix=1.0")
    run_stage(SCRIPT, *tiny(tmp_path / "whole", tiny_encoder, expression_shards, *args))
    run_stage(SCRIPT, *tiny(tmp_path / "parts", tiny_encoder, expression_shards, *args))
    # interrupt: drop the final state and resume from step 5
    import shutil
    shutil.rmtree(tmp_path / "parts" / "checkpoints" / "step_00000010")
    (tmp_path / "parts" / "metrics.jsonl").write_text(
        "".join(line + "\n" for line in (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines()[:5]))
    run_stage(SCRIPT, "--resume", "auto", *tiny(tmp_path / "parts", tiny_encoder, expression_shards, *args))
    a, b = metrics(tmp_path / "whole"), metrics(tmp_path / "parts")
    for step in range(1, 11):
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], abs=1e-6), step


def test_exported_encoder_loads_through_timm_and_the_stage3_loader(tiny_encoder, expression_shards, tmp_path):
    import timm
    from finetune_affectnet.model import load_classifier
    from shared.encoders import load_frozen_encoder
    out = tmp_path / "run"
    run_stage(SCRIPT, *tiny(out, tiny_encoder, expression_shards, "run.total_steps=2", "eval.every=0",
                            "run.save_every=100"))
    x = torch.randn(3, 3, 32, 32)
    encoder = timm.create_model(f"local-dir:{out / 'export' / 'encoder'}", pretrained=True).eval()
    frozen, info = load_frozen_encoder(out / "export" / "encoder")
    classifier = load_classifier(out / "export")
    with torch.no_grad():
        assert torch.allclose(encoder(x), classifier.features(x), atol=1e-6)
        assert torch.allclose(frozen(x), classifier.features(x), atol=1e-6)
    assert frozen(x).shape == (3, 48) and not any(p.requires_grad for p in frozen.parameters())
    assert tuple(info.mean) == (0.5, 0.5, 0.5)


def test_exports_record_the_evaluation_preprocessing_stage3_applies(tiny_encoder, expression_shards, tmp_path):
    from eri_downstream.visual import FrameEncoder
    out = tmp_path / "run"
    run_stage(SCRIPT, *tiny(out, tiny_encoder, expression_shards, "run.total_steps=2", "eval.every=0",
                            "run.save_every=100", "data.crop_pct=0.75", "data.interpolation=bilinear"))
    for export in ("best", "export"):
        cfg = json.loads((out / export / "encoder" / "config.json").read_text())["pretrained_cfg"]
        assert (cfg["input_size"], cfg["crop_pct"], cfg["crop_mode"], cfg["interpolation"]) == \
            ([3, 32, 32], 0.75, "center", "bilinear")
        assert (cfg["mean"], cfg["std"]) == ([0.5] * 3, [0.25] * 3)
    prepared = FrameEncoder(out / "export" / "encoder", torch.device("cpu")).preprocess
    assert (prepared.crop_pct, prepared.interpolation, prepared.input_size) == (0.75, "bilinear", (3, 32, 32))


def test_linear_probe_leaves_the_encoder_untouched(tiny_encoder, expression_shards, tmp_path):
    from safetensors.torch import load_file
    out = tmp_path / "probe"
    run_stage(SCRIPT, *tiny(out, tiny_encoder, expression_shards, "model.linear_probe=true", "model.pool=token",
                            "run.total_steps=30", "eval.every=30", "run.save_every=100", "optim.lr=1e-2"))
    before = load_file(tiny_encoder / "model.safetensors")
    after = load_file(out / "export" / "encoder" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    report = check_classification(out / "eval" / "step_00000030" / "model")  # recomputed from predictions.csv
    assert report["samples"] == 40 and report["top1"] > 0.25  # a linear read-out of random features
