"""Config loading (shared/config.py): overrides as YAML scalars, one-line errors, composition
through `base:`, the stage a file names, and the paper's table configs as deltas of paper_vat."""
from __future__ import annotations

from pathlib import Path

import pytest

from eri_downstream.config import ERIConfig, ExtractConfig
from eri_downstream.model import ERIModelConfig
from finetune_affectnet.config import FinetuneConfig
from pretrain_mae.config import PretrainConfig
from shared.config import from_dict, load_config, to_dict
from shared.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
ERI_CONFIGS = ROOT / "eri_downstream" / "configs"


def error(cls, path=None, overrides=()) -> str:
    with pytest.raises(UserError) as caught:
        load_config(cls, path, overrides)
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_overrides_are_yaml_scalars_checked_against_the_field_type():
    cfg = load_config(PretrainConfig, ROOT / "pretrain_mae/configs/tiny_cpu.yaml",
                      ["optim.base_lr=3e-4", "data.batch_size=32", "run.mixed_precision=no", "optim.betas=[0.5, 0.6]",
                       "data.exclude=lists/a.txt", "data.sources.celeba=/x", "model.overrides.drop_path_rate=0.1"])
    assert cfg.optim.base_lr == 3e-4 and cfg.data.batch_size == 32
    assert cfg.run.mixed_precision == "no"  # YAML 1.1 would have read a boolean
    assert cfg.optim.betas == (0.5, 0.6) and cfg.data.exclude == ["lists/a.txt"]  # a scalar for a list: one item
    assert cfg.data.sources == {"celeba": "/x"}
    assert cfg.model.overrides == {"img_size": 64, "drop_path_rate": 0.1}  # the file's entry stays
    assert cfg.run.total_steps == 200 and cfg.optim.warmup_steps == 10  # the file's values under the overrides
    resolved = to_dict(cfg)
    assert resolved["optim"]["betas"] == [0.5, 0.6] and resolved["model"]["overrides"]["img_size"] == 64


def test_a_section_given_in_part_keeps_the_stages_own_defaults_for_the_rest():
    # stage 3b's optimizer is AdamW(wd 0.01, betas 0.9/0.999), not the shared OptimConfig's defaults
    cfg = load_config(ERIConfig, None, ["optim.lr=1e-3", "run.log_every=5"])
    assert cfg.optim.weight_decay == 0.01 and cfg.optim.betas == (0.9, 0.999) and cfg.optim.min_lr == 1e-7
    assert cfg.run.output_dir == "runs/eri" and cfg.run.total_steps == 0
    cfg = load_config(PretrainConfig, None, ["optim={lr: 1e-3}"])  # a mapping for a section merges into it
    assert cfg.optim.lr == 1e-3 and cfg.optim.warmup_steps == 2000


def test_bad_keys_and_values_are_one_line_naming_the_key():
    assert error(PretrainConfig, None, ["optim.base_lrr=1"]) == \
        "unknown config key 'optim.base_lrr'; did you mean 'optim.base_lr'?"
    assert error(PretrainConfig, None, ["optim.base_lr=abc"]) == "config key 'optim.base_lr' expects a number, got abc"
    assert error(PretrainConfig, None, ["run.total_steps=1.5"]) == \
        "config key 'run.total_steps' expects an integer, got 1.5"
    assert error(PretrainConfig, None, ["run.compile=maybe"]) == "config key 'run.compile' expects true or false, got maybe"
    assert error(PretrainConfig, None, ["run=5"]) == "config key 'run' is a section; expected a mapping, got 5"
    assert error(PretrainConfig, None, ["data.scale=[0.1, 0.5, 1]"]) == \
        "config key 'data.scale' expects 2 values, got [0.1, 0.5, 1]"
    assert error(PretrainConfig, None, ["batch_size"]).startswith("override 'batch_size': expected key=value")
    with pytest.raises(UserError, match=r"^unknown config key 'model.overrides.gru_hiden'; did you mean "
                                        r"'model.overrides.gru_hidden'\?$"):
        from_dict(ERIModelConfig, {"gru_hiden": 8}, prefix="model.overrides.")


def test_a_files_errors_name_the_file_and_yaml_syntax_errors_its_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: mae_vit_demo\n data:\n  batch_size: 4\n")
    message = error(PretrainConfig, bad)
    assert message.startswith(f"{bad}:3:2: not valid YAML: ") and "expected <block end>" in message
    bad.write_text("run:\n  output_dir: [unclosed\n")
    assert error(PretrainConfig, bad).startswith(f"{bad}:3:1: not valid YAML: ")
    typo = tmp_path / "typo.yaml"
    typo.write_text("data:\n  batch_sise: 4\n")
    assert error(PretrainConfig, typo) == f"{typo}: unknown config key 'data.batch_sise'; did you mean 'data.batch_size'?"
    assert error(PretrainConfig, tmp_path / "none.yaml") == f"{tmp_path / 'none.yaml'}: config file not found"
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    assert error(PretrainConfig, tmp_path / "list.yaml").endswith("expected a mapping of config keys at the top level")


def test_a_config_of_another_stage_says_which_command_runs_it(tmp_path):
    stage1 = ROOT / "pretrain_mae/configs/tiny_cpu.yaml"
    assert error(FinetuneConfig, stage1) == f"{stage1} is a config of stage 1 (pretrain_mae): run it with affect-pretrain"
    stage3b = ERI_CONFIGS / "table2_v.yaml"
    assert error(ExtractConfig, stage3b) == \
        f"{stage3b} is a config of stage 3b (eri_train): run it with affect-train-eri"
    stage3a = ERI_CONFIGS / "extract_demo_cpu.yaml"
    assert error(ERIConfig, stage3a) == f"{stage3a} is a config of stage 3a (eri_extract): run it with affect-extract"
    other = tmp_path / "other.yaml"
    other.write_text("stage: pretrain\n")
    assert error(PretrainConfig, other) == (f"{other}: stage: 'pretrain' is no stage; one of pretrain_mae, "
                                            "finetune_affectnet, eri_extract, eri_train")
    # a file of its own that builds on another stage's file: the base is named as the base, and
    # the advice fits what the file says of itself
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text(f"base: {stage1}\nmodel:\n  encoder: x\n")
    assert error(FinetuneConfig, mixed) == (f"{mixed}: its base {stage1} is a config of stage 1 (pretrain_mae): run "
                                            f"{mixed} with affect-pretrain, or give it a base that is a config of "
                                            "stage 2 (finetune_affectnet)")
    mixed.write_text(f"stage: finetune_affectnet\nbase: {stage1}\n")
    assert error(FinetuneConfig, mixed) == (f"{mixed}: its base {stage1} is a config of stage 1 (pretrain_mae): give "
                                            "it a base that is a config of stage 2 (finetune_affectnet)")


def test_base_composition_merges_mappings_and_replaces_the_rest(tmp_path):
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "base.yaml").write_text(
        "stage: pretrain_mae\nmodel:\n  overrides: {img_size: 64, drop_path_rate: 0.1}\n"
        "data:\n  exclude: [a.txt, b.txt]\n  batch_size: 8\nrun:\n  total_steps: 30\n")
    (tmp_path / "parts" / "middle.yaml").write_text("base: base.yaml\ndata:\n  exclude: [c.txt]\n")
    (tmp_path / "top.yaml").write_text("stage: pretrain_mae\nbase: parts/middle.yaml\n"
                                       "model:\n  overrides: {img_size: 32}\nrun:\n  log_every: 3\n")
    cfg = load_config(PretrainConfig, tmp_path / "top.yaml", ["run.total_steps=40"])
    assert cfg.model.overrides == {"img_size": 32, "drop_path_rate": 0.1}
    assert cfg.data.exclude == ["c.txt"] and cfg.data.batch_size == 8
    assert cfg.run.total_steps == 40 and cfg.run.log_every == 3 and cfg.run.output_dir == "runs/pretrain_mae"
    (tmp_path / "loop.yaml").write_text("base: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("base: loop.yaml\n")
    assert error(PretrainConfig, tmp_path / "loop.yaml") == f"{tmp_path / 'loop2.yaml'}: base: loop.yaml is a base of itself"
    (tmp_path / "orphan.yaml").write_text("base: gone.yaml\n")
    assert error(PretrainConfig, tmp_path / "orphan.yaml") == (f"{tmp_path / 'orphan.yaml'}: base: gone.yaml not found "
                                                               f"(looked for {tmp_path / 'gone.yaml'})")


# each table config: exactly these keys differ from paper_vat.yaml's resolution
TABLE_DELTAS = {
    "table2_v": {"model.modalities": ["visual"], "model.overrides": {"temporal_se": True}},
    "table2_a": {"model.modalities": ["audio"], "model.overrides": {"temporal_se": True}},
    "table2_va": {"model.modalities": ["visual", "audio"], "model.overrides": {"temporal_se": True}},
    "table4_aug": {"model.overrides": {"temporal_se": False}, "data.mixup": 0.0, "ema_decay": None},
    "table4_aug_se": {"model.overrides": {"temporal_se": True}, "data.mixup": 0.0, "ema_decay": None},
    "table4_aug_se_ema": {"model.overrides": {"temporal_se": True}, "data.mixup": 0.0},
    **{f"table4_k{k}_plain": {"model.overrides": {"temporal_se": False}, "data.temporal_augmentation": False,
                              "data.mixup": 0.0, "ema_decay": None, **({"data.k": k} if k != 32 else {})}
       for k in (128, 64, 32, 16)},
}


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and key != "overrides":
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


@pytest.mark.parametrize("name", sorted(TABLE_DELTAS))
def test_table_configs_are_paper_vat_with_their_stated_differences(name):
    paper = flat(to_dict(load_config(ERIConfig, ERI_CONFIGS / "paper_vat.yaml")))
    table = flat(to_dict(load_config(ERIConfig, ERI_CONFIGS / f"{name}.yaml")))
    assert set(table) == set(paper)
    differ = {k: table[k] for k in table if table[k] != paper[k]}
    assert differ == {**TABLE_DELTAS[name], "run.output_dir": f"runs/eri/{name}"}
    # the paper's recipe underneath: AdamW 1e-4 down to 1e-7, restarts every 5 epochs, batch 16
    assert (table["optim.lr"], table["optim.min_lr"], table["restart_epochs"], table["data.batch_size"],
            table["epochs"], table["patience"], table["data.store"]) == (1e-4, 1e-7, 5, 16, 50, 10, "features")
    assert paper["model.modalities"] == ["visual", "audio", "text"] and paper["ema_decay"] == 0.999
    assert paper["data.mixup"] == 0.2 and paper["data.k"] == 32 and paper["data.temporal_augmentation"] is True


def test_every_shipped_config_loads_for_its_stage():
    classes = {"pretrain_mae": PretrainConfig, "finetune_affectnet": FinetuneConfig, "eri_train": ERIConfig,
               "eri_extract": ExtractConfig}
    import yaml
    found = 0
    for path in sorted(ROOT.glob("*/configs/*.yaml")) + sorted(ROOT.glob("*/configs/*/*.yaml")):  # levers/ too
        if path.name in ("paper_results.yaml", "tasks.yaml"):  # data the code reads, not a stage's config
            continue
        stage = yaml.safe_load(path.read_text())["stage"]
        load_config(classes[stage], path)
        found += 1
    assert found >= 25
