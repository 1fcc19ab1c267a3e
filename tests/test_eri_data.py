"""Stage 3b data: segment sampling, the feature dataset and its batches, mixup, the ERI metric,
CV folds and the submission file."""
from __future__ import annotations

import csv
import math
import random
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr

from eri_downstream.data import FeatureDataset, collate, mixup, segment_indices
from eri_downstream.dataset import EMOTIONS, VideoEntry, read_table, write_table
from eri_downstream.folds import cv_folds, read_submission, write_submission
from eri_downstream.loader import EpochLoader
from eri_downstream.store import FeatureStore
from shared.errors import UserError
from shared.metrics import pearson_report


# -- epochs over ranks --------------------------------------------------------------------------
def _ids(batch):
    return batch.tolist()


@pytest.mark.parametrize("size", [21, 24, 3])
def test_ranks_side_by_side_are_the_one_process_batches(size):
    data = list(range(size))
    one = EpochLoader(data, batch_size=8, collate_fn=torch.tensor, seed=5, rank=0, world_size=1)
    two = [EpochLoader(data, batch_size=4, collate_fn=torch.tensor, seed=5, rank=r, world_size=2) for r in (0, 1)]
    for _epoch in range(2):
        got_one, got_two = [_ids(b) for b in one], [[_ids(b) for b in loader] for loader in two]
        assert len(got_one) == len(got_two[0]) == len(got_two[1]) == len(one)
        assert got_one == [a + b for a, b in zip(*got_two)]
        assert all(len(b) == 8 for b in got_one)  # padded to whole global batches
        assert set(sum(got_one, [])) == set(data)
    assert [_ids(b) for b in one] != got_one  # the next epoch is shuffled anew


def test_epoch_loader_resumes_after_any_batch():
    data = list(range(30))
    whole = EpochLoader(data, batch_size=4, collate_fn=torch.tensor, seed=1, rank=1, world_size=2)
    expected = [_ids(b) for _ in range(2) for b in whole]
    for stop in (1, 3, 4, 5):
        first = EpochLoader(data, batch_size=4, collate_fn=torch.tensor, seed=1, rank=1, world_size=2)
        seen = []
        for b in first:
            seen.append(_ids(b))
            if len(seen) == stop:
                break
        resumed = EpochLoader(data, batch_size=4, collate_fn=torch.tensor, seed=1, rank=1, world_size=2)
        resumed.load_state_dict(first.state_dict())
        rest = []
        while len(seen) + len(rest) < len(expected):
            rest += [_ids(b) for b in resumed]
        assert seen + rest == expected, stop


# -- segment sampling ------------------------------------------------------------------------
@pytest.mark.parametrize("length,k", [(100, 32), (32, 32), (33, 32), (1000, 7)])
def test_each_index_falls_in_its_own_segment(length, k):
    rng = random.Random(0)
    for train in (True, False):
        indices = segment_indices(length, k, train=train, rng=rng)
        assert len(indices) == k
        for i, index in enumerate(indices):
            assert i * length // k <= index < (i + 1) * length // k


def test_training_draws_differ_and_evaluation_is_fixed():
    rng = random.Random(1)
    draws = {tuple(segment_indices(200, 16, train=True, rng=rng)) for _ in range(5)}
    assert len(draws) > 1
    fixed = segment_indices(200, 16, train=False, rng=rng)
    assert fixed == segment_indices(200, 16, train=False, rng=random.Random(99))
    assert fixed == [(i * 200 // 16 + (i + 1) * 200 // 16 - 1) // 2 for i in range(16)]  # centres


@pytest.mark.parametrize("train", [True, False])
def test_short_videos_repeat_frames_in_order(train):
    indices = segment_indices(5, 12, train=train, rng=random.Random(0))
    assert len(indices) == 12
    assert indices == sorted(indices)
    assert set(indices) == set(range(5))  # every frame used, each index valid
    assert segment_indices(1, 4, train=train, rng=random.Random(0)) == [0, 0, 0, 0]


# -- the dataset over a tiny store -----------------------------------------------------------
LENGTHS = {"00001": (40, 120, 3), "00002": (8, 60, 1), "00003": (100, 900, 5)}  # visual, audio, text steps


def _entry(file_id: str, split: str, labels: list[float] | None) -> VideoEntry:
    return VideoEntry(file_id, split, labels, "", "", None, None)


@pytest.fixture
def store(tmp_path):
    store = FeatureStore(tmp_path / "features")
    entries = [_entry("00001", "train", [0.1 * i for i in range(7)]),
               _entry("00002", "val", [0.5] * 7),
               _entry("00003", "test", None)]
    write_table(entries, store.table)
    for file_id, (tv, ta, tt) in LENGTHS.items():
        # visual step t holds the value t everywhere: the sampled indices can be read back
        store.save("visual", file_id, torch.arange(tv).float()[:, None].expand(tv, 6), status="ok")
        store.save("audio", file_id, torch.randn(ta, 768), status="ok")
        store.save("text", file_id, torch.randn(tt, 1024), status="ok")
    return store


def test_dataset_items_have_the_right_shapes(store):
    entries = read_table(store.table)
    data = FeatureDataset(store.root, entries, modalities=("visual", "audio", "text"), k=16, train=True)
    item = data[0]
    assert item["file_id"] == "00001" and item["has_labels"]
    assert item["labels"].dtype == torch.float32 and item["labels"].shape == (7,)
    assert torch.allclose(item["labels"], torch.tensor([0.1 * i for i in range(7)]))
    assert item["visual"].shape == (16, 6) and item["visual"].dtype == torch.float32
    assert item["audio"].shape == (120, 768) and item["text"].shape == (3, 1024)
    frames = item["visual"][:, 0].long().tolist()
    assert frames == sorted(frames) and all(i * 40 // 16 <= f < (i + 1) * 40 // 16 for i, f in enumerate(frames))
    assert data[1]["visual"].shape == (16, 6)  # 8 frames repeated to K
    test_item = data[2]
    assert not test_item["has_labels"] and torch.equal(test_item["labels"], torch.zeros(7))


def test_sampling_is_reproducible_per_epoch(store):
    data = FeatureDataset(store, ["00003", "[00001]"], modalities=("visual",), k=8, train=True, seed=5)
    assert [data[i]["file_id"] for i in range(2)] == ["00003", "00001"]  # ids resolved via videos.csv
    first = data[0]["visual"]
    assert torch.equal(first, data[0]["visual"])
    assert torch.equal(first, FeatureDataset(store, ["00003"], modalities=("visual",), k=8, train=True,
                                             seed=5)[0]["visual"])
    epochs = set()
    for epoch in range(6):
        data.set_epoch(epoch)
        epochs.add(tuple(data[0]["visual"][:, 0].tolist()))
    assert len(epochs) > 1
    evaluation = FeatureDataset(store, ["00003"], modalities=("visual",), k=8, train=False)
    fixed = evaluation[0]["visual"]
    evaluation.set_epoch(3)
    assert torch.equal(fixed, evaluation[0]["visual"])


def test_audio_subsampling(store):
    data = FeatureDataset(store, ["00003", "00001"], modalities=("audio",), max_audio_steps=800)
    assert data[0]["audio"].shape == (800, 768)
    assert data[1]["audio"].shape == (120, 768)  # shorter sequences untouched


def test_missing_modality_names_the_file_and_step(store):
    store.features("audio", "00002").unlink()
    data = FeatureDataset(store, read_table(store.table), modalities=("visual", "audio"), k=4)
    with pytest.raises(UserError, match=r"audio/00002\.safetensors.*extract\.py audio"):
        data[1]


def test_collate_masks_mark_real_steps(store):
    data = FeatureDataset(store, read_table(store.table), modalities=("visual", "audio", "text"), k=4)
    items = [data[i] for i in range(3)]
    batch = collate(items)
    assert batch["file_id"] == ["00001", "00002", "00003"]
    assert batch["labels"].shape == (3, 7) and batch["has_labels"].tolist() == [True, True, False]
    assert batch["visual"].shape == (3, 4, 6) and batch["visual_mask"].all()
    assert batch["audio"].shape == (3, 900, 768) and batch["text"].shape == (3, 5, 1024)
    for m, lengths in (("audio", [120, 60, 900]), ("text", [3, 1, 5])):
        mask = batch[f"{m}_mask"]
        assert mask.dtype == torch.bool
        assert mask.sum(1).tolist() == lengths
        for i, n in enumerate(lengths):
            assert mask[i, :n].all() and not mask[i, n:].any()
            assert torch.equal(batch[m][i, :n], items[i][m]) and not batch[m][i, n:].any()


def _toy_batch() -> dict:
    """4 videos: labels row i = e_i (the mix is readable from the labels), audio of sample i =
    i + 1 on its first i + 2 steps."""
    lengths = [2, 3, 4, 5]
    items = [{"file_id": f"{i:05d}", "labels": torch.eye(7)[i], "has_labels": i != 3,
              "audio": torch.full((n, 2), float(i + 1))} for i, n in enumerate(lengths)]
    return collate(items)


def test_mixup_mixes_features_and_labels_with_one_lambda():
    batch = _toy_batch()
    before = {k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()}
    swapped = 0
    for seed in range(10):
        mixed = mixup(batch, 0.4, torch.Generator().manual_seed(seed))
        again = mixup(batch, 0.4, torch.Generator().manual_seed(seed))
        assert all(torch.equal(mixed[k], again[k]) for k in ("labels", "audio", "audio_mask"))
        # decode the permutation and lambda from the one-hot labels
        perm, lams = [], []
        for i in range(4):
            others = mixed["labels"][i].clone()
            others[i] = 0
            j = int(others.argmax()) if others.max() > 0 else i
            perm.append(j)
            if j != i:
                lams.append(float(mixed["labels"][i, i]))
        assert sorted(perm) == [0, 1, 2, 3]
        if not lams:
            continue
        swapped += 1
        lam = lams[0]
        assert lams == pytest.approx([lam] * len(lams), abs=1e-6)  # one lambda per batch
        for i, j in enumerate(perm):
            expected = lam * batch["audio"][i] + (1 - lam) * batch["audio"][j]
            assert torch.allclose(mixed["audio"][i], expected, atol=1e-6)
            assert torch.equal(mixed["audio_mask"][i], batch["audio_mask"][i] | batch["audio_mask"][j])
            assert bool(mixed["has_labels"][i]) == (i != 3 and j != 3)
        assert mixed["file_id"] == batch["file_id"]
    assert swapped > 0
    assert all(torch.equal(batch[k], before[k]) for k in ("labels", "audio", "audio_mask"))  # input untouched
    assert mixup(batch, 0.0, torch.Generator()) is batch  # alpha 0: off


# -- the ERI metric --------------------------------------------------------------------------
def test_pearson_report_matches_scipy():
    rng = np.random.default_rng(0)
    pred, true = rng.random((50, 7)), rng.random((50, 7))
    report = pearson_report(pred, true, EMOTIONS)
    expected = [pearsonr(pred[:, j], true[:, j])[0] for j in range(7)]
    assert [report["per_emotion"][e] for e in EMOTIONS] == pytest.approx(expected, abs=1e-12)
    assert report["mean"] == pytest.approx(np.mean(expected), abs=1e-12)
    assert report["nan"] == []


def test_constant_prediction_is_reported_as_nan():
    rng = np.random.default_rng(1)
    pred, true = rng.random((30, 7)), rng.random((30, 7))
    pred[:, 2] = 0.3
    true[:, 5] = 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no scipy warning noise
        report = pearson_report(pred, true, EMOTIONS)
    assert math.isnan(report["per_emotion"]["Anxiety"]) and math.isnan(report["per_emotion"]["Fear"])
    assert math.isnan(report["mean"])
    assert report["nan"] == [{"emotion": "Anxiety", "reason": "constant prediction"},
                             {"emotion": "Fear", "reason": "constant truth"}]
    assert not math.isnan(report["per_emotion"]["Adoration"])


# -- folds and submissions -------------------------------------------------------------------
def test_folds_partition_train_and_val_and_exclude_test():
    entries = ([_entry(f"{i:05d}", "train", [0.5] * 7) for i in range(23)]
               + [_entry(f"{i:05d}", "val", [0.5] * 7) for i in range(23, 31)]
               + [_entry(f"{i:05d}", "test", None) for i in range(31, 40)])
    folds = cv_folds(entries, n_folds=5, seed=0)
    assert len(folds) == 5
    pool = {e.file_id for e in entries if e.split != "test"}
    held = [f for _, h in folds for f in h]
    assert sorted(held) == sorted(pool)  # each train + val video held out exactly once
    for train, h in folds:
        assert not set(train) & set(h) and set(train) | set(h) == pool
    assert folds == cv_folds(list(reversed(entries)), n_folds=5, seed=0)  # order-independent
    assert folds != cv_folds(entries, n_folds=5, seed=1)


def test_submission_format_and_round_trip(tmp_path):
    ids = ["00007", "[00123]", "10000"]
    pred = np.array([[0.1234567, -0.2, 1.5, 0.5, 0.0, 1.0, 0.25]] * 3)
    path = write_submission(tmp_path / "sub" / "submission.csv", ids, pred)
    lines = path.read_text().splitlines()
    assert lines[0] == "File_ID,Adoration,Amusement,Anxiety,Disgust,Empathic-Pain,Fear,Surprise"
    assert lines[1] == "[00007],0.123457,0.000000,1.000000,0.500000,0.000000,1.000000,0.250000"
    assert [line.split(",")[0] for line in lines[1:]] == ["[00007]", "[00123]", "[10000]"]
    read_ids, values = read_submission(path)
    assert read_ids == ["00007", "00123", "10000"]
    assert np.allclose(values, np.clip(pred, 0, 1), atol=5e-7)


def test_submission_validation(tmp_path):
    bad = tmp_path / "bad.csv"
    with open(bad, "w", newline="") as f:
        csv.writer(f).writerows([["", "File_ID", *EMOTIONS], ["0", "[00001]", *["0.5"] * 7]])
    with pytest.raises(UserError, match="header"):
        read_submission(bad)
    with open(bad, "w", newline="") as f:
        csv.writer(f).writerows([["File_ID", *reversed(EMOTIONS)], ["[00001]", *["0.5"] * 7]])
    with pytest.raises(UserError, match="header"):
        read_submission(bad)
    with open(bad, "w", newline="") as f:
        csv.writer(f).writerows([["File_ID", *EMOTIONS], ["00001", *["0.5"] * 7]])
    with pytest.raises(UserError, match="bracketed"):
        read_submission(bad)
    with pytest.raises(ValueError, match="NaN"):
        write_submission(bad, ["00001"], np.full((1, 7), np.nan))
