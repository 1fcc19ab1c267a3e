"""The intensity tasks of stage 3 (`configs/tasks.yaml`): ERI on Hume-Reaction (7 emotions) and
EMI on Hume-Vidmimic2 (6). Which task a run serves is decided by its data: the raw layout says
it at stage 3a, the feature store's videos.csv header (the emotion columns) after that."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import yaml

from shared.errors import UserError

TASKS_FILE = Path(__file__).parent / "configs" / "tasks.yaml"


@dataclass(frozen=True)
class Task:
    name: str  # "eri", "emi"
    title: str
    dataset: str  # the dataset's published name, for reports and model cards
    emotions: tuple[str, ...]  # the intensity columns, in the order of every output
    submission_id: str  # the id column of the submission file
    bracketed_ids: bool  # ids written "[00123]" in the submission

    def submission_ids(self, ids: list[str]) -> list[str]:
        return [f"[{i}]" for i in ids] if self.bracketed_ids else list(ids)


@functools.cache  # read once: the readers, the submission writer and the checks all ask
def tasks() -> dict[str, Task]:
    data = yaml.safe_load(TASKS_FILE.read_text())
    return {name: Task(name=name, **{**spec, "emotions": tuple(spec["emotions"])}) for name, spec in data.items()}


def get_task(name: str) -> Task:
    """The task called `name`, or a UserError listing the known ones."""
    known = tasks()
    if name not in known:
        raise UserError(f"task={name!r}: expected one of {', '.join(known)} (eri_downstream/configs/tasks.yaml)")
    return known[name]


def task_of(emotions) -> Task | None:
    """The task whose emotions these are (in this order), or None for a table of its own."""
    return next((t for t in tasks().values() if t.emotions == tuple(emotions)), None)


def task_for(emotions) -> Task:
    """The known task with these emotions, else a task of the table's own (ids plain, File_ID)."""
    return task_of(emotions) or Task(name="custom", title=f"intensities of {len(emotions)} emotions",
                                     dataset="your own", emotions=tuple(emotions), submission_id="File_ID",
                                     bracketed_ids=False)
