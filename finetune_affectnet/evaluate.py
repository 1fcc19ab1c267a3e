"""Evaluation over the whole validation split, exactly once across all ranks, and its report.

Beside each report.json lies predictions.csv, one row per validation face: `key` (the shard
sample key), `true` and `predicted` (class names), then one column per class, named by the
class, holding the softmax probability (as Python's repr spells it: exact). The report's
numbers are recomputed from it by scikit-learn (tests/prediction_utils.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import gather_object

from shared.atomic import write_csv, write_json
from shared.metrics import classification_report
from shared.plots import confusion_matrix_figure
from shared.training.images import normalize

PREDICTIONS = "predictions.csv"


@dataclass
class Predictions:
    """Per face of a split: keys (N,), true labels (N,) int64 and class probabilities (N, C) float32."""
    keys: list[str]
    labels: np.ndarray
    probabilities: np.ndarray

    @property
    def predicted(self) -> np.ndarray:
        """(N,) int64: the most probable class."""
        return self.probabilities.argmax(axis=-1)


@torch.no_grad()
def predict(acc, model, stream, mean, std) -> Predictions:
    """The predictions for every real sample of the split, on every rank.

    Every rank runs the same number of padded batches; the padding is dropped after gathering,
    so nothing is counted twice and nothing is left out."""
    was_training = model.training
    model.eval()
    logits, labels, valid, keys = [], [], [], []
    for batch in stream:
        x = normalize(batch["image"], mean, std, acc.device)
        with acc.autocast():
            logits.append(model(x).float())
        labels.append(batch["label"].to(acc.device))
        valid.append(batch["valid"].to(acc.device))
        keys += batch["key"]
    model.train(was_training)
    logits, labels, valid = (acc.gather(torch.cat(t)) for t in (logits, labels, valid))
    if acc.num_processes > 1:  # in rank order, as acc.gather concatenates the tensors
        keys = gather_object(keys)
    keep = valid.bool().cpu().numpy()
    return Predictions(keys=[k for k, kept in zip(keys, keep) if kept], labels=labels.cpu().numpy()[keep],
                       probabilities=logits.softmax(dim=-1).cpu().numpy()[keep])


def write_report(predictions: Predictions, class_names: list[str], out_dir: Path, *, step: int, extra: dict) -> dict:
    """The report of these predictions, saved in out_dir with them (see save_report); returns it."""
    report = {"step": step, **classification_report(predictions.labels, predictions.predicted, class_names), **extra}
    save_report(report, out_dir, predictions=predictions)
    return report


def write_predictions(predictions: Predictions, class_names: list[str], path: Path) -> Path:
    """predictions.csv (module docstring), atomically."""
    names = list(class_names)
    rows = ([key, names[t], names[p], *(repr(float(v)) for v in probs)] for key, t, p, probs in
            zip(predictions.keys, predictions.labels, predictions.predicted, predictions.probabilities))
    return write_csv(path, ["key", "true", "predicted", *names], rows)


def save_report(report: dict, out_dir: Path, title: str | None = None,
                predictions: Predictions | None = None) -> np.ndarray:
    """report.json + confusion_matrix.png (+ predictions.csv when given) in out_dir; returns the
    rendered matrix."""
    write_json(out_dir / "report.json", report)
    if predictions is not None:
        write_predictions(predictions, report["class_names"], out_dir / PREDICTIONS)
    step = f", step {report['step']}" if "step" in report else ""
    title = title or (f"{report.get('split', 'validation')}{step}: top-1 {report['top1']:.3f}, "
                      f"balanced {report['balanced_accuracy']:.3f}")
    return confusion_matrix_figure(report["confusion_matrix"], report["class_names"],
                                   out_dir / "confusion_matrix.png", title=title)
