"""What a folder given on the command line is, for errors that then say what to do with it.

A raw download given where shards are expected, a run folder given as an encoder, a feature
store given as the raw videos: each command that expects one kind of folder and gets another
names the kind it got and the command that turns it into the one expected (or where in it the
expected folder is). Recognised by the published layouts' own marker files:

    face shards           manifest.json of format face-shards/1
    raw AffectNet         Manually_Annotated_file_lists/ or Manually_Annotated_Images/ (or one level down)
    raw CelebA            img_align_celeba/ or list_eval_partition.txt
    raw CASIA-WebFace     train.rec + train.idx, or CASIA-WebFace/
    raw IMDB-WIKI         imdb_crop/ or wiki_crop/
    raw Hume-Reaction     data_info.csv (ABAW5) or labels.csv + partition.csv (MuSe 2022)
    feature store         videos.csv (stage 3a's output)
    run folder            config.yaml beside checkpoints/, export/ or metrics.jsonl
    training state        meta.json (a checkpoints/step_N folder)
    encoder folder        config.json naming an architecture (timm's layout)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple


class Kind(NamedTuple):
    name: str  # one of the names in the table above
    what: str  # "the raw AffectNet download", with the folder where it helps
    use: str  # what to do with it: the command that converts it, or the folder inside it to give


def recognise(folder) -> Kind | None:
    """The kind of `folder` (None for a path that is no folder or not one of the kinds)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    for test in (_shards, _raw_faces, _raw_reactions, _store, _state, _run, _encoder):
        kind = test(folder)
        if kind is not None:
            return kind
    return None


def described(folder) -> str:
    """'; <folder> is <what>: <use>' for an error message, or '' when the kind is unknown."""
    kind = recognise(folder)
    return f"; {folder} is {kind.what}: {kind.use}" if kind else ""


def _has(folder: Path, name: str) -> bool:
    """`folder/name`, or one level down (where archives extract into a folder of their own)."""
    return (folder / name).exists() or any((p / name).exists() for p in folder.iterdir() if p.is_dir())


# (subcommand of face-shards, what, marker files: any of them)
RAW_FACES = (("affectnet", "the raw AffectNet download", ("Manually_Annotated_file_lists", "Manually_Annotated_Images")),
             ("celeba", "the raw CelebA download", ("img_align_celeba", "list_eval_partition.txt")),
             ("casia-webface", "the raw CASIA-WebFace download", ("train.rec", "CASIA-WebFace")),
             ("imdb-wiki", "the raw IMDB-WIKI download", ("imdb_crop", "wiki_crop")))


def _raw_faces(folder: Path) -> Kind | None:
    for command, what, markers in RAW_FACES:
        if any(_has(folder, m) for m in markers):
            name = command.split("-")[0]
            return Kind(f"raw {name}", what, f"convert it first (`face-shards {command} {folder} --out "
                        f"shards/{name}`) and give the folder that writes")
    return None


def _shards(folder: Path) -> Kind | None:
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        source = json.loads(manifest.read_text()).get("source", "faces")
    except (json.JSONDecodeError, OSError, AttributeError):
        return None
    return Kind("face shards", f"a folder of face shards ({source}, written by face-shards)",
                "stages 1 and 2 read it (data.sources, data.shards)")


def _raw_reactions(folder: Path) -> Kind | None:
    if (folder / "data_info.csv").is_file() or (folder / "labels.csv").is_file() and (folder / "partition.csv").is_file():
        return Kind("raw hume-reaction", "the raw Hume-Reaction dataset",
                    f"extract its features first (`affect-extract all --data {folder} --store features --encoder "
                    "ENCODER`) and give the store that writes")
    return None


def _store(folder: Path) -> Kind | None:
    if (folder / "videos.csv").is_file():
        return Kind("feature store", "a feature store (stage 3a's output)",
                    f"stage 3b reads it (data.store={folder}); stage 3a writes it (--store), "
                    "reading the raw videos from --data")
    return None


def _state(folder: Path) -> Kind | None:
    if (folder / "meta.json").is_file():
        return Kind("training state", "a training state (a checkpoint of a run)",
                    f"`--resume {folder}` continues its run; `python -m pretrain_mae.export {folder} --out DIR` "
                    "exports a stage-1 state as an encoder folder")
    return None


def _run(folder: Path) -> Kind | None:
    if not (folder / "config.yaml").is_file() or not any(
            (folder / p).exists() for p in ("checkpoints", "export", "metrics.jsonl", "report.json")):
        return None
    encoders = [folder / p / "encoder" for p in ("best", "export") if (folder / p / "encoder" / "config.json").is_file()]
    if encoders:
        return Kind("run folder", "a run folder", f"its encoder is {encoders[0]}"
                    + (f" (the final weights: {encoders[1]})" if len(encoders) > 1 else ""))
    return Kind("run folder", "a run folder without an exported encoder (an unfinished run?)",
                f"finish it (`--resume auto` with run.output_dir={folder}), or export one of its states: "
                f"`python -m pretrain_mae.export {folder}/checkpoints/step_N --out DIR`")


def _encoder(folder: Path) -> Kind | None:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if isinstance(config, dict) and "architecture" in config:
        return Kind("encoder folder", f"an encoder folder ({config['architecture']}, timm's layout)",
                    "stage 2 takes it as model.encoder, stage 3a as --encoder")
    return None
