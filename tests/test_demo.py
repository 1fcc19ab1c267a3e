"""The demo lineage (`launch/demo.sh` runs `launch/demo.py`), its short `--quick` pass: every stage
runs through `accelerate launch` on the built-in data, the summary reports each stage, and every
published folder loads back."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    env.pop("AFFECT_LINEAGE_DATA", None)  # the demo points the stages at its own data folder
    proc = subprocess.run([sys.executable, "launch/demo.py", "--out", str(out), "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def test_the_console_says_each_step_as_it_starts_and_ends_and_where_the_logs_are(demo):
    out, stdout = demo
    assert f"each step's full output goes to {out / 'logs'}" in stdout.splitlines()[0]
    mae = [json.loads(line) for line in (out / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    fine = json.loads((out / "finetune" / "best" / "report.json").read_text())
    eri = json.loads((out / "eri" / "report.json").read_text())
    for n, title, figure in (
            (1, "built-in datasets and face shards", r"\d+ faces \(affectnet \d+, casia \d+, celeba \d+\), 40 ERI reaction videos"),
            (2, "stage 1: MAE pretraining", re.escape(f"training loss {mae[0]['loss']:.3f} at step 10 -> "
                                                      f"{mae[-1]['loss']:.3f} at step 40")),
            (3, "stage 2: expression fine-tuning", re.escape(f"validation top-1 {fine['top1']:.3f}")),
            (4, "stage 3a: faces, visual, audio and text features", r"features of 40 videos \(visual\)"),
            (5, "stage 3b: ERI model", re.escape(f"validation mean Pearson {eri['mean']:.3f} on 12 videos "
                                                 f"(the model of epoch {eri['best_epoch']})"))):
        name = ["data", "pretrain", "finetune", "extract", "eri"][n - 1]
        assert f"[{n}/8] {title}: started " in stdout and f"(log: {out / 'logs' / name}.log)" in stdout
        assert re.search(rf"\[{n}/8\] {re.escape(title)}: done in \d+ (min \d\d )?s: {figure}", stdout), (title, stdout)
    assert stdout.strip().endswith(f"export AFFECT_LINEAGE_DATA={out / 'data'}")  # how later stages find this data


def test_every_stage_says_it_uses_the_built_in_data(demo):
    out, _ = demo
    for stage in ("pretrain", "finetune", "extract", "eri"):
        log = (out / "logs" / f"{stage}.log").read_text()
        assert re.search(rf"no data given: using the built-in synthetic .* at {re.escape(str(out / 'data'))}", log), stage


def test_summary_reports_every_stage_from_the_runs_own_files(demo):
    out, stdout = demo
    summary = (out / "SUMMARY.md").read_text()
    assert summary in stdout
    mae = [json.loads(line) for line in (out / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert mae[-1]["step"] == 40 and mae[-1]["loss"] < mae[0]["loss"]  # the MAE learns even in 40 steps
    import torch
    assert f"Environment: torch {torch.__version__}, 2 thread(s) per stage (OMP_NUM_THREADS), " in summary
    lowest = min(mae, key=lambda r: r["loss"])
    assert (f"each value the mean over one log interval of 10 steps: {mae[0]['loss']:.3f} at step 10 (the first "
            f"logged), {mae[-1]['loss']:.3f} at step 40 (the last: the card's final training loss), lowest "
            f"{lowest['loss']:.3f} at step {lowest['step']}.") in summary
    fine = json.loads((out / "finetune" / "best" / "report.json").read_text())
    eri = json.loads((out / "eri" / "report.json").read_text())
    assert f"the weights of step {fine['step']} (best balanced accuracy): top-1 {fine['top1']:.3f}" in summary
    assert (f"the model of epoch {eri['best_epoch']} of 4 (best validation mean Pearson): mean Pearson "
            f"{eri['mean']:.3f}") in summary
    assert (out / "eri" / "per_emotion.md").read_text().strip() in summary
    for image in re.findall(r"!\[[^]]*\]\(([^)]+)\)", summary):  # every figure it shows exists
        assert (out / image).is_file() and (out / image).stat().st_size > 1000, image
    assert {"mae_loss.png", "confusion_matrix.png", "per_emotion_pearson.png", "learning_curves.png"} <= {
        Path(p).name for p in re.findall(r"\]\(([^)]+\.png)\)", summary)}


def test_every_published_folder_is_loaded_back(demo):
    out, _ = demo
    summary = (out / "SUMMARY.md").read_text()
    published = out / "published"
    assert sorted(p.name for p in published.iterdir()) == ["eri", "finetune", "pretrain"]
    assert f"`{published / 'pretrain'}`: timm `local-dir:` VisionTransformer, (3, 64, 64) -> (1, 128)" in summary
    assert f"`{published / 'finetune'}`: timm `local-dir:` VisionTransformer" in summary
    assert f"`{published / 'eri'}`: `load_eri_model`: ERIModel over visual, audio, text" in summary
    for name in ("pretrain", "finetune", "eri"):
        card = (published / name / "README.md").read_text()
        assert card.startswith("---\n") and "license: cc-by-nc-4.0" in card
        # the built-in data is synthetic: said so, and no dataset is claimed, nor a path of this machine
        assert "**Trained on synthetic data.**" in card and "- synthetic-data" in card and "datasets:" not in card
        assert str(out) not in card and "Hume-Reaction (ABAW5" not in card.split("## Licence")[1]


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(), reason="launch/demo.sh would install .venv")
def test_demo_sh_takes_cpu_torch_and_says_it_changes_nothing_in_an_installed_venv():
    proc = subprocess.run(["bash", "launch/demo.sh", "--cpu-torch", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    torch_line, usage = proc.stdout.split("\n", 1)
    assert torch_line.startswith("demo: .venv is installed already (torch ") and torch_line.endswith(
        "--cpu-torch changes nothing: remove .venv to reinstall with PyTorch's CPU build")
    assert usage.startswith("usage: demo.py [-h] [--out OUT] [--quick]")  # --cpu-torch is not passed on
