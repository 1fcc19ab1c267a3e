"""Turn a dataset `Scan` into shuffled webdataset shards plus a manifest, resumably.

Each split's items are sorted, shuffled with the seed, and cut into consecutive groups of
`shard_size` planned items; shard i holds the accepted items of group i. A shard's content so
depends only on the dataset and the settings, which is what lets a re-run keep every shard
already written (its plan digest and sha256 match the manifest) and make only the rest. Images
are cropped and encoded on all cores; the main process only writes tar members.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing
import os
import random
from collections import Counter
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import webdataset as wds
from tqdm import tqdm

from . import manifest as mf
from . import recordio
from .crop import crop_face
from ..face_crop import FaceCrop
from .items import Item, Reject, Scan
from ..errors import UserError
from ..pixels import UnsupportedPixels
from ..atomic import atomic_open, write_json, write_text
from ..provenance import code_version, sha256_file


# a sample whose meta has "<label>_missing" (the reason) has that label stored as None: counted
MISSING = "_missing"


@dataclass(frozen=True)
class ShardSettings:
    size: int = 256  # side of the stored square crop
    margin: float = 0.2  # added to each side of the face box, as a fraction of its longer side
    quality: int = 95  # JPEG quality of the stored crops
    shard_size: int = 1000  # planned items per shard
    seed: int = 0  # shuffles the items before sharding

    @property
    def face_crop(self) -> FaceCrop:
        """The face-preprocessing contract these crops follow (recorded in the manifest)."""
        return FaceCrop(size=self.size, margin=self.margin)


@dataclass
class _Planned:
    split: str
    name: str
    items: list[Item]

    @property
    def digest(self) -> str:
        return hashlib.sha256("\n".join(i.key for i in self.items).encode()).hexdigest()[:16]


def drop_duplicates(scan: Scan) -> None:
    """Keep one item per sample key; every other becomes a `duplicate` reject (in place).

    A row listed twice, or two paths that map to the same key, would otherwise be two samples
    under one key (webdataset keeps neither reliably). The first listed is kept, except that an
    item of a held-out split wins over one elsewhere: the evaluation set stays whole and its
    face cannot reach pretraining through the copy.
    """
    kept: dict[str, Item] = {}
    for item in scan.items:
        first = kept.setdefault(item.key, item)
        if first is item:
            continue
        held = item.split in scan.holdout_splits and first.split not in scan.holdout_splits
        keep, drop = (item, first) if held else (first, item)
        kept[item.key] = keep
        same = "listed again" if drop.path == keep.path else f"same sample key {drop.key} as '{keep.path}'"
        scan.rejects.append(Reject(drop.path, drop.split, "duplicate",
                                   f"{drop.origin or drop.path}: {same}; kept {keep.origin or keep.path} ({keep.split})"))
    scan.items = [item for item in scan.items if kept[item.key] is item]


def plan_shards(scan: Scan, settings: ShardSettings) -> list[_Planned]:
    drop_duplicates(scan)
    for item in scan.items:
        # stored in every sample, so a stream can refuse held-out faces even without a manifest
        item.meta["holdout"] = item.split in scan.holdout_splits
    planned = []
    for split in sorted({i.split for i in scan.items}):
        items = sorted((i for i in scan.items if i.split == split), key=lambda i: i.key)
        random.Random(f"{settings.seed}-{split}").shuffle(items)
        for n, start in enumerate(range(0, len(items), settings.shard_size)):
            name = f"{scan.source}-{split}-{n:06d}.tar"
            planned.append(_Planned(split, name, items[start:start + settings.shard_size]))
    return planned


def build_shards(scan: Scan, out: Path, settings: ShardSettings = ShardSettings(),
                 workers: int | None = None, overwrite: bool = False, progress: bool = True) -> dict:
    """Write the shards of `scan` into `out`; returns the manifest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    planned = plan_shards(scan, settings)
    done = {} if overwrite else _reusable_shards(out, scan, settings, planned)
    manifest = _new_manifest(scan, settings)
    entries: dict[str, dict] = dict(done)

    todo = [p for p in planned if p.name not in done]
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=sum(len(p.items) for p in todo), unit="img", desc=f"{scan.source} shards",
               disable=not progress, dynamic_ncols=True)
    if done:
        bar.write(f"{len(done)} of {len(planned)} shards already complete in {out}; writing the other {len(todo)}")
    encode = partial(encode_item, settings=settings)
    with _pool(workers) as pool:
        results = pool.imap(encode, (item for p in todo for item in p.items), chunksize=8)
        rejected = 0
        for shard in todo:
            entries[shard.name] = _write_shard(out, shard, (next(results) for _ in shard.items), bar)
            rejected += len(entries[shard.name]["rejects"])
            bar.set_postfix(rejected=rejected)
            _fill(manifest, planned, entries, scan, complete=False)
            write_json(out / mf.NAME, manifest)
    bar.close()
    _fill(manifest, planned, entries, scan, complete=True)
    _write_rejects_csv(out / manifest["rejects"]["file"], scan.rejects, entries)
    write_json(out / mf.NAME, manifest)
    return manifest


def encode_item(item: Item, settings: ShardSettings) -> tuple[Item, dict | None, Reject | None]:
    """Crop one face to JPEG; a missing or unreadable image becomes a Reject."""
    try:
        data, extra = _read_image_bytes(item)
    except FileNotFoundError as err:  # the OS's has (errno, text); a reader's own has one argument, the reason
        detail = err.args[0] if len(err.args) == 1 else "file not found"
        return item, None, Reject(item.path, item.split, "missing-image", detail)
    except (OSError, recordio.RecordIOError) as err:
        return item, None, Reject(item.path, item.split, "unreadable-image", str(err))
    try:
        jpg, square, orig = crop_face(data, item.box, settings.face_crop, settings.quality)
    except UnsupportedPixels as err:
        return item, None, Reject(item.path, item.split, "unsupported-pixels", str(err))
    except Exception as err:  # noqa: BLE001 - any decoder failure means this one image is unusable
        return item, None, Reject(item.path, item.split, "unreadable-image", f"{type(err).__name__}: {err}")
    meta = {"key": item.key, "source": item.key.split("-", 1)[0], "split": item.split, "path": item.path,
            "crop_box": square, "orig_size": orig, "box": list(item.box) if item.box else None,
            **item.meta, **extra}
    sample = {"__key__": item.key, "jpg": jpg, "json": json.dumps(meta).encode()}
    if meta.get("expression") is not None:  # a missing expression (None) has no class code
        sample["cls"] = str(meta["expression"]).encode()
    return item, sample, None


def _read_image_bytes(item: Item) -> tuple[bytes, dict]:
    if item.column is not None:
        from .sources import hf  # imports datasets: only for its items
        return hf.read_image(item)
    if item.offset is None:
        return Path(item.file).read_bytes(), {}
    record = recordio.read_record(item.file, item.offset)
    return record.payload, {"identity": int(record.label[0])}


def _write_shard(out: Path, shard: _Planned, results, bar) -> dict:
    rejects, samples, classes, missing = [], 0, Counter(), Counter()
    with atomic_open(out / shard.name, "wb") as f:
        with wds.TarWriter(f, encoder=False, mtime=0) as tar:
            for item, sample, reject in results:
                if reject is not None:
                    rejects.append(asdict(reject))
                else:
                    tar.write(sample)
                    samples += 1
                    if "cls" in sample:
                        classes[int(sample["cls"])] += 1
                    missing.update(k.removesuffix(MISSING) for k in item.meta if k.endswith(MISSING))
                bar.update(1)
    entry = {"name": shard.name, "samples": samples, "bytes": (out / shard.name).stat().st_size,
             "sha256": sha256_file(out / shard.name), "plan": shard.digest, "rejects": rejects}
    if classes:  # lets an exact stream plan a class subset (7 of 8 expressions) without reading
        entry["classes"] = {str(c): n for c, n in sorted(classes.items())}
    if missing:
        entry["missing_labels"] = dict(sorted(missing.items()))
    return entry


def _reusable_shards(out: Path, scan: Scan, settings: ShardSettings, planned: list[_Planned]) -> dict[str, dict]:
    """Shards of an earlier run that are complete and still what the plan asks for."""
    if not (out / mf.NAME).exists():
        return {}
    old = mf.load(out)
    if old.get("source") != scan.source or old.get("settings") != asdict(settings):
        raise UserError(f"{out}: holds {old.get('source')} shards made with settings {old.get('settings')}, "
                        f"not {asdict(settings)}; choose another --out or pass --overwrite")
    crop = asdict(settings.face_crop)  # a manifest without one predates it: the same framing and resampler
    if old.get("face_crop", crop) != crop:
        raise UserError(f"{out}: holds shards cropped as {old['face_crop']}, not {crop}; "
                        "choose another --out or pass --overwrite")
    read = old.get("dataset", {})
    if read != scan.info:  # another label map, column, held-out split or dataset version: other samples
        changed = sorted(k for k in {**read, **scan.info} if read.get(k) != scan.info.get(k))
        raise UserError(f"{out}: holds {old.get('source')} shards read with another {', '.join(changed)}; "
                        "choose another --out or pass --overwrite")
    by_name = {e["name"]: e for split in old["splits"].values() for e in split["shards"]}
    reusable = {}
    for shard in planned:
        entry = by_name.get(shard.name)
        path = out / shard.name
        if (entry and entry.get("plan") == shard.digest and path.is_file()
                and path.stat().st_size == entry["bytes"] and sha256_file(path) == entry["sha256"]):
            reusable[shard.name] = entry
    return reusable


def _new_manifest(scan: Scan, settings: ShardSettings) -> dict:
    manifest = {
        "format": mf.FORMAT,
        "source": scan.source,
        "settings": asdict(settings),
        "face_crop": asdict(settings.face_crop),
        "created_by": code_version(),
        "root": str(scan.root),
        "inputs": {str(p.relative_to(scan.root)) if p.is_relative_to(scan.root) else str(p): sha256_file(p)
                   for p in scan.list_files},
    }
    if scan.info:
        manifest["dataset"] = scan.info
    return manifest


def _fill(manifest: dict, planned: list[_Planned], entries: dict[str, dict], scan: Scan, complete: bool) -> None:
    splits: dict[str, dict] = {}
    for shard in planned:
        split = splits.setdefault(shard.split, {"holdout": shard.split in scan.holdout_splits,
                                                "samples": 0, "shards": []})
        if shard.name in entries:
            split["shards"].append(entries[shard.name])
            split["samples"] += entries[shard.name]["samples"]
    manifest["splits"] = splits
    counts = Counter(r.reason for r in scan.rejects)
    counts.update(r["reason"] for e in entries.values() for r in e["rejects"])
    manifest["rejects"] = {"counts": dict(sorted(counts.items())), "file": "rejects.csv"}
    missing = Counter()
    for entry in entries.values():
        missing.update(entry.get("missing_labels", {}))
    manifest["missing_labels"] = dict(sorted(missing.items()))
    manifest["complete"] = complete


def _write_rejects_csv(path: Path, parse_rejects: list[Reject], entries: dict[str, dict]) -> None:
    rows = [asdict(r) for r in parse_rejects] + [r for e in entries.values() for r in e["rejects"]]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["path", "split", "reason", "detail"])
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


class _SerialPool:
    """Stands in for a process pool when one worker is asked for (easier to debug)."""

    def imap(self, fn, iterable, chunksize=1):
        return map(fn, iterable)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _pool(workers: int):
    return _SerialPool() if workers <= 1 else multiprocessing.Pool(workers)
