"""The numbers a card reports, read from the run's run.json and the reports it declares, never
recomputed.

    stage 1   run.json metrics: the final and the lowest logged training loss (masked patches)
    stage 2   the report of the published weights: top-1, balanced accuracy, macro-F1, per class
    stage 3b  the report of the published weights: per-emotion Pearson r and their mean; with
              folds, every fold's held-out score and the out-of-fold score (run.json metrics)

Each reader returns the card's evaluation section (markdown) and the model-index entries;
`data` names the evaluation data as the run's inputs record it (never a dataset they do not name).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from huggingface_hub import EvalResult
from safetensors import safe_open

from affect_publish.runs import Run

SELECTED = " These weights were chosen by their score on this same data, so the numbers are optimistic."


@dataclass
class Results:
    markdown: str
    eval_results: list[EvalResult] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)  # the card's `metrics:` (metric types)


@dataclass
class Data:
    name: str  # e.g. "AffectNet", "built-in synthetic data"
    type: str  # the model-index dataset type, e.g. "affectnet", "synthetic"


# stage 3's task (report.json's "task") as the Hub's model-index names it
TASKS = {"eri": ("emotion-reaction-intensity", "emotion reaction intensity estimation"),
         "emi": ("emotional-mimicry-intensity", "emotional mimicry intensity estimation")}


def results(run: Run, data: Data) -> Results:
    return {"pretrain": _pretrain, "finetune": _finetune, "eri": _eri}[run.stage](run, data)


def mae_config(run: Run) -> dict:
    """Stage 1: the MAE's constructor arguments, from the full-MAE export's metadata ({} without it)."""
    path = run.file("mae")
    if path is None:
        return {}
    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("mae_config", "{}"))


def _pretrain(run: Run, data: Data) -> Results:
    loss = run.record["metrics"]
    target = "per-patch normalised pixels" if mae_config(run).get("norm_pix_loss") else "pixels"
    every = loss.get("log_every", 1)
    markdown = "\n".join([
        "Stage 1 has no evaluation split: these are training losses, the mean squared error of the masked "
        f"patches' {target}" + (f", each the mean of a {every}-step logging interval." if every > 1 else "."),
        "", "| | loss | step |", "|---|--:|--:|",
        f"| final | {loss['final_loss']:.4f} | {loss['final_step']} |",
        f"| lowest | {loss['lowest_loss']:.4f} | {loss['lowest_step']} |"])
    common = dict(task_type="image-feature-extraction", task_name="masked image modelling",
                  dataset_type=data.type, dataset_name=data.name, dataset_split="train", metric_type="loss")
    return Results(markdown, [EvalResult(metric_value=loss["final_loss"], metric_name="final training loss", **common),
                              EvalResult(metric_value=loss["lowest_loss"], metric_name="lowest training loss",
                                         **common)], ["loss"])


def _finetune(run: Run, data: Data) -> Results:
    report = json.loads(run.file("report").read_text())
    names = report["class_names"]
    split = report.get("split", "val")
    lines = [f"{data.name}, {split} split, {len(names)} classes ({', '.join(names)}), {report['samples']} faces, "
             f"step {report['step']}, {report.get('weights', 'model')} weights.{SELECTED if run.selected else ''}", "",
             "| top-1 | balanced accuracy | macro-F1 |", "|--:|--:|--:|",
             f"| {report['top1']:.4f} | {report['balanced_accuracy']:.4f} | {report['macro_f1']:.4f} |", "",
             "| class | precision | recall | F1 | faces |", "|---|--:|--:|--:|--:|"]
    lines += [f"| {name} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |"
              for name, c in report["per_class"].items()]
    common = dict(task_type="image-classification", task_name="facial expression recognition",
                  dataset_type=data.type, dataset_name=data.name, dataset_config=f"{len(names)} classes",
                  dataset_split=split)
    evals = [EvalResult(metric_type="accuracy", metric_name="top-1 accuracy", metric_value=report["top1"], **common),
             EvalResult(metric_type="balanced_accuracy", metric_name="balanced accuracy",
                        metric_value=report["balanced_accuracy"], **common),
             EvalResult(metric_type="f1", metric_name="macro-F1", metric_config="macro",
                        metric_value=report["macro_f1"], **common)]
    return Results("\n".join(lines), evals, ["accuracy", "balanced_accuracy", "f1"])


def _number(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "NaN"


def _eri(run: Run, data: Data) -> Results:
    report = json.loads(run.file("report").read_text())
    fold = int(run.weights[len("fold_"):]) if run.weights.startswith("fold_") else None
    split = "validation split" if fold is None else f"held-out part of fold {fold}"
    undefined = {n["emotion"]: n["reason"] for n in report.get("nan", [])}
    lines = [f"{data.name}: Pearson r per emotion over the whole {split} ({report['videos']} videos), then their "
             f"plain mean (the challenge metric); best epoch {report.get('best_epoch', '?')}."
             + (SELECTED if run.selected else ""), "",
             "| emotion | Pearson r |", "|---|--:|"]
    lines += [f"| {name} | {_number(r)}{f' ({undefined[name]})' if name in undefined else ''} |"
              for name, r in report["per_emotion"].items()]
    lines.append(f"| **mean** | **{_number(report['mean'])}** |")
    cv = run.record["metrics"].get("cv")
    if fold is not None and cv:
        lines += ["", f"Cross-validation of the run ({len(cv['folds'])} folds over train + val; this model is "
                  f"fold {fold}):", "", "| fold | held-out mean Pearson |", "|---|--:|"]
        lines += [f"| {i}{' (this model)' if i == fold else ''} | {_number(m)} |" for i, m in enumerate(cv["folds"])]
        lines.append(f"| out of fold (each video by the model not trained on it) | {_number(cv['out_of_fold'])} |")
    task_type, task_name = TASKS.get(report.get("task"), TASKS["eri"])
    common = dict(task_type=task_type, task_name=task_name,
                  dataset_type=data.type, dataset_name=data.name,
                  dataset_split="val" if fold is None else f"fold {fold} held out (of train + val)",
                  metric_type="pearsonr")
    scores = [("mean Pearson r", report["mean"])] + [(f"Pearson r, {k}", v) for k, v in report["per_emotion"].items()]
    # a NaN stays in the table with its reason; the Hub's metadata takes numbers only
    evals = [EvalResult(metric_name=name, metric_value=value, **common)
             for name, value in scores if math.isfinite(value)]
    return Results("\n".join(lines), evals, ["pearsonr"])
