"""Stage 3a's run.json (shared/run_record.py), in the feature store folder: the raw videos it
read, the encoders that made each modality's features (read from the stored files, so steps
run one at a time all count), and what the store holds."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from eri_downstream.dataset import ABAW5_TABLE, MUSE_LABELS, MUSE_PARTITION, VIDMIMIC_SPLITS, read_table
from eri_downstream.store import FEATURE_STEPS, FeatureStore
from shared import builtin_data
from shared.config import to_dict
from shared.provenance import sha256_file
from shared.run_record import declared, encoder_input, relative, write_run_record

FILES = {"table": ("videos.csv", "table"), "faces": ("faces", "features"), "transcripts": ("transcripts.csv", "table"),
         **{step: (step, "features") for step in FEATURE_STEPS},
         **{f"{step}_failures": (f"{step}_failures.csv", "table") for step in ("faces", *FEATURE_STEPS, "transcripts")}}


def videos_input(data: str, store: Path) -> dict:
    """The raw Hume-Reaction (ABAW5 or MuSe 2022) or Hume-Vidmimic2 folder, fingerprinted by its tables."""
    root = Path(data)
    names = (ABAW5_TABLE, MUSE_LABELS, MUSE_PARTITION, *VIDMIMIC_SPLITS.values())
    tables = [root / name for name in names if (root / name).is_file()]
    vidmimic = (root / VIDMIMIC_SPLITS["train"]).is_file()
    entry = {"kind": "raw reaction videos", "path": relative(root, store),
             "sha256": {t.name: sha256_file(t) for t in tables},
             "layout": "Hume-Vidmimic2" if vidmimic else "ABAW5" if (root / ABAW5_TABLE).is_file() else "MuSe 2022"}
    dataset = "hume-vidmimic2" if vidmimic else "hume-reaction"
    return {**entry, "synthetic": True} if builtin_data.is_builtin(root) else {**entry, "dataset": dataset}


def write_record(cfg, store: FeatureStore) -> Path:
    """run.json of the store after this invocation's steps; `cfg` its resolved ExtractConfig."""
    inputs = {"videos": videos_input(cfg.data, store.root)}
    for step in FEATURE_STEPS:
        files = sorted((store.root / step).glob("*.safetensors"))
        meta = store.metadata(step, files[0].stem) if files else None
        if meta and meta.get("source"):
            inputs[f"features.{step}"] = {**encoder_input(meta["source"], store.root),
                                          **({"fingerprint": meta["fingerprint"]} if "fingerprint" in meta else {})}
    videos = Counter(e.split for e in read_table(store.table))
    stored = {step: len(list((store.root / step).glob("*.safetensors"))) for step in FEATURE_STEPS}
    config = to_dict(cfg)
    return write_run_record(store.root, "features", config=config, inputs=inputs, files=declared(store.root, FILES),
                            metrics={"videos": dict(sorted(videos.items())), "feature_files": stored,
                                     "faces": len(list((store.root / "faces").glob("*.tar")))})
