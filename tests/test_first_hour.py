"""A newcomer's first hour (issue 18): the demo's progress line, stages that find the demo's
data before any work, figures that name their axes and step, errors that give the right
advice, a missing tracker and an early stop said in one line."""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import yaml
from tqdm import tqdm

from fault_utils import own_signal_handlers, tiny_pretrain
from shared import builtin_data, plots
from shared.errors import UserError
from shared.progress import Progress, status


# -- the demo's progress line
def test_the_progress_line_shows_the_newest_bar_its_loss_and_else_the_newest_log_line(tmp_path):
    log = tmp_path / "stage.log"
    with open(log, "w") as f:
        f.write("2026-12-01 04:21:07,123 INFO pretrain_mae: mae_vit_demo: 400 steps of 64 images\n")
        bar = tqdm(total=400, file=f, unit="step", mininterval=0)
        for _ in range(148):
            bar.update(1)
            bar.set_postfix(loss="0.6120", lr="1.0e-03")
        f.flush()
        assert status(log.read_text()) == "step 148/400 (37 %), loss 0.612"
    log.write_text("2026-12-01 04:21:07,123 INFO pretrain_mae: mae_vit_demo: 400 steps of 64 images\n")
    assert status(log.read_text()) == "mae_vit_demo: 400 steps of 64 images"
    with open(log, "a") as f:
        bar = tqdm(range(7), desc="faces [0]", file=f, unit="video", mininterval=0)
        for _ in zip(range(3), bar):
            pass
    assert status(log.read_text()) == "faces [0] 2/7 (28 %)"

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    console, screen = io.StringIO(), Terminal()
    with Progress(log, every=0, stream=console) as off_tty, Progress(log, every=0, stream=screen) as on_tty:
        off_tty.show(), off_tty.show(), on_tty.show()
    assert console.getvalue().splitlines()[0].startswith("    faces [0] 2/7 (28 %) · 0 s")
    assert len(console.getvalue().splitlines()) == 2  # a new line each time off a terminal
    assert screen.getvalue().startswith("\r\033[K    faces [0]") and screen.getvalue().endswith("\r\033[K")


# -- a stage started without data arguments finds the demo's data, and says so first
class OneProcess:
    is_main_process = True

    def main_process_first(self):
        import contextlib
        return contextlib.nullcontext()


def complete_shards(base: Path) -> Path:
    (base / "shards").mkdir(parents=True)
    (base / "shards" / ".complete").write_text("")
    return base


def test_a_stage_finds_the_demos_data_and_says_which_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(builtin_data.ROOT_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # an empty cache
    monkeypatch.setattr(builtin_data, "CHECKOUT", tmp_path / "checkout")  # CI runs the demo in the checkout first
    monkeypatch.chdir(tmp_path)
    demo = complete_shards(tmp_path / "runs" / "demo" / "data").resolve()
    said = []

    def make(base):
        said.append(capsys.readouterr().out)  # what was said before the work
        return base

    assert builtin_data.made_once(OneProcess(), make, "faces", part="shards", own="data.sources") == demo
    assert said == [f"no data given: using the built-in synthetic faces at {demo} (give data.sources for your own "
                    "data)\n"]
    (demo / "shards" / ".complete").unlink()  # nothing made anywhere: where it looked, and where it makes it
    builtin_data.made_once(OneProcess(), make, "faces", part="shards", own="data.sources")
    cache = tmp_path / "home" / ".cache" / "affect-lineage" / "builtin"
    assert said[1].startswith(f"no data given and no built-in data yet (looked in {cache.resolve()}, ")
    assert f"{demo}): making the built-in synthetic faces at {cache} now" in said[1]
    assert f"{builtin_data.ROOT_ENV}=DIR uses built-in data made elsewhere" in said[1]
    checkout = complete_shards(tmp_path / "checkout" / "runs" / "demo" / "data").resolve()
    assert builtin_data.locate("shards") == (checkout, True)  # the demo run in this checkout, from anywhere
    monkeypatch.setenv(builtin_data.ROOT_ENV, str(tmp_path / "mine"))  # the variable alone decides
    assert builtin_data.places() == [tmp_path / "mine"] and builtin_data.locate("shards") == (tmp_path / "mine", False)


def test_stage_3b_without_a_store_says_where_it_looked_before_any_work(tmp_path, monkeypatch):
    from eri_downstream.train import main
    monkeypatch.setenv(builtin_data.ROOT_ENV, str(tmp_path / "data"))
    with pytest.raises(UserError, match=rf"no data given \(data.store\) and no built-in feature store in "
                                        rf"{tmp_path / 'data' / 'features'}: set data.store .* `affect-extract all "
                                        rf"--encoder ENCODER` \(no --data\); {builtin_data.ROOT_ENV}=DIR"):
        main([f"run.output_dir={tmp_path / 'run'}"])
    assert not (tmp_path / "run").exists()  # nothing done before the line
    (tmp_path / "data" / "features").mkdir(parents=True)
    (tmp_path / "data" / "features" / "videos.csv").write_text("file_id,split\n")
    assert builtin_data.locate("features") == (tmp_path / "data", True)


# -- figures name their axes and their step
@pytest.fixture
def figures(monkeypatch):
    """The matplotlib figures shared.plots draws, kept for inspection."""
    drawn, save = [], plots._save

    def keep(fig, path):
        drawn.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return drawn


def test_stage_3b_learning_curves_show_loss_and_validation_per_epoch_with_the_chosen_one(tmp_path, figures):
    from eri_downstream.reports import VALIDATION, curves
    steps_per_epoch = 4
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for step in range(2, 25, 2):
            f.write(json.dumps({"step": step, "loss": 1.0 / step}) + "\n")
    scores = {1: 0.1, 2: 0.3, 3: 0.25, 4: 0.2, 5: 0.28, 6: 0.27}
    with open(tmp_path / VALIDATION, "w") as f:
        for epoch, score in scores.items():
            f.write(json.dumps({"epoch": epoch, "step": epoch * steps_per_epoch, "mean": score,
                                "mean_defined": score}) + "\n")
        f.write(json.dumps({"epoch": 3, "step": 12, "mean": 0.26, "mean_defined": 0.26}) + "\n")  # resumed: counts
    curves(tmp_path, chosen=2, loss="1 - mean CCC")
    assert (tmp_path / "learning_curves.png").stat().st_size > 5000
    loss_axis, score_axis = figures[-1].axes
    assert loss_axis.get_xlabel() == "epoch" and loss_axis.get_ylabel().startswith("training loss (1 - mean CCC")
    assert score_axis.get_ylabel() == "validation mean Pearson"
    train, chosen_line = loss_axis.get_lines()
    assert list(train.get_xdata()) == [s / steps_per_epoch for s in range(2, 25, 2)]
    assert list(chosen_line.get_xdata()) == [2, 2]  # the chosen epoch, marked across the plot
    validation = score_axis.get_lines()[0]
    assert list(validation.get_xdata()) == list(scores) and list(validation.get_ydata()) == [
        0.1, 0.3, 0.26, 0.2, 0.28, 0.27]
    assert any(t.get_text() == "chosen: epoch 2, 0.300" for t in score_axis.texts)


def test_loss_curves_and_confusion_matrices_name_their_axes_and_step(tmp_path, figures):
    from finetune_affectnet.evaluate import save_report
    plots.learning_curves([{"step": 10, "loss": 1.4}, {"step": 20, "loss": 1.1}], ["loss"], tmp_path / "a.png",
                          ylabel="loss (mean over each 10 steps)")
    assert figures[-1].axes[0].get_xlabel() == "optimizer step"
    assert figures[-1].axes[0].get_ylabel() == "loss (mean over each 10 steps)"
    report = {"step": 400, "split": "val", "top1": 0.5, "balanced_accuracy": 0.5,
              "confusion_matrix": [[2, 1], [1, 2]], "class_names": ["a", "b"]}
    save_report(report, tmp_path / "eval")
    assert figures[-1].axes[0].get_title() == "val, step 400: top-1 0.500, balanced 0.500"


# -- errors that give the right advice
def test_a_modality_that_does_not_exist_is_named_not_sent_to_a_step_that_does_not_exist(tmp_path):
    from eri_downstream.train import main
    with pytest.raises(UserError) as err:
        main(["model.modalities=[video,audio]", f"data.store={tmp_path}", f"run.output_dir={tmp_path / 'run'}"])
    assert str(err.value) == "model.modalities=[video, audio]: each item must be one of visual, audio, text (not video)"


def run_folder(root: Path, *exports: str, states: bool = True) -> Path:
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(yaml.safe_dump({"run": {"output_dir": str(root)}}))
    if states:
        (root / "checkpoints" / "step_00000010").mkdir(parents=True)
        (root / "checkpoints" / "step_00000010" / "meta.json").write_text("{}")
    for export in exports:
        (root / export / "encoder").mkdir(parents=True)
        (root / export / "encoder" / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224"}))
    return root


def test_a_run_folder_given_as_an_encoder_points_to_its_encoder(tmp_path):
    from shared.encoders import load_encoder, load_frozen_encoder
    stage1 = run_folder(tmp_path / "mae", "export")
    with pytest.raises(UserError, match=rf"is a run folder: its encoder is {stage1 / 'export' / 'encoder'}$"):
        load_encoder(stage1)
    stage2 = run_folder(tmp_path / "finetune", "best", "export")  # stage 3a's --encoder reads the same way
    with pytest.raises(UserError, match=rf"its encoder is {stage2 / 'best' / 'encoder'} \(the final weights: "):
        load_frozen_encoder(stage2)
    unfinished = run_folder(tmp_path / "unfinished")
    with pytest.raises(UserError, match=rf"without an exported encoder.*--resume auto.*`python -m pretrain_mae.export "
                                        rf"{unfinished}/checkpoints/step_N --out DIR`"):
        load_encoder(unfinished)


def test_resume_from_a_missing_path_or_a_run_folder_says_what_to_give(tmp_path):
    from shared.training.checkpoint import Checkpointer
    checkpointer = Checkpointer(None, tmp_path / "run")
    with pytest.raises(UserError, match=r"--resume .*/nope: no such folder; use --resume auto"):
        checkpointer.resolve(str(tmp_path / "nope"))
    other = run_folder(tmp_path / "other")
    with pytest.raises(UserError, match=rf"a run folder, not one of its states; resume it with run.output_dir={other} "
                                        "--resume auto"):
        checkpointer.resolve(str(other))
    assert checkpointer.resolve(str(other / "checkpoints" / "step_00000010")) == other / "checkpoints" / "step_00000010"


def test_a_raw_dataset_where_shards_or_a_store_are_expected_is_named_with_its_conversion(raw, shards, tmp_path):
    from eri_downstream.dataset import load_dataset
    from eri_downstream.train import main as train_eri
    from shared.shards.cli import main as face_shards
    from shared.stream import build_sources
    affectnet = raw["affectnet"].root
    with pytest.raises(UserError, match=rf"{affectnet} is the raw AffectNet download: convert it first "
                                        rf"\(`face-shards affectnet {affectnet} --out shards/affectnet`\)"):
        build_sources({"affectnet": str(affectnet)})
    with pytest.raises(UserError, match=r"is the raw AffectNet download: .*`face-shards affectnet"):
        face_shards(["celeba", str(affectnet), "--out", str(tmp_path / "x"), "--no-progress"])  # the wrong converter
    hume = tmp_path / "hume"
    hume.mkdir()
    (hume / "data_info.csv").write_text("File_ID,Split\n")
    with pytest.raises(UserError, match=rf"{hume}: no videos.csv, so not a feature store; {hume} is the raw "
                                        rf"Hume-Reaction dataset: extract its features first \(`affect-extract all "
                                        rf"--data {hume} --store features"):
        train_eri([f"data.store={hume}", f"run.output_dir={tmp_path / 'run'}"])
    store = tmp_path / "features"
    store.mkdir()
    (store / "videos.csv").write_text("file_id,split\n")
    with pytest.raises(UserError, match=rf"{store} is a feature store \(stage 3a's output\): stage 3b reads it"):
        load_dataset(store)
    with pytest.raises(UserError, match=rf"{shards['celeba']} is a folder of face shards \(celeba"):
        load_dataset(shards["celeba"])


# -- a tracker asked for and missing; an early stop
def test_a_tracker_asked_for_and_missing_is_one_line_before_any_work(tmp_path):
    from shared.training.setup import check_trackers
    check_trackers(["tensorboard"])
    with pytest.raises(UserError, match=r"run.trackers: unknown tracker 'tensorbored'; Accelerate knows .*tensorboard"):
        check_trackers(["tensorbored"])
    try:
        import wandb  # noqa: F401
        pytest.skip("wandb is installed here")
    except ImportError:
        pass
    from pretrain_mae.main import main
    with pytest.raises(UserError, match=r'run.trackers: wandb is not installed; install it \(pip install -e "\.\[wandb\]"'):
        main([*tiny_pretrain(tmp_path / "run", 2), "run.trackers=[wandb]"])
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_stop_after_says_the_run_is_incomplete_and_how_to_resume(tmp_path, caplog):
    from pretrain_mae.main import main
    out = tmp_path / "run"
    with own_signal_handlers(), caplog.at_level(logging.WARNING, logger="pretrain_mae"):
        assert main([*tiny_pretrain(out, 4), "stop_after=2"]) == 0
    said = [r.getMessage() for r in caplog.records if r.name == "pretrain_mae"]
    assert said == [f"stopped after 2 step(s) as asked (stop_after=2): step 2 of 4, the run is incomplete and not "
                    f"exported; its state is {out / 'checkpoints' / 'step_00000002'}; continue it with the same "
                    "command and --resume auto"]
    assert not (out / "export").exists()
