"""Run named configurations (the paper's Tables 2 and 4) and tabulate them beside the paper.

    python -m eri_downstream.grid data.store=features                      # every table config, in sequence
    python -m eri_downstream.grid --configs eri_downstream/configs/table2_*.yaml data.store=features
    python -m eri_downstream.grid --collect                                # just write the table
    python -m eri_downstream.grid --levers data.store=features             # the paper recipe and each lever
    sbatch --array=0-10 launch/slurm/eri_grid.sbatch data.store=features   # one config per array task

Writes `results.md` and `results.csv` (`levers.md` / `levers.csv` with --levers) beside the runs
(in `run.output_dir` when given, else the folder above the first configuration's own, runs/eri):
each configuration's validation mean Pearson (or out-of-fold mean with folds=N), the task it
served, the paper's development-set number where that is ERI (the paper reports no other task),
and what it changes from the paper's final model (paper_vat.yaml). A configuration that fails is
marked in the table, the others still run, and the grid exits with the first failure's status; a
preempted one (exit 75) stops the grid with 75, to be requeued. A run folder that holds a run of
other settings is neither resumed nor reported: its row says so. `--levers` runs the paper's
model and each lever of later winners (configs/levers/: Pearson-aware and CCC losses, modality
dropout, sentence text).
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from eri_downstream.config import ERIConfig
from shared import builtin_data
from shared.atomic import write_csv, write_text
from shared.config import flat, load_config, setting_changes, to_dict
from shared.errors import UserError, run_cli

CONFIG_DIR = Path(__file__).parent / "configs"
PAPER = yaml.safe_load((CONFIG_DIR / "paper_results.yaml").read_text())
TRAIN = Path(__file__).parent / "train.py"


def table_configs() -> list[Path]:
    return [CONFIG_DIR / f"{name}.yaml" for name in PAPER]


def lever_configs() -> list[Path]:
    """The paper's final model, then each lever (one switch changed)."""
    return [CONFIG_DIR / "paper_vat.yaml", *sorted((CONFIG_DIR / "levers").glob("*.yaml"))]


def resolved(config: Path, overrides: list[str]) -> dict:
    """`config` with `overrides` (run.* aside), as flat key -> value."""
    return flat(to_dict(load_config(ERIConfig, config, [o for o in overrides if not o.startswith("run.")])))


def changes(cfg: ERIConfig, paper: dict) -> str:
    """The keys whose resolved value differs from `paper` (paper_vat.yaml's, resolved) as key=value."""
    return ", ".join(f"{k}={v}" for k, v in sorted(flat(to_dict(cfg)).items())
                     if not k.startswith("run.") and paper.get(k) != v) or "none"


def output_dir(config: Path, overrides: list[str], cfg: ERIConfig | None = None) -> Path:
    """`config`'s run folder: <run.output_dir given>/<its file name>, else its own run.output_dir
    (through its base, if it names one; `cfg`: the configuration loaded already)."""
    for item in overrides:
        if item.startswith("run.output_dir="):
            return Path(item.split("=", 1)[1]) / config.stem
    return Path((cfg or load_config(ERIConfig, config, overrides)).run.output_dir)


def results_dir(configs: list[Path], overrides: list[str]) -> Path:
    """Where the table goes: beside the runs it tabulates (the first configuration that loads;
    runs/eri if none does)."""
    for config in configs:
        try:
            return output_dir(config, overrides).parent
        except UserError:
            continue
    return Path(ERIConfig().run.output_dir)


def other_settings(run_dir: Path, cfg: ERIConfig) -> list[str]:
    """How the run already in `run_dir` (its config.yaml) differs from `cfg` (a configuration with
    the grid's overrides), as "key: then -> now"; [] for an empty folder or the same settings."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return []
    now = to_dict(cfg)
    if not now["data"]["store"]:  # the built-in store, as train.py finds it and writes it down
        builtin, found = builtin_data.feature_store(now["task"])
        now["data"]["store"] = str(builtin) if found else ""
    return setting_changes(yaml.safe_load(saved.read_text()) or {}, now)


def score(run_dir: Path) -> tuple[float | None, str]:
    """A finished run's mean Pearson (out-of-fold with folds=N) and its task; (None, "") if unfinished."""
    for name, key in (("cv_results.json", "out_of_fold"), ("report.json", "mean")):
        if (run_dir / name).is_file():
            result = json.loads((run_dir / name).read_text())
            return result[key], result.get("task", "eri")  # runs from before tasks were all ERI
    return None, ""


def row(config: Path, overrides: list[str], paper: dict, failed: dict[str, int]) -> tuple:
    """(name, score or None, task, the paper's number or None, changes, what stands for a missing score)."""
    try:
        cfg = load_config(ERIConfig, config, overrides)
    except UserError as e:  # a configuration its run refused at load: the table still has its row
        state = f"failed (exit {failed[config.stem]})" if config.stem in failed else "refused at load"
        return config.stem, None, "", PAPER.get(config.stem), f"refused: {e}", state
    run_dir, changed = output_dir(config, overrides, cfg), changes(cfg, paper)
    stale = other_settings(run_dir, cfg)
    ours, task = (None, "") if config.stem in failed or stale else score(run_dir)
    published = PAPER.get(config.stem) if task in ("eri", "") else None  # the paper reports ERI only
    state = (f"other settings in {run_dir} ({'; '.join(stale)})" if stale else
             f"failed (exit {failed[config.stem]})" if config.stem in failed else "not run")
    return config.stem, ours, task, published, changed, state


def collect(configs: list[Path], overrides: list[str], out: Path, failed: dict[str, int] | None = None,
            name: str = "results") -> str:
    """Write <name>.md / <name>.csv in `out`; `failed`: configuration -> its exit status."""
    try:
        paper = resolved(CONFIG_DIR / "paper_vat.yaml", overrides)
    except UserError:  # overrides paper_vat itself refuses: compare with it as it ships
        paper = resolved(CONFIG_DIR / "paper_vat.yaml", [])
    rows = [row(config, overrides, paper, failed or {}) for config in configs]
    fmt = lambda v, state: state if v is None else f"{v:.4f}"  # noqa: E731
    lines = ["| configuration | ours | task | paper (dev, ERI) | changes from paper_vat |", "|---|--:|---|--:|---|"]
    lines += [f"| {n} | {fmt(o, st)} | {t} | {'' if p is None else f'{p:.4f}'} | {c} |" for n, o, t, p, c, st in rows]
    write_text(out / f"{name}.md", "\n".join(lines) + "\n")
    write_csv(out / f"{name}.csv", ["configuration", "ours", "task", "paper", "changes"],  # changes hold commas: quoted
              ([n, st if o is None else f"{o:.6f}", t, "" if p is None else p, c] for n, o, t, p, c, st in rows))
    return "\n".join(lines)


def chosen_configs(args) -> list[Path]:
    """The configurations asked for; `--configs a.yaml key=value` gives --configs the overrides too
    (nargs="*"), so an item that starts with `key=` is an override and any other a configuration."""
    given = [str(c) for c in args.configs or []]
    is_override = re.compile(r"[A-Za-z_][\w.]*=").match  # key=value; a path with "=" in it starts otherwise
    configs = [Path(c) for c in given if not is_override(c)]
    args.overrides = [c for c in given if is_override(c)] + args.overrides
    if args.configs is not None and not configs:
        raise UserError("--configs names no configuration file (.yaml)")
    if configs and args.levers:
        raise UserError("--levers is a set of configurations: give it or --configs, not both")
    configs = configs or (lever_configs() if args.levers else table_configs())
    missing = [str(c) for c in configs if not c.is_file()]
    if missing:
        raise UserError(f"configuration file(s) not found: {', '.join(missing)}")
    seen = [c.resolve() for c in configs]
    if len(set(seen)) < len(seen):
        raise UserError(f"--configs names {next(str(c) for c, r in zip(configs, seen) if seen.count(r) > 1)} twice")
    stems = [c.stem for c in configs]
    if len(set(stems)) < len(stems):  # each configuration's run folder and row are named by its file name
        twice = sorted({s for s in stems if stems.count(s) > 1})
        raise UserError(f"two configurations named {', '.join(twice)}: their runs would share a folder; rename one")
    if args.index is not None and not 0 <= args.index < len(configs):
        raise UserError(f"--index {args.index}: expected 0 to {len(configs) - 1} (one of the {len(configs)} "
                        "configurations, a SLURM array task id)")
    return configs


def _launcher(text: str) -> list[str]:
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise UserError(f"--launcher {text!r}: {e}") from None
    if not words:
        raise UserError("--launcher is empty; give the command that runs train.py, e.g. python or 'accelerate launch'")
    if shutil.which(words[0]) is None:
        raise UserError(f"--launcher {text!r}: {words[0]} not found")
    return words


def train(config: Path, args) -> int:
    """Run (or resume) one configuration; its exit status (128 + N for a child killed by signal N)."""
    cfg = load_config(ERIConfig, config, args.overrides)  # refused here as train.py would refuse it
    run_dir = output_dir(config, args.overrides, cfg)
    stale = other_settings(run_dir, cfg)
    if stale:
        print(f"grid: {run_dir} holds a run of {config.stem} with other settings ({'; '.join(stale)}): not resumed; "
              "give another run.output_dir or move that run away", file=sys.stderr, flush=True)
        return 2
    launcher = _launcher(args.launcher)
    given = any(o.startswith("run.output_dir=") for o in args.overrides)
    overrides = [o for o in args.overrides if not o.startswith("run.output_dir=")] + \
        ([f"run.output_dir={run_dir}"] if given else [])
    cmd = [*launcher, str(TRAIN), "--config", str(config), "--resume", "auto", *overrides]
    print("$", shlex.join(cmd), flush=True)
    status = subprocess.run(cmd).returncode
    return 128 - status if status < 0 else status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="*", type=Path, help="default: every configuration in paper_results.yaml")
    p.add_argument("--index", type=int, help="run only this configuration (a SLURM array task id)")
    p.add_argument("--levers", action="store_true", help="paper_vat.yaml and each lever of configs/levers/")
    p.add_argument("--collect", action="store_true", help="only write the results table")
    p.add_argument("--launcher", default=f"{shlex.quote(sys.executable)}", help="command that runs train.py")
    p.add_argument("--results", type=Path, help="where the table goes (default: beside the runs: run.output_dir "
                   "when given, else the folder above the first configuration's output_dir)")
    p.add_argument("overrides", nargs="*", help="key=value for every configuration, e.g. data.store=features")
    args = p.parse_args(argv)
    configs = chosen_configs(args)
    if not args.collect:
        _launcher(args.launcher)  # before any run: every configuration needs it
    failed: dict[str, int] = {}
    for config in [] if args.collect else configs if args.index is None else [configs[args.index]]:
        from shared.training.preemption import EXIT_REQUEUE  # torch: only when training
        try:
            status = train(config, args)
        except UserError as e:  # refused at load (with these overrides): the others still run
            print(f"grid: {config.stem}: {e}", file=sys.stderr, flush=True)
            status = 2
        if status == EXIT_REQUEUE:  # preempted: the job is requeued and resumes this configuration
            print(f"grid: {config.stem} was preempted (exit 75): stopping here to be requeued", file=sys.stderr)
            return status
        if status:
            failed[config.stem] = status
            print(f"grid: {config.stem} failed (exit {status}); going on with the others", file=sys.stderr, flush=True)
    out, name = args.results or results_dir(configs, args.overrides), "levers" if args.levers else "results"
    print(collect(configs, args.overrides, out, failed, name))
    print(f"grid: the table is in {out / (name + '.md')} and {out / (name + '.csv')}", file=sys.stderr)
    return next(iter(failed.values()), 0)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
