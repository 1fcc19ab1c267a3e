"""run.json: what a stage's run folder holds, written by the stage itself when it finishes.

    {"format": 1,
     "stage": {"name": "finetune", "number": "2", "title": "AffectNet expression fine-tuning"},
     "config": the resolved configuration (shared.config.to_dict), local paths relative to the run folder,
     "inputs": {role: {"kind", "path" (relative) or "name" / "location", "sha256": {file: digest}, ...}},
     "outputs": {"files": {role: {"path", "kind"}},                 the run's own files
                 "weights": {name: {"about", "selected", "files": {role: {"path", "kind"}}}},
                 "default": the weights published unless asked otherwise},
     "metrics": the headline numbers,
     "software": package versions}

Every path is relative to the run folder; nothing names this machine's folders or the time, and
keys are sorted, so identical runs write identical bytes. Inputs are fingerprinted by their
small declaring files (a shards manifest, an encoder's config.json, a store's videos.csv), never
by the data itself. `affect_publish` reads this file and the files it declares, nothing else.
An input carries "run" (the folder of the run that made it, when that run has a run.json),
"dataset" (a key of affect_publish's dataset terms) only when its own files name a real
dataset, and "synthetic": true for the built-in (or generated) data.
"""
from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from shared import builtin_data
from shared.atomic import write_json
from shared.errors import UserError
from shared.provenance import code_version, sha256_file

NAME = "run.json"
FORMAT = 1
STAGES = {"pretrain": ("1", "MAE pretraining"), "finetune": ("2", "AffectNet expression fine-tuning"),
          "features": ("3a", "feature extraction (the feature store)"),
          "eri": ("3b", "emotion intensity (the ERI or EMI task)")}
# what an output is, for a reader of run.json
KINDS = {"encoder": "timm encoder folder (config.json + model.safetensors)",
         "model": "model folder (config.json + model.safetensors)", "weights": "safetensors weights",
         "head": "classification head (safetensors, class names in its metadata)", "report": "evaluation report (JSON)",
         "predictions": "predictions (CSV)", "figures": "figure(s) (PNG)", "log": "training log (JSON lines)",
         "config": "resolved configuration (YAML)", "table": "table (CSV)", "features": "feature files (safetensors)"}
SOFTWARE = ("torch", "timm", "accelerate", "numpy", "safetensors", "transformers")
_DATASET_SOURCES = {"affectnet": "affectnet", "casia": "casia-webface", "celeba": "celeba", "imdb": "imdb-wiki",
                    "wiki": "imdb-wiki", "hume": "hume-reaction"}


def relative(path: str | os.PathLike, run_dir: str | os.PathLike) -> str:
    """`path` as seen from `run_dir` (POSIX separators), whatever the current folder."""
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(run_dir))).as_posix()


def is_local_path(value: str) -> bool:
    """An absolute path, or a relative one naming something that exists here (not a URL or a model id)."""
    return "://" not in value and (os.path.isabs(value) or (os.sep in value and os.path.exists(value)))


def portable(value: Any, run_dir: str | os.PathLike) -> Any:
    """`value` (a configuration) with every local path made relative to `run_dir`."""
    if isinstance(value, dict):
        return {k: portable(v, run_dir) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v, run_dir) for v in value]
    if isinstance(value, str) and is_local_path(value):
        return relative(value, run_dir)
    return value


def dataset_key(source: str | None) -> str | None:
    """The dataset a shards manifest's `source` (its converter) or a source name stands for."""
    lowered = (source or "").lower()
    return next((key for alias, key in _DATASET_SOURCES.items() if alias in lowered), None)


def _origin(entry: dict, folder: Path, dataset: str | None) -> dict:
    """`dataset` claimed only for data that is not the built-in synthetic data."""
    if builtin_data.is_builtin(folder):
        return {**entry, "synthetic": True}
    return {**entry, "dataset": dataset} if dataset else entry


def shards_input(location: str, run_dir, splits: list[str] | None = None) -> dict:
    """A face-shards folder: its manifest's digest, source (converter) and the samples of `splits`
    (default: the splits not held out); a remote pattern is named as given."""
    folder = Path(location)
    manifest_path = folder / "manifest.json" if folder.is_dir() else folder
    if not is_local_path(str(location)) or not manifest_path.is_file():
        return {"kind": "face shards", "location": str(location)}
    manifest = json.loads(manifest_path.read_text())
    chosen = splits or [s for s, e in manifest["splits"].items() if not e.get("holdout")]
    entry = {"kind": "face shards", "path": relative(manifest_path.parent, run_dir),
             "sha256": {"manifest.json": sha256_file(manifest_path)}, "source": manifest.get("source"),
             "splits": {s: manifest["splits"][s]["samples"] for s in chosen if s in manifest["splits"]}}
    return _origin(entry, manifest_path.parent, dataset_key(manifest.get("source")))


def encoder_input(spec: str, run_dir) -> dict:
    """A starting checkpoint or frozen encoder: a local folder (its config.json's digest, and the
    run that wrote it), a local weight file (its digest) or a Hub / timm name."""
    path = Path(spec)
    if not is_local_path(str(spec)):
        return {"kind": "encoder", "name": str(spec)}
    entry = {"kind": "encoder folder" if path.is_dir() else "weight file", "path": relative(path, run_dir)}
    declaring = path / "config.json" if path.is_dir() else path
    if declaring.is_file():
        entry["sha256"] = {declaring.name: sha256_file(declaring)}
    maker = run_of(path)
    if maker is not None:
        entry["run"] = relative(maker, run_dir)
    return entry


def file_input(path: str | os.PathLike, run_dir, kind: str, **facts) -> dict:
    return {"kind": kind, "path": relative(path, run_dir), "sha256": {Path(path).name: sha256_file(path)}, **facts}


def run_of(path: str | os.PathLike) -> Path | None:
    """The run folder (up to three levels above) whose run.json declares `path` among its outputs."""
    target = Path(os.path.abspath(path))
    for folder in list(target.parents)[:3]:
        if not (folder / NAME).is_file():
            continue
        try:
            record = json.loads((folder / NAME).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        declared = [f["path"] for f in record.get("outputs", {}).get("files", {}).values()]
        declared += [f["path"] for w in record.get("outputs", {}).get("weights", {}).values()
                     for f in w.get("files", {}).values()]
        if any(Path(os.path.abspath(folder / p)) == target for p in declared):
            return folder
    return None


def software() -> dict[str, str]:
    found = {"python": platform.python_version(), "affect-lineage": code_version()}
    for name in SOFTWARE:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def declared(run_dir, files: dict[str, tuple[str, str]]) -> dict[str, dict]:
    """{role: {"path", "kind"}} of the (relative path, kind) pairs whose file or folder exists."""
    return {role: {"path": path, "kind": kind} for role, (path, kind) in files.items()
            if (Path(run_dir) / path).exists()}


def write_run_record(run_dir, stage: str, *, config: dict, inputs: dict, files: dict, weights: dict | None = None,
                     default: str | None = None, metrics: dict | None = None) -> Path:
    """Write `run_dir`/run.json (see the module docstring); `files` and each weights' "files" as
    declared() gives them. Returns its path. A ValueError for an unknown stage or default."""
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r}: expected one of {sorted(STAGES)}")
    weights = weights or {}
    if weights and default not in weights:
        raise ValueError(f"default weights {default!r} not among {sorted(weights)}")
    number, title = STAGES[stage]
    record = {"format": FORMAT, "stage": {"name": stage, "number": number, "title": title},
              "config": portable(config, run_dir), "inputs": inputs,
              "outputs": {"files": files, "weights": weights, "default": default},
              "metrics": metrics or {}, "software": software()}
    path = Path(run_dir) / NAME
    return write_json(path, record)


def read_run_record(run_dir) -> dict:
    """The run.json of `run_dir`; a UserError when it is missing, unreadable or of another format."""
    path = Path(run_dir) / NAME
    if not path.is_file():
        raise UserError(f"{run_dir}: no {NAME}, which a stage writes when its run finishes; let the run finish "
                        "(resume it with its stage's command and --resume auto), or give a finished run's folder")
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("stage", {}).get("name") not in STAGES:
        raise UserError(f"{path}: not a run record of format {FORMAT} naming one of the stages {sorted(STAGES)}")
    return record
