"""What a benchmark ran on, for the line every benchmark prints next to its figures."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cores() -> str:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{os.cpu_count()} cores ({usable} usable)"


def gpu() -> str:
    """The first visible CUDA device in words, or "no GPU"."""
    import torch

    if not torch.cuda.is_available():
        return "no GPU"
    props = torch.cuda.get_device_properties(0)
    return (f"GPU {props.name} ({props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}, "
            f"{torch.cuda.device_count()} visible)")


def machine(**versions: str) -> str:
    """CPU model, cores, GPU, Python and torch versions, plus any other library versions given."""
    import torch

    libs = ", ".join(f"{name} {version}" for name, version in {"torch": torch.__version__, **versions}.items())
    return f"{cpu_model()}, {cores()}; {gpu()}; Python {platform.python_version()}, {libs}"
