"""What every benchmark shares: its header lines, interleaved timing, and the result lines the
suite (`python -m benchmarks`) collects into its summary table.

A result line is `result: {json}` with
    name     the summary row ("mae_step (CPU)")
    what     what is compared, in words
    figures  the measured numbers, in words ("2539.9 vs 641.9 img/s")
    ratio    the compared quantity (float) or null
    unit     "x" for a ratio, or the unit of a single figure ("GiB", "%")
    target   the target in words ("≥ 2x") or null
    verdict  PASS | FAIL | NOT MEASURED | INFO (a figure without a target)
    note     why it was not measured, or how it was measured (optional)
"""
from __future__ import annotations

import json
import os
import shlex
import statistics
import sys

NOT_MEASURED = "NOT MEASURED"


def header(machine_line: str) -> None:
    print(f"machine: {machine_line}")
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"load:    {load()}")


def load() -> str:
    """The 1/5/15-minute load averages against the usable cores: above the cores, other processes
    compete with the benchmark for the CPU and its figures come out lower and noisier."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = " (busy: other processes compete for the CPU)" if one > usable else ""
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} on {usable} usable cores{busy}"


def split(steps: int, repeats: int) -> list[int]:
    """`steps` spread as evenly as possible over `repeats` timed repeats."""
    base, extra = divmod(steps, repeats)
    return [base + (i < extra) for i in range(repeats)]


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired_ratio(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """(median, min, max) of a[i] / b[i]: the ratio of two rates timed back to back in repeat i.

    Interleaved repeats make each pair see the same machine state, so the median of the pairs'
    ratios is the comparison that drift and other processes disturb least; the ratio of the two
    series' medians can pair a fast repeat of one with a slow repeat of the other."""
    ratios = [x / y for x, y in zip(a, b)]
    return statistics.median(ratios), min(ratios), max(ratios)


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    return "PASS" if (value >= target if higher_is_better else value <= target) else "FAIL"


def result(name: str, what: str, figures: str, *, ratio: float | None = None, unit: str = "x",
           target: str | None = None, verdict: str = "INFO", note: str = "") -> None:
    """Print one result line for the suite's summary (see the module docstring)."""
    row = {"name": name, "what": what, "figures": figures, "ratio": ratio, "unit": unit, "target": target,
           "verdict": verdict, "note": note}
    print("result: " + json.dumps(row, ensure_ascii=False), flush=True)


def not_measured(name: str, what: str, target: str | None, reason: str) -> None:
    print(f"{NOT_MEASURED}: {reason}", flush=True)
    result(name, what, "-", target=target, verdict=NOT_MEASURED, note=reason)


def parse_sized_args(parser, argv, quick: dict):
    """`parser` with a `--quick` flag: the `quick` sizes replace every default the command line
    left alone (a size given explicitly wins)."""
    parser.add_argument("--quick", action="store_true", help=f"a short smoke run: {quick}")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in quick.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    return args



def parse_device_args(parser, argv, quick: dict[str, dict]):
    """`parser` with `--device auto|cuda|cpu` and `--quick` for a GPU benchmark: auto is "cuda"
    when there is one, else "none" (the benchmark reports NOT MEASURED); `--device cpu` runs the
    code path on the CPU. `quick[device]` sizes replace the defaults the command line left alone."""
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--quick", action="store_true", help=f"a short smoke run: {quick}")
    args = parser.parse_args(argv)
    if args.device == "auto":
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "none"
    if args.quick and args.device != "none":
        for key, value in quick[args.device].items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    return args
