"""Metrics computed once over a whole evaluation split (never averaged per batch)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                             precision_recall_fscore_support)


def classification_report(y_true, y_pred, class_names: list[str]) -> dict:
    """Top-1, balanced accuracy, macro-F1, per-class precision / recall / F1 / support and the
    confusion matrix (rows: true class, columns: predicted), all from scikit-learn."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    return {
        "samples": int(len(y_true)),
        "top1": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
                      for name, p, r, f, n in zip(class_names, precision, recall, f1, support)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "class_names": list(class_names),
    }


# undefined because of the truth: no model can score there, so selection leaves the column out
TRUTH_REASONS = ("fewer than 2 videos", "non-finite truth", "constant truth")


def _nan_reason(pred: np.ndarray, true: np.ndarray) -> str | None:
    """Why Pearson r of one column is undefined, or None when it is defined."""
    if len(pred) < 2:
        return "fewer than 2 videos"
    if not np.isfinite(true).all():
        return "non-finite truth"
    if np.ptp(true) == 0:
        return "constant truth"
    if not np.isfinite(pred).all():
        return "non-finite prediction"
    if np.ptp(pred) == 0:
        return "constant prediction"
    return None


def constant_columns(true: np.ndarray, names: list[str]) -> dict[str, float]:
    """name -> value of each column of `true` (N, C) that holds one value only."""
    true = np.asarray(true, dtype=np.float64)
    return {name: float(true[0, j]) for j, name in enumerate(names) if len(true) and np.ptp(true[:, j]) == 0}


def pearson_report(pred: np.ndarray, true: np.ndarray, names: list[str]) -> dict:
    """The ERI challenge metric over a whole split: per column Pearson r (scipy.stats.pearsonr)
    and their plain mean.

    pred, true: (N, C) with C == len(names). An undefined r (constant column, ...) stays NaN and
    makes the mean NaN: a collapsed model must show up in the score, not be averaged away. The
    NaN columns are listed under "nan" with the reason; scipy's ConstantInputWarning is silenced
    because the report says it instead.

    "mean_defined" is what model selection uses: the mean over the columns whose truth varies
    ("defined"), where a column the model leaves undefined (constant or non-finite prediction)
    counts as r = 0, since it carries no correlation; NaN only when no column's truth varies.
    """
    from scipy.stats import pearsonr
    try:
        from scipy.stats import ConstantInputWarning
    except ImportError:  # scipy < 1.9
        ConstantInputWarning = RuntimeWarning  # noqa: N806
    import warnings

    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if pred.shape != true.shape or pred.ndim != 2 or pred.shape[1] != len(names):
        raise ValueError(f"pred {pred.shape} and true {true.shape} must both be (N, {len(names)})")
    per_emotion, nan, scores = {}, [], {}
    for j, name in enumerate(names):
        reason = _nan_reason(pred[:, j], true[:, j])
        if reason is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConstantInputWarning)
                r = float(pearsonr(pred[:, j], true[:, j])[0])
            reason = None if np.isfinite(r) else "undefined correlation"
        else:
            r = float("nan")
        per_emotion[name] = r
        if reason is not None:
            nan.append({"emotion": name, "reason": reason})
        if reason not in TRUTH_REASONS:
            scores[name] = r if np.isfinite(r) else 0.0
    return {"per_emotion": per_emotion, "mean": float(np.mean(list(per_emotion.values()))),
            "nan": nan, "samples": int(len(pred)), "defined": list(scores),
            "mean_defined": float(np.mean(list(scores.values()))) if scores else float("nan")}
