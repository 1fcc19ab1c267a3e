"""torch.profiler around a callable: the top ops by self time, time per labelled section, and a
chrome trace (open it in chrome://tracing or https://ui.perfetto.dev)."""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from common import result


UPDATE_SECTIONS = ["backward", "grad norm", "optimizer step", "zero_grad"]


def profiled_update(loss: torch.Tensor, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """The update half of a training step, one labelled section per part (UPDATE_SECTIONS)."""
    with record_function("backward"):
        loss.backward()
    with record_function("grad norm"):
        torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf)
    with record_function("optimizer step"):
        optimizer.step()
    with record_function("zero_grad"):
        optimizer.zero_grad(set_to_none=True)


def run_profiled(fn: Callable[[], None], *, out: Path, name: str, description: str, rows: int,
                 sections: list[str]) -> None:
    """Profile `fn()`, print the top `rows` ops by self CPU time (and self CUDA time when a GPU is
    in use), the wall time of each `record_function` section in `sections`, and write
    `out/<name>.json`."""
    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    out.mkdir(parents=True, exist_ok=True)
    trace = out / f"{name}.json"
    prof.export_chrome_trace(str(trace))
    averages = prof.key_averages()
    total_cpu = sum(e.self_cpu_time_total for e in averages)
    print(f"\ntop {rows} ops by self CPU time ({name}; total self CPU {total_cpu / 1e3:.1f} ms):")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=56))
    if cuda:
        print(f"\ntop {rows} ops by self CUDA time ({name}):")
        print(averages.table(sort_by="self_device_time_total", row_limit=rows, max_name_column_width=56))
    spans: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.name in sections:
            spans[event.name] += event.time_range.elapsed_us()
    total = sum(spans.values())
    print(f"\nsections ({name}), host wall time:")
    for section in sections:
        share = f"{100 * spans[section] / total:5.1f} %" if total else ""
        print(f"  {section:32s} {spans[section] / 1e3:10.1f} ms  {share}")
    print(f"\nchrome trace: {trace}")
    top = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:3]
    result(name, f"top ops by self CPU time, {description}",
           ", ".join(f"{e.key} {100 * e.self_cpu_time_total / total_cpu:.0f} %" for e in top),
           note=f"chrome trace {trace}")
