"""The built-in synthetic data: what every stage uses when it is given no data.

    python -m shared.builtin_data all [--root DIR] [--quick]    # make all of it now

The faces and videos are written in the published raw layouts and go through the same
converters and readers as real downloads (`face-shards`, `eri_downstream/dataset.py`), so the
built-in lineage exercises the real path end to end. Under the root (`$AFFECT_LINEAGE_DATA`,
default `~/.cache/affect-lineage/builtin`; without the variable a stage also looks in the demo's
`runs/demo/data`, so the stages find what `launch/demo.sh` made):

    raw/{affectnet,celeba,casia}/      drawn faces (shared.synthetic.builtin); AffectNet's show
                                       the expression of their label
    shards/{affectnet,celeba,casia}/   `face-shards ... --size 80` of those
    reactions/                         Hume-Reaction (ABAW5 layout) videos whose 7 intensities
                                       follow the face, the sound and the words; transcripts.csv
    reactions_emi/                     the same kind of videos as Hume-Vidmimic2 (its layout, the
                                       6 EMI intensities), for stage 3 with task emi
    models/{hubert,deberta}/           tiny random audio / text encoders in the hub layout
    features/, features_emi/           the feature stores, when stage 3a is run without --store

Each part is made once, on first use (`.complete` marks a finished part), by one process. A
stage says which folder it uses, or that it is making the data there and how to point it
elsewhere, before it does any work.
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from shared.errors import run_cli

ROOT_ENV = "AFFECT_LINEAGE_DATA"
FACE_SOURCES = ("affectnet", "celeba", "casia")
CONVERTERS = {"affectnet": "affectnet", "celeba": "celeba", "casia": "casia-webface"}
SHARD_SIZE = 80  # stored crop side: the demo models see 64 px after cropping
SIZES = {"full": dict(per_class_train=400, per_class_val=25, celeba=750, casia_ids=75, casia_per_id=10),
         "quick": dict(per_class_train=24, per_class_val=10, celeba=200, casia_ids=20, casia_per_id=10)}
VIDEOS = {"full": dict(n_train=160, n_val=40, n_test=12), "quick": dict(n_train=24, n_val=12, n_test=4)}


REACTIONS = {"eri": "reactions", "emi": "reactions_emi"}  # each task's built-in videos
FEATURES = {"eri": "features", "emi": "features_emi"}  # and their feature stores
MARKER = "BUILTIN_SYNTHETIC_DATA"  # in the root of built-in data: what is under it is synthetic
DEMO_DATA = Path("runs") / "demo" / "data"  # where launch/demo.sh makes it (its default --out)
CHECKOUT = Path(__file__).resolve().parent.parent  # this checkout, where launch/demo.sh runs by default


def root() -> Path:
    """Where built-in data is made: $AFFECT_LINEAGE_DATA, or the user's cache."""
    return Path(os.environ.get(ROOT_ENV) or Path.home() / ".cache" / "affect-lineage" / "builtin")


def places() -> list[Path]:
    """Where built-in data is looked for: $AFFECT_LINEAGE_DATA alone when it is set; else the
    cache, then the demo's data folder (in this checkout, and under the current folder)."""
    if os.environ.get(ROOT_ENV):
        return [root()]
    found = [root(), CHECKOUT / DEMO_DATA, Path.cwd() / DEMO_DATA]
    return list(dict.fromkeys(p.resolve() for p in found))


def complete(base: Path, part: str) -> bool:
    """Whether `part` ("shards", "reactions", "models", "features", or a task's REACTIONS /
    FEATURES folder) is finished under `base`."""
    if part.startswith("features"):  # the store that stage 3a writes: its table is written first, by any step
        return (base / part / "videos.csv").is_file()
    return _done(base / part)


def locate(*parts: str) -> tuple[Path, bool]:
    """(root, found): the first place looked in that holds every part complete, else root()
    (where they are to be made) and False."""
    for base in places():
        if all(complete(base, part) for part in parts):
            return base, True
    return root(), False


def feature_store(task: str | None = None) -> tuple[Path, bool]:
    """(folder, found): the built-in feature store of `task` (None: eri) where `locate` finds it
    complete, else where it is to be made, and False."""
    base, found = locate(FEATURES[task or "eri"])
    return base / FEATURES[task or "eri"], found


def say(what: str, base: Path, found: bool, own: str) -> None:
    """The one line a stage prints, before any work, when it falls back to the built-in data;
    `own` names the argument that takes the user's own data."""
    if found:
        print(f"no data given: using the built-in synthetic {what} at {base} (give {own} for your own data)",
              flush=True)
    else:
        looked = ", ".join(map(str, places()))
        print(f"no data given and no built-in data yet (looked in {looked}): making the built-in synthetic {what} "
              f"at {base} now, once (a few minutes on 2 CPU cores); {ROOT_ENV}=DIR uses built-in data made elsewhere "
              f"(the demo's is in <its --out>/data), {own} your own data", flush=True)


def made_once(acc, make, what: str, part: str, own: str):
    """`make(root)` run by the main process first (the others then find its result complete),
    after the one line that says which built-in data is used, or made where."""
    base, found = locate(part)
    if acc.is_main_process:
        say(what, base, found, own)
    with acc.main_process_first():
        return make(base)


def _done(folder: Path) -> bool:
    return (folder / ".complete").is_file()


def _mark(folder: Path) -> None:
    (folder / ".complete").write_text("")
    (folder.parent / MARKER).write_text("affect-lineage built-in synthetic data (shared/builtin_data.py)\n")


def is_builtin(path: str | Path) -> bool:
    """Whether `path` lies in built-in data: under a root marked when its parts were made, or in
    a complete part of a place where built-in data is looked for."""
    target = Path(path).resolve()
    if any((folder / MARKER).is_file() for folder in target.parents):
        return True
    parts = ("raw", "shards", "reactions", "models", "features")
    return any(target.is_relative_to(base / part) and complete(base, part) for base in places() for part in parts)


def face_shards(base: Path | None = None, *, size: str = "full", progress: bool = False) -> dict[str, Path]:
    """source name -> shard folder, written (raw faces, then face-shards, with its progress
    bars when `progress`) if missing."""
    from shared.shards.cli import main as face_shards_cli
    from shared.synthetic.builtin import write_builtin_faces
    base = base or root()
    raw, shards = base / "raw", base / "shards"
    if not _done(raw):
        n = SIZES[size]
        faces = 8 * (n["per_class_train"] + n["per_class_val"]) + n["celeba"] + n["casia_ids"] * n["casia_per_id"]
        print(f"built-in faces: drawing {faces} faces in the AffectNet, CelebA and CASIA-WebFace layouts "
              f"under {raw}", flush=True)
        shutil.rmtree(raw, ignore_errors=True)
        write_builtin_faces(raw, **n)
        _mark(raw)
    if not _done(shards):
        for name in FACE_SOURCES:
            print(f"built-in faces: face-shards {CONVERTERS[name]} {raw / name} --out {shards / name}", flush=True)
            face_shards_cli([CONVERTERS[name], str(raw / name), "--out", str(shards / name), "--size", str(SHARD_SIZE),
                             "--shard-size", "200", *([] if progress else ["--no-progress"])])
        _mark(shards)
    return {name: shards / name for name in FACE_SOURCES}


def reactions(base: Path | None = None, *, size: str = "full", task: str = "eri") -> Path:
    """The built-in videos of `task` (eri: the Hume-Reaction ABAW5 layout; emi: the Hume-Vidmimic2
    layout), plus transcripts.csv, written if missing."""
    from shared.synthetic.builtin_reactions import write_builtin_reactions
    base = base or root()
    folder = base / REACTIONS[task]
    if not _done(folder):
        layout = "ABAW5 layout, h264 + aac, wav" if task == "eri" else "Hume-Vidmimic2 layout, h264 + aac, mp3"
        print(f"built-in reaction videos: writing {sum(VIDEOS[size].values())} videos ({layout}) under {folder}",
              flush=True)
        shutil.rmtree(folder, ignore_errors=True)
        write_builtin_reactions(folder, **VIDEOS[size], task=task)
        _mark(folder)
    return folder


def transcripts(folder: Path | str) -> dict[str, str]:
    """file_id -> transcript of the built-in videos (their `transcripts.csv`)."""
    from shared.tables import csv_records
    return {row["file_id"]: row["text"] for _, row in csv_records(Path(folder) / "transcripts.csv", ["file_id", "text"])}


def text_models(base: Path | None = None) -> dict[str, Path]:
    """Tiny random HuBERT and DeBERTa-v3 in the hub layout (they load through from_pretrained)."""
    from shared.synthetic.hf_models import save_deberta, save_hubert
    base = base or root()
    folder = base / "models"
    if not _done(folder):
        print(f"built-in encoders: tiny random HuBERT and DeBERTa-v3 under {folder}", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
        save_hubert(folder / "hubert")
        save_deberta(folder / "deberta")
        _mark(folder)
    return {"audio": folder / "hubert", "text": folder / "deberta"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["faces", "reactions", "models", "all"])
    p.add_argument("--root", type=Path, help=f"where (default ${ROOT_ENV} or ~/.cache/affect-lineage/builtin)")
    p.add_argument("--quick", action="store_true", help="fewer faces and videos (smoke tests)")
    p.add_argument("--task", choices=sorted(REACTIONS), default="eri", help="which videos: eri (Hume-Reaction) "
                   "or emi (Hume-Vidmimic2 layout)")
    p.add_argument("--debug", action="store_true", help="tracebacks on errors")
    args = p.parse_args(argv)
    size = "quick" if args.quick else "full"
    if args.what in ("faces", "all"):
        for name, folder in face_shards(args.root, size=size, progress=True).items():
            print(f"{name}: {folder}")
    if args.what in ("reactions", "all"):
        print(f"reactions: {reactions(args.root, size=size, task=args.task)}")
    if args.what in ("models", "all"):
        for name, folder in text_models(args.root).items():
            print(f"{name} model: {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
