"""Stage 1's run.json (shared/run_record.py): its inputs, the files it writes, its headline numbers."""
from __future__ import annotations

import math
from pathlib import Path

from shared.run_record import declared, encoder_input, file_input, shards_input, write_run_record
from shared.shards.leakage import read_exclusions
from shared.stream.sources import parse_weights
from shared.training.loop import read_metrics

FILES = {"config": ("config.yaml", "config"), "log": ("metrics.jsonl", "log"), "figures": ("figures", "figures")}
FINAL = {"encoder": ("export/encoder", "encoder"), "mae": ("export/mae.safetensors", "weights")}


def inputs(cfg, run_dir: Path) -> dict:
    """The face mixture (each source with its share of the samples), the starting checkpoint and
    the leakage guard's exclusion lists."""
    if cfg.data.synthetic:
        found = {"images": {"kind": "generated images (data.synthetic=true)", "synthetic": True}}
    else:
        found = {}
        weights = parse_weights(cfg.data.weights)
        specs = cfg.data.sources
        shares = {n: weights.get(n, s.get("weight", 1.0) if isinstance(s, dict) else 1.0) for n, s in specs.items()}
        for name, spec in specs.items():
            location = spec.get("urls", spec.get("path")) if isinstance(spec, dict) else spec
            entry = shards_input(str(location), run_dir, spec.get("splits") if isinstance(spec, dict) else None)
            found[f"shards.{name}"] = {**entry, "share": shares[name] / (sum(shares.values()) or 1.0)}
    if cfg.model.init:
        found["init"] = encoder_input(cfg.model.init, run_dir)
    for i, path in enumerate([] if cfg.data.synthetic else cfg.data.exclude):  # generated images exclude nothing
        found[f"exclude.{i}"] = file_input(path, run_dir, "exclusion list", faces=len(read_exclusions(path)))
    return found


def training_loss(run_dir: Path) -> dict:
    """The final and the lowest logged training loss, with their steps."""
    logged = {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")
              if math.isfinite(r.get("loss", math.nan))}
    if not logged:
        return {}
    final, lowest = max(logged), min(logged, key=logged.get)
    return {"final_loss": logged[final], "final_step": final, "lowest_loss": logged[lowest], "lowest_step": lowest}


def write_record(cfg, resolved: dict, run_dir: Path, step: int) -> Path:
    """run.json of a finished run (its export written)."""
    final = {"about": f"the final weights (step {step})", "selected": False, "files": declared(run_dir, FINAL)}
    metrics = {**training_loss(run_dir), "log_every": cfg.run.log_every}
    return write_run_record(run_dir, "pretrain", config=resolved, inputs=inputs(cfg, run_dir),
                            files=declared(run_dir, FILES), weights={"final": final}, default="final",
                            metrics=metrics)
