"""What a run trained and was evaluated on: each source with its share and sample count.

Counts come from the shard manifests (`face-shards`) and the feature store's videos.csv when
the folders the configuration names exist on this machine; otherwise they are left blank
rather than guessed.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from shared.publish.licences import Dataset, dataset_of
from shared.shards.leakage import read_exclusions
from shared.stream.sources import parse_weights
from shared.tables import csv_records


BALANCE = {"sampling": "class-balanced resampling", "loss": "class-weighted loss", "none": "no class balancing"}


@dataclass
class Part:
    name: str  # the configuration's name for it
    location: str
    dataset: Dataset | None
    use: str  # what the run did with it, in words
    samples: int | None = None


def parts(stage: str, config: dict) -> list[Part]:
    return {"pretrain": _pretrain, "finetune": _finetune, "eri": _eri}[stage](config.get("data", {}), config)


def datasets(stage: str, config: dict) -> list[Dataset]:
    """The recognised datasets of a run, in order, without repeats."""
    found = [p.dataset for p in parts(stage, config) if p.dataset is not None]
    return list(dict.fromkeys(found))


def _manifest(location) -> dict | None:
    """A local shard folder's manifest.json (or the file itself), else None."""
    if not isinstance(location, str):
        return None
    path = Path(location)
    path = path / "manifest.json" if path.is_dir() else path
    if path.name != "manifest.json" or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _samples(manifest: dict | None, splits) -> int | None:
    if manifest is None:
        return None
    return sum(manifest["splits"][s]["samples"] for s in splits if s in manifest["splits"])


def _pretrain(data: dict, config: dict) -> list[Part]:
    if data.get("synthetic"):
        return [Part("synthetic", "", None, "synthetic images (data.synthetic=true), no dataset")]
    weights = parse_weights(data.get("weights"))
    specs = data.get("sources") or {}
    shares = {}
    for name, spec in specs.items():
        default = spec.get("weight", 1.0) if isinstance(spec, dict) else 1.0
        shares[name] = weights.get(name, default)
    total = sum(shares.values()) or 1.0
    found = []
    for name, spec in specs.items():
        splits = spec.get("splits") if isinstance(spec, dict) else None
        location = spec.get("urls", spec.get("path")) if isinstance(spec, dict) else spec
        manifest = _manifest(location)
        if manifest is not None and splits is None:  # pretraining reads the splits not held out
            splits = [s for s, e in manifest["splits"].items() if not e.get("holdout")]
        use = f"{100 * shares[name] / total:.1f} % of the samples" + (f", splits {', '.join(splits)}" if splits else "")
        found.append(Part(name, str(location), dataset_of(manifest["source"] if manifest else name), use,
                          _samples(manifest, splits or [])))
    return found


def _finetune(data: dict, config: dict) -> list[Part]:
    manifest = _manifest(data.get("shards"))
    dataset = dataset_of(manifest["source"] if manifest else "affectnet")
    train, val = data.get("train_split", "train"), data.get("val_split", "val")
    return [Part(f"{dataset.name if dataset else 'shards'} {train}", str(data.get("shards")), dataset,
                 f"training ({BALANCE.get(data.get('balance'), data.get('balance'))})", _samples(manifest, [train])),
            Part(f"{dataset.name if dataset else 'shards'} {val}", str(data.get("shards")), dataset,
                 "evaluation (every face once)", _samples(manifest, [val]))]


def _eri(data: dict, config: dict) -> list[Part]:
    table = Path(data.get("store") or "") / "videos.csv"
    counts = None
    if data.get("store") and table.is_file():
        counts = Counter(row["split"] for _, row in csv_records(table, ["split"]))
    dataset = dataset_of("hume")
    if config.get("folds"):
        uses = {"train": f"{config['folds']}-fold cross-validation (pooled with val)",
                "val": f"{config['folds']}-fold cross-validation (pooled with train)",
                "test": "test predictions only (no labels)"}
    else:
        uses = {"train": "training", "val": "model selection and evaluation",
                "test": "test predictions only (no labels)"}
    return [Part(f"Hume-Reaction {split}", str(table), dataset, use, counts[split] if counts else None)
            for split, use in uses.items()]


def excluded(config: dict) -> tuple[list[str], int | None]:
    """Stage 1: the leakage guard's exclusion lists and how many faces they name (None when a
    list is not here to count)."""
    files = list(config.get("data", {}).get("exclude") or [])
    if not all(Path(f).is_file() for f in files):
        return files, None
    return files, len(set().union(*(read_exclusions(f) for f in files)))
