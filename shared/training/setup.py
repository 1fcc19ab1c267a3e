"""The Accelerator and trackers of a run, built the same way by every stage."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from ..errors import UserError
from .config import RunConfig
from .wrappers import check_compile

PRECISIONS = ("auto", "no", "bf16", "fp16")


def make_accelerator(run: RunConfig) -> Accelerator:
    precision = run.mixed_precision
    if precision not in PRECISIONS:
        raise UserError(f"run.mixed_precision={precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "no"
    if precision == "fp16" and not torch.cuda.is_available():  # Accelerate would quietly train in fp32
        raise UserError("run.mixed_precision=fp16 needs a GPU (its grad scaler and autocast are CUDA's); "
                        "on the CPU use bf16 or no")
    check_compile(run)
    check_trackers(run.trackers)
    # cpu=True on machines without CUDA: otherwise Accelerate ignores torchrun's processes there
    acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision,
                      log_with=list(run.trackers) or None, project_dir=run.output_dir)
    set_seed(run.seed)
    logging.basicConfig(level=logging.INFO if acc.is_main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if acc.is_main_process:
        Path(run.output_dir).mkdir(parents=True, exist_ok=True)
    return acc


# the extra that installs a tracker, where the suite has one
TRACKER_EXTRAS = {"wandb": 'pip install -e ".[wandb]"'}


def check_trackers(trackers) -> None:
    """Every tracker asked for is known to Accelerate and installed: Accelerate itself drops a
    missing one with a warning, and the run would go on logging to none."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers
    available = {getattr(t, "value", t) for t in get_available_trackers()}
    for name in trackers:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise UserError(f"run.trackers: unknown tracker {name!r}; Accelerate knows "
                            f"{', '.join(sorted(LOGGER_TYPE_TO_CLASS))} (run.trackers=[] logs to metrics.jsonl only)")
        if name not in available:
            install = TRACKER_EXTRAS.get(name, f"pip install {name}")
            raise UserError(f"run.trackers: {name} is not installed; install it ({install}) or leave it out "
                            f"(run.trackers=[tensorboard], or [] for metrics.jsonl only)")


def init_tracking(acc: Accelerator, run: RunConfig, config: dict[str, Any], name: str) -> None:
    """Start the trackers with the flattened config as hyperparameters."""
    if run.trackers:
        acc.init_trackers(run.project, config=flatten(config), init_kwargs={"wandb": {"name": name}})


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"a.b": scalar}: what tracker hyperparameter tables accept."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[prefix + key] = value
        else:
            flat[prefix + key] = str(value)
    return flat


def log_images(acc: Accelerator, images: dict[str, Any], step: int) -> None:
    """Send HxWx3 uint8 images to every tracker that takes images."""
    for tracker in acc.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({k: v[None] for k, v in images.items()}, step=step, dataformats="NHWC")
        elif hasattr(tracker, "log_images"):
            tracker.log_images({k: [v] for k, v in images.items()}, step=step)
