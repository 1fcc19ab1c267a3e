"""The predictions.csv beside a report, read independently: each report's numbers recomputed from it
with scikit-learn (stage 2) or scipy (stage 3b) must equal what report.json holds."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                             precision_recall_fscore_support)

from eri_downstream.dataset import EMOTIONS



def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def check_classification(folder: Path) -> dict:
    """Stage 2: top-1, balanced accuracy, macro-F1, per-class figures and the confusion matrix of
    folder/report.json, from folder/predictions.csv. Returns the report."""
    report = json.loads((folder / "report.json").read_text())
    names = report["class_names"]
    header, rows = read_rows(folder / "predictions.csv")
    assert header == ["key", "true", "predicted", *names]
    keys = [r["key"] for r in rows]
    assert len(rows) == report["samples"] and len(set(keys)) == len(keys) and all(keys)
    true = np.array([names.index(r["true"]) for r in rows])
    pred = np.array([names.index(r["predicted"]) for r in rows])
    probs = np.array([[float(r[n]) for n in names] for r in rows])
    assert np.array_equal(probs.argmax(axis=1), pred) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    labels = list(range(len(names)))
    assert accuracy_score(true, pred) == report["top1"]
    assert balanced_accuracy_score(true, pred) == report["balanced_accuracy"]
    assert f1_score(true, pred, labels=labels, average="macro", zero_division=0) == report["macro_f1"]
    assert confusion_matrix(true, pred, labels=labels).tolist() == report["confusion_matrix"]
    precision, recall, f1, support = precision_recall_fscore_support(true, pred, labels=labels, zero_division=0)
    assert report["per_class"] == {n: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                                   for n, p, r, f, s in zip(names, precision, recall, f1, support)}
    return report


def check_pearson(folder: Path, report_name: str = "report.json", key: str = "mean") -> float:
    """Stage 3b: the per-emotion Pearson r and their mean (report[key]) from folder/predictions.csv.
    Returns the mean."""
    report = json.loads((folder / report_name).read_text())
    header, rows = read_rows(folder / "predictions.csv")
    assert header == ["file_id", *(f"predicted_{e}" for e in EMOTIONS), *(f"true_{e}" for e in EMOTIONS)]
    pred = np.array([[float(r[f"predicted_{e}"]) for e in EMOTIONS] for r in rows])
    true = np.array([[float(r[f"true_{e}"]) for e in EMOTIONS] for r in rows])
    per_emotion = {e: float(pearsonr(pred[:, j], true[:, j])[0]) for j, e in enumerate(EMOTIONS)}
    mean = float(np.mean(list(per_emotion.values())))
    assert mean == report[key]
    if "per_emotion" in report:
        assert per_emotion == report["per_emotion"] and len(rows) == report["videos"]
    if "val_predictions" in report:  # the same numbers the fold keeps for its CV summary
        assert {r["file_id"] for r in rows} == set(report["val_predictions"])
        assert np.array_equal(pred, np.array([report["val_predictions"][r["file_id"]] for r in rows]))
    return mean
