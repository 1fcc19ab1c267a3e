"""Identical runs, identical bytes: two runs with the same inputs, configuration and seed on the
CPU write byte-identical artifacts (README: "Identical runs, identical bytes"). Stage 3a on the
built-in reaction videos (quick size) twice, then stage 3b on that store twice; stage 2 on tiny
shards twice."""
from __future__ import annotations

import hashlib
import shutil

import pytest

from run_utils import run_stage
from shared import builtin_data

# the run's timing log: throughput and waiting time per log step, which no two runs share
LOGS = {"timing.jsonl"}


def digests(folder) -> dict[str, str]:
    """relative path -> sha256 of every file under `folder` (logs left out)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in LOGS}


def differing(a, b) -> list[str]:
    one, two = digests(a), digests(b)
    return sorted(k for k in one.keys() | two.keys() if one.get(k) != two.get(k))


@pytest.fixture(scope="module")
def stores(tmp_path_factory, tiny_encoder):
    """Two feature stores written by `affect-extract all` on the same built-in videos into the
    same folder (each step's <step>_config.yaml names it), the first moved aside."""
    base = tmp_path_factory.mktemp("builtin")
    builtin_data.reactions(base, size="quick")
    builtin_data.text_models(base)
    same = tmp_path_factory.mktemp("same")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(builtin_data.ROOT_ENV, str(base))  # no --data: the built-in videos made above
        for moved in ("first", None):
            run_stage("eri_downstream/extract.py", "all", "--store", str(same / "store"), "--encoder", str(tiny_encoder))
            if moved:
                shutil.move(same / "store", same / moved)
    return [same / "first", same / "store"]


def test_stage_3a_writes_the_same_bytes_twice(stores):
    a, b = stores
    files = digests(a)
    kinds = {p.split("/")[0] for p in files}
    assert {"faces", "visual", "audio", "text", "videos.csv", "transcripts.csv", "visual_failures.csv"} <= kinds
    assert len([p for p in files if p.startswith("visual/")]) == 40  # every quick video: 24 + 12 + 4
    assert differing(a, b) == []


def test_stage_3b_writes_the_same_bytes_twice(stores, tmp_path):
    """The same output folder both times (the configuration names it), the first run moved aside."""
    out, first = tmp_path / "run", tmp_path / "first"
    args = [f"data.store={stores[0]}", f"run.output_dir={out}", "data.k=4", "data.batch_size=8", "data.num_workers=0",
            "epochs=2", "patience=5", "ema_decay=0.9", "run.mixed_precision=no", "run.trackers=[]", "run.log_every=1"]
    run_stage("eri_downstream/train.py", *args)
    shutil.move(out, first)
    run_stage("eri_downstream/train.py", *args)
    names = set(digests(out))
    assert {"best.safetensors", "report.json", "predictions.csv", "submission.csv", "learning_curves.png",
            "config.yaml"} <= names
    assert any(n.startswith("checkpoints/step_") for n in names)
    assert differing(first, out) == []


def test_stage_2_writes_the_same_bytes_twice(tiny_encoder, expression_shards, tmp_path):
    """Reports, predictions, confusion matrices, best/ and export/ weights, training states."""
    from test_finetune import tiny
    out, first = tmp_path / "run", tmp_path / "first"
    args = tiny(out, tiny_encoder, expression_shards, "run.total_steps=4", "eval.every=2", "run.save_every=2")
    run_stage("finetune_affectnet/main.py", *args)
    shutil.move(out, first)
    run_stage("finetune_affectnet/main.py", *args)
    names = set(digests(out))
    assert {"eval/step_00000002/model/predictions.csv", "best/report.json", "best/head.safetensors",
            "export/encoder/model.safetensors", "metrics.jsonl", "checkpoints/step_00000004/meta.json"} <= names
    assert differing(first, out) == []
