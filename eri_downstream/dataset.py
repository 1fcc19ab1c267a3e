"""The Hume-Reaction video list: one reader for the ABAW5 and MuSe 2022 layouts.

ABAW5 ships `data_info.csv` (File_ID "[00123]", Split Train/Val/Test, 7 emotions, Age,
Country) with media in `{train,val,test}/{mp4,wav}/<id>.<ext>`; MuSe 2022 ships `labels.csv`
+ `partition.csv` (Split train/devel/test) with media flat in `mp4/` and `wav/` or in split
folders. Both become the same `VideoEntry` list: bare ids that keep their zeros ("00123"),
splits train/val/test, and media paths that are None where a file is missing, so later steps
can skip or report them instead of crashing halfway through 25,000 videos.

Ids are always read as strings: a CSV reader that guesses types turns "[00123]" into junk or
"00123" into 123, and the media file names would no longer match.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from shared.errors import UserError

EMOTIONS = ["Adoration", "Amusement", "Anxiety", "Disgust", "Empathic-Pain", "Fear", "Surprise"]
SPLITS = ("train", "val", "test")
ABAW5_TABLE = "data_info.csv"
MUSE_LABELS, MUSE_PARTITION = "labels.csv", "partition.csv"
TABLE_COLUMNS = ["file_id", "split", *EMOTIONS, "age", "country", "mp4", "wav"]
# Split spellings of both layouts (compared lower-case) and the folder names each split's
# media may sit in.
_SPLIT_NAMES = {"train": "train", "val": "val", "devel": "val", "test": "test"}
_SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "devel"), "test": ("test",)}


@dataclass
class VideoEntry:
    """One video: bare id, split, 7 labels in EMOTIONS order (None if absent), media paths."""

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
    """All rows of a CSV as strings, or one UserError naming the file and what is wrong."""
    if not path.is_file():
        raise UserError(f"{path} not found; expected a CSV with columns {', '.join(required)}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, restval=None)
            header = [name.strip() for name in reader.fieldnames or []]
            missing = [name for name in required if name not in header]
            if missing:
                raise UserError(f"{path}: missing column(s) {', '.join(missing)}; expected "
                                f"columns {', '.join(required)}")
            reader.fieldnames = header
            rows = [(reader.line_num, row) for row in reader]
    except (csv.Error, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not a readable CSV file ({err})") from None
    for line, row in rows:
        if None in row or None in row.values():
            raise UserError(f"{path} line {line}: {len(header)} fields expected "
                            f"(columns {', '.join(header)})")
    return rows


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


def _labels(row: dict[str, str], path: Path, line: int) -> list[float] | None:
    """The 7 labels in EMOTIONS order; None when all cells are empty (test videos)."""
    cells = [row[name].strip() for name in EMOTIONS]
    if not any(cells):
        return None
    values = []
    for name, cell in zip(EMOTIONS, cells):
        try:
            value = float(cell)
        except ValueError:
            raise UserError(f"{path} line {line}: {name} = {cell!r} is not a number; labels "
                            "must be numbers in [0, 1] (or all empty)") from None
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise UserError(f"{path} line {line}: {name} = {cell!r} is outside [0, 1]")
        values.append(value)
    return values


def _no_duplicates(ids: list[str], path: Path) -> None:
    repeated = [file_id for file_id, count in Counter(ids).items() if count > 1]
    if repeated:
        raise UserError(f"{path}: File_ID {repeated[0]} is listed more than once")


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
    rows = _read_csv(path, ["File_ID", "Split", *EMOTIONS, "Age", "Country"])
    media = _MediaFinder(root)
    entries = []
    for line, row in rows:
        file_id, split = _file_id(row["File_ID"], path, line), _split(row["Split"], path, line)
        entries.append(VideoEntry(file_id, split, _labels(row, path, line), row["Age"].strip(),
                                  row["Country"].strip(), media.find(split, file_id, "mp4"),
                                  media.find(split, file_id, "wav")))
    _no_duplicates([e.file_id for e in entries], path)
    return entries


def _load_muse(root: Path) -> list[VideoEntry]:
    labels_path, partition_path = root / MUSE_LABELS, root / MUSE_PARTITION
    labels = {}
    for line, row in _read_csv(labels_path, ["File_ID", *EMOTIONS]):
        labels[_file_id(row["File_ID"], labels_path, line)] = _labels(row, labels_path, line)
    partition = [(_file_id(row["File_ID"], partition_path, line),
                  _split(row["Split"], partition_path, line))
                 for line, row in _read_csv(partition_path, ["File_ID", "Split"])]
    _no_duplicates([file_id for file_id, _ in partition], partition_path)
    unknown = sorted(set(labels) - {file_id for file_id, _ in partition})
    if unknown:
        raise UserError(f"{labels_path} lists {len(unknown)} id(s) absent from "
                        f"{partition_path}, e.g. {unknown[0]}; are both from the same release?")
    media = _MediaFinder(root)
    return [VideoEntry(file_id, split, labels.get(file_id), "", "",
                       media.find(split, file_id, "mp4"), media.find(split, file_id, "wav"))
            for file_id, split in partition]


def load_dataset(root: Path | str) -> list[VideoEntry]:
    """Every video listed by the ABAW5 or MuSe 2022 tables under `root`, in table order."""
    root = Path(root).expanduser().resolve()
    if (root / ABAW5_TABLE).is_file():
        return _load_abaw5(root)
    if (root / MUSE_LABELS).is_file() or (root / MUSE_PARTITION).is_file():
        return _load_muse(root)
    raise UserError(f"{root} holds neither {ABAW5_TABLE} (ABAW5) nor {MUSE_LABELS} + "
                    f"{MUSE_PARTITION} (MuSe 2022); point to the Hume-Reaction folder")


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


def write_table(entries: list[VideoEntry], path: Path | str) -> None:
    """The normalised list as CSV (TABLE_COLUMNS); labels written with full precision."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(TABLE_COLUMNS)
        for e in entries:
            labels = [repr(v) for v in e.labels] if e.labels is not None else [""] * len(EMOTIONS)
            writer.writerow([e.file_id, e.split, *labels, e.age, e.country,
                             "" if e.mp4 is None else str(e.mp4),
                             "" if e.wav is None else str(e.wav)])


def read_table(path: Path | str) -> list[VideoEntry]:
    """Entries written by `write_table`; relative media paths count from the table's folder."""
    path = Path(path)
    entries = []
    for line, row in _read_csv(path, TABLE_COLUMNS):
        media = [path.parent / row[kind].strip() if row[kind].strip() else None
                 for kind in ("mp4", "wav")]
        entries.append(VideoEntry(_file_id(row["file_id"], path, line),
                                  _split(row["split"], path, line), _labels(row, path, line),
                                  row["age"].strip(), row["country"].strip(), *media))
    _no_duplicates([e.file_id for e in entries], path)
    return entries
