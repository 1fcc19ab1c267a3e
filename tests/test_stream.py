"""The multi-source stream: mixture, resume, exact coverage, URL forms, errors, held-out guard."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter

import fsspec
import pytest
import torch

from shared.errors import UserError
from shared.stream import Augment, FaceStream, StreamConfig, build_sources, parse_weights, resolve
from shard_utils import read_samples

SMALL_AUG = Augment(kind="mae", size=32)


def config(**kw) -> StreamConfig:
    base = dict(mode="resampled", batch_size=4, batches_per_epoch=12, num_workers=2, shuffle_buffer=8,
                block_size=10, augment=SMALL_AUG, seed=3)
    base.update(kw)
    return StreamConfig(**base)


def fingerprint(batch) -> tuple:
    return tuple(batch["key"]), hashlib.sha1(batch["image"].contiguous().numpy().tobytes()).hexdigest()


def run(stream: FaceStream, n: int | None = None) -> list[tuple]:
    out = []
    for batch in stream:
        out.append(fingerprint(batch))
        if n is not None and len(out) == n:
            break
    return out


def test_batches_are_uint8_channels_last_with_labels(shards):
    stream = FaceStream(build_sources({"a": str(shards["affectnet"])}, splits=["train"]),
                        config(mode="exact", shuffle=False, num_workers=0))
    batch = next(iter(stream))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (4, 3, 32, 32)
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    assert batch["label"].dtype == torch.int64
    for label, meta, valid in zip(batch["label"], batch["meta"], batch["valid"]):
        assert not valid or label.item() == meta["expression"]


def test_resampled_mixture_follows_the_weights(shards):
    sources = build_sources({"affectnet": str(shards["affectnet"]), "celeba": str(shards["celeba"]),
                             "imdb": str(shards["imdb_wiki"])}, "affectnet:1,celeba:2,imdb:1", pretraining=True)
    stream = FaceStream(sources, config(batch_size=50, batches_per_epoch=40, block_size=100_000, shuffle_buffer=20,
                                        augment=Augment(kind="resize", size=16)))
    counts = Counter(m["source"] for batch in stream for m in batch["meta"])
    total = sum(counts.values())
    assert total == 2000
    assert counts["affectnet"] / total == pytest.approx(0.25, abs=0.07)
    assert counts["celeba"] / total == pytest.approx(0.50, abs=0.07)
    assert counts["imdb_wiki"] / total == pytest.approx(0.25, abs=0.07)


def test_resampled_streams_differ_by_rank_and_epoch_but_not_by_run(shards):
    sources = build_sources({"celeba": str(shards["celeba"])}, pretraining=True)
    a0, a1 = FaceStream(sources, config(), rank=0, world_size=2), FaceStream(sources, config(), rank=1, world_size=2)
    first0, first1 = run(a0), run(a1)
    assert len(first0) == len(first1) == 12
    assert first0 != first1
    assert run(a0) != first0  # the next epoch is a new draw
    assert run(FaceStream(sources, config(), rank=0, world_size=2)) == first0


def take(stream: FaceStream, n: int, digest=fingerprint) -> list[tuple]:
    """The next n batches, across epoch ends, as a training loop would consume them."""
    out: list[tuple] = []
    while len(out) < n:
        for batch in stream:
            out.append(digest(batch))
            if len(out) == n:
                break
    return out


@pytest.mark.parametrize("world_size,workers", [(1, 0), (3, 2), (2, 3)])
def test_exact_pass_reads_every_sample_once_with_equal_batches(shards, world_size, workers):
    sources = build_sources({"celeba": str(shards["celeba"]), "rec": str(shards["casia_rec"])})
    expected = set(read_samples(shards["celeba"])) | set(read_samples(shards["casia_rec"]))
    for shuffle in (False, True):
        keys, batches = [], []
        for rank in range(world_size):
            stream = FaceStream(sources, config(mode="exact", shuffle=shuffle, num_workers=workers), rank, world_size)
            got = list(stream)
            batches.append(len(got))
            assert len(got) == len(stream)
            for b in got:
                assert b["image"].shape[0] == 4
                keys += [k for k, v in zip(b["key"], b["valid"]) if v]
        assert len(set(batches)) == 1
        assert len(keys) == len(set(keys)) and set(keys) == expected


@pytest.mark.parametrize("workers", [0, 3])
def test_fixed_lanes_give_the_same_global_batches_on_any_world_size(shards, workers):
    """Two ranks' batches side by side are one rank's batches (no loader workers) of twice the
    size: same faces, same augmentations (random crops and flips), in the same order, every
    epoch, whatever the number of workers."""
    sources = build_sources({"celeba": str(shards["celeba"]), "rec": str(shards["casia_rec"])})
    aug = Augment(kind="finetune", size=24, scale=(0.3, 1.0))
    cfg = dict(mode="exact", shuffle=True, num_workers=workers, lanes=4, augment=aug)
    one = FaceStream(sources, config(batch_size=8, **{**cfg, "num_workers": 0}))
    two = [FaceStream(sources, config(batch_size=4, **cfg), rank, 2) for rank in (0, 1)]
    assert len(one) == len(two[0]) == len(two[1])
    for _epoch in range(2):
        for whole, *halves in zip(one, *two):
            assert whole["key"] == halves[0]["key"] + halves[1]["key"]
            assert torch.equal(whole["image"], torch.cat([h["image"] for h in halves]))
            assert torch.equal(whole["valid"], torch.cat([h["valid"] for h in halves]))
    with pytest.raises(UserError, match="6 lanes do not divide the global batch of 8"):
        FaceStream(sources, config(batch_size=4, **{**cfg, "lanes": 6, "num_workers": 2}), 0, 2)
    with pytest.raises(UserError, match=r"global batch of 8 cannot be split into equal micro-batches of 3"):
        FaceStream(sources, config(batch_size=3, global_batch=8, **cfg), 0, 1)


def test_exact_order_is_fixed_for_evaluation_and_shuffled_for_training(shards):
    sources = build_sources({"celeba": str(shards["celeba"])})
    ev = FaceStream(sources, config(mode="exact", shuffle=False, augment=Augment(kind="eval", size=32)))
    tr = FaceStream(sources, config(mode="exact", shuffle=True))
    assert run(ev) == run(ev)
    assert run(tr) != run(tr)


def test_exclusions_are_never_streamed(shards, tmp_path):
    keys = sorted(read_samples(shards["celeba"]))
    excluded = set(keys[::3])
    listing = tmp_path / "exclusions.txt"
    listing.write_text("# test\n" + "\n".join(excluded) + "\n")
    sources = build_sources({"celeba": str(shards["celeba"])}, pretraining=True)
    stream = FaceStream(sources, config(batches_per_epoch=30, exclude=[str(listing)]))
    streamed = {k for batch in stream for k in batch["key"]}
    assert streamed and not streamed & excluded and streamed <= set(keys)
    exact = FaceStream(sources, config(mode="exact", exclude=[str(listing)]))
    valid = {k for b in exact for k, v in zip(b["key"], b["valid"]) if v}
    assert valid == set(keys) - excluded


def test_held_out_splits_can_never_be_pretrained_on(shards):
    with pytest.raises(UserError, match="held out"):
        build_sources({"a": str(shards["affectnet"])}, splits=["val"], pretraining=True)
    pretrain = build_sources({"a": str(shards["affectnet"])}, pretraining=True)
    assert all("-train-" in u for u in pretrain[0].urls)
    # a URL pattern carries no manifest: the samples' own metadata stops the stream
    val_shards = sorted(str(p) for p in shards["affectnet"].glob("affectnet-val-*.tar"))
    stream = FaceStream([resolve("a", val_shards)], config(num_workers=0))
    with pytest.raises(UserError, match="held-out"):
        next(iter(stream))


def _corrupt_copy(shard_copy, name: str, n_bad: int = 1):
    """A copy of a source whose first shard has `n_bad` samples with garbage JPEG bytes."""
    folder = shard_copy(name)
    manifest = json.loads((folder / "manifest.json").read_text())
    first = next(iter(manifest["splits"].values()))["shards"][0]["name"]
    buf = io.BytesIO()
    bad = []
    with tarfile.open(folder / first) as src, tarfile.open(fileobj=buf, mode="w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name.endswith(".jpg") and len(bad) < n_bad:
                data = b"\xff\xd8 garbage"
                bad.append(member.name.split(".")[0])
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    (folder / first).write_bytes(buf.getvalue())
    return folder, first, bad


def test_corrupt_images_are_counted_and_skipped(shard_copy):
    folder, _, bad = _corrupt_copy(shard_copy, "celeba", n_bad=2)
    sources = build_sources({"celeba": str(folder)})
    exact = FaceStream(sources, config(mode="exact", shuffle=False))
    got = list(exact)
    invalid = [k for b in got for k, v in zip(b["key"], b["valid"]) if not v and k]
    assert sorted(invalid) == sorted(bad) and exact.errors == 2
    assert any(bad[0] in m for m in exact.error_messages)
    resampled = FaceStream(sources, config(batches_per_epoch=40))
    keys = [k for b in resampled for k in b["key"]]
    assert len(keys) == 160 and not set(keys) & set(bad)  # batches stay full
    assert resampled.errors >= 1


def test_resume_is_exact_across_skipped_corrupt_samples(shard_copy):
    folder, _, _ = _corrupt_copy(shard_copy, "celeba", n_bad=3)
    sources = build_sources({"celeba": str(folder)})
    whole = run(FaceStream(sources, config(batches_per_epoch=20)))
    first = FaceStream(sources, config(batches_per_epoch=20))
    seen = take(first, 9)
    resumed = FaceStream(sources, config(batches_per_epoch=20))
    resumed.load_state_dict(first.state_dict())
    assert seen + take(resumed, 11) == whole


def test_truncated_shard_is_counted_and_padded_in_exact_mode(shard_copy):
    folder = shard_copy("celeba")
    shard = sorted(folder.glob("celeba-train-*.tar"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    stream = FaceStream(build_sources({"celeba": str(folder)}), config(mode="exact", shuffle=False))
    got = list(stream)
    valid = sum(int(b["valid"].sum()) for b in got)
    assert 0 < valid < stream.total and stream.errors >= 1
    assert len(got) == len(stream)


def test_url_forms_brace_pipe_file_and_fsspec(shards):
    folder = shards["celeba"]
    names = sorted(p.name for p in folder.glob("celeba-train-*.tar"))
    expected = {k for k, s in read_samples(folder).items() if s["meta"]["split"] == "train"}
    last = len(names) - 1
    forms = [f"{folder}/celeba-train-{{000000..{last:06d}}}.tar",
             [f"pipe:cat {folder}/{n}" for n in names],
             [f"file://{folder}/{n}" for n in names]]
    fs = fsspec.filesystem("memory")
    for n in names:
        fs.pipe(f"/faces/{n}", (folder / n).read_bytes())
    forms.append([f"memory://faces/{n}" for n in names])
    for spec in forms:
        source = resolve("celeba", spec)
        assert source.counts is None and len(source.urls) == len(names)
        stream = FaceStream([source], config(num_workers=0, batches_per_epoch=30, block_size=1000))
        keys = {k for b in stream for k in b["key"]}
        assert keys == expected, spec


def test_weights_and_source_errors_are_clear(shards):
    assert parse_weights("affectnet:1,celeba:0.5") == {"affectnet": 1.0, "celeba": 0.5}
    for bad, message in [("affectnet", "name:weight"), ("a:x", "not a number"), ("a:-1", "negative")]:
        with pytest.raises(UserError, match=message):
            parse_weights(bad)
    with pytest.raises(UserError, match="unknown source"):
        build_sources({"celeba": str(shards["celeba"])}, "casia:1")
    with pytest.raises(UserError, match="exact mode needs per-shard sample counts"):
        FaceStream([resolve("x", f"{shards['celeba']}/celeba-train-000000.tar")], config(mode="exact"))
    with pytest.raises(UserError, match="batches_per_epoch"):
        StreamConfig(mode="resampled")


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory):
    """Expression shards with 60 / 6 / 3 faces of classes 0 / 1 / 2 and 4 of class 8."""
    import numpy as np
    from shared.shards.items import Item, Scan
    from shared.shards.writer import ShardSettings, build_shards
    from shared.synthetic import face_jpeg
    root = tmp_path_factory.mktemp("imbalanced")
    rng, items = np.random.default_rng(0), []
    for code, n in ((0, 60), (1, 6), (2, 3), (8, 4)):
        for i in range(n):
            path = root / f"{code}_{i}.jpg"
            path.write_bytes(face_jpeg(rng, (64, 64), (8, 8, 48, 48)))
            items.append(Item(f"affectnet-{code}_{i}", "train", path.name, str(path), meta={"expression": code}))
    out = root / "shards"
    build_shards(Scan("affectnet", root, items, [], []), out, ShardSettings(size=32, shard_size=10), workers=1,
                 progress=False)
    return out


def test_manifest_counts_classes_per_shard(imbalanced):
    manifest = json.loads((imbalanced / "manifest.json").read_text())
    totals = Counter()
    for entry in manifest["splits"]["train"]["shards"]:
        assert sum(entry["classes"].values()) == entry["samples"]
        totals.update({int(c): n for c, n in entry["classes"].items()})
    assert totals == {0: 60, 1: 6, 2: 3, 8: 4}


def test_exact_class_subset_is_read_once_with_mapped_labels(imbalanced):
    keys, labels = [], Counter()
    for rank in range(2):
        stream = FaceStream(build_sources({"a": str(imbalanced)}),
                            config(mode="exact", label_map={0: 0, 2: 1}, num_workers=2), rank, 2)
        for batch in stream:
            for key, valid, label in zip(batch["key"], batch["valid"], batch["label"]):
                if valid:
                    keys.append(key)
                    labels[int(label)] += 1
    assert len(keys) == len(set(keys)) == 63 and labels == {0: 60, 1: 3}
    assert all(k.split("-")[1][0] in "02" for k in keys)


def test_class_balanced_sampling_draws_classes_equally(imbalanced):
    sources = build_sources({"a": str(imbalanced)})
    common = dict(batch_size=50, batches_per_epoch=60, block_size=100_000, shuffle_buffer=50,
                  label_map={0: 0, 1: 1, 2: 2}, augment=Augment(kind="resize", size=8))
    plain = Counter(int(x) for b in FaceStream(sources, config(**common)) for x in b["label"])
    balanced = Counter(int(x) for b in FaceStream(sources, config(balance_classes=True, **common)) for x in b["label"])
    assert sum(plain.values()) == sum(balanced.values()) == 3000
    assert plain[0] / 3000 == pytest.approx(60 / 69, abs=0.05)
    for label in (0, 1, 2):
        assert balanced[label] / 3000 == pytest.approx(1 / 3, abs=0.06), balanced
    with pytest.raises(UserError, match="mode=resampled"):
        config(mode="exact", balance_classes=True)
