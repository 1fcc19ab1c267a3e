"""Stage 3b's reports: the challenge metric per emotion of the task, the run's tables, figures
and submissions, and the cross-validation summary. Every emotion name and count comes from
the task (eri_downstream/tasks.py), which the feature store's table decides."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from eri_downstream.folds import PREDICTIONS, write_predictions, write_submission
from eri_downstream.tasks import Task
from shared.atomic import write_json, write_text
from shared.errors import UserError
from shared.metrics import constant_columns, pearson_report
from shared.plots import bar_chart, loss_and_score, scatter_grid
from shared.training.loop import read_metrics

log = logging.getLogger("eri_downstream.train")
VALIDATION = "validation.jsonl"  # one row per evaluation: epoch, step, mean and mean_defined Pearson


def report_for(preds: dict[str, np.ndarray], entries, task: Task) -> dict:
    """The challenge metric of `preds` (file_id -> (E,)) against the labelled `entries`:
    shared.metrics.pearson_report over the task's emotions, plus the number of videos."""
    labelled = [e for e in entries if e.labels is not None]
    pred = np.stack([preds[e.file_id] for e in labelled])
    true = np.array([e.labels for e in labelled], dtype=np.float64)
    return {**pearson_report(pred, true, task.emotions), "videos": len(labelled), "task": task.name}


def say_constant_columns(val_entries, task: Task, say: bool = True) -> None:
    """One line at the start when a validation emotion never varies (Pearson is undefined there
    for every model: it is shown as NaN, and selection uses the other emotions); a UserError when
    none varies (nothing to select on)."""
    true = np.array([e.labels for e in val_entries if e.labels is not None], dtype=np.float64).reshape(-1, len(task.emotions))
    constant = constant_columns(true, list(task.emotions))
    if len(constant) == len(task.emotions) or len(true) < 2:
        raise UserError(f"the {len(true)} labelled validation videos vary in no emotion: Pearson is undefined for "
                        "all of them and no model can be selected; validate on other videos")
    if constant and say:
        log.warning("validation column(s) %s constant (%s over %d videos): Pearson undefined there, shown as NaN; "
                    "selecting on the mean over the other %d emotions", ", ".join(constant),
                    ", ".join(f"all {v:g}" for v in constant.values()), len(true), len(task.emotions) - len(constant))


def write_fold_outputs(out: Path, result: dict, val_pred: dict, test_pred: dict, val_entries, task: Task,
                       loss: str) -> None:
    """predictions.csv, report.json, per_emotion.md, the validation and test predictions in the
    submission format, and the figures of a finished fold (or run)."""
    report = result
    # before report.json, which marks the fold done
    write_predictions(out / PREDICTIONS, val_pred, val_entries, task.emotions)
    write_json(out / "report.json", result)
    table = ["| emotion | Pearson r |", "|---|--:|"] + [f"| {k} | {v:.4f} |" for k, v in report["per_emotion"].items()]
    table.append(f"| **mean** | **{report['mean']:.4f}** |")
    if report["nan"]:  # the NaN rows stay; the selection score says what the rest give
        table.append(f"| mean over {', '.join(report['defined'])} (selection) | {report['mean_defined']:.4f} |")
    write_text(out / "per_emotion.md", "\n".join(table) + "\n")
    write_submission(out / "val_predictions.csv", list(val_pred), np.stack(list(val_pred.values())), task)
    if test_pred:  # this model's test predictions, in the submission format
        write_submission(out / "submission.csv", list(test_pred), np.stack(list(test_pred.values())), task)
    labelled = [e for e in val_entries if e.labels is not None]
    chosen = f"the model of epoch {report['best_epoch']} (best validation mean Pearson)"
    bar_chart(report["per_emotion"], out / "per_emotion_pearson.png", xlabel="emotion",
               title=f"validation Pearson r, mean {report['mean']:.4f}:\n{chosen}", ylabel="Pearson r")
    scatter_grid(np.stack([val_pred[e.file_id] for e in labelled]), np.array([e.labels for e in labelled]),
                 list(task.emotions), out / "predicted_vs_true.png", title=f"validation intensities, {chosen}")
    curves(out, report["best_epoch"], loss)


def curves(out: Path, chosen: int, loss: str) -> None:
    """learning_curves.png: training loss (`loss`: its name) per log step and validation mean
    Pearson per epoch, against the epoch, with the chosen epoch marked."""
    validation = {}
    for line in (out / VALIDATION).read_text().splitlines():  # a resumed run appends: the last row counts
        row = json.loads(line)
        validation[row["epoch"]] = row
    rows = [validation[e] for e in sorted(validation)]
    defined = all(r["mean"] == r["mean_defined"] for r in rows)  # NaN != NaN: constant columns say so
    score = "validation mean Pearson" if defined else "validation mean Pearson\n(emotions whose truth varies)"
    loss_and_score(read_metrics(out / "metrics.jsonl"), [{"epoch": r["epoch"], "score": r["mean_defined"]} for r in rows],
                   chosen, out / "learning_curves.png", steps_per_epoch=rows[0]["step"] / rows[0]["epoch"],
                   loss=f"training loss ({loss}, mean per log step)", score=score,
                   title="stage 3b: training loss and validation score per epoch")


def _defined(report: dict) -> str:
    """', over the N emotions where it is defined X' when some are NaN."""
    if not report["nan"]:
        return ""
    undefined = ", ".join(f"{n['emotion']} {n['reason']}" for n in report["nan"])
    return f" ({undefined}; over the {len(report['defined'])} with defined truth {report['mean_defined']:.4f})"


def cv_summary(results: list[dict], pool, run_dir: Path, acc, task: Task) -> dict:
    """Table 1 of the paper as output: each fold's held-out mean Pearson, the pooled
    out-of-fold score, and the fold models' ensemble on the test split."""
    oof = {k: np.array(v) for r in results for k, v in r["val_predictions"].items()}
    pooled = report_for(oof, pool, task)
    summary = {"folds": [r["mean"] for r in results], "out_of_fold": pooled["mean"], "task": task.name,
               "per_emotion_out_of_fold": pooled["per_emotion"]}
    if acc.is_main_process:
        write_predictions(run_dir / PREDICTIONS, oof, pool, task.emotions)  # each video by the fold that held it out
        lines = ["| fold | mean Pearson |", "|---|--:|"] + [f"| {i} | {m:.4f} |" for i, m in enumerate(summary["folds"])]
        lines.append(f"| out of fold (all train + val) | {pooled['mean']:.4f} |")
        write_text(run_dir / "cv_results.md", "\n".join(lines) + "\n")
        write_text(run_dir / "cv_results.csv", "fold,mean_pearson\n" + "".join(
            f"{i},{m:.6f}\n" for i, m in enumerate(summary["folds"])) + f"out_of_fold,{pooled['mean']:.6f}\n")
        if results and results[0]["test_predictions"]:
            ids = list(results[0]["test_predictions"])
            ensemble = np.mean([[r["test_predictions"][i] for i in ids] for r in results], axis=0)
            write_submission(run_dir / "submission.csv", ids, ensemble, task)
        write_json(run_dir / "cv_results.json", summary)
    return summary


