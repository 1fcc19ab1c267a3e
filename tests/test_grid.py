"""Stage 3b's grid (eri_downstream/grid.py) without training: which configurations it runs, how
it refuses, and what its table says of each run folder (the runs themselves: test_eri_train.py,
test_levers.py)."""
from __future__ import annotations

import csv
import json
import re
import shlex
import sys

import pytest
import yaml

from eri_downstream.grid import CONFIG_DIR, main, resolved
from shared.errors import UserError

TABLE2 = [str(CONFIG_DIR / f"{name}.yaml") for name in ("table2_v", "table2_a", "table2_va")]


def finished(run_dir, score, task="eri", config=None):
    """A run folder as train.py leaves it: its report, and the settings it ran with."""
    run_dir.mkdir(parents=True)
    (run_dir / "report.json").write_text(json.dumps({"mean": score, "task": task}))
    if config is not None:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))


def table(folder, name="results"):
    with open(folder / f"{name}.csv", newline="") as f:
        return {r["configuration"]: r for r in csv.DictReader(f)}


def test_the_papers_number_stands_beside_eri_runs_only(tmp_path):
    """The paper reports ERI: an EMI run of a table configuration has no paper number beside it."""
    runs = tmp_path / "runs"
    finished(runs / "table2_v", 0.25, "emi")
    finished(runs / "table2_a", 0.25, "eri")
    assert main(["--collect", "--configs", *TABLE2, f"run.output_dir={runs}"]) == 0
    rows = table(runs)
    assert (rows["table2_v"]["task"], rows["table2_v"]["paper"]) == ("emi", "")
    assert (rows["table2_a"]["task"], rows["table2_a"]["paper"], rows["table2_a"]["ours"]) == ("eri", "0.185", "0.250000")
    assert (rows["table2_va"]["ours"], rows["table2_va"]["paper"]) == ("not run", "0.4098")


def test_a_folder_with_a_run_of_other_settings_is_neither_resumed_nor_reported(tmp_path):
    runs, config = tmp_path / "runs", TABLE2[0]
    nested: dict = {}
    for key, value in {**resolved(config, ["data.store=features"]), "data.k": 16}.items():  # ran with k 16, not 32
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    finished(runs / "table2_v", 0.3, config=nested)
    # the launcher is never started (it would exit 9): the folder is refused first, and its row says why
    never = f"{shlex.quote(sys.executable)} -c 'raise SystemExit(9)'"
    assert main(["--configs", config, "data.store=features", f"run.output_dir={runs}", "--launcher", never]) == 2
    row = table(runs)["table2_v"]
    assert row["ours"] == f"other settings in {runs / 'table2_v'} (data.k: 16 -> 32)", row
    assert main(["--collect", "--configs", config, "data.store=features", f"run.output_dir={runs}"]) == 0
    row = table(runs)["table2_v"]
    assert row["ours"] == f"other settings in {runs / 'table2_v'} (data.k: 16 -> 32)", row
    saved_k = {**nested, "data": {**nested["data"], "k": 32}}
    (runs / "table2_v" / "config.yaml").write_text(yaml.safe_dump(saved_k))  # the same settings: its score
    assert main(["--collect", "--configs", config, "data.store=features", f"run.output_dir={runs}"]) == 0
    assert table(runs)["table2_v"]["ours"] == "0.300000"


def test_a_failed_configuration_is_not_shown_with_an_earlier_score(tmp_path, capsys):
    runs = tmp_path / "runs"
    finished(runs / "table2_v", 0.3)
    failing = f"{shlex.quote(sys.executable)} -c 'raise SystemExit(3)'"
    assert main(["--configs", TABLE2[0], f"run.output_dir={runs}", "--launcher", failing]) == 3
    assert table(runs)["table2_v"]["ours"] == "failed (exit 3)"
    assert "table2_v failed (exit 3); going on with the others" in capsys.readouterr().err


def test_a_preempted_configuration_stops_the_grid_for_its_requeue(tmp_path, capsys):
    preempted = f"{shlex.quote(sys.executable)} -c 'raise SystemExit(75)'"
    assert main(["--configs", *TABLE2, f"run.output_dir={tmp_path}", "--launcher", preempted]) == 75
    err = capsys.readouterr().err
    assert "table2_v was preempted (exit 75): stopping here to be requeued" in err and "table2_a" not in err


def test_the_levers_have_their_own_table(tmp_path):
    assert main(["--levers", "--collect", f"run.output_dir={tmp_path}"]) == 0
    assert set(table(tmp_path, "levers")) == {"paper_vat", "ccc", "mse_pearson", "modality_dropout", "sentence_text"}
    assert not (tmp_path / "results.csv").exists()


def test_the_seed_is_a_setting_and_where_the_run_is_watched_is_not(tmp_path):
    runs, config = tmp_path / "runs", TABLE2[0]
    nested: dict = {}
    for key, value in {**resolved(config, ["data.store=features"]), "run.seed": 0, "run.trackers": ["wandb"],
                       "data.num_workers": 7}.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    finished(runs / "table2_v", 0.3, config=nested)
    assert main(["--collect", "--configs", config, "data.store=features", f"run.output_dir={runs}"]) == 0
    assert table(runs)["table2_v"]["ours"] == "0.300000"  # trackers and loader workers change nothing learned
    assert main(["--collect", "--configs", config, "data.store=features", "run.seed=7", f"run.output_dir={runs}"]) == 0
    assert table(runs)["table2_v"]["ours"] == f"other settings in {runs / 'table2_v'} (run.seed: 0 -> 7)"


def test_a_configuration_refused_with_the_overrides_leaves_the_others_running(tmp_path, capsys):
    """Each configuration names its own run folder (no run.output_dir given), so the grid loads it
    with the overrides to find it: one refused there is marked, and the next still runs."""
    (tmp_path / "one.yaml").write_text(f"run:\n  output_dir: {tmp_path / 'one'}\n")
    (tmp_path / "two.yaml").write_text(f"run:\n  output_dir: {tmp_path / 'two'}\n")
    ran = f"{shlex.quote(sys.executable)} -c 'open(\"{tmp_path / 'ran'}\", \"a\").write(\"x\")'"
    argv = ["--configs", str(tmp_path / "one.yaml"), str(tmp_path / "two.yaml"), "--launcher", ran]
    assert main([*argv, "model.modalities=[visual]", "modality_dropout=0.3"]) == 2  # refused for both
    assert not (tmp_path / "ran").exists()
    assert main([*argv, "folds=2", "fold=1"]) == 0  # valid for both: each ran
    assert (tmp_path / "ran").read_text() == "xx"
    (tmp_path / "one.yaml").write_text(f"run:\n  output_dir: {tmp_path / 'one'}\nfolds: 3\nfold: 2\n")
    assert main([*argv, "folds=2", "fold=1"]) == 0  # the overrides apply to each file: folds 2, fold 1, valid
    (tmp_path / "one.yaml").write_text(f"run:\n  output_dir: {tmp_path / 'one'}\nfold: 2\n")
    assert main([*argv, "folds=2"]) == 2  # one: fold 2 of 2 folds; two: plain folds=2 runs
    assert "grid: one: fold=2 needs folds=N with 0 <= fold < N (folds=2)" in capsys.readouterr().err
    assert (tmp_path / "ran").read_text() == "xxxxx"
    rows = table(tmp_path)
    assert rows["one"]["ours"] == "failed (exit 2)" and rows["one"]["changes"].startswith("refused: fold=2 needs")
    assert rows["two"]["ours"] == "not run"  # ran (the stand-in launcher writes no report)
    assert main(["--collect", *argv[:3], "folds=2"]) == 0
    assert table(tmp_path)["one"]["ours"] == "refused at load"


@pytest.mark.parametrize("argv, said", [
    (["--configs", "data.store=x"], "--configs names no configuration file (.yaml)"),
    (["--levers", "--configs", TABLE2[0]], "--levers is a set of configurations: give it or --configs, not both"),
    (["--collect", "--index", "11"], "--index 11: expected 0 to 10"),
    (["--configs", TABLE2[0], "--launcher", "/no/such/python"], "--launcher '/no/such/python': /no/such/python not found"),
    (["--configs", TABLE2[0], "--launcher", ""], "--launcher is empty"),
    (["--configs", TABLE2[0], "--launcher", '"python'], "--launcher '\"python': No closing quotation"),
    (["--configs", TABLE2[0], str(CONFIG_DIR / "levers" / ".." / "table2_v.yaml")], "table2_v.yaml twice"),
])
def test_what_the_grid_cannot_do_is_one_line(argv, said, tmp_path):
    with pytest.raises(UserError, match=re.escape(said)):
        main([*argv, f"run.output_dir={tmp_path}"])


def test_two_configurations_of_one_name_are_refused(tmp_path):
    (tmp_path / "other").mkdir()
    twin = tmp_path / "other" / "table2_v.yaml"
    twin.write_text("model:\n  modalities: [audio]\n")
    with pytest.raises(UserError, match="two configurations named table2_v: their runs would share a folder"):
        main(["--collect", "--configs", TABLE2[0], str(twin), f"run.output_dir={tmp_path}"])


def test_overrides_after_the_configurations_are_overrides(tmp_path):
    runs = tmp_path / "runs"
    finished(runs / "table2_v", 0.5)
    # an override whose value is a .yaml path is still an override; a path with "=" in it is a file
    assert main(["--collect", "--configs", TABLE2[0], f"run.output_dir={runs}", "data.k=8", "data.encoder=/x/e.yaml"]) == 0
    row = table(runs)["table2_v"]  # found through run.output_dir; data.k applies to paper_vat too: no change
    assert (row["ours"], row["changes"]) == ("0.500000", "model.modalities=['visual'], model.overrides.temporal_se=True")
