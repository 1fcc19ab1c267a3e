"""Cross-validation folds over train + val, and the challenge's submission file.

The paper's 5-fold CV pools the train and val videos (test never: it has no labels and is what
the ensemble predicts). Submissions are CSV: the task's id column (ERI: `File_ID`
bracketed as ABAW5 spells it, "[00123]", zeros kept), then the task's emotions in order, no index
column.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.model_selection import KFold

from eri_downstream.dataset import EMOTIONS, VideoEntry
from eri_downstream.tasks import Task, get_task
from shared.atomic import write_csv
from shared.errors import UserError
from shared.tables import csv_rows

ERI = get_task("eri")
SUBMISSION_COLUMNS = [ERI.submission_id, *ERI.emotions]  # the ERI submission's header
PREDICTIONS = "predictions.csv"


def prediction_columns(emotions=EMOTIONS) -> list[str]:
    return ["file_id", *(f"predicted_{e}" for e in emotions), *(f"true_{e}" for e in emotions)]


def cv_folds(entries: Sequence[VideoEntry], n_folds: int = 5, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """(train ids, held-out ids) per fold over the labelled train + val videos.

    Test videos and any unlabelled video are left out. Ids are sorted before the seeded
    shuffle, so the folds depend only on the set of videos and the seed, not on the order the
    caller lists them in; every pooled video is held out exactly once.
    """
    pool = sorted(e.file_id for e in entries if e.split in ("train", "val") and e.labels is not None)
    if n_folds < 2 or n_folds > len(pool):
        raise UserError(f"{n_folds}-fold cross-validation needs 2 <= folds <= {len(pool)} "
                        "(the labelled train + val videos)")
    splitter = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [([pool[i] for i in train], [pool[i] for i in held])
            for train, held in splitter.split(np.arange(len(pool)))]


def _bare(file_id: str) -> str:
    return str(file_id).strip().removeprefix("[").removesuffix("]").strip()


def write_submission(path: str | Path, file_ids: Sequence[str], predictions: np.ndarray, task: Task = ERI) -> Path:
    """predictions (N, E) in the task's emotion order -> the challenge CSV, values clipped to
    [0, 1] (the label range) with 6 decimals; ids may be bare or bracketed. Written atomically."""
    predictions = np.asarray(predictions, dtype=np.float64)
    ids = [_bare(f) for f in file_ids]
    if predictions.shape != (len(ids), len(task.emotions)):
        raise ValueError(f"predictions {predictions.shape} do not match ({len(ids)}, {len(task.emotions)})")
    if not np.isfinite(predictions).all():
        raise ValueError("predictions contain NaN or inf; a submission needs a number for every cell")
    if len(set(ids)) != len(ids):
        raise ValueError("file_ids repeat; each video must appear once")
    return write_csv(path, [task.submission_id, *task.emotions],
                     ([file_id, *(f"{v:.6f}" for v in row)]
                      for file_id, row in zip(task.submission_ids(ids), np.clip(predictions, 0.0, 1.0))))


def write_predictions(path: str | Path, predictions: dict[str, np.ndarray], entries: Sequence[VideoEntry],
                      emotions=EMOTIONS) -> Path:
    """predictions.csv beside a report: per video of `entries` that has a prediction, `file_id`
    (zeros kept), the predicted intensities as the model gave them (not clipped) and the true
    ones (empty when unlabelled), in `prediction_columns(emotions)` order; numbers as Python's
    repr spells them, so a float64 reader gets the exact values the report was computed from (the
    report's Pearson r is recomputed from it in tests/prediction_utils.py). Written atomically."""
    def cells(values) -> list[str]:
        return [repr(float(v)) for v in values] if values is not None else [""] * len(emotions)
    return write_csv(path, prediction_columns(emotions), ([e.file_id, *cells(predictions[e.file_id]), *cells(e.labels)]
                                                           for e in entries if e.file_id in predictions))


def read_submission(path: str | Path, task: Task = ERI) -> tuple[list[str], np.ndarray]:
    """(bare ids, (N, E) predictions) of a submission file of `task`, or a UserError saying what
    breaks the format: header, (bracketed) ids, numbers in [0, 1], repeated ids."""
    path = Path(path)
    columns = [task.submission_id, *task.emotions]
    if not path.is_file():
        raise UserError(f"{path} not found")
    rows = csv_rows(path, f"a submission with columns {','.join(columns)}")
    if not rows or rows[0][1] != columns:
        raise UserError(f"{path}: header {rows[0][1] if rows else []} is not {','.join(columns)} "
                        "(exact columns and order, no index column)")
    ids, values = [], []
    for line, row in rows[1:]:
        if len(row) != len(columns):
            raise UserError(f"{path} line {line}: {len(row)} fields, expected {len(columns)}")
        raw = row[0].strip()
        if task.bracketed_ids and not (raw.startswith("[") and raw.endswith("]") and len(raw) > 2):
            raise UserError(f"{path} line {line}: File_ID {raw!r} is not bracketed like [00123]")
        try:
            numbers = [float(cell) for cell in row[1:]]
        except ValueError:
            raise UserError(f"{path} line {line}: a prediction is not a number") from None
        if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in numbers):
            raise UserError(f"{path} line {line}: predictions must be numbers in [0, 1]")
        ids.append(_bare(raw))
        values.append(numbers)
    if len(set(ids)) != len(ids):
        raise UserError(f"{path}: a {task.submission_id} appears more than once")
    return ids, np.array(values, dtype=np.float64).reshape(-1, len(task.emotions))
