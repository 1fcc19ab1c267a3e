"""What the demo (launch/demo.py) says about each step as it ends, and its SUMMARY.md: every
number read from the runs' own files and labelled with what it is."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import yaml

from shared import builtin_data
from shared.atomic import write_text
from shared.plots import learning_curves
from shared.progress import duration
from shared.training.loop import read_metrics


def data(root: Path) -> str:
    """The built-in data: faces per source and reaction videos."""
    faces = {}
    for manifest in sorted((root / "shards").glob("*/manifest.json")):
        splits = json.loads(manifest.read_text())["splits"]
        faces[manifest.parent.name] = sum(split["samples"] for split in splits.values())
    videos = {task: len(list((root / folder).rglob("*.mp4"))) for task, folder in builtin_data.REACTIONS.items()}
    return (f"{sum(faces.values())} faces ({', '.join(f'{k} {v}' for k, v in faces.items())}), "
            + ", ".join(f"{n} {task.upper()} reaction videos" for task, n in videos.items() if n)
            or "no reaction videos")


def mae_losses(run: Path) -> dict:
    """Stage 1's training loss as logged: each row the mean over one log interval."""
    rows = read_metrics(run / "metrics.jsonl")
    lowest = min(rows, key=lambda r: r["loss"])
    every = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("run", {}).get("log_every")
    return {"first": rows[0], "last": rows[-1], "lowest": lowest, "every": every, "rows": rows}


def pretrain(run: Path) -> str:
    loss = mae_losses(run)
    return (f"training loss {loss['first']['loss']:.3f} at step {loss['first']['step']} -> "
            f"{loss['last']['loss']:.3f} at step {loss['last']['step']}")


def finetune(run: Path) -> str:
    report = json.loads((run / "best" / "report.json").read_text())
    return (f"validation top-1 {report['top1']:.3f}, balanced accuracy {report['balanced_accuracy']:.3f} "
            f"on {report['samples']} faces (chance {1 / len(report['class_names']):.3f}), best at step {report['step']}")


def store(folder: Path) -> str:
    counts = {m: len(list((folder / m).glob("*.safetensors"))) for m in ("visual", "audio", "text")}
    failures = {p.name.split("_failures")[0]: max(0, len(p.read_text().splitlines()) - 1)
                for p in sorted(folder.glob("*_failures.csv"))}
    failed = ", ".join(f"{k} {v}" for k, v in failures.items() if v) or "none"
    return f"features of {', '.join(f'{v} videos ({k})' for k, v in counts.items())}; failures: {failed}"


def eri(run: Path) -> str:
    report = json.loads((run / "report.json").read_text())
    return (f"validation mean Pearson {report['mean']:.3f} on {report['videos']} videos "
            f"(the model of epoch {report['best_epoch']})")


def folder(path: Path) -> str:
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return f"{path} ({size / 2**20:.1f} MiB)"


def environment() -> str:
    """What the numbers depend on beyond the code and the seed (README, "What is reproducible"):
    the torch build, the threads of each stage's process and the CPU."""
    import platform

    import torch
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine()) if Path("/proc/cpuinfo").is_file() else platform.machine()
    # accelerate launch gives each stage OMP_NUM_THREADS, or 1 thread when it is not set
    given = os.environ.get("OMP_NUM_THREADS")
    threads = (f"{given} thread(s) per stage (OMP_NUM_THREADS)" if given
               else "1 thread per stage (accelerate launch's default without OMP_NUM_THREADS)")
    return f"torch {torch.__version__}, {threads}, {cpu}, Python {platform.python_version()}"


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


def write_summary(out: Path, runs: dict[str, Path], published: Path, times: dict[str, float], started: float) -> str:
    figures = out / "summary"
    figures.mkdir(exist_ok=True)
    loss = mae_losses(runs["pretrain"])
    learning_curves(loss["rows"], ["loss"], figures / "mae_loss.png", title="stage 1: MAE training loss",
                    ylabel=f"loss (mean over each {loss['every']} steps)")
    reconstructions = sorted((runs["pretrain"] / "figures").glob("reconstruction_*.png"))
    fine = json.loads((runs["finetune"] / "best" / "report.json").read_text())
    classes = len(fine["class_names"])
    report = json.loads((runs["eri"] / "report.json").read_text())
    table = (runs["eri"] / "per_emotion.md").read_text().strip()
    epochs = len({json.loads(line)["epoch"] for line in (runs["eri"] / "validation.jsonl").read_text().splitlines()})
    lines = [
        "# The demo lineage on built-in synthetic data", "",
        f"Total {duration(time.time() - started)}: " + ", ".join(f"{k} {duration(v)}" for k, v in times.items()) + ".",
        "", f"Environment: {environment()}. The same numbers come back on the same CPU, threads and torch build; "
        "another CPU or thread count can move them (README, \"What is reproducible\").",
        "", "## Stage 1: MAE pretraining", "",
        f"Training loss, the mean squared error of the masked patches (per-patch normalised pixels), each value the "
        f"mean over one log interval of {loss['every']} steps: {loss['first']['loss']:.3f} at step "
        f"{loss['first']['step']} (the first logged), {loss['last']['loss']:.3f} at step {loss['last']['step']} "
        f"(the last: the card's final training loss), lowest {loss['lowest']['loss']:.3f} at step "
        f"{loss['lowest']['step']}.", "",
        f"![MAE loss]({(figures / 'mae_loss.png').relative_to(out)})",
    ]
    if reconstructions:
        lines += ["", f"![reconstructions]({reconstructions[-1].relative_to(out)})"]
    lines += [
        "", "## Stage 2: expression fine-tuning", "",
        f"Validation ({fine['samples']} faces, {classes} classes, chance {1 / classes:.3f}), the weights of step "
        f"{fine['step']} (best balanced accuracy): top-1 {fine['top1']:.3f}, balanced accuracy "
        f"{fine['balanced_accuracy']:.3f}, macro-F1 {fine['macro_f1']:.3f}.",
        "", f"![confusion matrix]({(runs['finetune'] / 'best' / 'confusion_matrix.png').relative_to(out)})",
        "", "## Stage 3: emotion intensity (the ERI or EMI task)", "",
        f"Validation ({report['videos']} videos), the model of epoch {report['best_epoch']} of {epochs} (best "
        f"validation mean Pearson): mean Pearson {report['mean']:.3f} (0 for a model that learned nothing).",
        "", table, "",
        f"![per-emotion Pearson]({(runs['eri'] / 'per_emotion_pearson.png').relative_to(out)})", "",
        f"![learning curves]({(runs['eri'] / 'learning_curves.png').relative_to(out)})",
        "", "## Published folders (loaded back)", "",
    ]
    lines += [f"- `{published / name}`: {what}" for name, what in loaded_back(published).items()]
    text = "\n".join(lines) + "\n"
    write_text(out / "SUMMARY.md", text)
    return text
