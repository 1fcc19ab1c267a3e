"""Run named configurations (the paper's Tables 2 and 4) and tabulate them beside the paper.

    python -m eri_downstream.grid data.store=features                      # every table config, in sequence
    python -m eri_downstream.grid --configs eri_downstream/configs/table2_*.yaml data.store=features
    python -m eri_downstream.grid --collect                                # just write the table
    python -m eri_downstream.grid --levers data.store=features             # the paper recipe and each lever
    sbatch --array=0-10 launch/slurm/eri_grid.sbatch data.store=features   # one config per array task

Writes `<runs>/results.md` and `results.csv`: each configuration's validation mean Pearson (or
out-of-fold mean with folds=N) next to the paper's development-set number, and what it changes
from the paper's final model (paper_vat.yaml). `--levers` runs that model and each lever of
later winners (configs/levers/: Pearson-aware and CCC losses, modality dropout, sentence text).
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from eri_downstream.config import ERIConfig
from shared.atomic import write_csv, write_text
from shared.config import load_config, to_dict
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
    return _flat(to_dict(load_config(ERIConfig, config, [o for o in overrides if not o.startswith("run.")])))


def changes(config: Path, overrides: list[str], paper: dict) -> str:
    """The keys whose resolved value differs from `paper` (paper_vat.yaml's, resolved) as key=value."""
    return ", ".join(f"{k}={v}" for k, v in sorted(resolved(config, overrides).items())
                     if not k.startswith("run.") and paper.get(k) != v) or "none"


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def output_dir(config: Path, overrides: list[str]) -> Path:
    for item in overrides:
        if item.startswith("run.output_dir="):
            return Path(item.split("=", 1)[1]) / config.stem
    return Path(load_config(ERIConfig, config).run.output_dir)  # through its base, if it names one


def score(run_dir: Path) -> float | None:
    for name, key in (("cv_results.json", "out_of_fold"), ("report.json", "mean")):
        if (run_dir / name).is_file():
            return json.loads((run_dir / name).read_text())[key]
    return None


def collect(configs: list[Path], overrides: list[str], out: Path) -> str:
    rows, paper = [], resolved(CONFIG_DIR / "paper_vat.yaml", overrides)
    for config in configs:
        ours = score(output_dir(config, overrides))
        rows.append((config.stem, ours, PAPER.get(config.stem), changes(config, overrides, paper)))
    fmt = lambda v: "not run" if v is None else f"{v:.4f}"  # noqa: E731
    lines = ["| configuration | ours | paper (dev) | changes from paper_vat |", "|---|--:|--:|---|"]
    lines += [f"| {name} | {fmt(o)} | {'' if p is None else f'{p:.4f}'} | {c} |" for name, o, p, c in rows]
    write_text(out / "results.md", "\n".join(lines) + "\n")
    write_csv(out / "results.csv", ["configuration", "ours", "paper", "changes"],  # changes hold commas: quoted
              ([n, "" if o is None else f"{o:.6f}", "" if p is None else p, c] for n, o, p, c in rows))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="*", type=Path, help="default: every configuration in paper_results.yaml")
    p.add_argument("--index", type=int, help="run only this configuration (a SLURM array task id)")
    p.add_argument("--levers", action="store_true", help="paper_vat.yaml and each lever of configs/levers/")
    p.add_argument("--collect", action="store_true", help="only write the results table")
    p.add_argument("--launcher", default=f"{shlex.quote(sys.executable)}", help="command that runs train.py")
    p.add_argument("--results", type=Path, default=Path("runs/eri"), help="where results.md/csv go")
    p.add_argument("overrides", nargs="*", help="key=value for every configuration, e.g. data.store=features")
    args = p.parse_args(argv)
    configs = args.configs or (lever_configs() if args.levers else table_configs())
    missing = [str(c) for c in configs if not c.is_file()]
    if missing:
        raise UserError(f"configuration file(s) not found: {', '.join(missing)}")
    if not args.collect:
        if args.index is not None and not 0 <= args.index < len(configs):
            raise UserError(f"--index {args.index}: expected 0 to {len(configs) - 1} (one of the {len(configs)} "
                            "configurations, a SLURM array task id)")
        chosen = configs if args.index is None else [configs[args.index]]
        for config in chosen:
            extra = [f"run.output_dir={output_dir(config, args.overrides)}"] if any(
                o.startswith("run.output_dir=") for o in args.overrides) else []
            overrides = [o for o in args.overrides if not o.startswith("run.output_dir=")] + extra
            cmd = [*shlex.split(args.launcher), str(TRAIN), "--config", str(config), "--resume", "auto", *overrides]
            print("$", shlex.join(cmd), flush=True)
            status = subprocess.run(cmd).returncode
            if status:
                return status
    print(collect(configs, args.overrides, args.results))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
