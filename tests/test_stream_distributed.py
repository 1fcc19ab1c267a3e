"""Two real processes (torchrun, gloo): exact pass without duplicates, equal batch counts, mixture."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from run_utils import free_port
from shard_utils import read_samples

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def two_ranks(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "ranks.json"
    shard_root = shards["celeba"].parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(HERE / "dist_stream_worker.py"), str(shard_root), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_exact_pass_covers_the_split_once_across_ranks(two_ranks, shards):
    assert [r["rank"] for r in two_ranks] == [0, 1] and two_ranks[0]["world"] == 2
    batches = [r["exact"][0] for r in two_ranks]
    keys = [k for r in two_ranks for k in r["exact"][1]]
    assert batches[0] == batches[1] > 0
    assert len(keys) == len(set(keys))
    assert set(keys) == set(read_samples(shards["celeba"])) | set(read_samples(shards["casia_rec"]))


def test_resampled_ranks_get_equal_batches_different_samples_and_the_mixture(two_ranks):
    assert [r["resampled"][0] for r in two_ranks] == [40, 40]
    assert two_ranks[0]["resampled"][1] != two_ranks[1]["resampled"][1]
    counts = Counter(s for r in two_ranks for s in r["resampled"][2])
    total = sum(counts.values())
    assert total == 2 * 40 * 25
    for source, share in (("affectnet", 0.25), ("celeba", 0.5), ("imdb_wiki", 0.25)):
        assert counts[source] / total == pytest.approx(share, abs=0.06), counts


def launch(script: Path, args: list[str], processes: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    cmd = [sys.executable, str(script), *args]
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), *cmd[1:]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_exact_stream_stopped_on_2x2_resumes_on_1x3_and_3x1(shards, tmp_path):
    """Real processes: 2 ranks x 2 workers read 4 of the epoch's 6 global steps and stop; 1 rank x
    3 workers and 3 ranks x 1 worker each resume from the saved positions. The steps after the
    resume (into the next epoch) are those of one uninterrupted process, images included, and the
    epoch's samples are all read, none twice."""
    root, script = shards["celeba"].parent, HERE / "dist_reshape_worker.py"
    launch(script, [str(root), str(tmp_path / "whole.json"), "0", "8"], 1)
    launch(script, [str(root), str(tmp_path / "first.json"), "2", "4"], 2)
    whole = json.loads((tmp_path / "whole.json").read_text())["steps"]
    first = json.loads((tmp_path / "first.json").read_text())
    assert first["steps"] == whole[:4]
    assert [s["samples"] for s in first["states"]] == [24, 24]
    expected = set(read_samples(shards["celeba"])) | set(read_samples(shards["casia_rec"]))
    for processes, workers in ((1, 3), (3, 1)):
        out = tmp_path / f"on{processes}.json"
        launch(script, [str(root), str(out), str(workers), "4", str(tmp_path / "first.json")], processes)
        rest = json.loads(out.read_text())["steps"]
        assert first["steps"] + rest == whole, (processes, workers)
        keys = [k for keys, _ in (first["steps"] + rest)[:6] for k in keys if k]
        assert len(keys) == len(set(keys)) == len(expected) and set(keys) == expected
