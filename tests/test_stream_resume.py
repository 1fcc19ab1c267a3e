"""The stream's position: exact resume on the same shape and onto another one (world size x
workers), weighted exact epochs, the workers' parts of a batch, and seeking into a shard."""
from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest
import torch

from shard_utils import read_samples
from shared.errors import UserError
from shared.stream import Augment, FaceStream, build_sources
from test_stream import config, take


@pytest.mark.parametrize("mode", ["resampled", "exact"])
def test_resume_continues_exactly(shards, mode):
    sources = build_sources({"celeba": str(shards["celeba"]), "casia": str(shards["casia"])}, pretraining=True)
    cfg = config(mode=mode)
    per_epoch = len(FaceStream(sources, cfg))
    whole = take(FaceStream(sources, cfg), 2 * per_epoch)
    for stop in (1, 4, per_epoch - 1, per_epoch, per_epoch + 3):
        first = FaceStream(sources, cfg)
        seen = take(first, stop)
        state = json.loads(json.dumps(first.state_dict()))  # survives a checkpoint file
        resumed = FaceStream(sources, cfg)
        resumed.load_state_dict(state)
        assert seen + take(resumed, 2 * per_epoch - stop) == whole, stop


def global_steps(streams: list[FaceStream], steps: int) -> list[tuple]:
    """The next `steps` global batches of a run whose ranks are `streams` (lockstep, across
    epoch ends): each rank's micro-batches of a step side by side, ranks in order."""
    accum = streams[0].layout.accum
    per_rank = [take(s, steps * accum, per_sample) for s in streams]
    out = []
    for step in range(steps):
        parts = [b for rank in per_rank for b in rank[step * accum:(step + 1) * accum]]
        out.append((sum((p[0] for p in parts), ()), sum((p[1] for p in parts), ())))
    return out


def per_sample(batch) -> tuple:
    """Keys and one image digest per sample: comparable however the batch is split."""
    return tuple(batch["key"]), tuple(hashlib.sha1(im.contiguous().numpy().tobytes()).hexdigest()
                                      for im in batch["image"])


def shape(sources, world_size: int, workers: int, micro: int, **kw) -> list[FaceStream]:
    cfg = config(mode="exact", batch_size=micro, num_workers=workers, global_batch=6, **kw)
    return [FaceStream(sources, cfg, rank, world_size) for rank in range(world_size)]


def test_exact_resume_onto_another_shape_continues_the_global_order(shards):
    """Stopped after 4 steps on 2 ranks x 2 workers; resumed on 1 x 3 (two micro-batches of 3
    per step) and on 3 x 1: the global batches, images included, are those of one
    uninterrupted process, and the epoch's samples are each read once."""
    sources = build_sources({"celeba": str(shards["celeba"]), "rec": str(shards["casia_rec"])})
    fingerprint_keys = set(read_samples(shards["celeba"])) | set(read_samples(shards["casia_rec"]))
    per_epoch = len(shape(sources, 1, 0, 6)[0])
    assert per_epoch == 6  # 36 samples, 6 lanes of 6, a global batch of 6
    whole = global_steps(shape(sources, 1, 0, 6), per_epoch + 2)
    first = shape(sources, 2, 2, 3)
    seen = global_steps(first, 4)
    states = [json.loads(json.dumps(s.state_dict())) for s in first]  # what a checkpoint keeps
    assert {s["samples"] for s in states} == {24}
    for world_size, workers, micro in ((1, 3, 3), (3, 1, 2)):
        resumed = shape(sources, world_size, workers, micro)
        for stream in resumed:
            stream.load_saved_states(states)
        rest = global_steps(resumed, per_epoch - 4 + 2)
        assert seen + rest == whole, (world_size, workers)
        keys = [k for step in seen + rest[:per_epoch - 4] for k in step[0] if k]
        assert len(keys) == len(set(keys)) and set(keys) == fingerprint_keys


def test_exact_resume_keeps_its_order_settings_and_step_boundaries(shards):
    sources = build_sources({"celeba": str(shards["celeba"])})
    stream = shape(sources, 1, 0, 3)[0]
    take(stream, 3)  # one and a half steps of two micro-batches
    state = stream.state_dict()
    with pytest.raises(UserError, match="middle of an accumulated step"):
        shape(sources, 2, 0, 3)[0].load_saved_states([state])
    for other, match in ((dict(global_batch=12), "global batch"), (dict(seed=4), "seed")):
        cfg = config(**{**dict(mode="exact", batch_size=3, num_workers=0, global_batch=6), **other})
        with pytest.raises(UserError, match=match):
            FaceStream(sources, cfg).load_saved_states([state])
    with pytest.raises(UserError, match="cannot be split into equal micro-batches of 4 on 1"):
        shape(sources, 1, 0, 4)


def test_resampled_resume_onto_another_shape_draws_the_next_epoch(shards, caplog):
    sources = build_sources({"celeba": str(shards["celeba"])}, pretraining=True)
    stopped = FaceStream(sources, config(num_workers=2))
    take(stopped, 5)
    same = FaceStream(sources, config(num_workers=2))
    same.load_state_dict(stopped.state_dict())
    assert same.position.epoch == 0 and same.position.batch == 5
    other = FaceStream(sources, config(num_workers=3))
    with caplog.at_level("INFO", logger="shared.stream.dataset"):
        other.load_saved_states([stopped.state_dict()])
    assert "saved on 1 x 2 resumes on 1 processes x 3 workers with the fresh draws of epoch 1" in caplog.text
    fresh = FaceStream(sources, config(num_workers=3))
    take(fresh, len(fresh))  # epoch 0
    assert take(other, 4) == take(fresh, 4)


def test_weighted_exact_epoch_repeats_or_thins_each_source_to_its_share(shards):
    """celeba (28 samples) and casia_rec (8) at 1:1: 18 of each per epoch, casia_rec's samples
    twice or three times each, celeba's at most once, another subset next epoch."""
    sources = build_sources({"celeba": str(shards["celeba"]), "rec": str(shards["casia_rec"])}, "celeba:1,rec:1")
    stream = FaceStream(sources, config(mode="exact", batch_size=6, num_workers=2))
    epochs = []
    for _ in range(2):
        keys = Counter(k for b in stream for k, v in zip(b["key"], b["valid"]) if v)
        celeba = {k: n for k, n in keys.items() if k.startswith("celeba")}
        rec = {k: n for k, n in keys.items() if not k.startswith("celeba")}
        assert sum(celeba.values()) == sum(rec.values()) == 18
        assert set(celeba.values()) == {1} and sorted(set(rec.values())) == [2, 3] and len(rec) == 8
        epochs.append(set(celeba))
    assert epochs[0] != epochs[1]


def test_workers_parts_of_device_plans_join_into_the_batch_one_worker_makes(shards):
    """output="jpeg": the plans three workers make for their parts of each batch, joined, are
    the plans one worker makes for the whole batch (bytes, offsets, boxes, flips)."""
    sources = build_sources({"celeba": str(shards["celeba"])})
    cfg = dict(mode="exact", batch_size=6, output="jpeg", augment=Augment(kind="mae", size=24))
    one, three = (FaceStream(sources, config(num_workers=k, **cfg)) for k in (0, 3))
    for a, b in zip(one, three):
        assert a["key"] == b["key"]
        for name in ("data", "offsets", "jpeg", "shape", "box", "flip"):
            assert torch.equal(a["plan"][name], b["plan"][name]), name


def test_reading_a_shard_from_its_kth_sample_seeks_there(shard_copy):
    """read_shard(skip=k) passes over k samples by their tar headers: the same samples as reading
    them all and dropping k, on an intact shard and on a truncated one."""
    from shared.stream.reading import ErrorLog, _sample_offset, read_shard
    folder = shard_copy("celeba")
    shard = str(sorted(folder.glob("celeba-train-*.tar"))[0])
    whole = [s["__key__"] for s in read_shard(shard, ErrorLog())]
    assert len(whole) >= 5
    assert 0 < _sample_offset(shard, 1) < _sample_offset(shard, 2)  # a seek, not a read
    for k in range(len(whole) + 2):
        assert [s["__key__"] for s in read_shard(shard, ErrorLog(), skip=k)] == whole[k:], k
    data = open(shard, "rb").read()
    open(shard, "wb").write(data[: len(data) * 2 // 3])
    cut = [s["__key__"] for s in read_shard(shard, ErrorLog())]
    assert 0 < len(cut) < len(whole)
    for k in range(len(whole) + 1):
        assert [s["__key__"] for s in read_shard(shard, ErrorLog(), skip=k)] == cut[k:], k
