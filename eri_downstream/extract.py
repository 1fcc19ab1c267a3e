"""Stage 3a: Hume-Reaction preprocessing into a feature store (see eri_downstream/store.py).

    accelerate launch eri_downstream/extract.py faces       --data /data/hume --store features
    accelerate launch eri_downstream/extract.py visual      --data /data/hume --store features \
        --encoder runs/finetune_affectnet_vit_base/best/encoder
    accelerate launch eri_downstream/extract.py audio       --data /data/hume --store features
    accelerate launch eri_downstream/extract.py transcripts --data /data/hume --store features
    accelerate launch eri_downstream/extract.py text        --data /data/hume --store features
    accelerate launch eri_downstream/extract.py all ...     (the five in order)

Each step is resumable (finished videos are skipped; stale visual / text caches are redone),
splits the videos over all processes, shows a progress bar per process, and ends with a
summary and `<store>/<step>_failures.csv`. Model ids or local folders load through
`from_pretrained`; on GPU the models run in bf16.
"""
from __future__ import annotations

import argparse
import logging

from accelerate import PartialState

from eri_downstream.dataset import load_dataset, summary, update_table
from eri_downstream.steps import STEPS, run_step
from eri_downstream.store import FeatureStore
from shared import builtin_data
from shared.errors import UserError, run_cli
from shared.face_crop import FaceCrop
from shared.launcher import launch

log = logging.getLogger("eri_downstream.extract")


AUDIO_MODEL, TEXT_MODEL = "facebook/hubert-base-ls960", "microsoft/deberta-v3-large"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=[*STEPS, "table", "all"], help="what to extract")
    p.add_argument("--data", help="the raw dataset (ABAW5 data_info.csv or MuSe labels/partition); "
                   "default: the built-in synthetic reaction videos (with their transcripts and tiny models)")
    p.add_argument("--store", help="the feature store folder (default with the built-in videos: beside them)")
    p.add_argument("--splits", default="train,val,test", help="splits to process (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="redo finished videos too")
    faces = p.add_argument_group("faces")
    faces.add_argument("--detector", default="mtcnn", help="face detector backend (default %(default)s)")
    faces.add_argument("--fps", type=float, default=6.0, help="frames per second kept (default %(default)s)")
    # face-shards' defaults: the frozen encoder then sees faces framed as in its stage-2 evaluation
    faces.add_argument("--size", type=int, default=FaceCrop.size,
                       help="face crop side, as the encoder's face shards (default %(default)s)")
    faces.add_argument("--margin", type=float, default=FaceCrop.margin,
                       help="margin around the face box, as the encoder's face shards (default %(default)s)")
    visual = p.add_argument_group("visual")
    visual.add_argument("--encoder", help="the stage-2 (or stage-1) encoder folder, a timm folder")
    p.add_argument("--batch-size", type=int, default=32, help="frames per detector / encoder batch")
    audio = p.add_argument_group("audio")
    audio.add_argument("--audio-model", help=f"default: {AUDIO_MODEL}")
    audio.add_argument("--chunk-seconds", type=float, default=30.0)
    text = p.add_argument_group("transcripts and text")
    text.add_argument("--asr", default="speech2text", choices=["speech2text", "whisper"])
    text.add_argument("--asr-model", help="default: facebook/s2t-small-librispeech-asr or openai/whisper-small")
    text.add_argument("--text-model", help=f"default: {TEXT_MODEL}")
    text.add_argument("--max-length", type=int, default=512)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    state = PartialState()
    logging.basicConfig(level=logging.INFO if state.is_main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.data is None:
        use_builtin(args, state)
    elif args.store is None:
        raise UserError("--store: the feature store folder to write (required with --data)")
    args.audio_model, args.text_model = args.audio_model or AUDIO_MODEL, args.text_model or TEXT_MODEL
    splits = {s.strip() for s in args.splits.split(",")}
    entries = [e for e in load_dataset(args.data) if e.split in splits]
    if not entries:
        raise UserError(f"{args.data}: no videos in splits {sorted(splits)}")
    store = FeatureStore(args.store)
    if state.is_main_process:
        store.root.mkdir(parents=True, exist_ok=True)
        table = update_table(entries, store.table, splits)  # rows of the other splits stay
        log.info("%s\n%s", args.data, summary(table))
    state.wait_for_everyone()
    steps = list(STEPS) if args.step == "all" else [] if args.step == "table" else [args.step]
    for step in steps:
        run_step(step, entries, store, args, state)
    return 0


def use_builtin(args, state) -> None:
    """The built-in reaction videos: their transcripts go into the store (as a user's own
    transcripts would, so no ASR model is needed) and the tiny built-in audio / text encoders
    stand in for the hub models unless others are named."""
    base, found = builtin_data.locate("reactions", "models")
    if state.is_main_process:  # before any work: which data, or that it is being made and where
        builtin_data.say("reaction videos, transcripts and tiny audio / text encoders", base, found, own="--data")
    with state.main_process_first():
        args.data = str(builtin_data.reactions(base))
        models = builtin_data.text_models(base)
    args.store = args.store or str(base / "features")
    args.audio_model, args.text_model = args.audio_model or str(models["audio"]), args.text_model or str(models["text"])
    if state.is_main_process:
        store = FeatureStore(args.store)
        store.root.mkdir(parents=True, exist_ok=True)
        given = builtin_data.transcripts(args.data)
        store.write_transcripts({**given, **store.read_transcripts()})  # edits made in the store win
    state.wait_for_everyone()


def entry() -> None:
    """`affect-extract`: this stage on one process or several, ending with its own line and status
    (`accelerate launch`'s options first; see shared/launcher.py)."""
    raise SystemExit(launch(main, "eri_downstream.extract", "affect-extract"))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
