"""Stage 2's run.json (shared/run_record.py): its inputs, the two sets of weights it writes
(best by eval.metric, and final), their evaluations."""
from __future__ import annotations

import json
from pathlib import Path

from shared.run_record import declared, encoder_input, shards_input, write_run_record

FILES = {"config": ("config.yaml", "config"), "log": ("metrics.jsonl", "log"), "evaluations": ("eval", "report")}
METRICS = ("top1", "balanced_accuracy", "macro_f1")
BALANCE = {"sampling": "class-balanced resampling", "loss": "class-weighted loss", "none": "no class balancing"}


def weight_files(folder: str, report: str) -> dict[str, tuple[str, str]]:
    """An export folder's encoder and head, and the evaluation of exactly these weights."""
    evaluated = str(Path(report).parent)
    return {"encoder": (f"{folder}/encoder", "encoder"), "head": (f"{folder}/head.safetensors", "head"),
            "report": (report, "report"), "predictions": (f"{evaluated}/predictions.csv", "predictions"),
            "figures": (f"{evaluated}/confusion_matrix.png", "figures")}


def write_record(cfg, resolved: dict, run_dir: Path, step: int, evaluated: str) -> Path:
    """run.json of a finished run: `evaluated` names the weights evaluated and exported ("ema" or "model")."""
    final_report = f"eval/step_{step:08d}/{evaluated}/report.json"
    weights, metrics = {}, {"metric": cfg.eval.metric}
    for name, folder, report in (("best", "best", "best/report.json"), ("final", "export", final_report)):
        if not (run_dir / report).is_file():
            continue
        numbers = json.loads((run_dir / report).read_text())
        metrics[name] = {"step": numbers["step"], **{m: numbers[m] for m in METRICS}}
        about = (f"the best weights by validation {cfg.eval.metric} (step {numbers['step']})" if name == "best"
                 else f"the final weights (step {numbers['step']})")
        weights[name] = {"about": about, "selected": name == "best",
                         "files": declared(run_dir, weight_files(folder, report))}
    use = {cfg.data.train_split: f"training ({BALANCE.get(cfg.data.balance, cfg.data.balance)})",
           cfg.data.val_split: "evaluation (every face once)"}
    inputs = {"shards": {**shards_input(cfg.data.shards, run_dir, list(use)), "use": use},
              "encoder": encoder_input(cfg.model.encoder, run_dir)}
    return write_run_record(run_dir, "finetune", config=resolved, inputs=inputs, files=declared(run_dir, FILES),
                            weights=weights, default="best" if "best" in weights else "final", metrics=metrics)
