"""Stage 3b end to end on a synthetic feature store whose labels are learnable from the
features: learning, CV with an ensembled submission, exact resume, the grid table."""
from __future__ import annotations

import csv
import json
import signal
import subprocess

import numpy as np
import pytest
import torch

from eri_downstream.dataset import EMOTIONS, VideoEntry, write_table
from eri_downstream.folds import read_submission
from eri_downstream.store import FeatureStore
from prediction_utils import check_pearson
from run_utils import ROOT, assert_same_training, metrics, run_stage, start_stage, wait_for_steps
from test_slurm import slurm_env

SCRIPT = "eri_downstream/train.py"
DIMS = {"visual": 16, "audio": 8, "text": 8}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """40 train, 16 val, 8 test videos. Each emotion's intensity is a sigmoid of a fixed mix of
    the video's mean visual and audio features; text is noise (or zeros: no speech)."""
    root = tmp_path_factory.mktemp("eri_store")
    rng = np.random.default_rng(0)
    mix_v, mix_a = rng.normal(size=(16, 7)), rng.normal(size=(8, 7))
    fs, entries = FeatureStore(root), []
    for split, n in (("train", 40), ("val", 16), ("test", 8)):
        for i in range(n):
            file_id = f"{len(entries):05d}"
            v = rng.normal(size=(int(rng.integers(10, 24)), 16)) + rng.normal(size=16)
            a = rng.normal(size=(int(rng.integers(20, 50)), 8)) + rng.normal(size=8)
            t = rng.normal(size=(int(rng.integers(2, 6)), 8)) if i % 4 else np.zeros((1, 8))
            labels = 1 / (1 + np.exp(-(v.mean(0) @ mix_v + a.mean(0) @ mix_a) / 2))
            for step, x in (("visual", v), ("audio", a), ("text", t)):
                fs.save(step, file_id, torch.tensor(x, dtype=torch.float32), status="ok", fingerprint="test")
            entries.append(VideoEntry(file_id, split, None if split == "test" else [round(float(x), 6) for x in labels],
                                      "30", "Nowhere", None, None))
    write_table(entries, fs.table)
    return root


def tiny(store, out, *extra):
    overrides = "{visual_dim: 16, audio_dim: 8, text_dim: 8}"
    return [f"data.store={store}", f"run.output_dir={out}", f"model.overrides={overrides}", "data.k=8",
            "data.batch_size=8", "data.num_workers=0", "optim.lr=3e-3", "optim.min_lr=0", "optim.weight_decay=0.05",
            "optim.betas=[0.9, 0.95]", "epochs=15", "restart_epochs=5",
            "patience=15", "ema_decay=0.9", "run.mixed_precision=no", "run.trackers=[]", "run.log_every=1",
            *extra]


def test_learns_reports_plots_and_writes_a_submission(store, tmp_path):
    out = tmp_path / "run"
    run_stage(SCRIPT, *tiny(store, out, "model.overrides={}"))  # feature sizes read from the store
    report = json.loads((out / "report.json").read_text())
    assert report["videos"] == 16 and set(report["per_emotion"]) == set(EMOTIONS)
    assert report["mean"] > 0.5, report
    assert check_pearson(out) == report["mean"]  # recomputed from predictions.csv
    assert f"| **mean** | **{report['mean']:.4f}** |" in (out / "per_emotion.md").read_text()
    for png in ("per_emotion_pearson.png", "predicted_vs_true.png", "learning_curves.png"):
        assert (out / png).stat().st_size > 5000
    validation = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in validation] == list(range(1, 16))  # the curve's validation points
    assert report["best_epoch"] == max(validation, key=lambda row: row["mean_defined"])["epoch"]
    ids, preds = read_submission(out / "submission.csv")
    assert sorted(ids) == [f"{i:05d}" for i in range(56, 64)] and preds.shape == (8, 7)
    header = (out / "submission.csv").read_text().splitlines()[0]
    assert header == "File_ID," + ",".join(EMOTIONS)


def test_cross_validation_ensembles_the_folds(store, tmp_path):
    out = tmp_path / "cv"
    run_stage(SCRIPT, *tiny(store, out, "folds=3", "epochs=4"))
    summary = json.loads((out / "cv_results.json").read_text())
    assert len(summary["folds"]) == 3 and np.isfinite(summary["out_of_fold"])
    assert "| out of fold" in (out / "cv_results.md").read_text()
    ids, ensemble = read_submission(out / "submission.csv")
    folds = [read_submission(out / f"fold_{i}" / "submission.csv") for i in range(3)]
    by_fold = [dict(zip(i, p)) for i, p in folds]
    expected = np.mean([[f[x] for x in ids] for f in by_fold], axis=0)
    assert np.allclose(ensemble, expected, atol=1e-6)
    held_out = [set(json.loads((out / f"fold_{i}" / "report.json").read_text())["val_predictions"]) for i in range(3)]
    assert sum(map(len, held_out)) == 56 and set.union(*held_out) == {f"{i:05d}" for i in range(56)}
    assert [check_pearson(out / f"fold_{i}") for i in range(3)] == summary["folds"]  # each fold's predictions.csv
    assert check_pearson(out, "cv_results.json", "out_of_fold") == summary["out_of_fold"]  # all 56, out of fold


def test_folds_run_as_separate_jobs_then_one_run_collects_them(store, tmp_path):
    """A SLURM array (launch/slurm/eri_folds.sbatch): each task trains one fold; the run
    without `fold` trains nothing again and writes the CV table and the ensemble."""
    out = tmp_path / "cv"
    bad = run_stage(SCRIPT, *tiny(store, out, "folds=3", "fold=3"), check=False)
    assert bad.returncode == 2 and "fold=3 needs folds=N with 0 <= fold < N" in bad.stderr.strip().splitlines()[-1]
    # fold 1 through the array script itself, with stand-ins for srun and scontrol
    env = {**slurm_env(tmp_path), "SLURM_ARRAY_TASK_ID": "1", "RUN_ROOT": str(out)}
    job = subprocess.run(["bash", str(ROOT / "launch" / "slurm" / "eri_folds.sbatch"),
                          *tiny(store, out, "folds=3", "epochs=2")], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert sorted(p.parent.name for p in out.glob("fold_*/report.json")) == ["fold_1"]
    assert not (out / "cv_results.json").exists()
    for fold in (0, 2):
        run_stage(SCRIPT, *tiny(store, out, "folds=3", f"fold={fold}", "epochs=2"))
    reports = {i: (out / f"fold_{i}" / "report.json").read_bytes() for i in range(3)}
    run_stage(SCRIPT, *tiny(store, out, "folds=3", "epochs=2"))
    assert {i: (out / f"fold_{i}" / "report.json").read_bytes() for i in range(3)} == reports  # none trained again
    summary = json.loads((out / "cv_results.json").read_text())
    assert summary["folds"] == [json.loads(reports[i])["mean"] for i in range(3)]
    held_out = [set(json.loads(reports[i])["val_predictions"]) for i in range(3)]
    assert sum(map(len, held_out)) == 56 and set.union(*held_out) == {f"{i:05d}" for i in range(56)}
    ids, ensemble = read_submission(out / "submission.csv")
    by_fold = [dict(zip(*read_submission(out / f"fold_{i}" / "submission.csv"))) for i in range(3)]
    assert np.allclose(ensemble, np.mean([[f[x] for x in ids] for f in by_fold], axis=0), atol=1e-6)


def test_resume_after_a_signal_gives_the_same_losses(store, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    args = ("epochs=6", "run.stop_check_every=1", "run.save_every=1000")
    run_stage(SCRIPT, *tiny(store, whole, *args))
    proc = start_stage(SCRIPT, *tiny(store, parts, *args))
    wait_for_steps(parts, 7, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 75
    saved = (parts / "config.yaml").read_bytes()
    refused = run_stage(SCRIPT, "--resume", "auto", *tiny(store, parts, *args, "data.batch_size=4"), check=False)
    assert refused.returncode == 2 and "data.batch_size is 4 now but 8 in that state" in refused.stderr
    assert (parts / "config.yaml").read_bytes() == saved  # what ran there is still on record
    run_stage(SCRIPT, "--resume", "auto", *tiny(store, parts, *args))
    a, b = metrics(whole), metrics(parts)
    assert sorted(a) == sorted(b)
    for step in a:
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], abs=1e-6), step
    # finished: other settings would read its results back untrained, so they are refused
    saved = (parts / "config.yaml").read_bytes()
    refused = run_stage(SCRIPT, "--resume", "auto", *tiny(store, parts, "epochs=7", *args[1:]), check=False)
    assert refused.returncode == 2 and f"{parts} holds a finished run of other settings (epochs: 6 -> 7)" in refused.stderr
    assert (parts / "config.yaml").read_bytes() == saved


def test_two_processes_match_one_and_evaluate_every_video_once(store, tmp_path):
    """Dropout and mixup draw from each rank's own RNG; without them, 2 x 4 is 1 x 8."""
    from safetensors.torch import load_file
    no_dropout = "model.overrides={visual_dim: 16, audio_dim: 8, text_dim: 8, dropout: 0.0, branch_dropout: 0.0}"
    args = ("epochs=3", "data.mixup=0", no_dropout, "run.save_every=1000")
    run_stage(SCRIPT, *tiny(store, tmp_path / "one", *args))
    run_stage(SCRIPT, *tiny(store, tmp_path / "two", *args, "data.batch_size=4"), processes=2)
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(1, 16))  # 40 videos / 8 per step = 5 steps per epoch
    for step in one:
        assert two[step]["loss"] == pytest.approx(one[step]["loss"], abs=1e-5), step
    a, b = (load_file(tmp_path / run / "best.safetensors") for run in ("one", "two"))
    assert_same_training(a, b, lr=3e-3)  # and what they compute, the validation predictions, to 1e-4
    preds = [json.loads((tmp_path / run / "report.json").read_text())["val_predictions"] for run in ("one", "two")]
    assert max(abs(x - y) for k in preds[0] for x, y in zip(preds[0][k], preds[1][k])) < 1e-4
    state = tmp_path / "two" / "checkpoints" / "step_00000015"
    ranks = [json.loads((state / f"rank_{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"]  # identical parameters on every rank
    for run in ("one", "two"):
        report = json.loads((tmp_path / run / "report.json").read_text())
        assert report["videos"] == 16 and len(report["val_predictions"]) == 16  # 16 / 2 ranks: no padding repeats
        ids, _ = read_submission(tmp_path / run / "submission.csv")
        assert len(ids) == len(set(ids)) == 8
    reports = [json.loads((tmp_path / run / "report.json").read_text()) for run in ("one", "two")]
    assert reports[1]["mean"] == pytest.approx(reports[0]["mean"], abs=1e-4)


def test_grid_tabulates_configurations_beside_the_paper(store, tmp_path):
    """Each configuration in the table beside the paper, written beside the runs; one that fails
    (an EMI configuration on this ERI store) is marked, the others still run, the grid exits 2."""
    import yaml
    configs = []
    for name, config in (("table2_v", {"model": {"modalities": ["visual"]}}), ("wrong_task", {"task": "emi"}),
                         ("mine_va", {"model": {"modalities": ["visual", "audio"]}})):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**config, "run": {"output_dir": "unused"}}))
        configs.append(str(path))
    proc = run_stage("eri_downstream/grid.py", "--configs", *configs, *tiny(store, tmp_path / "grid", "epochs=2"),
                     check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "wrong_task failed (exit 2); going on with the others" in proc.stderr
    with open(tmp_path / "grid" / "results.csv", newline="") as f:  # beside the runs: run.output_dir
        rows = {r["configuration"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["table2_v", "wrong_task", "mine_va"]
    assert rows["table2_v"]["paper"] == "0.3925" and rows["mine_va"]["paper"] == ""
    assert all(-1 <= float(rows[n]["ours"]) <= 1 for n in ("table2_v", "mine_va")) and rows["mine_va"]["task"] == "eri"
    assert rows["wrong_task"]["ours"] == "failed (exit 2)" and "task=emi" in rows["wrong_task"]["changes"]
    assert "| table2_v |" in proc.stdout


def _face_track(crops):
    from eri_downstream.faces import FaceTrack
    t = len(crops)
    return FaceTrack(crops=crops, times=np.arange(t) / 6.0, frame_indices=np.arange(t) * 5,
                     boxes=np.tile([0.0, 0.0, 32.0, 32.0], (t, 1)), scores=np.ones(t), detected=np.ones(t, bool),
                     filled_from=-np.ones(t, dtype=np.int64), status="ok", source_fps=30.0, detector="test")


def test_end_to_end_mode_reads_the_face_crops_through_the_frozen_encoder(store, tiny_encoder, tmp_path):
    """Face tracks for the synthetic store; without augmentation the end-to-end visual input
    equals the cache `extract.py visual` writes (up to its float16), and training runs."""
    import shutil
    from types import SimpleNamespace
    from eri_downstream.data import FaceFrameDataset, FeatureDataset, collate
    from eri_downstream.dataset import read_table
    from eri_downstream.faces import save_face_track
    from eri_downstream.steps import visual_step
    from eri_downstream.train import VisualFront
    root = tmp_path / "store"
    shutil.copytree(store, root, ignore=shutil.ignore_patterns("visual"))
    fs, rng = FeatureStore(root), np.random.default_rng(1)
    entries = read_table(fs.table)
    for entry in entries:
        save_face_track(_face_track(rng.integers(0, 256, (int(rng.integers(9, 15)), 32, 32, 3), dtype=np.uint8)),
                        fs.faces(entry.file_id))
    step = visual_step(fs, SimpleNamespace(encoder=str(tiny_encoder), batch_size=16), torch.device("cpu"))
    for entry in entries:
        step.work(entry)

    frames = FaceFrameDataset(fs, entries[:4], modalities=["visual"], k=8, train=False)
    cached = FeatureDataset(fs, entries[:4], modalities=["visual"], k=8, train=False)
    batch = collate([frames[i] for i in range(4)])
    assert batch["visual"].dtype == torch.uint8 and batch["visual"].shape == (4, 8, 3, 32, 32)
    encoded = VisualFront(str(tiny_encoder), torch.device("cpu"))(batch)["visual"]
    expected = collate([cached[i] for i in range(4)])["visual"]
    assert torch.allclose(encoded, expected, atol=2e-2, rtol=1e-2)
    augmented = FaceFrameDataset(fs, entries[:1], modalities=["visual"], k=8, train=True)
    assert torch.equal(augmented[0]["visual"], augmented[0]["visual"])  # reproducible per item and epoch
    assert not torch.equal(augmented[0]["visual"], frames[0]["visual"])

    out = tmp_path / "e2e"
    run_stage(SCRIPT, *tiny(root, out, "epochs=2", "data.end_to_end=true", f"data.encoder={tiny_encoder}",
                            "model.overrides={audio_dim: 8, text_dim: 8}"))
    report = json.loads((out / "report.json").read_text())
    assert report["videos"] == 16 and len(report["per_emotion"]) == 7
