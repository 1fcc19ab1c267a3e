"""The whole lineage on the built-in synthetic data, each stage run as a user runs it.

    bash launch/demo.sh [--out runs/demo] [--quick] [--progress-every SECONDS] [--cpu-torch]

1. built-in raw datasets (AffectNet, CelebA, CASIA-WebFace layouts; Hume-Reaction videos)
   converted with `face-shards` (the stages find them without data arguments);
2. `accelerate launch pretrain_mae/main.py`: a tiny MAE on the pretraining mixture;
3. `accelerate launch finetune_affectnet/main.py`: that encoder fine-tuned on 8 expressions;
4. `accelerate launch eri_downstream/extract.py all`: faces, frozen-encoder, audio, text features;
5. `accelerate launch eri_downstream/train.py`: the multimodal ERI model;
6. `affect-publish` for each stage, and every published folder loaded back.

The console gets one line per step as it starts (with its log file: every step's full output
goes to `<out>/logs/<step>.log`) and as it ends (its time and headline figure), and between the
two a progress line read from the log (the newest progress bar: step N/M and loss, or log line,
and the time so far): redrawn in place on a terminal, a new line every 30 s elsewhere.

Ends with `<out>/SUMMARY.md`: the MAE loss curve and reconstructions, fine-tuning accuracy and
confusion matrix, the ERI per-emotion Pearson table and learning curves, and where the
published folders are.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared import builtin_data  # noqa: E402
from shared.errors import RunError, run_cli  # noqa: E402
from shared.progress import Progress, duration  # noqa: E402

import demo_summary as headlines  # noqa: E402  (launch/, this script's folder)
from demo_summary import write_summary  # noqa: E402

CONFIGS = {"pretrain": "pretrain_mae/configs/demo_cpu.yaml", "finetune": "finetune_affectnet/configs/demo_cpu.yaml",
           "extract": "eri_downstream/configs/extract_demo_cpu.yaml", "eri": "eri_downstream/configs/demo_cpu.yaml"}
# --quick: the same path with fewer steps, for a smoke test
QUICK = {"pretrain": ["run.total_steps=40", "figures.every=40", "run.save_every=40"],
         "finetune": ["run.total_steps=40", "eval.every=40", "run.save_every=40"],
         "eri": ["epochs=4"]}


class Lineage:
    """The steps of the demo: each one a subprocess whose output goes to logs/<name>.log, with a
    line on the console as it starts and as it ends (its time and headline figure) and a live
    progress line in between."""

    def __init__(self, out: Path, quick: bool, steps: int, every: float):
        self.out, self.quick, self.steps, self.every = out, quick, steps, every
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.times: dict[str, float] = {}
        self.started = time.time()

    def run(self, name: str, title: str, cmd: list[str], headline=None) -> None:
        """One step; `headline()` gives its figure once it has ended (None: none)."""
        n = f"[{len(self.times) + 1}/{self.steps}]"
        log_path = self.logs / f"{name}.log"
        print(f"{n} {title}: started {time.strftime('%H:%M:%S')} (log: {log_path})", flush=True)
        t0 = time.time()
        with open(log_path, "w") as log, Progress(log_path, every=self.every) as progress:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
            while proc.poll() is None:
                progress.show()
                time.sleep(1)
        self.times[name] = time.time() - t0
        if proc.returncode != 0:
            print(f"{n} {title}: failed after {duration(self.times[name])}; the end of its log:", flush=True)
            tail = log_path.read_text().splitlines()[-15:]
            print("\n".join(tail), file=sys.stderr)
            raise RunError(f"{title} failed (exit {proc.returncode}); full log: {log_path}")
        figure = f": {headline()}" if headline else ""
        print(f"{n} {title}: done in {duration(self.times[name])}{figure}", flush=True)

    def stage(self, name: str, title: str, script: str, *args: str, headline=None) -> None:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
                  "--mixed_precision", "no", "--dynamo_backend", "no", script]
        self.run(name, title, launch + list(args), headline)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="where everything goes (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="fewer steps: a smoke test of the whole path")
    p.add_argument("--progress-every", type=float, default=30.0, metavar="SECONDS",
                   help="off a terminal, a progress line every SECONDS (default %(default)s; on one: in place)")
    p.add_argument("--task", choices=["eri", "emi"], default="eri", help="stage 3's task: eri (7 emotions, "
                   "Hume-Reaction layout) or emi (6, Hume-Vidmimic2 layout) (default %(default)s)")
    p.add_argument("--debug", action="store_true", help="tracebacks on errors")
    args = p.parse_args(argv)
    out = args.out.resolve()
    runs = {k: out / k for k in ("pretrain", "finetune", "eri")}
    demo = Lineage(out, args.quick, steps=5 + len(runs), every=args.progress_every)
    quick = QUICK if args.quick else {k: [] for k in QUICK}
    data = out / "data"
    print(f"demo: the whole lineage on built-in data into {out}; each step's full output goes to {demo.logs}",
          flush=True)

    demo.run("data", "built-in datasets and face shards",
             [sys.executable, "-m", "shared.builtin_data", "all", "--root", str(data), "--task", args.task]
             + (["--quick"] if args.quick else []), headline=lambda: headlines.data(data))
    afterwards = where_the_data_is(data)  # as the stages will look for it later, without the variable set below
    os.environ[builtin_data.ROOT_ENV] = str(data)  # the stages below find the built-in data here

    demo.stage("pretrain", "stage 1: MAE pretraining", "pretrain_mae/main.py", "--config", CONFIGS["pretrain"],
               f"run.output_dir={runs['pretrain']}", *quick["pretrain"],
               headline=lambda: headlines.pretrain(runs["pretrain"]))
    demo.stage("finetune", "stage 2: expression fine-tuning", "finetune_affectnet/main.py", "--config",
               CONFIGS["finetune"], f"model.encoder={runs['pretrain'] / 'export' / 'encoder'}",
               f"run.output_dir={runs['finetune']}", *quick["finetune"],
               headline=lambda: headlines.finetune(runs["finetune"]))
    # no data / store / data.store: the built-in videos, and their feature store beside them; faces
    # cropped as the face shards were, so the encoder sees them as in its stage-2 evaluation
    demo.stage("extract", "stage 3a: faces, visual, audio and text features", "eri_downstream/extract.py", "all",
               "--config", CONFIGS["extract"], f"encoder={runs['finetune'] / 'best' / 'encoder'}",
               f"size={builtin_data.SHARD_SIZE}", f"task={args.task}",
               headline=lambda: headlines.store(data / builtin_data.FEATURES[args.task]))
    demo.stage("eri", f"stage 3b: {args.task.upper()} model", "eri_downstream/train.py", "--config", CONFIGS["eri"],
               f"run.output_dir={runs['eri']}", f"task={args.task}", *quick["eri"],
               headline=lambda: headlines.eri(runs["eri"]))
    published = out / "published"
    for name in runs:
        demo.run(f"publish_{name}", f"publish {name}", [sys.executable, "-m", "affect_publish", str(runs[name]),
                                                          "--out", str(published / name), "--overwrite"],
                 headline=lambda folder=published / name: headlines.folder(folder))
    print()
    print(write_summary(out, runs, published, demo.times, demo.started))
    print(f"summary: {out / 'SUMMARY.md'}")
    print(afterwards)
    return 0


def where_the_data_is(data: Path) -> str:
    """How the stages, started later without data arguments, find this demo's data."""
    if any(data == place for place in builtin_data.places()):
        return f"data: {data}; the stages find it when started without data arguments"
    return (f"data: {data}; for the stages to use it when started without data arguments: "
            f"export {builtin_data.ROOT_ENV}={data}")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
