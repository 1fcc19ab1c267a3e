"""Stage 3b's run.json (shared/run_record.py) and its model in published form.

Each finished model (the run's, or each fold's) is also written as `model/` (config.json +
model.safetensors, see eri_downstream.model.save_eri_model): what `affect-publish` copies,
with the feature sizes, the encoders that made the features and how the videos were sampled.
"""
from __future__ import annotations

import json
from pathlib import Path

from eri_downstream.dataset import read_table
from eri_downstream.tasks import Task
from eri_downstream.model import save_eri_model
from eri_downstream.store import FeatureStore
from shared.provenance import sha256_file
from shared.run_record import NAME, declared, encoder_input, is_local_path, relative, write_run_record

FILES = {"config": ("config.yaml", "config"), "cv": ("cv_results.json", "report"),
         "cv_table": ("cv_results.csv", "table"), "ensemble_predictions": ("submission.csv", "predictions")}
MODEL_FILES = {"model": ("model", "model"), "weights": ("best.safetensors", "weights"), "report": ("report.json", "report"),
               "predictions": ("val_predictions.csv", "predictions"),
               "test_predictions": ("submission.csv", "predictions"), "per_emotion": ("per_emotion_pearson.png", "figures"),
               "scatter": ("predicted_vs_true.png", "figures"), "curves": ("learning_curves.png", "figures"),
               "log": ("metrics.jsonl", "log")}


def feature_sources(cfg) -> dict[str, dict[str, str]]:
    """modality -> {"source", "fingerprint"} of the model that made its features (one stored file
    per modality, as training reads its sizes); end to end, the visual encoder as configured."""
    store, found = FeatureStore(cfg.data.store), {}
    for modality in cfg.model.modalities:
        if modality == "visual" and cfg.data.end_to_end:
            found[modality] = {"source": str(cfg.data.encoder)}
            continue
        folder = cfg.data.text_features if modality == "text" else modality  # the store folder it reads
        files = sorted((store.root / folder).glob("*.safetensors"))
        meta = store.metadata(folder, files[0].stem) if files else None
        found[modality] = {k: meta[k] for k in ("source", "fingerprint") if k in (meta or {})}
        if folder == "sentence":  # one mean-pooled embedding per transcript, not the model's tokens
            found[modality]["features"] = "sentence: the text encoder's tokens mean-pooled, one step per video"
    return found


def _portable_source(source: dict, run_dir: Path) -> dict:
    value = source.get("source")
    return {**source, "source": relative(value, run_dir)} if value and is_local_path(value) else source


def export_model(net, out: Path, cfg, run_dir: Path, task: Task) -> Path:
    """`out`/model: the best weights of this fold (or run) in published form, their outputs named
    by the task's emotions."""
    sources = feature_sources(cfg)
    inputs = {m: {"dim": getattr(net.config, f"{m}_dim"), **_portable_source(sources.get(m, {}), run_dir)}
              for m in net.config.modalities}
    return save_eri_model(net, out / "model", extra={
        "task": task.name, "dataset": task.dataset, "emotions": list(task.emotions), "inputs": inputs, "frames_per_video": cfg.data.k,
        "max_audio_steps": cfg.data.max_audio_steps})


def inputs(cfg, run_dir: Path) -> dict:
    store = Path(cfg.data.store)
    counts = {}
    for entry in read_table(store / "videos.csv"):
        counts[entry.split] = counts.get(entry.split, 0) + 1
    if cfg.folds:
        use = {"train": f"{cfg.folds}-fold cross-validation (pooled with val)",
               "val": f"{cfg.folds}-fold cross-validation (pooled with train)"}
    else:
        use = {"train": "training", "val": "model selection and evaluation"}
    use["test"] = "test predictions only (no labels)"
    found = {"store": {"kind": "feature store", "path": relative(store, run_dir), "videos": counts, "use": use,
                       "sha256": {"videos.csv": sha256_file(store / "videos.csv")}}}
    if (store / NAME).is_file():  # written by stage 3a: where the videos and features came from
        found["store"]["sha256"][NAME] = sha256_file(store / NAME)
        found["store"]["run"] = relative(store, run_dir)
    for modality, source in feature_sources(cfg).items():
        made_by = encoder_input(source["source"], run_dir) if source.get("source") else {"kind": "unknown"}
        found[f"features.{modality}"] = {**made_by, **({"fingerprint": source["fingerprint"]}
                                                        if "fingerprint" in source else {})}
    return found


def write_record(cfg, resolved: dict, run_dir: Path) -> Path:
    """run.json once the run's model (or every fold's model finished so far) is written."""
    bases = [f"fold_{i}" for i in range(cfg.folds) if (run_dir / f"fold_{i}" / "report.json").is_file()] \
        if cfg.folds else ["."]
    weights, metrics = {}, {}
    for base in bases:
        name = base if cfg.folds else "best"
        report = json.loads((run_dir / base / "report.json").read_text())
        metrics[name] = {k: report[k] for k in ("mean", "mean_defined", "per_emotion", "videos", "best_epoch")}
        about = (f"the model of fold {base[5:]} of {cfg.folds} (best weights by its held-out mean Pearson)"
                 if cfg.folds else "the best weights by validation mean Pearson")
        files = {role: (str(Path(base) / path), kind) for role, (path, kind) in MODEL_FILES.items()}
        weights[name] = {"about": about, "selected": True, "files": declared(run_dir, files)}
    if (run_dir / "cv_results.json").is_file():
        cv = json.loads((run_dir / "cv_results.json").read_text())
        metrics["cv"] = {"folds": cv["folds"], "out_of_fold": cv["out_of_fold"]}
    return write_run_record(run_dir, "eri", config=resolved, inputs=inputs(cfg, run_dir),
                            files=declared(run_dir, FILES), weights=weights, default=next(iter(weights), None),
                            metrics=metrics)
