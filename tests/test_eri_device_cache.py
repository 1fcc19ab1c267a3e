"""Stage 3b's device cache (`data.device_cache=true`) makes exactly the plain loader's batches:
the same videos, frames, padding and masks, epoch after epoch, on any rank and after a resume;
so a run trains to the same losses and the same validation report."""
from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from eri_downstream.data import FeatureDataset, collate
from eri_downstream.dataset import read_table
from eri_downstream.device_cache import DeviceCache, DeviceEpochLoader
from eri_downstream.loader import EpochLoader
from run_utils import metrics, run_stage
from test_eri_train import SCRIPT, store, tiny  # noqa: F401  (the module fixture: a learnable feature store)


def entries(store, split):  # noqa: F811
    return [e for e in read_table(store / "videos.csv") if e.split == split]


def assert_same_batch(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    assert got["file_id"] == want["file_id"]
    for key, value in want.items():
        if torch.is_tensor(value):
            assert got[key].dtype == value.dtype and torch.equal(got[key], value), key


def dataset(store, split="train", **kwargs):  # noqa: F811
    args = dict(k=8, train=split == "train", max_audio_steps=30, seed=3)  # audio 20-49 steps: some subsampled
    return FeatureDataset(store, entries(store, split), **{**args, **kwargs})


@pytest.mark.parametrize("rank, world_size", [(0, 1), (1, 2)])
def test_same_batches_as_the_loader_every_epoch_and_on_every_rank(store, rank, world_size):  # noqa: F811
    order = dict(batch_size=6, seed=3, rank=rank, world_size=world_size)  # 40 videos: padded last batches
    plain = EpochLoader(dataset(store), collate_fn=collate, **order)
    cached = DeviceEpochLoader(dataset(store), device="cpu", **order)
    for epoch in range(3):
        got, want = list(cached), list(plain)
        assert len(got) == len(want) == len(plain) and cached.state_dict() == plain.state_dict() == {"epoch": epoch + 1,
                                                                                                   "batch": 0}
        for a, b in zip(got, want):
            assert_same_batch(a, b)
    assert not torch.equal(got[0]["visual"], list(DeviceEpochLoader(dataset(store), device="cpu", **order))[0]["visual"])


def test_resumes_after_any_batch(store):  # noqa: F811
    plain = EpochLoader(dataset(store, modalities=("visual", "text")), batch_size=8, collate_fn=collate, seed=3, rank=0,
                        world_size=1)
    want = [list(plain) for _ in range(2)][1]  # epoch 1
    for consumed in (0, 2, 4):
        cached = DeviceEpochLoader(dataset(store, modalities=("visual", "text")), batch_size=8, seed=3, rank=0,
                                   world_size=1, device="cpu")
        cached.load_state_dict({"epoch": 1, "batch": consumed})
        got = list(cached)
        assert len(got) == len(want) - consumed and "audio" not in got[0]
        for a, b in zip(got, want[consumed:]):
            assert_same_batch(a, b)


def test_evaluation_batches_follow_the_sampler(store):  # noqa: F811
    """predict's batches: the distributed sampler's order with its padding, a short last batch."""
    val = dataset(store, "val")
    cache = DeviceCache(val, "cpu")
    for rank in (0, 1):
        sampler = DistributedSampler(val, num_replicas=3, rank=rank, shuffle=False)  # 16 videos: padded to 18
        want = list(DataLoader(val, batch_size=4, sampler=sampler, collate_fn=collate))
        got = list(cache.batches(list(sampler), 4))
        assert [len(b["file_id"]) for b in got] == [4, 2]
        for a, b in zip(got, want):
            assert_same_batch(a, b)


def test_a_run_from_the_device_cache_trains_to_the_same_losses(store, tmp_path):  # noqa: F811
    args = ("epochs=2", "data.max_audio_steps=30")
    run_stage(SCRIPT, *tiny(store, tmp_path / "plain", *args))
    run_stage(SCRIPT, *tiny(store, tmp_path / "cached", *args, "data.device_cache=true"))
    plain, cached = metrics(tmp_path / "plain"), metrics(tmp_path / "cached")
    assert sorted(plain) == list(range(1, 11))
    assert [cached[s]["loss"] for s in sorted(cached)] == [plain[s]["loss"] for s in sorted(plain)]
    reports = [json.loads((tmp_path / run / "report.json").read_text()) for run in ("plain", "cached")]
    assert reports[1]["mean"] == reports[0]["mean"] and reports[1]["val_predictions"] == reports[0]["val_predictions"]


def test_end_to_end_and_the_device_cache_are_refused_together_in_one_line(store, tiny_encoder, tmp_path):  # noqa: F811
    proc = run_stage(SCRIPT, *tiny(store, tmp_path / "run", "data.end_to_end=true", f"data.encoder={tiny_encoder}",
                                   "data.device_cache=true"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "data.device_cache holds stored features, data.end_to_end reads face crops: choose one")
