"""Find near-duplicates of held-out faces (AffectNet validation) inside pretraining shards.

Every face of the held-out splits and of the shards to check is reduced to a 64-bit perceptual
hash (DCT hash of the whole square crop); a pretraining face within `--max-distance` bits of a
held-out face is listed in the exclusion file, which the stream honours (`exclude=`). The hash
survives re-encoding, rescaling and small colour changes; it does not match the same photo
framed very differently, so crops made with similar margins compare best.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
from pathlib import Path

import imagehash
import numpy as np
import webdataset as wds
from tqdm import tqdm

from . import manifest as mf
from ..errors import UserError
from ..pixels import open_rgb
from ..atomic import write_json, write_text
from ..tables import text_lines


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--holdout", nargs="+", required=True, type=str,
                   help="shard folders whose held-out splits must not leak (e.g. shards/affectnet)")
    p.add_argument("--against", nargs="+", required=True, type=str,
                   help="shard folders used for pretraining; their non-held-out splits are checked")
    p.add_argument("--out", type=Path, required=True, help="exclusion list to write (one sample key per line)")
    p.add_argument("--max-distance", type=int, default=6,
                   help="largest Hamming distance between 64-bit hashes that counts as a duplicate (default %(default)s)")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    holdout = [(f, name) for f in args.holdout for name in _shard_names(f, holdout=True)]
    against = [(f, name) for f in args.against for name in _shard_names(f, holdout=False)]
    if not holdout:
        raise UserError(f"{args.holdout}: no held-out splits in these shard folders")
    progress = not args.no_progress
    hold_keys, hold_hashes = hash_shards(holdout, args.workers, progress, "held-out faces")
    keys, hashes = hash_shards(against, args.workers, progress, "pretraining faces")
    matches = find_matches(hold_hashes, hashes, args.max_distance)
    report = {
        "max_distance": args.max_distance,
        "holdout": {"folders": args.holdout, "faces": len(hold_keys)},
        "against": {"folders": args.against, "faces": len(keys)},
        "excluded": len({keys[i] for i, _, _ in matches}),
        "matches": [{"key": keys[i], "holdout_key": hold_keys[j], "distance": d} for i, j, d in matches],
    }
    write_exclusions(args.out, sorted({keys[i] for i, _, _ in matches}), report)
    print(f"{report['excluded']} of {len(keys)} pretraining faces are within {args.max_distance} bits of "
          f"one of {len(hold_keys)} held-out faces; excluded in {args.out}")
    return 0


def _shard_names(folder: str, holdout: bool) -> list[str]:
    manifest = mf.load(folder)
    return [e["name"] for split in manifest["splits"].values() if split["holdout"] == holdout
            for e in split["shards"]]


def phash64(jpg: bytes) -> int:
    bits = imagehash.phash(open_rgb(jpg)).hash.ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def _hash_shard(shard: tuple[str, str]) -> tuple[list[str], list[int]]:
    folder, name = shard
    keys, hashes = [], []
    for sample in wds.WebDataset(f"{mf.folder_of(folder)}/{name}", shardshuffle=False, empty_check=False):
        keys.append(sample["__key__"])
        hashes.append(phash64(sample["jpg"]))
    return keys, hashes


def hash_shards(shards: list[tuple[str, str]], workers: int, progress: bool, what: str):
    keys, hashes = [], []
    with multiprocessing.Pool(max(1, min(workers, len(shards)))) as pool:
        for k, h in tqdm(pool.imap(_hash_shard, shards), total=len(shards), unit="shard",
                         desc=f"hashing {what}", disable=not progress):
            keys += k
            hashes += h
    return keys, np.array(hashes, dtype=np.uint64)


def find_matches(holdout: np.ndarray, hashes: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """(index in hashes, index in holdout, distance) of every pair within max_distance bits."""
    if not len(holdout) or not len(hashes):
        return []
    rows = max(1, (1 << 22) // len(holdout))  # bounds the distance matrix to ~32 MB
    out = []
    for start in range(0, len(hashes), rows):
        dist = np.bitwise_count(hashes[start:start + rows, None] ^ holdout[None, :])
        for i, j in zip(*np.nonzero(dist <= max_distance)):
            out.append((start + int(i), int(j), int(dist[i, j])))
    return out


def write_exclusions(path: Path, keys: list[str], report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# sample keys the stream skips: near-duplicates of held-out faces",
             f"# details: {path.with_suffix('.json').name}"] + keys
    write_text(path, "\n".join(lines) + "\n")
    write_json(path.with_suffix(".json"), report)


def read_exclusions(path: str | os.PathLike) -> set[str]:
    """The sample keys listed in an exclusion file ('#' lines are comments)."""
    return {line.strip() for _, line in text_lines(path, "an exclusion list made by 'face-shards leakage'", comment="#")}
