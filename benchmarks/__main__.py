"""The benchmark suite: every benchmark in one go, then a summary table of ratios against targets.

    python -m benchmarks                      # everything, the default sizes (minutes on a CPU)
    python -m benchmarks --quick              # a short smoke run of everything
    python -m benchmarks --only mae_step_cpu --only input_pipeline
    python -m benchmarks --list

Each benchmark runs as its own process, exactly the command printed above its output (so its
threads, memory and CUDA context are its own, and the command can be rerun alone). Each prints
the machine it ran on, its figures, and `result:` lines (see `common.py`) that the summary
collects: a markdown table with PASS / FAIL / NOT MEASURED / INFO per row, ready to paste into
benchmarks/README.md. The exit status is 1 when a benchmark crashed or printed no result, else 0
(a FAIL is a measurement, not an error). The profiles (`profile_step`, `profile_eri_epoch`) print
tables rather than ratios; they run only when named with --only.
"""
from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the benchmarks' own helpers, as when a script is run by path

from common import load  # noqa: E402
from hardware import machine  # noqa: E402


@dataclass(frozen=True)
class Benchmark:
    name: str
    script: str
    args: tuple[str, ...] = ()
    quick: tuple[str, ...] = ("--quick",)


SUITE = (
    Benchmark("input_pipeline", "input_pipeline.py"),
    Benchmark("exact_stream", "exact_stream.py"),
    Benchmark("mae_step_cpu", "mae_step.py", ("--device", "cpu")),
    Benchmark("mae_step_gpu", "mae_step.py", ("--device", "cuda")),
    Benchmark("mae_step_fast", "mae_step.py", ("--device", "cuda", "--fast")),
    Benchmark("gpu_input", "gpu_input.py", ("--fast",)),
    Benchmark("gpu_input_photo", "gpu_input.py", ("--fast", "--kind", "photo")),
    Benchmark("eri_epoch", "eri_epoch.py"),
    Benchmark("extract_speed", "extract_speed.py"),
    Benchmark("fsdp_step", "fsdp_step.py"),
)
ON_REQUEST = (
    Benchmark("profile_step", "profile_step.py", quick=("--model", "mae_vit_tiny_patch16")),
    Benchmark("profile_eri_epoch", "profile_eri_epoch.py", quick=("--videos", "32")),
    Benchmark("mae_levers", "mae_levers.py"),
)


def command(bench: Benchmark, quick: bool) -> list[str]:
    script = HERE / bench.script
    if script.is_relative_to(Path.cwd()):
        script = script.relative_to(Path.cwd())
    return [sys.executable, str(script), *bench.args, *(bench.quick if quick else ())]


def run(bench: Benchmark, quick: bool, timeout: float | None) -> list[dict]:
    """Run one benchmark, echoing its output as it comes; returns its result rows."""
    cmd = command(bench, quick)
    print(f"\n=== {bench.name}: {shlex.join(cmd)}", flush=True)
    rows, start = [], time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    try:
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.startswith("result: "):
                rows.append(json.loads(line[len("result: "):]))
            if timeout and time.perf_counter() - start > timeout:
                proc.kill()
        status = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"=== {bench.name}: exit {status}, {time.perf_counter() - start:.0f} s", flush=True)
    if status != 0 or not rows:
        rows.append({"name": bench.name, "what": shlex.join(cmd), "figures": "-", "ratio": None, "unit": "x",
                     "target": None, "verdict": "ERROR", "note": f"exit status {status}, {len(rows)} result lines"})
    return rows


def cell(row: dict) -> str:
    value, unit = row.get("ratio"), row.get("unit", "x")
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:.1f} %" if unit == "%" else f"{value:.2f} {unit}" if unit == "GiB" else f"{value:.1f} {unit}"


def summary(rows: list[dict], machine_line: str, quick: bool) -> str:
    """The markdown table of every result row."""
    when = datetime.date.today().isoformat()
    lines = [f"**{when}**, {machine_line}{' (--quick: smoke-run sizes)' if quick else ''}", "",
             "| benchmark | compares | figures | ratio / value | target | result |", "|---|---|---|--:|---|---|"]
    for row in rows:
        verdict = row["verdict"]
        if verdict in ("NOT MEASURED", "ERROR") and row.get("note"):
            verdict = f"{verdict} ({row['note']})"
        lines.append(f"| {row['name']} | {row['what']} | {row['figures']} | {cell(row)} | "
                     f"{row.get('target') or '-'} | {verdict} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    everything = {b.name: b for b in SUITE + ON_REQUEST}
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short smoke-run sizes for every benchmark")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help=f"run only these (repeat or comma-separate): {', '.join(everything)}")
    p.add_argument("--list", action="store_true", help="list the benchmarks and their commands, run nothing")
    p.add_argument("--markdown", type=Path, help="also write the summary table to this file")
    p.add_argument("--timeout", type=float, help="seconds after which a benchmark is stopped (default: none)")
    args = p.parse_args(argv)
    names = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in everything]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(everything)}")
    chosen = [everything[n] for n in dict.fromkeys(names)] if names else list(SUITE)
    if args.list:
        for bench in SUITE + ON_REQUEST:
            extra = "" if bench in SUITE else "   (only with --only)"
            print(f"{bench.name:18s} {shlex.join(command(bench, args.quick))}{extra}")
        return 0
    machine_line = machine()
    print(f"machine: {machine_line}")
    print(f"load:    {load()} (at the start)")
    print(f"suite:   {', '.join(b.name for b in chosen)}{' (--quick)' if args.quick else ''}", flush=True)
    rows = [row for bench in chosen for row in run(bench, args.quick, args.timeout)]
    print(f"\nload:    {load()} (at the end)")
    table = summary(rows, machine_line, args.quick)
    print("\n## Summary\n")
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 1 if any(r["verdict"] == "ERROR" for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
