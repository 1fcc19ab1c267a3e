"""Full training states on disk: written atomically, the newest k kept, found again on resume.

A state is a folder `checkpoints/step_00001000/` holding what `accelerator.save_state` writes
(model, optimizer, grad scaler, every process's RNG), one `rank_<r>.json` per process (its
step and stream position: positions differ per rank), the resolved `config.yaml`, and last
`meta.json`. It is written as `.tmp-step_...` (files flushed to disk) and renamed once every
process has finished, so a kill during the write leaves the previous state intact and `latest()`
never sees a partial one. A write that fails (no space left, a file-size limit) fails on every
process together: the partial folder is removed to free its space, the older states are kept,
and a RunError says which one `--resume auto` will continue from. A state resumes on another
number of processes when the data can take every process's saved position (exact streams) and
the model and optimizer states are whole (not FSDP shards); see `Checkpointer.restore`.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from safetensors import safe_open

from ..atomic import seal_folder, write_json, write_yaml
from ..config import setting_changes
from ..errors import RunError, UserError, one_line
from ..provenance import code_version
from ..recognise import described, recognise

META = "meta.json"
PARTIAL = ".tmp-step_"
log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, accelerator, run_dir: str | Path, keep_last: int = 3):
        self.acc = accelerator
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last

    def save(self, step: int, rank_state: dict[str, Any], config: dict[str, Any]) -> Path:
        final = self.dir / f"step_{step:08d}"
        tmp = self.dir / f"{PARTIAL}{step:08d}"
        main = self.acc.is_main_process
        self._together(step, tmp, lambda: _fresh_dir(tmp) if main else None)
        self._together(step, tmp, lambda: self._write_parts(tmp, step, rank_state))
        self._together(step, tmp, lambda: self._seal(tmp, final, step, config) if main else None)
        return final

    def _write_parts(self, tmp: Path, step: int, rank_state: dict[str, Any]) -> None:
        """Every process: what accelerate saves (model, optimizer, RNG) and its own position."""
        self.acc.save_state(str(tmp), safe_serialization=True)
        write_json(tmp / f"rank_{self.acc.process_index}.json", {"step": step, **rank_state})

    def _seal(self, tmp: Path, final: Path, step: int, config: dict[str, Any]) -> None:
        """Main process, once every part is written: config, meta.json last, then the rename."""
        write_yaml(tmp / "config.yaml", config)
        write_json(tmp / META, {"step": step, "world_size": self.acc.num_processes,
                                       "created_by": code_version()})
        if final.exists():  # the same step saved again (a stop right after a resume)
            self._discard(final)
        seal_folder(tmp, final)  # every file on disk first, then the rename, then the folder's entry
        self._prune()

    def _together(self, step: int, tmp: Path, write: Callable[[], None]) -> None:
        """Run this process's part of a save; when it failed on any process, every process
        raises (none is left waiting at a barrier) once the partial folder is removed."""
        failure = None
        try:
            write()
        except Exception as err:  # noqa: BLE001 - disk full, file-size limit, I/O error: same handling
            failure = err
        failed = torch.tensor([float(failure is not None)], device=self.acc.device)
        if self.acc.num_processes > 1:
            failed = self.acc.reduce(failed, reduction="sum")  # also the barrier between the phases
        if not failed.item():
            return
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        cause = one_line(failure) if failure is not None else "another process could not write its part"
        newest = self.latest()
        kept = (f"the previous complete state {newest} is intact and --resume auto continues from it"
                if newest else "no earlier state exists")
        raise RunError(f"could not write the training state of step {step} in {self.dir} ({cause}; "
                       f"{_free_space(self.dir)}); the partial state was removed, {kept}; free some space "
                       "(or lower run.keep_last) and resume") from failure

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
        if not path.exists():
            raise UserError(f"--resume {resume}: no such folder; use --resume auto (the newest complete state "
                            f"in {self.dir}) or a state folder there")
        if not (path / META).is_file():
            kind = recognise(path)
            if kind is not None and kind.name == "run folder":
                raise UserError(f"--resume {resume}: a run folder, not one of its states; resume it with "
                                f"run.output_dir={resume} --resume auto, or give a folder of {path / 'checkpoints'}")
            raise UserError(f"--resume {resume}: not a complete training state (no {META}){described(path)}; "
                            f"use --resume auto or a folder under {self.dir}")
        return path

    def load(self, path: Path) -> dict[str, Any]:
        """Restore model, optimizer and RNG; returns this rank's saved step and stream state
        (rank 0's when the state was saved by fewer processes)."""
        try:
            self.acc.load_state(str(path))
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001 - a corrupt file of any kind: name the state to move aside
            if isinstance(err, RuntimeError) and "Error(s) in loading state_dict" in str(err):
                raise UserError(self._mismatch(path, str(err))) from err
            raise RunError(f"cannot load the training state {path} ({one_line(err)}); move it out of "
                           f"{self.dir} to resume from the previous one") from err
        own = path / f"rank_{self.acc.process_index}.json"
        return json.loads((own if own.is_file() else path / "rank_0.json").read_text())

    def restore(self, resume: str | None, data, config: dict[str, Any] | None = None,
                same: tuple[str, ...] = ()) -> tuple[int, Path | None]:
        """Resume a run: model, optimizer, RNG and `data`'s position from the state `resume`
        names ("auto": the newest, if any). Returns (step to start from, state used).

        A state saved by another number of processes resumes when `data` can take the
        positions every process saved (`data.load_saved_states`: exact streams) and the
        model and optimizer states are whole (DDP, not FSDP shards); else one UserError.
        `same` names the dotted config keys that decide which samples each step reads (batch
        size, seed, ...; each stage lists its own): a value in `config` that differs from the
        state's own config.yaml is refused with a UserError naming the key, since the saved
        position would then replay or skip data without a word."""
        if self.acc.is_main_process:
            self._remove_partials()
        path = self.resolve(resume)
        if path is None:
            if resume == "auto":
                log.info("no training state in %s yet: starting from step 0", self.dir)
            return 0, None
        if config is not None and same:
            saved = _saved_config(path)
            if saved is not None:
                _refuse_changed_keys(path, saved, config, same)
                changed = setting_changes(saved, config)  # allowed (a new lr, more epochs), never unsaid
                if changed:
                    log.warning("resuming %s with settings other than its own: %s", path, "; ".join(changed))
        saved = json.loads((path / META).read_text())["world_size"]
        if saved != self.acc.num_processes:
            self._check_reshapable(path, saved, data)
        rank_state = self.load(path)
        if saved == self.acc.num_processes:
            data.load_state_dict(rank_state["stream"])
        else:  # the other ranks' RNG files do not matter: randomness is drawn per sample
            data.load_saved_states([json.loads((path / f"rank_{r}.json").read_text())["stream"]
                                    for r in range(saved)])
        log.info("resumed from %s at step %d", path, rank_state["step"])
        return rank_state["step"], path

    def _check_reshapable(self, path: Path, saved: int, data) -> None:
        here = self.acc.num_processes
        shards = sorted(p.name for p in path.glob("*fsdp*") if p.is_dir() or "_rank" in p.name)
        if shards:
            raise UserError(f"{path} holds FSDP states sharded over {saved} processes ({_few(shards, 2)}), this run "
                            f"has {here}; resume on {saved} processes (or save whole states: fsdp_state_dict_type "
                            "FULL_STATE_DICT)")
        if not hasattr(data, "load_saved_states"):
            raise UserError(f"{path} was saved by {saved} processes, this run has {here}; resume with the same number "
                            f"of processes (only exact streams resume on another number; this run's data is "
                            f"{type(data).__name__})")

    def _mismatch(self, path: Path, torch_message: str) -> str:
        """Why a state does not fit the model, on one line: every missing, unexpected and
        resized tensor (torch's own report stops at the first kind of problem)."""
        detail = " ".join(torch_message.split())[:500]  # when there is no weight file to compare
        saved_file, models = path / "model.safetensors", getattr(self.acc, "_models", [])
        if saved_file.is_file() and models:
            with safe_open(str(saved_file), framework="pt") as f:
                saved = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
            own = {k: list(v.shape) for k, v in models[0].state_dict().items()}
            missing = [k for k in own if k not in saved]
            unexpected = [k for k in saved if k not in own]
            resized = [f"{k} {saved[k]} vs model {own[k]}" for k in own if k in saved and saved[k] != own[k]]
            detail = "; ".join(f"{len(keys)} {what}: {_few(keys)}" for what, keys in
                               (("missing", missing), ("unexpected", unexpected), ("of another shape", resized))
                               if keys) or detail
        return (f"{path} does not fit this model (saved by another architecture or stage?): {detail}; resume "
                f"it with the configuration it was saved with ({path / 'config.yaml'}), or start a new run in "
                "another run.output_dir")

    def _remove_partials(self) -> None:
        """A state being written when its job was killed: never resumed from, only in the way."""
        for partial in self.dir.glob(f"{PARTIAL}*"):
            shutil.rmtree(partial, ignore_errors=True)
            log.warning("removed %s: a training state whose write was interrupted", partial)

    def _prune(self) -> None:
        complete = sorted(p for p in self.dir.glob("step_*") if (p / META).is_file())
        for old in complete[: max(0, len(complete) - self.keep_last)]:
            self._discard(old)

    def _discard(self, state: Path) -> None:
        """Renamed out of `step_*` before it is deleted: a kill during the deletion leaves a
        partial folder that `latest()` ignores and the next run removes, never a half state."""
        doomed = self.dir / f"{PARTIAL}discarded-{state.name}"
        shutil.rmtree(doomed, ignore_errors=True)
        os.replace(state, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def check_run_folder(run_dir: Path, config: dict[str, Any], keys: tuple[str, ...], finished: bool) -> None:
    """Before a resumed run writes its config.yaml over the one in `run_dir`: refuse what its
    saved states would refuse (a changed key of `keys`), and a finished run of other settings,
    which would not be trained again (its results are read back as they are); else as
    `restore` does, a warning naming each other setting that changed. A folder without a saved
    state or results (a run that stopped before its first save) starts afresh: nothing to check."""
    saved = run_dir / "config.yaml"
    if not saved.is_file() or not (finished or any(run_dir.glob("checkpoints/step_*"))
                                   or any(run_dir.glob("fold_*/checkpoints/step_*"))):
        return
    saved_config = yaml.safe_load(saved.read_text()) or {}
    changed = setting_changes(saved_config, config)
    if finished and changed:
        raise UserError(f"{run_dir} holds a finished run of other settings ({'; '.join(changed)}): it is not trained "
                        "again; give another run.output_dir, or its own settings to read its results")
    _refuse_changed_keys(run_dir, saved_config, config, keys)  # the others: restore says them, state by state


def _saved_config(state: Path) -> dict[str, Any] | None:
    """A state's config.yaml; None (said) for a state from before states kept one."""
    saved_file = state / "config.yaml"
    if not saved_file.is_file():
        log.warning("%s has no config.yaml: cannot check that the data settings match", state)
        return None
    return yaml.safe_load(saved_file.read_text()) or {}


def _refuse_changed_keys(state: Path, saved: dict[str, Any], config: dict[str, Any], keys: tuple[str, ...]) -> None:
    """UserError on the first key in `keys` whose value differs between `config` and `saved`
    (the config.yaml of `state`)."""
    for key in keys:
        old, new = (_plain(_lookup(c, key)) for c in (saved, config))
        if old != new:
            raise UserError(f"--resume {state}: {key} is {new!r} now but {old!r} in that state; it decides which "
                            f"samples each step reads, so resuming with another value would replay or skip data "
                            f"without a word: resume with {key}={json.dumps(old)}, or start a new run in another run.output_dir")


def _lookup(config: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def _plain(value: Any) -> Any:
    """As YAML stores it (tuples become lists), so a saved and a live value compare alike."""
    return yaml.safe_load(yaml.safe_dump(value))


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _free_space(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free there now"
    except OSError:
        return "free space unknown"


def _few(names: list[str], n: int = 4) -> str:
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more
