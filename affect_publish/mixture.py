"""What a run trained and was evaluated on, read from its run.json inputs: each source with its
use and sample count, and whether it is a real dataset (named by its own files: a shards
manifest's converter, stage 3a's raw videos) or the built-in synthetic data."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from affect_publish.licences import DATASETS, Dataset
from shared.errors import UserError
from shared.run_record import read_run_record

SYNTHETIC = "built-in synthetic data"


@dataclass
class Part:
    name: str  # the run's name for it
    origin: str  # the dataset's name, "built-in synthetic data" or "not on record"
    use: str  # what the run did with it, in words
    samples: int | None = None


def origin(entry: dict) -> str:
    if entry.get("synthetic"):
        return SYNTHETIC
    return DATASETS[entry["dataset"]].name if entry.get("dataset") in DATASETS else "not on record"


def store_videos(root: Path, entry: dict) -> dict | None:
    """A feature store input's raw videos, as stage 3a recorded them (None when not on record)."""
    if "run" not in entry:
        return None
    try:
        return read_run_record(root / entry["run"])["inputs"].get("videos")
    except UserError:
        return None


def parts(root: Path, record: dict) -> list[Part]:
    found = []
    for role, entry in record["inputs"].items():
        use = entry.get("use") or {}
        if entry.get("kind") == "face shards":
            name = role.split(".", 1)[1] if "." in role else entry.get("source") or role
            share = f"{100 * entry['share']:.1f} % of the samples" if "share" in entry else None
            splits = entry.get("splits") or {}
            if share:
                found.append(Part(name, origin(entry), f"{share}, splits {', '.join(splits)}" if splits else share,
                                  sum(splits.values()) if splits else None))
            else:
                found += [Part(f"{name} {s}", origin(entry), use.get(s, s), n) for s, n in splits.items()]
        elif entry.get("kind") == "feature store":
            videos = store_videos(root, entry)
            source = origin(videos) if videos else "not on record (the store has no run.json)"
            found += [Part(f"videos {s}", source, use.get(s, s), n) for s, n in entry.get("videos", {}).items()]
        elif entry.get("synthetic"):
            found.append(Part(role, SYNTHETIC, entry.get("kind", "")))
    return found


def datasets(root: Path, record: dict) -> list[Dataset]:
    """The real datasets a run's inputs name, in order, without repeats."""
    keys = [e.get("dataset") for e in record["inputs"].values()]
    keys += [(store_videos(root, e) or {}).get("dataset") for e in record["inputs"].values()
             if e.get("kind") == "feature store"]
    return list(dict.fromkeys(DATASETS[k] for k in keys if k in DATASETS))


def synthetic(root: Path, record: dict) -> bool:
    """Whether any of the run's data is the built-in (or generated) synthetic data."""
    entries = list(record["inputs"].values())
    entries += [store_videos(root, e) or {} for e in entries if e.get("kind") == "feature store"]
    return any(e.get("synthetic") for e in entries)


def excluded(record: dict) -> tuple[list[str], int | None]:
    """Stage 1: the leakage guard's exclusion lists (names) and how many faces they name."""
    lists = [e for e in record["inputs"].values() if e.get("kind") == "exclusion list"]
    return [Path(e["path"]).name for e in lists], sum(e.get("faces", 0) for e in lists) if lists else None
