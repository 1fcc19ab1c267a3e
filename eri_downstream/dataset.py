"""The video list of stage 3: one reader for Hume-Reaction (ABAW5 and MuSe 2022 layouts, the
ERI task) and Hume-Vidmimic2 (the EMI task).

ABAW5 ships `data_info.csv` (File_ID "[00123]", Split Train/Val/Test, 7 emotions, Age,
Country) with media in `{train,val,test}/{mp4,wav}/<id>.<ext>`; MuSe 2022 ships `labels.csv`
+ `partition.csv` (Split train/devel/test) with media flat in `mp4/` and `wav/` or in split
folders. Both become the same `VideoEntry` list: bare ids that keep their zeros ("00123"),
splits train/val/test, and media paths that are None where a file is missing, so later steps
can skip or report them instead of crashing halfway through 25,000 videos.

Hume-Vidmimic2 (as its public readers use it; the layout was not checked against the release
itself) ships `train_split.csv` and `valid_split.csv` (Filename, then the 6 EMI intensities),
videos in `raw/<id>.mp4` and 16 kHz audio in `audio/<id>.mp3`; test videos, when listed, come
from a `test_split.csv` with a Filename column (an assumption). Numeric Filenames are written
with five digits, as the media are named.

Every table keeps the task's emotion columns in order (`write_table`), and `read_table` /
`table_emotions` give them back: the emotions are data, not code.

Ids are always read as strings: a CSV reader that guesses types turns "[00123]" into junk or
"00123" into 123, and the media file names would no longer match.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from shared.atomic import write_csv
from shared.errors import UserError
from shared.recognise import described
from eri_downstream.tasks import Task, get_task, task_for, tasks
from shared.tables import csv_records, csv_rows

log = logging.getLogger(__name__)

EMOTIONS = list(tasks()["eri"].emotions)  # Hume-Reaction's seven, the default task's
SPLITS = ("train", "val", "test")
ABAW5_TABLE = "data_info.csv"
MUSE_LABELS, MUSE_PARTITION = "labels.csv", "partition.csv"
VIDMIMIC_SPLITS = {"train": "train_split.csv", "val": "valid_split.csv", "test": "test_split.csv"}
FIXED_COLUMNS = ["file_id", "split", "age", "country", "mp4", "wav"]  # the table's columns beside the emotions
TABLE_COLUMNS = ["file_id", "split", *EMOTIONS, "age", "country", "mp4", "wav"]  # an ERI table
# Split spellings of both layouts (compared lower-case) and the folder names each split's
# media may sit in.
_SPLIT_NAMES = {"train": "train", "val": "val", "devel": "val", "test": "test"}
_SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "devel"), "test": ("test",)}


@dataclass
class VideoEntry:
    """One video: bare id, split, the task's labels in its emotions' order (None if absent),
    media paths (`wav`: the separate audio file, whatever its format)."""

    file_id: str
    split: str
    labels: list[float] | None
    age: str
    country: str
    mp4: Path | None
    wav: Path | None

    @property
    def bracketed(self) -> str:
        """The id as ABAW5 files and submissions spell it."""
        return f"[{self.file_id}]"


Row = tuple[int, dict[str, str]]  # (line number in the file, cells by column)


def _read_csv(path: Path, required: list[str]) -> list[Row]:
    """All rows of a CSV as strings (BOM, CRLF, spaces: shared.tables), or one UserError naming
    the file and what is wrong."""
    if not path.is_file():
        raise UserError(f"{path} not found; expected a CSV with columns {', '.join(required)}")
    return csv_records(path, required)


def _file_id(raw: str, path: Path, line: int) -> str:
    """'[00123]', ' 00123 ' and '00123' all become '00123'."""
    file_id = raw.strip().removeprefix("[").removesuffix("]").strip()
    if not file_id:
        raise UserError(f"{path} line {line}: empty File_ID")
    return file_id


def _split(raw: str, path: Path, line: int) -> str:
    split = _SPLIT_NAMES.get(raw.strip().lower())
    if split is None:
        raise UserError(f"{path} line {line}: unknown split {raw!r}; expected one of "
                        "Train/Val/Test (ABAW5) or train/devel/test (MuSe)")
    return split


def _labels(row: dict[str, str], path: Path, line: int, emotions=EMOTIONS) -> list[float] | None:
    """The labels in `emotions` order; None when all cells are empty (test videos)."""
    cells = [row[name].strip() for name in emotions]
    if not any(cells):
        return None
    values = []
    for name, cell in zip(emotions, cells):
        try:
            value = float(cell)
        except ValueError:
            raise UserError(f"{path} line {line}: {name} = {cell!r} is not a number; labels "
                            "must be numbers in [0, 1] (or all empty)") from None
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise UserError(f"{path} line {line}: {name} = {cell!r} is outside [0, 1]")
        values.append(value)
    return values


def _drop_repeats(rows: list, key, path: Path) -> list:
    """One row per File_ID: a row listed again with the same content is dropped, and said once
    in the log; a File_ID listed with other content is a UserError (which one is right is not
    ours to guess). `key(row)` is the File_ID; rows compare whole, without line numbers."""
    first: dict[str, tuple] = {}
    kept, repeated = [], []
    for row in rows:
        line, content = row[0], row[1:]
        if key(row) not in first:
            first[key(row)] = (line, content)
            kept.append(row)
        elif first[key(row)][1] == content:
            repeated.append(f"{key(row)} (line {line} repeats line {first[key(row)][0]})")
        else:
            raise UserError(f"{path} line {line}: File_ID {key(row)} is listed again with other values "
                            f"(first at line {first[key(row)][0]}); keep one of the two rows")
    if repeated:
        log.warning("%s: %d duplicate row(s) dropped: %s", path, len(repeated), ", ".join(repeated[:5])
                    + (" ..." if len(repeated) > 5 else ""))
    return kept


class _MediaFinder:
    """Finds `<id>.<ext>` under a split folder or flat under the root, listing each folder
    once (thousands of stat calls are slow on network file systems)."""

    def __init__(self, root: Path):
        self.root = root
        self.listings: dict[Path, set[str]] = {}

    def _names(self, folder: Path) -> set[str]:
        if folder not in self.listings:
            self.listings[folder] = ({p.name for p in folder.iterdir()} if folder.is_dir()
                                     else set())
        return self.listings[folder]

    def find(self, split: str, file_id: str, ext: str) -> Path | None:
        folders = [self.root / name / ext for name in _SPLIT_FOLDERS[split]] + [self.root / ext]
        name = f"{file_id}.{ext}"
        return next((folder / name for folder in folders if name in self._names(folder)), None)


def _load_abaw5(root: Path) -> list[VideoEntry]:
    path = root / ABAW5_TABLE
    rows = [(line, _file_id(row["File_ID"], path, line), _split(row["Split"], path, line),
             _labels(row, path, line), row["Age"], row["Country"])
            for line, row in _read_csv(path, ["File_ID", "Split", *EMOTIONS, "Age", "Country"])]
    media = _MediaFinder(root)
    return [VideoEntry(file_id, split, labels, age, country, media.find(split, file_id, "mp4"),
                       media.find(split, file_id, "wav"))
            for _, file_id, split, labels, age, country in _drop_repeats(rows, lambda r: r[1], path)]


def _load_muse(root: Path) -> list[VideoEntry]:
    labels_path, partition_path = root / MUSE_LABELS, root / MUSE_PARTITION
    labelled = [(line, _file_id(row["File_ID"], labels_path, line), _labels(row, labels_path, line))
                for line, row in _read_csv(labels_path, ["File_ID", *EMOTIONS])]
    labels = {file_id: values for _, file_id, values in _drop_repeats(labelled, lambda r: r[1], labels_path)}
    partition = [(line, _file_id(row["File_ID"], partition_path, line), _split(row["Split"], partition_path, line))
                 for line, row in _read_csv(partition_path, ["File_ID", "Split"])]
    partition = [(file_id, split) for _, file_id, split in _drop_repeats(partition, lambda r: r[1], partition_path)]
    unknown = sorted(set(labels) - {file_id for file_id, _ in partition})
    if unknown:
        raise UserError(f"{labels_path} lists {len(unknown)} id(s) absent from "
                        f"{partition_path}, e.g. {unknown[0]}; are both from the same release?")
    media = _MediaFinder(root)
    return [VideoEntry(file_id, split, labels.get(file_id), "", "",
                       media.find(split, file_id, "mp4"), media.find(split, file_id, "wav"))
            for file_id, split in partition]


def _vidmimic_id(raw: str, path: Path, line: int) -> str:
    file_id = _file_id(raw, path, line)
    return file_id.zfill(5) if file_id.isdigit() else file_id  # a spreadsheet drops the zeros


def _load_vidmimic(root: Path) -> list[VideoEntry]:
    emotions = get_task("emi").emotions
    rows = []
    for split, name in VIDMIMIC_SPLITS.items():
        path = root / name
        if split == "test" and not path.is_file():
            continue
        need = ["Filename", *emotions] if split != "test" else ["Filename"]
        rows += [(line, _vidmimic_id(row["Filename"], path, line), split,
                  _labels(row, path, line, emotions) if split != "test" else None)
                 for line, row in _read_csv(path, need)]
    kept = _drop_repeats(rows, lambda r: r[1], root / "train_split.csv, valid_split.csv")
    audio = {p.stem: p for p in (root / "audio").glob("*") if p.suffix.lower() in (".mp3", ".wav", ".flac")}
    return [VideoEntry(file_id, split, labels, "", "", root / "raw" / f"{file_id}.mp4"
                       if (root / "raw" / f"{file_id}.mp4").is_file() else None, audio.get(file_id))
            for _, file_id, split, labels in kept]


def dataset_task(root: Path | str) -> Task:
    """The task a raw dataset folder serves, told by its layout (see load_dataset)."""
    root = Path(root).expanduser().resolve()
    if (root / VIDMIMIC_SPLITS["train"]).is_file() or (root / VIDMIMIC_SPLITS["val"]).is_file():
        return get_task("emi")
    return get_task("eri")


def load_dataset(root: Path | str) -> list[VideoEntry]:
    """Every video listed by the ABAW5 or MuSe 2022 tables (Hume-Reaction) or the split tables of
    Hume-Vidmimic2 under `root`, in table order."""
    root = Path(root).expanduser().resolve()
    if (root / ABAW5_TABLE).is_file():
        return _load_abaw5(root)
    if (root / MUSE_LABELS).is_file() or (root / MUSE_PARTITION).is_file():
        return _load_muse(root)
    if dataset_task(root).name == "emi":
        return _load_vidmimic(root)
    raise UserError(f"{root} holds neither {ABAW5_TABLE} (ABAW5) nor {MUSE_LABELS} + {MUSE_PARTITION} (MuSe "
                    f"2022) nor {VIDMIMIC_SPLITS['train']} (Hume-Vidmimic2); point to the Hume-Reaction or "
                    f"Hume-Vidmimic2 folder{described(root)}")


def splits_of(entries: list[VideoEntry], path: Path | str, need: tuple[str, ...] = ("train", "val")
              ) -> dict[str, list[VideoEntry]]:
    """The entries of each split; a UserError naming the table when a split in `need` has no
    labelled video (training needs train and val: a table written for other splits only)."""
    by_split = {s: [e for e in entries if e.split == s] for s in SPLITS}
    missing = [s for s in need if not any(e.labels is not None for e in by_split[s])]
    if missing:
        listed = ", ".join(f"{len(v)} {s}" for s, v in by_split.items() if v) or "no video"
        raise UserError(f"{path}: no labelled {' and no labelled '.join(missing)} videos (it lists {listed}); run "
                        f"`eri_downstream/extract.py table --splits {','.join(missing)}` (and the steps) for them")
    return by_split


def summary(entries: list[VideoEntry]) -> str:
    """Per split: videos, labelled videos, and present/missing mp4 and wav files."""
    lines = [f"{'split':<6}{'videos':>8}{'labelled':>10}{'mp4':>7}{'no-mp4':>8}{'wav':>7}"
             f"{'no-wav':>8}"]
    for split in SPLITS:
        group = [e for e in entries if e.split == split]
        mp4 = sum(e.mp4 is not None for e in group)
        wav = sum(e.wav is not None for e in group)
        labelled = sum(e.labels is not None for e in group)
        lines.append(f"{split:<6}{len(group):>8}{labelled:>10}{mp4:>7}{len(group) - mp4:>8}"
                     f"{wav:>7}{len(group) - wav:>8}")
    return "\n".join(lines)


def write_table(entries: list[VideoEntry], path: Path | str, emotions=EMOTIONS) -> None:
    """The normalised list as CSV (file_id, split, the emotions, age, country, mp4, wav); labels
    written with full precision. Written atomically."""
    rows = []
    for e in entries:
        labels = [repr(v) for v in e.labels] if e.labels is not None else [""] * len(emotions)
        rows.append([e.file_id, e.split, *labels, e.age, e.country,
                     "" if e.mp4 is None else str(e.mp4), "" if e.wav is None else str(e.wav)])
    write_csv(path, [*FIXED_COLUMNS[:2], *emotions, *FIXED_COLUMNS[2:]], rows)


def update_table(entries: list[VideoEntry], path: Path | str, splits: set[str], emotions=EMOTIONS) -> list[VideoEntry]:
    """Write `entries` (the videos of `splits`) into the table at `path`, keeping its rows of
    every other split: a run over some splits never drops what a run over others listed.
    Returns the whole table, ordered train, val, test (stable within a split)."""
    path = Path(path)
    held = table_emotions(path) if path.is_file() else list(emotions)
    if held != list(emotions):
        raise UserError(f"{path} holds the emotions {', '.join(held)}, this dataset "
                        f"{', '.join(emotions)}: one feature store serves one task; give another --store")
    new = {e.file_id for e in entries}
    kept = [e for e in read_table(path) if e.split not in splits and e.file_id not in new] if path.is_file() else []
    table = sorted(kept + entries, key=lambda e: SPLITS.index(e.split))
    write_table(table, path, emotions)
    return table


def table_emotions(path: Path | str) -> list[str]:
    """The emotion columns of a table written by `write_table`, in order."""
    rows = csv_rows(path, "the feature store's videos.csv")
    if not rows:
        raise UserError(f"{path}: empty; expected a header with {', '.join(FIXED_COLUMNS)} and the emotions")
    return [name.strip() for name in rows[0][1] if name.strip() not in FIXED_COLUMNS]


def table_task(path: Path | str) -> Task:
    """The task of a table written by `write_table`, told by its emotion columns (a task of its
    own when they match no known one)."""
    return task_for(table_emotions(path))


def read_table(path: Path | str) -> list[VideoEntry]:
    """Entries written by `write_table`; relative media paths count from the table's folder."""
    path = Path(path)
    rows = []
    emotions = table_emotions(path) if path.is_file() else EMOTIONS
    for line, row in _read_csv(path, [*FIXED_COLUMNS, *emotions]):
        media = [path.parent / row[kind] if row[kind] else None for kind in ("mp4", "wav")]
        rows.append((line, _file_id(row["file_id"], path, line), _split(row["split"], path, line),
                     _labels(row, path, line, emotions), row["age"], row["country"], *media))
    return [VideoEntry(*row[1:]) for row in _drop_repeats(rows, lambda r: r[1], path)]
