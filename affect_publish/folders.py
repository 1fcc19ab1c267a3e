"""The weights part of the Hub-ready folder (card.py adds README.md), by the kinds of the files
the run declares for the chosen weights:

    encoder   config.json + model.safetensors, a timm folder copied byte for byte, which
              `timm.create_model("hf-hub:USER/NAME", pretrained=True)` loads
    model     config.json + model.safetensors of a stage's own published form (stage 3b's
              ERI model, which eri_downstream.model.load_eri_model loads)
    head      expression_head/head.safetensors: a classification head beside the encoder, in a
              subfolder so the encoder stays the one weight file timm and shared.encoders see
    figures   the evaluation's figure (stage 2's confusion matrix), at the root

Nothing of a stage's code is imported: these are file copies (the head's metadata is rewritten
only to make the paths of the run's configuration relative).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from affect_publish.runs import Run
from shared.atomic import write_safetensors
from shared.export import read_safetensors
from shared.run_record import portable

HEAD = "expression_head/head.safetensors"


def write_weights(run: Run, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    kinds = {entry["kind"]: role for role, entry in run.record["outputs"]["weights"][run.weights]["files"].items()}
    for kind in ("encoder", "model"):
        if kind in kinds:
            for name in ("config.json", "model.safetensors"):
                shutil.copyfile(run.file(kinds[kind]) / name, out / name)
    if "head" in kinds:
        _head(run.file(kinds["head"]), out / HEAD, run.root)
    figure = run.file("figures")
    if figure is not None and figure.is_file():
        shutil.copyfile(figure, out / figure.name)


def _head(source: Path, target: Path, root: Path) -> None:
    """The head with the same tensors; the paths in its metadata's training configuration made
    relative to the run folder, as in run.json."""
    tensors, meta = read_safetensors(source)
    extra = json.loads(meta.get("extra", "{}"))
    meta["extra"] = json.dumps(portable(extra, root))
    write_safetensors(target, tensors, meta)
