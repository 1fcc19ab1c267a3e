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
    fine = json.loads((out / "finetune" / "best" / "report.json").read_text())
    eri = json.loads((out / "eri" / "report.json").read_text())
    assert f"top-1 {fine['top1']:.3f}" in summary and f"mean Pearson {eri['mean']:.3f}" in summary
    assert (out / "eri" / "per_emotion.md").read_text().strip() in summary
    for image in re.findall(r"!\[[^]]*\]\(([^)]+)\)", summary):  # every figure it shows exists
        assert (out / image).is_file() and (out / image).stat().st_size > 1000, image
    assert {"mae_loss.png", "confusion_matrix.png", "per_emotion_pearson.png"} <= {
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
