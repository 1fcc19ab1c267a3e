"""Full training states on disk: written atomically, the newest k kept, found again on resume.

A state is a folder `checkpoints/step_00001000/` holding what `accelerator.save_state` writes
(model, optimizer, grad scaler, every process's RNG), one `rank_<r>.json` per process (its
step and stream position: positions differ per rank), the resolved `config.yaml`, and last
`meta.json`. It is written as `.tmp-step_...` and renamed once every process has finished, so
a kill during the write leaves the previous state intact and `latest()` never sees a partial one.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError
from ..provenance import code_version, write_json_atomic

META = "meta.json"
log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, accelerator, run_dir: str | Path, keep_last: int = 3):
        self.acc = accelerator
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last

    def save(self, step: int, rank_state: dict[str, Any], config: dict[str, Any]) -> Path:
        final = self.dir / f"step_{step:08d}"
        tmp = self.dir / f".tmp-step_{step:08d}"
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.acc.wait_for_everyone()
        self.acc.save_state(str(tmp), safe_serialization=True)
        write_json_atomic(tmp / f"rank_{self.acc.process_index}.json", {"step": step, **rank_state})
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            write_json_atomic(tmp / META, {"step": step, "world_size": self.acc.num_processes,
                                           "created_by": code_version()})
            _fsync_dir(tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            _fsync_dir(self.dir)
            self._prune()
        self.acc.wait_for_everyone()
        return final

    def latest(self) -> Path | None:
        complete = sorted(p for p in self.dir.glob("step_*") if (p / META).is_file())
        return complete[-1] if complete else None

    def resolve(self, resume: str | None) -> Path | None:
        """The state to resume from: None, "auto" (newest complete one, if any) or a folder."""
        if resume is None:
            return None
        if resume == "auto":
            return self.latest()
        path = Path(resume)
        if not (path / META).is_file():
            raise UserError(f"{resume}: not a complete training state (no {META}); "
                            f"use --resume auto or a folder under {self.dir}")
        return path

    def load(self, path: Path) -> dict[str, Any]:
        """Restore model, optimizer and RNG; returns this rank's saved step and stream state."""
        meta = json.loads((path / META).read_text())
        if meta["world_size"] != self.acc.num_processes:
            raise UserError(f"{path} was saved by {meta['world_size']} processes, this run has "
                            f"{self.acc.num_processes}; resume with the same number of processes")
        self.acc.load_state(str(path))
        return json.loads((path / f"rank_{self.acc.process_index}.json").read_text())

    def restore(self, resume: str | None, data) -> tuple[int, Path | None]:
        """Resume a run: model, optimizer, RNG and `data`'s position from the state `resume`
        names ("auto": the newest, if any). Returns (step to start from, state used)."""
        path = self.resolve(resume)
        if path is None:
            if resume == "auto":
                log.info("no training state in %s yet: starting from step 0", self.dir)
            return 0, None
        rank_state = self.load(path)
        data.load_state_dict(rank_state["stream"])
        log.info("resumed from %s at step %d", path, rank_state["step"])
        return rank_state["step"], path

    def _prune(self) -> None:
        complete = sorted(p for p in self.dir.glob("step_*") if (p / META).is_file())
        for old in complete[: max(0, len(complete) - self.keep_last)]:
            shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
