"""Ranges and choices declared on the config fields, checked at load, and `--print-config` on
every stage's command: every key with its value, default, range and meaning, as YAML that loads
back to the same configuration."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

import pytest
import yaml

from eri_downstream.config import ERIConfig, ExtractConfig
from finetune_affectnet.config import FinetuneConfig
from pretrain_mae.config import PretrainConfig
from shared.builtin_data import SHARD_SIZE
from run_utils import ROOT
from shared.config import load_config, to_dict
from shared.config_fields import describe, field_docs
from shared.errors import UserError

CLASSES = (PretrainConfig, FinetuneConfig, ExtractConfig, ERIConfig)

OUT_OF_RANGE = [
    (PretrainConfig, "model.mask_ratio=1.5", "model.mask_ratio=1.5: must be in [0, 1)"),
    (PretrainConfig, "model.mask_ratio=1", "model.mask_ratio=1.0: must be in [0, 1)"),
    (PretrainConfig, "data.batch_size=0", "data.batch_size=0: must be >= 1"),
    (PretrainConfig, "data.mode=shuffled", "data.mode=shuffled: must be one of resampled, exact"),
    (PretrainConfig, "data.scale=[0, 1]", "data.scale=[0.0, 1.0]: each item must be in (0, 1] (not 0.0)"),
    (PretrainConfig, "data.input_path=gpu", "data.input_path=gpu: must be one of auto, pixels, decoded, jpeg"),
    (PretrainConfig, "figures.every=-1", "figures.every=-1: must be >= 0"),
    (PretrainConfig, "optim.betas=[0.9, 1.0]", "optim.betas=[0.9, 1.0]: each item must be in [0, 1) (not 1.0)"),
    (PretrainConfig, "optim.grad_accum=0", "optim.grad_accum=0: must be >= 1"),
    (PretrainConfig, "optim.eps=0", "optim.eps=0.0: must be > 0"),
    (PretrainConfig, "run.mixed_precision=fp8", "run.mixed_precision=fp8: must be one of auto, 'no', bf16, fp16"),
    (PretrainConfig, "run.compile_mode=fast", "run.compile_mode=fast: must be one of null, default, reduce-overhead, "
                                              "max-autotune, max-autotune-no-cudagraphs"),
    (FinetuneConfig, "model.drop_path=1", "model.drop_path=1.0: must be in [0, 1)"),
    (FinetuneConfig, "model.pool=max", "model.pool=max: must be one of avg, token"),
    (FinetuneConfig, "data.balance=oversample", "data.balance=oversample: must be one of none, sampling, loss"),
    (FinetuneConfig, "data.classes=6", "data.classes=6: must be one of 8, 7"),
    (FinetuneConfig, "data.reprob=1.5", "data.reprob=1.5: must be in [0, 1]"),
    (FinetuneConfig, "layer_decay=0", "layer_decay=0.0: must be in (0, 1]"),
    (FinetuneConfig, "eval.metric=f1", "eval.metric=f1: must be one of top1, balanced_accuracy, macro_f1"),
    (ExtractConfig, "fps=0", "fps=0.0: must be > 0"),
    (ExtractConfig, "asr=kaldi", "asr=kaldi: must be one of speech2text, whisper"),
    (ExtractConfig, "splits=[train, dev]", "splits=[train, dev]: each item must be one of train, val, test (not dev)"),
    (ERIConfig, "data.k=0", "data.k=0: must be >= 1"),
    (ERIConfig, "model.modalities=[video, audio]", "model.modalities=[video, audio]: each item must be one of visual, "
                                                   "audio, text (not video)"),
    (ERIConfig, "ema_decay=1", "ema_decay=1.0: must be in [0, 1)"),
    (ERIConfig, "run.log_every=0", "run.log_every=0: must be >= 1"),
    (ExtractConfig, "detector=dlib", "detector=dlib: must be one of mtcnn, haar"),
]


@pytest.mark.parametrize("cls, override, message", OUT_OF_RANGE, ids=[o for _, o, _ in OUT_OF_RANGE])
def test_a_value_outside_its_range_is_one_line_naming_key_value_and_range(cls, override, message):
    with pytest.raises(UserError) as caught:
        load_config(cls, None, [override])
    assert str(caught.value) == message


NOT_TOGETHER = [  # values valid alone (folds=1 aside) and not together: refused at load, before any work
    (ERIConfig, ["model.modalities=[]"], "model.modalities=[]: expected a non-empty subset of visual, audio, text "
                                         "without repeats"),
    (ERIConfig, ["model.modalities=[audio, audio]"], "model.modalities=['audio', 'audio']: expected a non-empty subset "
                                                     "of visual, audio, text without repeats"),
    (ERIConfig, ["fold=0"], "fold=0 needs folds=N with 0 <= fold < N (folds=0)"),
    (ERIConfig, ["folds=3", "fold=3"], "fold=3 needs folds=N with 0 <= fold < N (folds=3)"),
    (ERIConfig, ["optim.grad_accum=2"], "optim.grad_accum=2: stage 3b steps once per batch of videos; raise "
                                        "data.batch_size instead (the paper's 16 videos fit any device)"),
    (ERIConfig, ["folds=1"], "folds=1: cross-validation needs folds >= 2 (folds=0 trains on train and selects on val)"),
    (ERIConfig, ["model.modalities=[visual]", "modality_dropout=0.3"],
     "modality_dropout=0.3 never drops a video's last modality, so with model.modalities=['visual'] it does nothing: "
     "set it to 0 or add a modality"),
    (ERIConfig, ["model.modalities=[visual, audio]", "data.text_features=sentence"],
     "data.text_features=sentence is the text branch's input, and model.modalities=['visual', 'audio'] has no text "
     "branch: add text or leave it at text"),
]


@pytest.mark.parametrize("cls, overrides, message", NOT_TOGETHER, ids=[" ".join(o) for _, o, _ in NOT_TOGETHER])
def test_keys_refused_together_are_refused_at_load(cls, overrides, message):
    with pytest.raises(UserError) as caught:
        load_config(cls, None, overrides)
    assert str(caught.value) == message
    load_config(cls, None, overrides[:-1])  # the others alone load


def test_the_edges_of_a_range_and_null_for_an_optional_value_pass():
    cfg = load_config(PretrainConfig, None, ["model.mask_ratio=0", "data.batch_size=1", "optim.grad_clip=null",
                                             "run.compile_mode=null", "data.scale=[1, 1]"])
    assert cfg.model.mask_ratio == 0.0 and cfg.data.batch_size == 1 and cfg.optim.grad_clip is None
    assert load_config(FinetuneConfig, None, ["ema_decay=null", "data.classes=7"]).data.classes == 7


def fields_of(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) else []
        section = tp if dataclasses.is_dataclass(tp) else None
        if section:
            yield from fields_of(section, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f, tp, inner


@pytest.mark.parametrize("cls", CLASSES, ids=[c.__name__ for c in CLASSES])
def test_every_number_of_every_stage_declares_its_range_and_every_field_has_a_doc(cls):
    numbers = [key for key, f, tp, inner in fields_of(cls)
               if (tp in (int, float) or any(a in (int, float) for a in inner)) and not {"range", "choices"} & set(f.metadata)]
    tuples = [key for key, f, tp, inner in fields_of(cls)
              if typing.get_origin(tp) is tuple and set(typing.get_args(tp)) <= {float, int}
              and "range" not in f.metadata]
    assert numbers == [] and tuples == []
    undocumented = []

    def walk(c, prefix=""):
        docs = field_docs(c)
        for f in dataclasses.fields(c):
            section = typing.get_type_hints(c)[f.name]
            if dataclasses.is_dataclass(section):
                walk(section, f"{prefix}{f.name}.")
            elif not docs.get(f.name) and not {"range", "choices"} & set(f.metadata):
                undocumented.append(prefix + f.name)
    walk(cls)
    # a few keys say all in their name and type (a plain switch or a name); the rest explain themselves
    assert len(undocumented) <= 8, undocumented


@pytest.mark.parametrize("cls", CLASSES, ids=[c.__name__ for c in CLASSES])
def test_the_printed_configuration_is_yaml_of_every_key_with_default_and_meaning(cls, tmp_path):
    cfg = load_config(cls)
    text = describe(cfg, [f"stage: {cls.STAGE}"])
    assert {k: v for k, v in yaml.safe_load(text).items() if k != "stage"} == to_dict(cfg)
    leaves = [line for line in text.splitlines() if ":" in line and not line.strip().startswith("#")
              and not line.rstrip().endswith(":") and not line.startswith("stage:")]
    assert leaves and all("  # default " in line for line in leaves)
    # and it is a config of its stage that loads back to the same values
    (tmp_path / "printed.yaml").write_text(text)
    assert to_dict(load_config(cls, tmp_path / "printed.yaml")) == to_dict(cfg)


def test_field_docs_come_from_the_comments_beside_and_above_the_fields():
    from pretrain_mae.config import DataSection, ModelSection
    assert field_docs(ModelSection)["mask_ratio"] == "the share of patches hidden from the encoder"
    assert field_docs(DataSection)["mode"].startswith("resampled: shards drawn at random by weight; exact: every")


COMMANDS = {
    "affect-pretrain": (["pretrain_mae/main.py", "--config", "pretrain_mae/configs/tiny_cpu.yaml"],
                        "model.mask_ratio=0.6", "  mask_ratio: 0.6  # default 0.75; in [0, 1); the share of patches"),
    "affect-finetune": (["finetune_affectnet/main.py", "--config", "finetune_affectnet/configs/demo_cpu.yaml"],
                        "data.balance=loss", "  balance: loss  # default sampling; one of none, sampling, loss; "),
    "affect-extract": (["eri_downstream/extract.py", "all", "--config", "eri_downstream/configs/extract_demo_cpu.yaml",
                        "--fps", "5"], "margin=0.3", "margin: 0.3  # default 0.2; >= 0; margin around the face box"),
    "affect-train-eri": (["eri_downstream/train.py", "--config", "eri_downstream/configs/table2_v.yaml"],
                         "data.k=16", "  k: 16  # default 32; >= 1; "),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_print_config_on_every_stage_prints_the_resolved_config_and_does_nothing_else(command, tmp_path):
    args, override, line = COMMANDS[command]
    proc = subprocess.run([sys.executable, *args, override, "--print-config",
                           f"run.output_dir={tmp_path / 'run'}" if command != "affect-extract" else f"store={tmp_path}/s"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert line in proc.stdout and proc.stdout.startswith(f"# {command} (stage ")
    printed = yaml.safe_load(proc.stdout)
    assert printed["stage"] in ("pretrain_mae", "finetune_affectnet", "eri_extract", "eri_train")
    assert list(tmp_path.iterdir()) == []  # no run folder, no store: nothing was done
    if command == "affect-extract":
        assert printed["fps"] == 5.0 and printed["size"] == SHARD_SIZE  # the flag and the file (the demo's)
    helped = subprocess.run([sys.executable, args[0], "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert helped.returncode == 0 and "--print-config" in helped.stdout


def test_a_config_of_another_stage_on_the_command_line_is_one_line_with_status_2():
    proc = subprocess.run([sys.executable, "finetune_affectnet/main.py", "--config", "pretrain_mae/configs/tiny_cpu.yaml"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "pretrain_mae/configs/tiny_cpu.yaml is a config of stage 1 (pretrain_mae): run it with affect-pretrain")
    proc = subprocess.run([sys.executable, "pretrain_mae/main.py", "model.mask_ratio=1.5"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].endswith(
        "model.mask_ratio=1.5: must be in [0, 1)")


def test_stage_3a_takes_a_config_file_flags_and_overrides_and_leaves_its_configuration(tmp_path):
    from shared.synthetic.reactions import write_hume_reaction
    planted = write_hume_reaction(tmp_path / "hume", n_train=3, n_val=1, n_test=1, seconds=0.5, seed=1)
    own = tmp_path / "mine.yaml"
    own.write_text(f"stage: eri_extract\nbase: {ROOT / 'eri_downstream/configs/extract_demo_cpu.yaml'}\n"
                   f"data: {planted.root}\nfps: 4\n")
    store = tmp_path / "store"
    proc = subprocess.run([sys.executable, "eri_downstream/extract.py", "table", "--config", str(own),
                           "--splits", "train,val", f"store={store}", "--fps", "3", "fps=2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = store / "table_config.yaml"
    cfg = load_config(ExtractConfig, saved)  # the run's configuration, loadable as a config of stage 3a
    assert (cfg.data, cfg.store, cfg.splits, cfg.size, cfg.fps) == (str(planted.root), str(store), ["train", "val"],
                                                                     SHARD_SIZE, 2.0)  # key=value wins over the flag
    assert yaml.safe_load(saved.read_text())["stage"] == "eri_extract"
    assert (store / "videos.csv").read_text().count("\n") == 1 + 4  # the train and val videos only
