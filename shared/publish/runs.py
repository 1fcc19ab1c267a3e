"""Which stage a run folder comes from, and which of its files hold what gets published.

A run folder is a stage's `run.output_dir`. Its `config.yaml` (the resolved configuration)
says the stage by its sections; the files the stage writes at its end say it has finished:

    stage 1  pretrain_mae/main.py         export/encoder/ (timm folder), export/mae.safetensors
    stage 2  finetune_affectnet/main.py   best/{encoder/, head.safetensors, report.json},
                                          export/{encoder/, head.safetensors} + eval/step_N/<weights>/report.json
    stage 3b eri_downstream/train.py      best.safetensors + report.json, or with folds=N
                                          fold_<i>/{best.safetensors, report.json} + cv_results.json
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml
from safetensors import safe_open

from shared.errors import UserError

STAGES = {"pretrain": "stage 1, MAE pretraining", "finetune": "stage 2, AffectNet expression fine-tuning",
          "eri": "stage 3b, emotion reaction intensity"}
ENTRY_POINTS = {"pretrain": "pretrain_mae/main.py", "finetune": "finetune_affectnet/main.py",
                "eri": "eri_downstream/train.py"}


@dataclass
class Run:
    root: Path
    stage: str  # a key of STAGES
    config: dict  # the run's resolved config.yaml
    weights: Path  # pretrain, finetune: a timm encoder folder; eri: the state dict file
    choice: str  # which weights, in words
    report: Path | None = None  # the evaluation of exactly these weights (finetune, eri)
    head: Path | None = None  # finetune: the expression head beside the encoder
    fold: int | None = None  # eri with folds: the fold published
    selected: bool = False  # the weights were chosen by their score in `report`, which is optimistic

    @property
    def config_text(self) -> str:
        return (self.root / "config.yaml").read_text()


def stage_of(config: dict) -> str | None:
    """The stage whose configuration has these sections (each has one the others lack)."""
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    if "mask_ratio" in model and "figures" in config:
        return "pretrain"
    if "encoder" in model and "eval" in config:
        return "finetune"
    if "modalities" in model and "folds" in config:
        return "eri"
    return None


def read_config(root: Path) -> dict:
    path = root / "config.yaml"
    if not path.is_file():
        raise UserError(f"{root}: no config.yaml, so not a run folder; give the run.output_dir of "
                        f"{', '.join(ENTRY_POINTS.values())}")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML ({str(err).splitlines()[0]})") from None
    return config if isinstance(config, dict) else {}


def open_run(path, *, weights: str | None = None, fold: int | None = None) -> Run:
    """The run at `path` and what to publish from it. `weights` ("best" or "final") applies to
    stage 2, `fold` to stage-3b cross-validation runs."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder; give a run folder (a stage's run.output_dir)")
    if root.parent.name == "checkpoints":
        raise UserError(f"{root} is a training state; give its run folder, {root.parent.parent}")
    config = read_config(root)
    stage = stage_of(config)
    if stage is None:
        raise UserError(f"{root / 'config.yaml'} is not the configuration of any stage's run "
                        f"({', '.join(ENTRY_POINTS.values())})")
    if weights is not None and stage != "finetune":
        raise UserError(f"--weights applies to stage-2 runs; {root} is a {STAGES[stage]} run, which keeps "
                        "one set of weights")
    if fold is not None and not (stage == "eri" and config.get("folds")):
        raise UserError("--fold applies to cross-validation runs of stage 3b (folds=N)")
    return {"pretrain": _pretrain, "finetune": _finetune, "eri": _eri}[stage](root, config, weights, fold)


def _unfinished(root: Path, stage: str, missing: str, instead: str = "") -> UserError:
    return UserError(f"{root}: the run has not finished (no {missing}); resume it with "
                     f"`{ENTRY_POINTS[stage]} --config {root / 'config.yaml'} --resume auto`{instead}")


def _pretrain(root: Path, config: dict, weights, fold) -> Run:
    encoder = root / "export" / "encoder"
    if not (encoder / "config.json").is_file() or not (encoder / "model.safetensors").is_file():
        raise _unfinished(root, "pretrain", "export/encoder",
                          f", or export a state: `python -m pretrain_mae.export {root}/checkpoints/step_N "
                          f"--out {root / 'export'}`")
    return Run(root, "pretrain", config, encoder, "the final weights")


def _finetune(root: Path, config: dict, weights, fold) -> Run:
    metric = config.get("eval", {}).get("metric", "balanced_accuracy")
    if weights in (None, "best"):
        folder = root / "best"
        if not (folder / "head.safetensors").is_file() or not (folder / "report.json").is_file():
            raise UserError(f"{root}: no best/ weights yet (written at the first evaluation, every eval.every "
                            "steps); wait for it, or publish the final weights with --weights final")
        report = json.loads((folder / "report.json").read_text())
        return Run(root, "finetune", config, folder / "encoder",
                   f"the best weights by validation {metric} (step {report['step']})",
                   report=folder / "report.json", head=folder / "head.safetensors", selected=True)
    if weights != "final":
        raise UserError(f"--weights {weights}: expected best or final")
    folder = root / "export"
    if not (folder / "head.safetensors").is_file():
        raise _unfinished(root, "finetune", "export/", ", or publish the best weights so far (without --weights)")
    with safe_open(str(folder / "head.safetensors"), framework="pt") as f:
        extra = json.loads((f.metadata() or {}).get("extra", "{}"))
    which = "ema" if config.get("ema_decay") else "model"  # what the run evaluated and exported
    report = root / "eval" / f"step_{int(extra.get('step', -1)):08d}" / which / "report.json"
    if not report.is_file():
        raise UserError(f"{report}: missing, so the final weights have no evaluation to report; publish "
                        "the best weights instead (without --weights)")
    return Run(root, "finetune", config, folder / "encoder", f"the final weights (step {extra['step']})",
               report=report, head=folder / "head.safetensors")


def _eri(root: Path, config: dict, weights, fold) -> Run:
    folds = int(config.get("folds") or 0)
    base, choice = root, "the best weights by validation mean Pearson"
    if folds:
        if not (root / "cv_results.json").is_file():
            raise _unfinished(root, "eri", "cv_results.json")
        fold = 0 if fold is None else fold
        if not 0 <= fold < folds:
            raise UserError(f"--fold {fold}: the run has folds 0 to {folds - 1}")
        base = root / f"fold_{fold}"
        choice = f"the model of fold {fold} of {folds} (best weights by its held-out mean Pearson)"
    if not (base / "report.json").is_file() or not (base / "best.safetensors").is_file():
        raise _unfinished(root, "eri", "report.json" if base == root else f"{base.name}/report.json")
    return Run(root, "eri", config, base / "best.safetensors", choice, report=base / "report.json", fold=fold,
               selected=True)

