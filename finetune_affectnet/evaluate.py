"""Evaluation over the whole validation split, exactly once across all ranks, and its report."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from shared.metrics import classification_report
from shared.plots import confusion_matrix_figure
from shared.training.images import normalize


@torch.no_grad()
def predict(acc, model, stream, mean, std) -> tuple[np.ndarray, np.ndarray]:
    """(true labels, predicted labels) of every real sample of the split, on every rank.

    Every rank runs the same number of padded batches; the padding is dropped after gathering,
    so nothing is counted twice and nothing is left out."""
    was_training = model.training
    model.eval()
    logits, labels, valid = [], [], []
    for batch in stream:
        x = normalize(batch["image"], mean, std, acc.device)
        with acc.autocast():
            logits.append(model(x).float())
        labels.append(batch["label"].to(acc.device))
        valid.append(batch["valid"].to(acc.device))
    model.train(was_training)
    logits, labels, valid = (acc.gather(torch.cat(t)) for t in (logits, labels, valid))
    keep = valid.bool()
    return labels[keep].cpu().numpy(), logits[keep].argmax(dim=-1).cpu().numpy()


def write_report(y_true, y_pred, class_names: list[str], out_dir: Path, *, step: int, extra: dict) -> dict:
    """The report of these predictions, saved in out_dir (see save_report); returns it."""
    report = {"step": step, **classification_report(y_true, y_pred, class_names), **extra}
    save_report(report, out_dir)
    return report


def save_report(report: dict, out_dir: Path, title: str | None = None) -> np.ndarray:
    """report.json + confusion_matrix.png in out_dir; returns the rendered matrix."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    step = f", step {report['step']}" if "step" in report else ""
    title = title or (f"{report.get('split', 'validation')}{step}: top-1 {report['top1']:.3f}, "
                      f"balanced {report['balanced_accuracy']:.3f}")
    return confusion_matrix_figure(report["confusion_matrix"], report["class_names"],
                                   out_dir / "confusion_matrix.png", title=title)
