"""Every command: one line for bad input (status 2) or a failure (status 1), a traceback only
with --debug, and every entry point through run_cli. docs/faults.md lists each fault."""
from __future__ import annotations

import errno
import importlib
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eri_downstream.dataset import VideoEntry, write_table
from eri_downstream.store import FeatureStore
from run_utils import ROOT
from shared.errors import UserError, run_cli
from shared.synthetic import write_affectnet
from fault_utils import PRETRAIN, last_line, own_signal_handlers, tiny_pretrain


# -- every command: one line, status 2 for bad input and 1 for a failure; a traceback only with --debug
class Evil:
    """Creates a file when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_inputs")
    affectnet = write_affectnet(root / "affectnet").root
    (affectnet / "Manually_Annotated_file_lists" / "training.csv").write_text("a\tb\tc\td\te\tf\tg\th\ti\n")
    (root / "hume").mkdir()
    (root / "hume" / "data_info.csv").write_text("File_ID;Split;Adoration\n[00001];Train;0.5\n")
    store = FeatureStore(root / "store")
    videos = [VideoEntry("00001", "train", [0.5] * 7, "", "", None, None),
              *(VideoEntry(f"0000{i}", "val", [0.1 * i] * 7, "", "", None, None) for i in (2, 3))]
    write_table(videos, store.table)  # a store train.py accepts: the bad input is the config key
    for modality in ("visual", "audio", "text"):
        for video in videos:
            store.save(modality, video.file_id, torch.ones(3, 8))
    with open(root / "evil.pth", "wb") as f:
        pickle.dump({"model": {}, "args": Evil(root / "pwned")}, f, protocol=2)
    return {"root": root, "affectnet": affectnet, "hume": root / "hume", "store": store.root,
            "evil": root / "evil.pth", "marker": root / "pwned"}


# command, exit status, what the last line says, and its main (run in this process for --debug;
# {out} differs between the two runs.
COMMANDS = {
    "face-shards": (["-m", "shared.shards", "affectnet", "{affectnet}", "--out", "{out}/shards"], 2,
                    r"^face-shards: error: .*training.csv: no row has AffectNet's 9 columns; line 1 has 1 and "
                    r"looks separated by tabs; expected 9 comma-separated columns", "shared.shards.cli"),
    "pretrain, bad source": ([PRETRAIN, "model.name=mae_vit_test", "data.sources={{celeba: {root}/nope}}",
                              "run.trackers=[]", "run.output_dir={out}/pretrain"], 2,
                             r"source celeba: .*/nope does not exist", "pretrain_mae.main"),
    "pretrain, diverging": ([PRETRAIN, *tiny_pretrain(Path("{out}/diverging"), 20), "optim.lr=1e30",
                             "run.max_nonfinite_steps=2"], 1,
                            r"the loss or gradient was NaN or infinite for 2 steps in a row \(steps 2-3",
                            "pretrain_mae.main"),
    "finetune": (["finetune_affectnet/main.py", "data.shardz={root}"], 2,
                 r"unknown config key 'data.shardz'; did you mean 'data.shards'\?", "finetune_affectnet.main"),
    "eri train": (["eri_downstream/train.py", "data.store={store}", "run.output_dir={out}/eri",
                   "run.trackers=[]", "model.overrides={{gru_hiden: 8}}"], 2,
                  r"unknown config key 'model.overrides.gru_hiden'; did you mean 'model.overrides.gru_hidden'\?",
                  "eri_downstream.train"),
    "extract": (["eri_downstream/extract.py", "faces", "--data", "{hume}", "--store", "{out}/features"], 2,
                r"data_info.csv: missing column\(s\) File_ID, Split, .*; expected columns File_ID, Split",
                "eri_downstream.extract"),
    "export": (["-m", "pretrain_mae.export", "{evil}", "--out", "{out}/export"], 2,
               r"refusing to load .*evil.pth: it needs (posix|os)\.system .*nothing in it was run\)",
               "pretrain_mae.export"),
    "grid": (["-m", "eri_downstream.grid", "--configs", "{root}/none.yaml", "--collect"], 2,
             r"configuration file\(s\) not found: .*none.yaml", "eri_downstream.grid"),
}


def command(args: list[str], inputs: dict, out: str) -> list[str]:
    return [a.format(**inputs, out=inputs["root"] / out) for a in args]


def error_of(stderr: str) -> str:
    """The last line without the program name, which differs between a script and this process."""
    return last_line(stderr).split(": error: ", 1)[1]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_reports_bad_input_in_one_line_and_a_traceback_only_with_debug(name, bad_inputs, capsys):
    args, status, message, main = COMMANDS[name]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    plain = subprocess.Popen([sys.executable, *command(args, bad_inputs, "plain")], cwd=ROOT, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # the same run_cli and main with --debug, without starting another interpreter
    argv = command(args, bad_inputs, "debug")
    argv = argv[2:] if argv[0] == "-m" else argv[1:]  # what follows the script or module
    with own_signal_handlers():
        debug_status = run_cli(importlib.import_module(main).main, [*argv, "--debug"])
    debug_err = capsys.readouterr().err
    _, err = plain.communicate(timeout=300)
    assert plain.returncode == status and debug_status == status, err[-3000:]
    assert re.search(message, last_line(err)) and ": error: " in last_line(err), last_line(err)
    assert "Traceback" not in err and "Traceback" in debug_err
    assert error_of(debug_err) == error_of(err).replace(str(bad_inputs["root"] / "plain"),
                                                        str(bad_inputs["root"] / "debug"))
    assert not bad_inputs["marker"].exists()  # the pickle's payload never ran


def test_unexpected_failures_are_one_line_too_and_worker_tracebacks_are_cut(capsys):
    def broken(argv):
        return 1 / 0

    def disk_full(argv):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/x/metrics.jsonl")

    assert run_cli(broken, []) == 1
    assert error_of(capsys.readouterr().err) == ("ZeroDivisionError: division by zero "
                                                 "(run again with --debug for the traceback)")
    assert run_cli(disk_full, []) == 1
    assert error_of(capsys.readouterr().err) == "No space left on device: /runs/x/metrics.jsonl"
    assert run_cli(broken, ["--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and error_of(err) == "ZeroDivisionError: division by zero"

    def bad_store(argv):  # what a DataLoader worker's error looks like once re-raised by the main process
        raise UserError("Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                        "last):\n  File \"data.py\", line 1, in _load\nshared.errors.UserError: features/a.safetensors:"
                        " 1 of 4 feature values are NaN or infinite\n")

    assert run_cli(bad_store, []) == 2
    assert error_of(capsys.readouterr().err) == "features/a.safetensors: 1 of 4 feature values are NaN or infinite"


def test_every_entry_point_goes_through_run_cli():
    for path in ("shared/shards/cli.py", PRETRAIN, "pretrain_mae/export.py", "finetune_affectnet/main.py",
                 "eri_downstream/extract.py", "eri_downstream/train.py", "eri_downstream/grid.py"):
        assert re.search(r"raise SystemExit\(run_cli\(main\b", (ROOT / path).read_text()), path
