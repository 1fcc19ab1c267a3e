"""Where a run's model came from: the checkpoint it started from, the runs before it (when
their folders are here), and the encoders that made stage 3b's features.

The lineage decides the card's `base_model` and which datasets' terms bind the weights:
a stage-2 encoder carries its stage-1 pretraining data along, and so does every ERI model
trained on its features.
"""
from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

from shared.errors import UserError
from shared.publish.runs import read_config, stage_of


def feature_sources(config: dict) -> dict[str, dict[str, str]]:
    """Stage 3b: modality -> {"source", "fingerprint"} of the model that made its features, read
    from the feature store's metadata (one file per modality, as training reads its sizes);
    empty for a modality whose store is not here."""
    data, found = config.get("data", {}), {}
    store = Path(data.get("store") or "")
    for modality in config.get("model", {}).get("modalities", []):
        if modality == "visual" and data.get("end_to_end"):
            found[modality] = {"source": str(data.get("encoder"))}
            continue
        files = sorted((store / modality).glob("*.safetensors")) if data.get("store") else []
        if files:
            with safe_open(str(files[0]), framework="pt") as f:
                meta = f.metadata() or {}
            found[modality] = {k: meta[k] for k in ("source", "fingerprint") if k in meta}
    return found


def starting_point(stage: str, config: dict) -> str | None:
    """The checkpoint the run's model started from, as its configuration names it; for stage
    3b, which trains from scratch, the encoder of its visual features (where its lineage goes on)."""
    if stage == "pretrain":
        return config.get("model", {}).get("init")
    if stage == "finetune":
        return config.get("model", {}).get("encoder")
    return feature_sources(config).get("visual", {}).get("source")


def upstream(spec) -> Path | None:
    """The run folder that exported the encoder folder `spec` (<run>/export/encoder or
    <run>/best/encoder), when it is a local stage run; None otherwise."""
    folder = Path(str(spec or ""))
    root = folder.parent.parent
    if not spec or folder.name != "encoder" or folder.parent.name not in ("export", "best") \
            or not (root / "config.yaml").is_file():
        return None
    try:
        return root if stage_of(read_config(root)) else None
    except UserError:  # a config.yaml that does not parse: nothing to trace
        return None


def ancestors(stage: str, config: dict) -> list[tuple[Path, str, dict]]:
    """(run folder, stage, config) of each earlier run of the lineage found here, nearest first."""
    found, seen = [], set()
    root = upstream(starting_point(stage, config))
    while root is not None and root.resolve() not in seen:
        seen.add(root.resolve())
        parent_config = read_config(root)
        parent_stage = stage_of(parent_config)
        found.append((root, parent_stage, parent_config))
        root = upstream(starting_point(parent_stage, parent_config))
    return found


def hub_id(spec: str | None) -> str | None:
    """The Hub repository of a starting checkpoint named by Hub id or timm name; None for a
    local file or folder (published elsewhere, if at all: see --base-model)."""
    if not spec or Path(spec).exists():
        return None
    if spec.startswith("hf-hub:"):
        return spec[len("hf-hub:"):]
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(spec)
    return cfg.hf_hub_id if cfg is not None else None
