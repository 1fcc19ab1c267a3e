"""Stage 3a: Hume-Reaction or Hume-Vidmimic2 preprocessing into a feature store (see eri_downstream/store.py).

    accelerate launch eri_downstream/extract.py faces       data=/data/hume store=features
    accelerate launch eri_downstream/extract.py visual      data=/data/hume store=features \
        encoder=runs/finetune_affectnet_vit_base/best/encoder
    accelerate launch eri_downstream/extract.py audio       data=/data/hume store=features
    accelerate launch eri_downstream/extract.py transcripts data=/data/hume store=features
    accelerate launch eri_downstream/extract.py text        data=/data/hume store=features
    accelerate launch eri_downstream/extract.py all ...     (the five in order)
    affect-extract all --config eri_downstream/configs/extract_hume.yaml encoder=...
    affect-extract sentence --config ... sentence_model=sentence-transformers/all-MiniLM-L6-v2
        (a lever: one mean-pooled sentence embedding per transcript, stage 3b's data.text_features=sentence)

Settings are the keys of ExtractConfig (eri_downstream/config.py), from --config FILE and
key=value; each is also a flag (--store features, --chunk-seconds 10). --print-config lists
them with their defaults and ranges. Each run leaves `<store>/<step>_config.yaml` behind.
Each step is resumable (finished videos are skipped; stale visual / text caches are redone),
splits the videos over all processes, shows a progress bar per process, and ends with a
summary and `<store>/<step>_failures.csv`. Model ids or local folders load through
`from_pretrained`; on GPU the models run in bf16.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import yaml

from accelerate import PartialState

from eri_downstream.config import ExtractConfig
from eri_downstream.dataset import dataset_task, load_dataset, summary, table_task, update_table
from eri_downstream.steps import EXTRA_STEPS, STEPS, run_step
from eri_downstream.store import FeatureStore
from eri_downstream.store_record import write_record
from shared import builtin_data
from shared.atomic import write_text
from shared.config import add_config_arguments, load_config, print_config, to_dict
from shared.config_fields import field_docs
from shared.errors import UserError, run_cli
from shared.launcher import launch

log = logging.getLogger("eri_downstream.extract")


AUDIO_MODEL, TEXT_MODEL = "facebook/hubert-base-ls960", "microsoft/deberta-v3-large"
SENTENCE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
CHOICES = (*STEPS, *EXTRA_STEPS, "table", "all")


def parse_args(argv) -> tuple[str | None, argparse.Namespace]:
    """(the step or None, the arguments): STEP [--config FILE] [--print-config] [key=value ...],
    and each config key as a flag too (--fps 5 is fps=5)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                usage="%(prog)s {" + ",".join(CHOICES) + "} [--config FILE] [--print-config] "
                                "[key=value ...] [--flag VALUE ...]")
    add_config_arguments(p, example="store=features fps=5")
    flags = p.add_argument_group("flags", "each the same as the config key of its name (--chunk-seconds 10 is "
                                 "chunk_seconds=10; --splits train,val is splits=[train,val]); key=value wins")
    docs = field_docs(ExtractConfig)
    for f in dataclasses.fields(ExtractConfig):
        name = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            flags.add_argument(name, dest=f"flag_{f.name}", action="store_const", const=True, help=docs.get(f.name))
        else:
            flags.add_argument(name, dest=f"flag_{f.name}", metavar="VALUE", help=docs.get(f.name))
    args = p.parse_intermixed_args(argv)
    step = args.overrides.pop(0) if args.overrides and args.overrides[0] in CHOICES else None
    if step is None and not args.print_config:
        p.error(f"the first argument names the step: one of {', '.join(CHOICES)}")
    given = [(f.name, getattr(args, f"flag_{f.name}")) for f in dataclasses.fields(ExtractConfig)]
    # JSON is YAML: the flag's text arrives as a string whatever it looks like (a path `no`, `1e3`)
    args.overrides = [f"{key}={json.dumps(value.split(',') if key == 'splits' else value)}"
                      for key, value in given if value is not None] + args.overrides
    return step, args


def main(argv=None) -> int:
    step, args = parse_args(argv)
    cfg = load_config(ExtractConfig, args.config, args.overrides)
    if args.print_config:
        return print_config(cfg)
    state = PartialState()
    logging.basicConfig(level=logging.INFO if state.is_main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if cfg.data is None:
        use_builtin(cfg, state)
    elif cfg.store is None:
        raise UserError("store: the feature store folder to write (store=DIR or --store DIR; required with data)")
    cfg.audio_model, cfg.text_model = cfg.audio_model or AUDIO_MODEL, cfg.text_model or TEXT_MODEL
    cfg.sentence_model = cfg.sentence_model or SENTENCE_MODEL
    task = dataset_task(cfg.data)
    if cfg.task and cfg.task != task.name:
        raise UserError(f"task={cfg.task}: {cfg.data} is laid out as {task.dataset} ({task.name}); "
                        f"leave task unset or give a {cfg.task} dataset")
    splits = set(cfg.splits)
    entries = [e for e in load_dataset(cfg.data) if e.split in splits]
    if not entries:
        raise UserError(f"{cfg.data}: no videos in splits {sorted(splits)}")
    store = FeatureStore(cfg.store)
    steps = list(STEPS) if step == "all" else [] if step == "table" else [step]
    if state.is_main_process:
        store.root.mkdir(parents=True, exist_ok=True)
        table = update_table(entries, store.table, splits, task.emotions)  # the other splits' rows stay
        for name in steps or [step]:  # what each step last ran with, beside what it wrote
            write_text(store.root / f"{name}_config.yaml",
                       f"# {name}: the resolved configuration of its latest run (affect-extract {name} --config this)\n"
                       f"stage: {ExtractConfig.STAGE}\n" + yaml.safe_dump(to_dict(cfg), sort_keys=False))
        log.info("%s\n%s", cfg.data, summary(table))
    state.wait_for_everyone()
    for name in steps:
        run_step(name, entries, store, cfg, state)
    if state.is_main_process:
        write_record(cfg, store)
    return 0


def use_builtin(cfg: ExtractConfig, state) -> None:
    """The built-in reaction videos: their transcripts go into the store (as a user's own
    transcripts would, so no ASR model is needed) and the tiny built-in audio / text encoders
    stand in for the hub models unless others are named."""
    task = cfg.task or stored_task(cfg.store) or "eri"
    base, found = builtin_data.locate(builtin_data.REACTIONS[task], "models")
    if state.is_main_process:  # before any work: which data, or that it is being made and where
        builtin_data.say("reaction videos, transcripts and tiny audio / text encoders", base, found, own="data=RAW")
    with state.main_process_first():
        cfg.data = str(builtin_data.reactions(base, task=task))
        models = builtin_data.text_models(base)
    cfg.store = cfg.store or str(base / builtin_data.FEATURES[task])
    cfg.audio_model, cfg.text_model = cfg.audio_model or str(models["audio"]), cfg.text_model or str(models["text"])
    cfg.sentence_model = cfg.sentence_model or str(models["text"])  # the tiny text encoder, mean-pooled
    if state.is_main_process:
        store = FeatureStore(cfg.store)
        store.root.mkdir(parents=True, exist_ok=True)
        given = builtin_data.transcripts(cfg.data)
        store.write_transcripts({**given, **store.read_transcripts()})  # edits made in the store win
    state.wait_for_everyone()


def stored_task(store: str | None) -> str | None:
    """The built-in task whose emotions an existing store holds (a later step on it needs no
    task=), or None."""
    table = Path(store) / "videos.csv" if store else None
    if table is None or not table.is_file():
        return None
    name = table_task(table).name
    return name if name in builtin_data.REACTIONS else None


def entry() -> None:
    """`affect-extract`: this stage on one process or several, ending with its own line and status
    (`accelerate launch`'s options first; see shared/launcher.py)."""
    raise SystemExit(launch(main, "eri_downstream.extract", "affect-extract"))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
