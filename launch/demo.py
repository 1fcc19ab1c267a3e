"""The whole lineage on the built-in synthetic data, each stage run as a user runs it.

    bash launch/demo.sh [--out runs/demo] [--quick]

1. built-in raw datasets (AffectNet, CelebA, CASIA-WebFace layouts; Hume-Reaction videos)
   converted with `face-shards` (the stages find them without data arguments);
2. `accelerate launch pretrain_mae/main.py`: a tiny MAE on the pretraining mixture;
3. `accelerate launch finetune_affectnet/main.py`: that encoder fine-tuned on 8 expressions;
4. `accelerate launch eri_downstream/extract.py all`: faces, frozen-encoder, audio, text features;
5. `accelerate launch eri_downstream/train.py`: the multimodal ERI model;
6. `affect-publish` for each stage, and every published folder loaded back.

Ends with `<out>/SUMMARY.md`: the MAE loss curve and reconstructions, fine-tuning accuracy and
confusion matrix, the ERI per-emotion Pearson table, and where the published folders are.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared import builtin_data  # noqa: E402
from shared.errors import RunError, run_cli  # noqa: E402
from shared.plots import learning_curves  # noqa: E402
from shared.training.loop import read_metrics  # noqa: E402

CONFIGS = {"pretrain": "pretrain_mae/configs/demo_cpu.yaml", "finetune": "finetune_affectnet/configs/demo_cpu.yaml",
           "eri": "eri_downstream/configs/demo_cpu.yaml"}
# --quick: the same path with fewer steps, for a smoke test
QUICK = {"pretrain": ["run.total_steps=40", "figures.every=40", "run.save_every=40"],
         "finetune": ["run.total_steps=40", "eval.every=40", "run.save_every=40"],
         "eri": ["epochs=4"]}


class Lineage:
    def __init__(self, out: Path, quick: bool):
        self.out, self.quick = out, quick
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.times: dict[str, float] = {}
        self.started = time.time()

    def run(self, name: str, title: str, cmd: list[str]) -> None:
        """One step as a subprocess, its output in logs/<name>.log; one line on the console."""
        print(f"[{len(self.times) + 1}] {title} ...", end=" ", flush=True)
        t0 = time.time()
        with open(self.logs / f"{name}.log", "w") as log:
            proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.times[name] = time.time() - t0
        if proc.returncode != 0:
            print("failed")
            tail = (self.logs / f"{name}.log").read_text().splitlines()[-15:]
            print("\n".join(tail), file=sys.stderr)
            raise RunError(f"{title} failed (exit {proc.returncode}); full log: {self.logs / f'{name}.log'}")
        print(f"done in {self.times[name]:.0f} s")

    def stage(self, name: str, title: str, script: str, *args: str) -> None:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
                  "--mixed_precision", "no", "--dynamo_backend", "no", script]
        self.run(name, title, launch + list(args))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="where everything goes (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="fewer steps: a smoke test of the whole path")
    p.add_argument("--debug", action="store_true", help="tracebacks on errors")
    args = p.parse_args(argv)
    out = args.out.resolve()
    demo = Lineage(out, args.quick)
    quick = QUICK if args.quick else {k: [] for k in QUICK}
    data = out / "data"

    demo.run("data", "built-in datasets and face shards",
             [sys.executable, "-m", "shared.builtin_data", "all", "--root", str(data)]
             + (["--quick"] if args.quick else []))
    os.environ[builtin_data.ROOT_ENV] = str(data)  # the stages below find the built-in data here

    runs = {k: out / k for k in ("pretrain", "finetune", "eri")}
    demo.stage("pretrain", "stage 1: MAE pretraining", "pretrain_mae/main.py", "--config", CONFIGS["pretrain"],
               f"run.output_dir={runs['pretrain']}", *quick["pretrain"])
    demo.stage("finetune", "stage 2: expression fine-tuning", "finetune_affectnet/main.py", "--config",
               CONFIGS["finetune"], f"model.encoder={runs['pretrain'] / 'export' / 'encoder'}",
               f"run.output_dir={runs['finetune']}", *quick["finetune"])
    # no --data / --store / data.store: the built-in videos, and their feature store beside them
    demo.stage("extract", "stage 3a: faces, visual, audio and text features", "eri_downstream/extract.py", "all",
               "--encoder", str(runs["finetune"] / "best" / "encoder"), "--size", "64")
    demo.stage("eri", "stage 3b: ERI model", "eri_downstream/train.py", "--config", CONFIGS["eri"],
               f"run.output_dir={runs['eri']}", *quick["eri"])
    published = out / "published"
    for name in runs:
        demo.run(f"publish_{name}", f"publish {name}", [sys.executable, "-m", "shared.publish", str(runs[name]),
                                                          "--out", str(published / name), "--overwrite"])
    print()
    print(write_summary(out, runs, published, demo))
    print(f"summary: {out / 'SUMMARY.md'}")
    return 0


def loaded_back(published: Path) -> dict[str, str]:
    """Every published folder loaded the way its card says: timm for encoders, the project's
    loader for the ERI model; name -> what was loaded."""
    import timm
    import torch
    from eri_downstream.model import load_eri_model
    result = {}
    for folder in sorted(p for p in published.iterdir() if p.is_dir()):
        if (folder / "config.json").is_file() and "architecture" in json.loads((folder / "config.json").read_text()):
            model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
            size = model.pretrained_cfg["input_size"]
            with torch.no_grad():
                features = model(torch.zeros(1, *size))
            result[folder.name] = f"timm `local-dir:` {type(model).__name__}, {tuple(size)} -> {tuple(features.shape)}"
        else:
            model = load_eri_model(folder)
            result[folder.name] = f"`load_eri_model`: {type(model).__name__} over {', '.join(model.config.modalities)}"
    return result


def write_summary(out: Path, runs: dict[str, Path], published: Path, demo: Lineage) -> str:
    figures = out / "summary"
    figures.mkdir(exist_ok=True)
    mae = read_metrics(runs["pretrain"] / "metrics.jsonl")
    learning_curves(mae, ["loss"], figures / "mae_loss.png", title="stage 1: MAE reconstruction loss")
    first, last = (sum(r["loss"] for r in rows) / len(rows) for rows in (mae[:3], mae[-3:]))
    reconstructions = sorted((runs["pretrain"] / "figures").glob("reconstruction_*.png"))
    fine = json.loads((runs["finetune"] / "best" / "report.json").read_text())
    classes = len(fine["class_names"])
    eri = json.loads((runs["eri"] / "report.json").read_text())
    table = (runs["eri"] / "per_emotion.md").read_text().strip()
    lines = [
        "# The demo lineage on built-in synthetic data", "",
        f"Total {time.time() - demo.started:.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in demo.times.items()) + ".",
        "", "## Stage 1: MAE pretraining", "",
        f"Loss (normalised-pixel MSE on masked patches) from {first:.3f} (first logged steps) to {last:.3f} (last), "
        f"over {mae[-1]['step']} steps.", "",
        f"![MAE loss]({(figures / 'mae_loss.png').relative_to(out)})",
    ]
    if reconstructions:
        lines += ["", f"![reconstructions]({reconstructions[-1].relative_to(out)})"]
    lines += [
        "", "## Stage 2: expression fine-tuning", "",
        f"Validation ({fine['samples']} faces, {classes} classes, chance {1 / classes:.3f}): top-1 {fine['top1']:.3f}, "
        f"balanced accuracy {fine['balanced_accuracy']:.3f}, macro-F1 {fine['macro_f1']:.3f} (best step {fine['step']}).",
        "", f"![confusion matrix]({(runs['finetune'] / 'best' / 'confusion_matrix.png').relative_to(out)})",
        "", "## Stage 3: emotion reaction intensity", "",
        f"Validation ({eri['videos']} videos): mean Pearson {eri['mean']:.3f} (0 for a model that learned nothing).",
        "", table, "",
        f"![per-emotion Pearson]({(runs['eri'] / 'per_emotion_pearson.png').relative_to(out)})",
        "", "## Published folders (loaded back)", "",
    ]
    lines += [f"- `{published / name}`: {what}" for name, what in loaded_back(published).items()]
    text = "\n".join(lines) + "\n"
    (out / "SUMMARY.md").write_text(text)
    return text


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
