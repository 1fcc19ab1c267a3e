"""The task is data: stage 3 on the EMI task (Hume-Vidmimic2 layout, 6 intensities) end to end,
from the raw layout through the feature store to reports and a submission with 6 columns, and
a store of one task refused where another is asked for."""
from __future__ import annotations

import csv
import json
import shutil

import pytest
from safetensors.torch import load_file

from eri_downstream.dataset import EMOTIONS, dataset_task, load_dataset, read_table, table_emotions, update_table
from eri_downstream.tasks import get_task
from run_utils import run_stage
from shared.errors import UserError
from shared.synthetic.builtin_reactions import EMI_COLUMNS, write_builtin_reactions
from shared.synthetic.hf_models import save_deberta, save_hubert

EMI = get_task("emi")


@pytest.fixture(scope="module")
def emi(tmp_path_factory):
    root = tmp_path_factory.mktemp("emi")
    written = write_builtin_reactions(root / "vidmimic", n_train=16, n_val=8, n_test=3, seconds=1.0, fps=6,
                                      workers=1, task="emi")
    return written, root


def test_the_vidmimic_layout_reads_as_six_intensities(emi, tmp_path):
    written, _ = emi
    assert EMI.emotions == EMI_COLUMNS and dataset_task(written.root).name == "emi"
    entries = {e.file_id: e for e in load_dataset(written.root)}
    assert set(entries) == {i for ids in written.ids.values() for i in ids}
    for file_id, entry in entries.items():
        assert entry.mp4 == written.root / "raw" / f"{file_id}.mp4"
        assert entry.wav == written.root / "audio" / f"{file_id}.mp3"
        if entry.split == "test":
            assert entry.labels is None
        else:
            assert entry.labels == pytest.approx(written.labels[file_id], abs=1e-6) and len(entry.labels) == 6
    # a split table re-saved by a spreadsheet: numeric Filenames lose their zeros, media keep them
    copy = tmp_path / "resaved"
    shutil.copytree(written.root, copy)
    rows = list(csv.reader((copy / "valid_split.csv").open()))
    with (copy / "valid_split.csv").open("w", newline="") as f:
        csv.writer(f).writerows([rows[0]] + [[str(int(r[0])), *r[1:]] for r in rows[1:]])
    resaved = {e.file_id: e for e in load_dataset(copy) if e.split == "val"}
    assert set(resaved) == set(written.ids["val"]) and all(e.mp4 is not None for e in resaved.values())


def test_one_store_holds_one_task(emi, tmp_path):
    written, _ = emi
    entries = load_dataset(written.root)
    table = tmp_path / "videos.csv"
    update_table(entries, table, {"train", "val", "test"}, EMI.emotions)
    assert table_emotions(table) == list(EMI.emotions)
    assert [e.labels for e in read_table(table)] == [e.labels for e in entries]
    with pytest.raises(UserError, match="one feature store serves one task"):
        update_table(entries[:2], table, {"train"}, EMOTIONS)


def test_stage_3_runs_the_emi_task_end_to_end(emi, tiny_encoder):
    written, root = emi
    store = root / "store"
    store.mkdir()
    shutil.copy(written.transcripts_csv, store / "transcripts.csv")  # given transcripts: no ASR model
    models = {"audio": save_hubert(root / "hubert"), "text": save_deberta(root / "deberta")}
    run_stage("eri_downstream/extract.py", "all", "--data", str(written.root), "--store", str(store),
              "--encoder", str(tiny_encoder), "--audio-model", str(models["audio"]),
              "--text-model", str(models["text"]), "--size", "32", "--task", "emi")
    assert table_emotions(store / "videos.csv") == list(EMI.emotions)
    out = root / "run"
    run_stage("eri_downstream/train.py", "--config", "eri_downstream/configs/demo_cpu.yaml", f"data.store={store}",
              f"run.output_dir={out}", "task=emi", "epochs=2", "data.num_workers=0", "run.trackers=[]")
    report = json.loads((out / "report.json").read_text())
    assert list(report["per_emotion"]) == list(EMI.emotions) and report["videos"] == 8
    weights = load_file(out / "best.safetensors")
    last = max(k for k in weights if k.startswith("head.") and k.endswith(".weight"))
    assert weights[last].shape[0] == 6  # one output per EMI intensity
    rows = list(csv.reader((out / "submission.csv").open()))
    assert rows[0] == ["Filename", *EMI.emotions] and len(rows) == 4
    assert {r[0] for r in rows[1:]} == set(written.ids["test"]) and all(len(r) == 7 for r in rows)
    assert sum(line.startswith("| ") for line in (out / "per_emotion.md").read_text().splitlines()) == 1 + 6 + 1
    refused = run_stage("eri_downstream/train.py", "--config", "eri_downstream/configs/demo_cpu.yaml",
                        f"data.store={store}", f"run.output_dir={root / 'wrong'}", "task=eri", check=False)
    assert refused.returncode == 2 and "holds the emi task" in refused.stderr.strip().splitlines()[-1]


def test_a_later_step_on_a_store_keeps_the_store_s_task(tmp_path):
    from eri_downstream.dataset import write_table
    from eri_downstream.extract import stored_task
    assert stored_task(None) is None and stored_task(str(tmp_path / "none")) is None
    write_table([], tmp_path / "emi" / "videos.csv", EMI.emotions)
    write_table([], tmp_path / "eri" / "videos.csv", EMOTIONS)
    assert stored_task(str(tmp_path / "emi")) == "emi" and stored_task(str(tmp_path / "eri")) == "eri"
