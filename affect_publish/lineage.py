"""Where a run's model came from, read from run.json records: the checkpoint it started from,
the runs before it (when their folders are here) and the encoders that made stage 3b's features.

An input that a recorded run made carries that run's folder ("run", relative to the input's
reader); the lineage follows those links, nearest first. It decides the card's `base_model` and
which datasets' terms bind the weights: a stage-2 encoder carries its stage-1 data along, and
so does every ERI model trained on its features.
"""
from __future__ import annotations

from pathlib import Path

from shared.errors import UserError
from shared.run_record import read_run_record

STARTS = ("encoder", "init")  # the input roles naming the weights a run started from


def ancestors(root: Path, record: dict) -> list[tuple[Path, dict]]:
    """(run folder, run.json) of each earlier recorded run found here, nearest first."""
    found, seen, queue = [], {root.resolve()}, [(root, record)]
    while queue:
        folder, current = queue.pop(0)
        for entry in current["inputs"].values():
            if "run" not in entry:
                continue
            parent = (folder / entry["run"]).resolve()
            if parent in seen:
                continue
            seen.add(parent)
            try:
                parent_record = read_run_record(parent)
            except UserError:  # moved or unfinished since: the lineage stops there
                continue
            found.append((folder / entry["run"], parent_record))
            queue.append((folder / entry["run"], parent_record))
    return found


def starting_point(record: dict) -> dict | None:
    """The input the run's model started from (None: random initialisation, or stage 3b, which
    trains from scratch on features)."""
    return next((record["inputs"][role] for role in STARTS if role in record["inputs"]), None)


def named(entry: dict | None) -> str | None:
    """How an input is named on a card: its Hub / timm name or its path from the run folder."""
    if entry is None:
        return None
    return entry.get("name") or entry.get("path") or entry.get("location")


def feature_sources(record: dict) -> dict[str, dict]:
    """Stage 3b: modality -> the input that made its features."""
    prefix = "features."
    return {role[len(prefix):]: entry for role, entry in record["inputs"].items() if role.startswith(prefix)}


def hub_id(entry: dict | None) -> str | None:
    """The Hub repository of a starting checkpoint named by Hub id or timm name; None for a
    local file or folder (published elsewhere, if at all: see --base-model)."""
    spec = (entry or {}).get("name")
    if not spec:
        return None
    if spec.startswith("hf-hub:"):
        return spec[len("hf-hub:"):]
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(spec)
    return cfg.hf_hub_id if cfg is not None else None
