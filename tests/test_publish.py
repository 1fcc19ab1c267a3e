"""affect-publish on real tiny runs of every stage, one lineage: a stage-1 MAE pretrained on
converted shards, stage 2 fine-tuned from its export, stage 3b trained on a feature store (with
stage 3a's run.json) whose visual features name that stage-2 encoder. The publisher reads only
each run's run.json and the files it declares. Each published folder is loaded back offline and
compared with the run's own weights; the cards carry the runs' exact numbers, their data as the
records name it, and the licence; no published file names a folder of this machine; the upload
goes to a stand-in HfApi."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from eri_downstream.config import ExtractConfig
from eri_downstream.dataset import EMOTIONS, VideoEntry, write_table
from eri_downstream.store import FeatureStore
from eri_downstream.store_record import write_record as write_store_record
from run_utils import ROOT, metrics, run_stage
from shared.errors import run_cli
from affect_publish import cli

COMMON = ["run.mixed_precision=no", "run.trackers=[]", "run.log_every=1", "run.save_every=100"]


def publish(run, out, *extra, capsys) -> str:
    """The command in this process, returning what it printed (the error tests below run the
    real entry point in a subprocess)."""
    assert cli.main([str(run), "--out", str(out), *extra]) == 0
    return capsys.readouterr().out


def card(folder):
    return ModelCard.load(folder / "README.md")


def metric(card_data, name) -> float:
    values = [r.metric_value for r in card_data.eval_results if r.metric_name == name]
    assert len(values) == 1, (name, [r.metric_name for r in card_data.eval_results])
    return values[0]


@pytest.fixture(scope="module")
def pretrain_run(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("publish") / "mae"
    sources = "{celeba: %s, casia: %s}" % (shards["celeba"], shards["casia"])
    run_stage("pretrain_mae/main.py", "model.name=mae_vit_test", f"data.sources={sources}",
              "data.weights=celeba:3,casia:1", "data.batch_size=4", "data.num_workers=0", "data.shuffle_buffer=8",
              "data.block_size=32", "run.total_steps=3", "figures.every=0", f"run.output_dir={out}", *COMMON)
    return out


@pytest.fixture(scope="module")
def finetune_run(pretrain_run, expression_shards):
    out = pretrain_run.parent / "affectnet"
    run_stage("finetune_affectnet/main.py", f"model.encoder={pretrain_run / 'export' / 'encoder'}",
              f"data.shards={expression_shards}", "model.hidden_dim=16", "model.drop_path=0.0", "data.batch_size=16",
              "data.eval_batch_size=20", "data.num_workers=0", "data.shuffle_buffer=16", "data.auto_augment=null",
              "data.reprob=0.0", "data.mixup=0.0", "data.cutmix=0.0", "optim.lr=3e-3", "optim.warmup_steps=1",
              "layer_decay=1.0", "ema_decay=null", "run.total_steps=4", "eval.every=2", f"run.output_dir={out}",
              *COMMON)
    return out


DIMS = {"visual": 8, "audio": 4, "text": 4}
SMALL = ("model.overrides={gru_hidden: 8, tcn_channels: [8], audio_heads: 2, audio_ff: 16, text_channels: 8, "
         "text_heads: 2, text_ff: 16, fusion_hidden: 8}")


@pytest.fixture(scope="module")
def store(finetune_run):
    """16 train, 8 val, 4 test videos; the visual features name the stage-2 encoder as their source."""
    root = finetune_run.parent / "features"
    rng, fs, entries = np.random.default_rng(0), FeatureStore(root), []
    for split, n in (("train", 16), ("val", 8), ("test", 4)):
        for _ in range(n):
            file_id = f"{len(entries):05d}"
            for step, dim in DIMS.items():
                source = str(finetune_run / "best" / "encoder") if step == "visual" else f"tiny-{step}"
                features = torch.tensor(rng.normal(size=(int(rng.integers(3, 9)), dim)), dtype=torch.float32)
                fs.save(step, file_id, features, status="ok", source=source, fingerprint=f"{step}-fp")
            labels = None if split == "test" else [round(float(x), 4) for x in rng.uniform(size=7)]
            entries.append(VideoEntry(file_id, split, labels, "30", "Nowhere", None, None))
    write_table(entries, fs.table)
    # stage 3a's record of the store, over a stand-in raw folder (the record hashes its table)
    raw = root.parent / "hume"
    raw.mkdir()
    (raw / "data_info.csv").write_text("File_ID,Split\n")
    write_store_record(ExtractConfig(data=str(raw), store=str(root)), fs)
    return root


def eri(store, out, *extra):
    run_stage("eri_downstream/train.py", f"data.store={store}", f"run.output_dir={out}", SMALL, "data.k=4",
              "data.batch_size=8", "data.num_workers=0", "epochs=2", "ema_decay=0.9", *COMMON, *extra)
    return out


@pytest.fixture(scope="module")
def eri_run(store):
    return eri(store, store.parent / "eri")


@pytest.fixture(scope="module")
def eri_cv_run(store):
    return eri(store, store.parent / "eri_cv", "folds=2", "epochs=1")


def test_stage1_publishes_the_encoder_in_timm_layout(pretrain_run, shards, tmp_path, capsys):
    import timm
    out = tmp_path / "mae"
    printed = publish(pretrain_run, out, capsys=capsys)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert "dry run: nothing uploaded" in printed and "model.safetensors" in printed
    published = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    own = timm.create_model(f"local-dir:{pretrain_run / 'export' / 'encoder'}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(published.forward_features(x), own.forward_features(x))
    assert published.pretrained_cfg["mean"] == own.pretrained_cfg["mean"]

    data = card(out).data
    losses = [m["loss"] for _, m in sorted(metrics(pretrain_run).items())]
    assert metric(data, "final training loss") == losses[-1] and metric(data, "lowest training loss") == min(losses)
    assert data.license == "cc-by-nc-4.0" and data.library_name == "timm" and data.base_model is None
    assert data.datasets == ["casia-webface", "celeba"]  # in the order of run.json (sorted keys)
    text = card(out).text
    splits = {name: json.loads((shards[name] / "manifest.json").read_text())["splits"] for name in ("celeba", "casia")}
    samples = {name: sum(s["samples"] for s in split.values() if not s["holdout"]) for name, split in splits.items()}
    assert "| celeba | CelebA | 75.0 % of the samples" in text and "| casia | CASIA-WebFace | 25.0 % of the samples" in text
    assert f"| {samples['casia']:,} |" in text and "non-commercial research use only" in text
    assert "<details>" in text and "mae_vit_test" in text


def test_stage2_publishes_the_best_encoder_and_a_loadable_head(finetune_run, pretrain_run, tmp_path, capsys):
    import timm
    from finetune_affectnet.model import load_classifier
    from shared.encoders import load_frozen_encoder
    out = tmp_path / "affectnet"
    publish(finetune_run, out, "--license", "cc-by-nc-sa-4.0", capsys=capsys)
    weights = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.safetensors"))
    assert weights == ["expression_head/head.safetensors", "model.safetensors"]  # one weight file at the root
    x = torch.randn(3, 3, 32, 32)
    best = load_classifier(finetune_run / "best")
    encoder = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    whole = load_classifier(out)
    frozen, _ = load_frozen_encoder(out)  # what stage 3 extracts features with
    with torch.no_grad():
        assert torch.equal(encoder(x), best.features(x)) and torch.equal(frozen(x), best.features(x))
        assert torch.equal(whole(x), best(x))
    assert whole.class_names == best.class_names and len(whole.class_names) == 8

    report = json.loads((finetune_run / "best" / "report.json").read_text())
    data = card(out).data
    assert metric(data, "top-1 accuracy") == report["top1"]
    assert metric(data, "balanced accuracy") == report["balanced_accuracy"]
    assert metric(data, "macro-F1") == report["macro_f1"]
    assert data.license == "cc-by-nc-sa-4.0" and data.library_name == "timm"
    assert data.datasets == ["affectnet", "casia-webface", "celeba"]  # its own, then the stage-1 run's
    text = card(out).text
    assert f"| anger | {report['per_class']['anger']['precision']:.4f} |" in text
    assert f"`{pretrain_run.name}` (stage 1, MAE pretraining)" in text  # the lineage, traced
    assert "| affectnet train | AffectNet | training (" in text and "| 100 |" in text and "| 40 |" in text  # manifest counts
    assert "no redistribution of the images" in text and (out / "confusion_matrix.png").is_file()

    final = tmp_path / "final"
    publish(finetune_run, final, "--weights", "final", "--base-model", "me/mae-faces", capsys=capsys)
    at_end = load_classifier(finetune_run / "export")
    with torch.no_grad():
        assert torch.equal(load_classifier(final)(x), at_end(x))
    report = json.loads((finetune_run / "eval" / "step_00000004" / "model" / "report.json").read_text())
    assert metric(card(final).data, "balanced accuracy") == report["balanced_accuracy"]
    assert card(final).data.base_model == "me/mae-faces"


def eri_batch(config: dict) -> dict:
    """Three padded videos: every step real, some padding, one real step."""
    g = torch.Generator().manual_seed(0)
    batch = {}
    for m in config["modalities"]:
        steps = config["frames_per_video"] if m == "visual" else 7
        batch[m] = torch.randn(3, steps, config["inputs"][m]["dim"], generator=g)
        batch[f"{m}_mask"] = torch.arange(steps) < torch.tensor([[steps], [steps - 2], [1]])
    return batch


def test_stage3b_publishes_the_eri_model(eri_run, finetune_run, tmp_path, capsys):
    from eri_downstream.model import ERIModel, ERIModelConfig, load_eri_model
    out = tmp_path / "eri"
    publish(eri_run, out, capsys=capsys)
    config = json.loads((out / "config.json").read_text())
    assert config["emotions"] == EMOTIONS and config["modalities"] == ["visual", "audio", "text"]
    assert {m: v["dim"] for m, v in config["inputs"].items()} == DIMS
    assert config["inputs"]["visual"]["source"] == "../affectnet/best/encoder"  # from the run folder, no machine path
    assert config["inputs"]["audio"]["fingerprint"] == "audio-fp" and config["frames_per_video"] == 4

    published = load_eri_model(out)
    own = ERIModel(ERIModelConfig(num_frames=4, gru_hidden=8, tcn_channels=[8], audio_heads=2, audio_ff=16,
                                  text_channels=8, text_heads=2, text_ff=16, fusion_hidden=8,
                                  **{f"{m}_dim": d for m, d in DIMS.items()}))
    own.load_state_dict(load_file(eri_run / "best.safetensors"))
    batch = eri_batch(config)
    with torch.no_grad():
        assert torch.equal(published(batch), own.eval()(batch))

    report = json.loads((eri_run / "report.json").read_text())
    data = card(out).data
    assert metric(data, "mean Pearson r") == report["mean"]
    assert all(metric(data, f"Pearson r, {e}") == r for e, r in report["per_emotion"].items())
    assert data.license == "cc-by-nc-4.0" and data.library_name == "pytorch"
    # the videos as stage 3a recorded them, then the visual encoder's lineage
    assert data.datasets == ["hume-reaction", "affectnet", "casia-webface", "celeba"]
    assert "| videos train | Hume-Reaction (ABAW5 / MuSe 2022) | training | 16 |" in card(out).text
    assert "`features` (stage 3a, feature extraction (the feature store))" in card(out).text
    assert "research use only" in card(out).text and f"| **mean** | **{report['mean']:.4f}** |" in card(out).text


def test_stage3b_cross_validation_publishes_one_fold_with_the_cv_table(eri_cv_run, tmp_path, capsys):
    from eri_downstream.model import load_eri_model
    out = tmp_path / "eri_cv"
    publish(eri_cv_run, out, "--fold", "1", capsys=capsys)
    weights = load_file(eri_cv_run / "fold_1" / "best.safetensors")
    assert all(torch.equal(v, weights[k]) for k, v in load_eri_model(out).state_dict().items())
    cv = json.loads((eri_cv_run / "cv_results.json").read_text())
    fold = json.loads((eri_cv_run / "fold_1" / "report.json").read_text())
    published = card(out)
    assert metric(published.data, "mean Pearson r") == fold["mean"]
    assert f"| 1 (this model) | {cv['folds'][1]:.4f} |" in published.text
    assert f"{cv['out_of_fold']:.4f}" in published.text


def test_no_published_file_or_record_names_a_folder_of_this_machine(pretrain_run, finetune_run, store, eri_run,
                                                                   eri_cv_run, tmp_path, capsys):
    runs = {"mae": (pretrain_run,), "best": (finetune_run,), "final": (finetune_run, "--weights", "final"),
            "eri": (eri_run,), "eri_cv": (eri_cv_run, "--fold", "0")}
    for name, (run, *extra) in runs.items():
        publish(run, tmp_path / name, *extra, capsys=capsys)
    machine = [str(tmp_path), str(pretrain_run.parent)]  # where these runs and folders lie
    published = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(published) >= 15
    for path in published + [run / "run.json" for run in (pretrain_run, finetune_run, store, eri_run, eri_cv_run)]:
        data = path.read_bytes()  # safetensors headers are JSON text too
        assert not any(m.encode() in data for m in machine), path


def test_run_json_declares_the_files_and_is_the_same_for_the_same_run(pretrain_run, finetune_run, store, eri_run):
    from shared.provenance import sha256_file
    from shared.run_record import read_run_record
    for run in (pretrain_run, finetune_run, store, eri_run):
        record = read_run_record(run)
        files = list(record["outputs"]["files"].values())
        files += [f for w in record["outputs"]["weights"].values() for f in w["files"].values()]
        assert files and all((run / f["path"]).exists() for f in files), run
    assert [read_run_record(r)["stage"]["number"] for r in (pretrain_run, finetune_run, store, eri_run)] == [
        "1", "2", "3a", "3b"]
    fine = read_run_record(finetune_run)
    assert fine["inputs"]["encoder"] == {"kind": "encoder folder", "path": "../mae/export/encoder", "run": "../mae",
                                         "sha256": {"config.json": sha256_file(pretrain_run / "export/encoder/config.json")}}
    assert fine["config"]["run"]["output_dir"] == "." and fine["outputs"]["default"] == "best"
    assert fine["metrics"]["best"]["top1"] == json.loads((finetune_run / "best/report.json").read_text())["top1"]
    again = eri(store, store.parent / "eri_again")  # the same run once more, in another folder
    assert (again / "run.json").read_bytes() == (eri_run / "run.json").read_bytes()


def test_a_run_on_synthetic_data_says_so_and_claims_no_dataset(tmp_path, capsys):
    run = tmp_path / "mae_synthetic"
    run_stage("pretrain_mae/main.py", "model.name=mae_vit_test", "data.synthetic=true", "data.batch_size=4",
              "data.num_workers=0", "run.total_steps=2", "figures.every=0", f"run.output_dir={run}", *COMMON)
    publish(run, tmp_path / "out", capsys=capsys)
    published = card(tmp_path / "out")
    assert published.data.datasets is None and "synthetic-data" in published.data.tags
    assert "**Trained on synthetic data.**" in published.text and "no dataset's terms bind them" in published.text
    assert {r.dataset_name for r in published.data.eval_results} == {"built-in synthetic data"}


def test_upload_creates_the_repository_and_uploads_the_folder(pretrain_run, tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi
    calls = []

    def record(name, result=None):
        def call(self, repo_id, **kw):
            calls.append((name, repo_id, kw))
            return result
        return call
    monkeypatch.setattr(HfApi, "create_repo", record("create_repo"))
    monkeypatch.setattr(HfApi, "create_branch", record("create_branch"))
    # upload_folder takes keywords only; `repo_id=` binds to `call`'s parameter all the same
    monkeypatch.setattr(HfApi, "upload_folder", record("upload_folder", "https://huggingface.co/me/mae-faces/commit/0"))
    out = tmp_path / "mae"
    printed = publish(pretrain_run, out, "--repo-id", "me/mae-faces", "--private", "--revision", "v1",
                      "--commit-message", "first", capsys=capsys)
    assert [c[:2] for c in calls] == [("create_repo", "me/mae-faces"), ("create_branch", "me/mae-faces"),
                                      ("upload_folder", "me/mae-faces")]
    assert calls[0][2]["exist_ok"] is True and calls[0][2]["private"] is True
    assert calls[1][2]["branch"] == "v1"
    upload = calls[2][2]
    assert upload["folder_path"] == str(out) and upload["revision"] == "v1" and upload["commit_message"] == "first"
    assert "uploaded to https://huggingface.co/me/mae-faces" in printed
    published = card(out)
    assert 'timm.create_model("hf-hub:me/mae-faces", pretrained=True)' in published.text
    assert published.data.model_name == "mae-faces"

    def offline(self, repo_id, **kw):
        raise ConnectionError("Name or service not known")
    monkeypatch.setattr(HfApi, "create_repo", offline)
    status = run_cli(cli.main, [str(pretrain_run), "--out", str(tmp_path / "again"), "--repo-id", "me/mae-faces"])
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(error) == 1 and f"hf upload me/mae-faces {tmp_path / 'again'}" in error[0], error
    assert (tmp_path / "again" / "model.safetensors").is_file()  # the folder is kept for the retry


def command(*args):
    return subprocess.run([sys.executable, "-m", "affect_publish", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def one_line(proc, status: int, *words: str) -> None:
    assert proc.returncode == status, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert all(w in lines[0] for w in words), lines[0]


def test_errors_are_one_line_with_the_fix(pretrain_run, store, eri_run, tmp_path, capsys):
    one_line(command(tmp_path / "missing", "--out", tmp_path / "o"), 2, "no such folder")
    (tmp_path / "plain").mkdir()
    one_line(command(tmp_path / "plain", "--out", tmp_path / "o"), 2, "no run.json", "--resume auto")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(pretrain_run / "config.yaml", unfinished / "config.yaml")  # started, never finished
    one_line(command(unfinished, "--out", tmp_path / "o"), 2, "no run.json", "when its run finishes")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    one_line(command(pretrain_run, "--out", tmp_path / "taken"), 2, "not empty", "--overwrite")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    one_line(command(pretrain_run, "--out", pretrain_run / "hub"), 2, "overlaps the run folder")
    one_line(command(pretrain_run, "--out", tmp_path / "o", "--private"), 2, "--private", "add --repo-id")
    one_line(command(pretrain_run, "--out", tmp_path / "o", "--weights", "best"), 2, "has the weights final")
    one_line(command(eri_run, "--out", tmp_path / "o", "--fold", "1"), 2, "--fold 1", "has the weights best")
    one_line(command(store, "--out", tmp_path / "o"), 2, "stage 3a", "publishes no weights", "stage-3b run")

    # a declared file gone: the record and the folder disagree
    gone = tmp_path / "gone"
    shutil.copytree(eri_run, gone, ignore=shutil.ignore_patterns("checkpoints", "*.png"))
    (gone / "model" / "model.safetensors").unlink()
    one_line(command(gone, "--out", tmp_path / "o"), 2, "declared by", "incomplete")
    # a declared file that does not read: a runtime failure, status 1
    broken = tmp_path / "broken"
    shutil.copytree(eri_run, broken, ignore=shutil.ignore_patterns("checkpoints", "*.png"))
    (broken / "model" / "config.json").write_text("{")
    one_line(command(broken, "--out", tmp_path / "o"), 1, "JSONDecodeError")
    assert not (tmp_path / "o").exists() and not (tmp_path / ".o.partial").exists()  # nothing half-written
    assert run_cli(cli.main, [str(broken), "--out", str(tmp_path / "o"), "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err

    publish(pretrain_run, tmp_path / "taken", "--overwrite", capsys=capsys)
    assert not (tmp_path / "taken" / "notes.txt").exists() and (tmp_path / "taken" / "README.md").is_file()


def test_a_folder_in_a_run_or_holding_runs_names_the_run_to_publish(pretrain_run, finetune_run, eri_run, eri_cv_run,
                                                                      tmp_path, capsys):
    def line(folder):
        assert run_cli(cli.main, [str(folder), "--out", str(tmp_path / "o")], prog="affect-publish") == 2
        return capsys.readouterr().err.strip()
    assert line(finetune_run / "best") == (f"affect-publish: error: {finetune_run / 'best'} is part of the run "
                                           f"{finetune_run}; publish the run: affect-publish {finetune_run} --out FOLDER")
    assert f"affect-publish {finetune_run} --weights final --out" in line(finetune_run / "export" / "encoder")
    assert f"affect-publish {eri_cv_run} --fold 1 --out" in line(eri_cv_run / "fold_1")
    assert f"affect-publish {pretrain_run} --out" in line(pretrain_run / "export")  # its only weights: no option
    state = next((pretrain_run / "checkpoints").iterdir())
    assert f"is part of the run {pretrain_run}; publish the run" in line(state)
    held = line(pretrain_run.parent)  # a folder of runs, as the demo's output folder is
    assert re.search(r"holds \d+ runs \(affectnet, eri, .*mae\); publish one of them, e.g. affect-publish "
                     + re.escape(f"{pretrain_run.parent / 'affectnet'} --out"), held) and "features" not in held, held
    assert line(pretrain_run / "run.json").endswith("run.json is a file; give the run folder it is in (a stage's run.output_dir)")
    published = tmp_path / "published"
    publish(pretrain_run, published / "mae", capsys=capsys)
    assert "is a published folder (what affect-publish writes), not a run" in line(published / "mae")
    assert "holds published folders (what affect-publish writes), not runs" in line(published)
    assert not (tmp_path / "o").exists()


def test_the_dry_run_says_how_to_upload_the_same_folder(eri_cv_run, tmp_path, capsys):
    printed = publish(eri_cv_run, tmp_path / "o", "--fold", "1", "--license", "Apache-2.0", capsys=capsys)
    assert (f"affect-publish {eri_cv_run} --out {tmp_path / 'o'} --overwrite --fold 1 --license apache-2.0 "
            "--repo-id USER/NAME") in printed
    assert card(tmp_path / "o").data.license == "apache-2.0"  # as the Hub lists it
    assert run_cli(cli.main, [str(eri_cv_run), "--out", str(tmp_path / "p"), "--license", "mit OR apache-2.0"]) == 2
    assert "--license 'mit OR apache-2.0': not a licence identifier the Hub lists" in capsys.readouterr().err
