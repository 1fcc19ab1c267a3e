"""A run folder as its run.json declares it, and the weights chosen for publishing.

Every stage writes `run.json` when it finishes (shared/run_record.py): its stage, resolved
configuration, inputs, the files it wrote (each with its kind) and its sets of weights
(stage 1: final; stage 2: best and final; stage 3b: best, or one per fold). Nothing here
looks at a stage's code or guesses from its configuration.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared.errors import UserError
from shared.run_record import NAME, STAGES, read_run_record

# the kinds of file publishing reads, and what a folder of that kind must hold
NEEDS = {"encoder": ("config.json", "model.safetensors"), "model": ("config.json", "model.safetensors"),
         "head": (), "report": ()}


def title(record: dict) -> str:
    stage = record["stage"]
    return f"stage {stage['number']}, {stage['title']}"


@dataclass
class Run:
    root: Path
    record: dict  # the run's run.json
    weights: str  # the name of the published weights in record["outputs"]["weights"]
    files: dict[str, Path]  # role -> file or folder of those weights
    about: str  # which weights, in words
    selected: bool  # chosen by their score in their own report, which is then optimistic

    @property
    def stage(self) -> str:
        return self.record["stage"]["name"]

    @property
    def config(self) -> dict:
        return self.record["config"]

    @property
    def title(self) -> str:
        return title(self.record)

    def file(self, role: str) -> Path | None:
        return self.files.get(role)


def weight_name(weights: str | None, fold: int | None) -> str | None:
    if fold is not None and weights is not None:
        raise UserError("--fold N is --weights fold_N: give one of them")
    return f"fold_{fold}" if fold is not None else weights


def _weights_at(outputs: dict, rel: Path) -> str | None:
    """The set of weights whose declared files are at (or inside) `rel`, a path in the run folder."""
    for name, chosen in (outputs.get("weights") or {}).items():
        for entry in chosen["files"].values():
            declared = Path(entry["path"]).parts
            if declared[:len(rel.parts)] == rel.parts or rel.parts[:len(declared)] == declared:
                return name
    return None


def _as_given(folder: Path, levels: int) -> Path:
    """`folder`'s ancestor `levels` up, in the user's own terms (relative stays relative) when it can be."""
    up = Path(folder)
    for _ in range(levels):
        up = up.parent
    return up if up.resolve() == folder.resolve().parents[levels - 1] else folder.resolve().parents[levels - 1]


def where_the_run_is(folder: Path) -> None:
    """For a folder without run.json: a UserError naming the run it is part of (a fold, the best
    weights, an export, a training state) with the option that picks those weights, the runs it
    holds (the demo's output folder), or that it is a published folder; returns when none holds."""
    here = folder.resolve()
    for levels, parent in enumerate(list(here.parents)[:4], start=1):
        if (parent / NAME).is_file():
            outputs, run = read_run_record(parent)["outputs"], _as_given(folder, levels)
            name = _weights_at(outputs, here.relative_to(parent))
            pick = ("" if name in (None, outputs.get("default")) else
                    f" --fold {name.removeprefix('fold_')}" if name.startswith("fold_") else f" --weights {name}")
            raise UserError(f"{folder} is part of the run {run}; publish the run: affect-publish {run}{pick} --out FOLDER")
    published = lambda p: (p / "README.md").is_file() and (p / "config.json").is_file()  # noqa: E731
    if published(here):
        raise UserError(f"{folder} is a published folder (what affect-publish writes), not a run; give the run it "
                        "came from, or upload this folder as it is with huggingface_hub's upload_folder")
    if any(published(p) for p in here.iterdir() if p.is_dir()):
        raise UserError(f"{folder} holds published folders (what affect-publish writes), not runs; give the run "
                        "that one came from")
    runs = {p.parent.resolve(): p.parent for p in [*here.glob(f"*/{NAME}"), *here.glob(f"*/*/{NAME}")]}
    held = sorted(p for p in runs.values() if read_run_record(p)["outputs"].get("weights"))  # not feature stores
    if held:
        names = ", ".join(str(p.relative_to(here)) for p in held)
        raise UserError(f"{folder} holds {len(held)} run{'s' if len(held) > 1 else ''} ({names}); publish one of "
                        f"them, e.g. affect-publish {Path(folder) / held[0].relative_to(here)} --out FOLDER")


def open_run(path, *, weights: str | None = None, fold: int | None = None) -> Run:
    """The run at `path` and the weights to publish: `weights` names a set of run.json (default:
    the run's own choice), `fold` N is the set fold_N of a cross-validation run."""
    root = Path(path)
    if root.is_file():
        raise UserError(f"{root} is a file; give the run folder it is in (a stage's run.output_dir)")
    if not root.is_dir():
        raise UserError(f"{root}: no such folder; give a run folder (a stage's run.output_dir)")
    if not (root / NAME).is_file():
        where_the_run_is(root)
    record = read_run_record(root)
    sets = record["outputs"].get("weights") or {}
    if not sets:
        raise UserError(f"{root}: a {title(record)} run publishes no weights (its run.json declares none); "
                        + ("publish the stage-3b run trained on this store" if record["stage"]["name"] == "features"
                           else "let the run finish"))
    name = weight_name(weights, fold) or record["outputs"]["default"]
    if name not in sets:
        what = f"--fold {fold}" if fold is not None else f"--weights {name}"
        raise UserError(f"{what}: this {title(record)} run has the weights {', '.join(sorted(sets))} (see its run.json)")
    chosen = sets[name]
    files = {role: root / entry["path"] for role, entry in chosen["files"].items()}
    if not {"encoder", "model"} & {entry["kind"] for entry in chosen["files"].values()}:
        raise UserError(f"{root}: its run.json declares no encoder or model folder for the weights {name} (a run "
                        "finished before stages wrote them); rerun the stage to write them")
    for role, path in files.items():
        kind = chosen["files"][role]["kind"]
        if kind not in NEEDS:
            continue
        missing = [n for n in NEEDS[kind] if not (path / n).is_file()]
        if not path.exists() or missing:
            raise UserError(f"{path}: declared by {root / 'run.json'} but {'incomplete' if path.exists() else 'missing'}"
                            "; the run folder was changed after the run: rerun or restore it")
    return Run(root, record, name, files, chosen["about"], bool(chosen.get("selected")))


__all__ = ["STAGES", "Run", "open_run", "title"]
