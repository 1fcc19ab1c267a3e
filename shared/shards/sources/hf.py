"""Hugging Face datasets: any image dataset `datasets` loads, as face shards.

    face-shards hf /data/fer2013_saved --label-column label --label-map angry=anger,... --out shards/fer
    face-shards hf /data/affectnet.parquet --image-column image --out shards/affectnet_hf
    face-shards hf Org/dataset --split train,test --out shards/org      (a Hub repo id, online)

PATH_OR_REPO is a `save_to_disk` folder (read with `load_from_disk`), a .parquet or .arrow
file, a folder `load_dataset` reads (parquet files named by split, an imagefolder), or a Hub
repo id. The image column may be an `Image` feature or raw bytes or paths (cast to
`Image(decode=False)`, so every image is decoded here, one at a time: an undecodable one is a
reject, not a crash). Images are read from the Arrow files `datasets` keeps (memory-mapped), by
row, in every worker.

The face: most expression datasets on the Hub (FER-style, AffectNet-style repacks) are already
face crops, so without `--box-column` the whole image is the face, as for CASIA-WebFace and
aligned CelebA: the centred square of the shorter side, resized; `--margin` does not apply
(the dataset's own framing is kept). `--box-column` names a column of [x, y, width, height]
in displayed pixels (AffectNet's convention; null or NaN: the whole image), and then the
margin is added as for AffectNet.

Sample keys are `<name>-<split>_<row>`; splits named test, validation, valid, val, eval or dev
are held out of pretraining unless `--holdout` says otherwise.
"""
from __future__ import annotations

import argparse
import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .hf_labels import Labeller, as_json, check_mapped, parse_label_map
from ..items import Item, Reject, Scan, sample_key
from ...errors import UserError
from ...face_crop import xywh_to_xyxy

HOLDOUT_NAMES = ("test", "validation", "valid", "val", "eval", "dev")
FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow"}
TABLE_SUFFIXES = (".parquet", ".arrow", ".csv", ".json", ".jsonl")  # hashed into the manifest
# fields every sample's JSON has (writer.encode_item) or this reader sets
RESERVED = {"key", "source", "split", "path", "crop_box", "orig_size", "box", "holdout", "row", "image_path",
            "label", "label_name", "label_missing", "expression", "expression_name", "expression_missing"}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", metavar="PATH_OR_REPO",
                   help="a save_to_disk folder, a .parquet / .arrow file, a folder load_dataset reads, or a Hub repo id")
    p.add_argument("--image-column", default="image", help="column holding the images (default %(default)s)")
    p.add_argument("--label-column", help="column holding the labels (stored as label / label_name)")
    p.add_argument("--label-map", help="dataset label -> AffectNet expression, e.g. 'angry=anger,happy=1' "
                                       "(stored as expression and .cls, as AffectNet's shards)")
    p.add_argument("--box-column", help="column with one face box [x, y, width, height] per row "
                                        "(default: the image is the face)")
    p.add_argument("--keep-columns", help="comma-separated columns copied into each sample's JSON (e.g. valence,arousal)")
    p.add_argument("--split", help="comma-separated splits to convert (default: all)")
    p.add_argument("--holdout", help=f"comma-separated splits held out of pretraining, or 'none' "
                                     f"(default: those named {', '.join(HOLDOUT_NAMES)})")
    p.add_argument("--name", help="source name, the sample keys' prefix (default: from PATH_OR_REPO)")
    p.add_argument("--cache-dir", help="datasets' cache folder for parquet files and Hub downloads "
                                       "(default: datasets' own, HF_DATASETS_CACHE)")


def scan_args(args: argparse.Namespace) -> Scan:
    """`scan` with the command line's options."""
    if args.label_map and not args.label_column:
        raise UserError("--label-map needs --label-column (the column whose labels it maps)")
    if args.no_progress:
        import datasets
        datasets.disable_progress_bars()
    columns = Columns(args.image_column, args.label_column,
                      parse_label_map(args.label_map) if args.label_map else None, args.box_column,
                      _names(args.keep_columns) or [])
    return scan(args.root, columns, splits=_names(args.split), holdout=_names(args.holdout), name=args.name,
                cache_dir=args.cache_dir)


@dataclass
class Columns:
    """Which columns hold what; `label_map` as parse_label_map returns it."""

    image: str = "image"
    label: str | None = None
    label_map: dict[str, int] | None = None
    box: str | None = None
    keep: list[str] = field(default_factory=list)  # copied into each sample's JSON under their names

    def check(self, ds, split: str, location: str) -> None:
        missing = [c for c in (self.image, self.label, self.box, *self.keep) if c and c not in ds.features]
        if missing:
            available = ", ".join(f"{c} ({_describe(f)})" for c, f in ds.features.items())
            raise UserError(f"{location} split {split}: no column {', '.join(map(repr, missing))}; "
                            f"available: {available}")
        taken = sorted(set(self.keep) & RESERVED)
        if taken:
            raise UserError(f"--keep-columns {', '.join(taken)}: the sample JSON already has a field of that name")


def scan(location: str, columns: Columns = Columns(), splits: list[str] | None = None,
         holdout: list[str] | None = None, name: str | None = None, cache_dir: str | None = None) -> Scan:
    """Load the dataset and list one Item per row of the chosen splits (Rejects for bad rows).

    Raises UserError when it cannot be loaded, a split or column does not exist, the image
    column cannot be images, or the label map names none of its labels.
    """
    loaded, root, list_files = load(str(location), cache_dir)
    available = list(loaded)
    chosen = splits or available
    unknown = [s for s in chosen if s not in loaded]
    if unknown:
        raise UserError(f"{location}: no split {', '.join(unknown)}; available: {', '.join(available)}")
    source = _source_name(name, str(location))
    held = set(chosen) & set(HOLDOUT_NAMES) if holdout is None else {s for s in holdout if s != "none"}
    if held - set(available):  # a misspelt evaluation split would silently reach pretraining
        raise UserError(f"--holdout {', '.join(sorted(held - set(available)))}: no such split; "
                        f"available: {', '.join(available)}")
    items, rejects, fingerprints, labellers = [], [], {}, []
    for split in chosen:
        ds = loaded[split]
        columns.check(ds, split, str(location))
        if columns.label:  # per split: each split's ClassLabel names its own codes
            names = getattr(ds.features[columns.label], "names", None)
            labellers.append(Labeller(columns.label, names, columns.label_map))
        fingerprints[split] = getattr(ds, "_fingerprint", None)
        for item, reject in _rows(ds, split, source, columns, labellers[-1] if labellers else None, str(location)):
            (items if item is not None else rejects).append(item if item is not None else reject)
    check_mapped(labellers, str(location))
    where = str(root.resolve()) if root.exists() else str(location)  # a re-run may name it another way
    info = {"location": where, "splits": chosen, "image_column": columns.image, "label_column": columns.label,
            "label_map": columns.label_map, "box_column": columns.box, "keep_columns": columns.keep,
            "holdout": sorted(held), "fingerprints": fingerprints}
    return Scan(source, root, items, rejects, list_files, holdout_splits=held, info=info)


def load(location: str, cache_dir: str | None):
    """(split name -> Dataset, root for the manifest, files to hash) for PATH_OR_REPO."""
    import datasets
    from datasets.exceptions import DatasetsError

    path = Path(location)
    # datasets logs a failure before raising it, and the raise becomes one line here: only
    # critical messages pass while it loads; its own level is restored afterwards
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            loaded = datasets.load_from_disk(str(path))
            files = sorted(path.glob("*.json")) + sorted(path.glob("*/*.json"))
        elif path.is_file():
            builder = FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise UserError(f"{path}: not a {' or '.join(FILE_BUILDERS)} file; give a save_to_disk folder, "
                                "a .parquet / .arrow file, a folder load_dataset reads or a Hub repo id")
            loaded = datasets.load_dataset(builder, data_files=str(path), cache_dir=cache_dir)
            files = [path]
        elif path.is_dir():
            loaded = datasets.load_dataset(str(path), cache_dir=cache_dir)
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in TABLE_SUFFIXES)
        elif _REPO_ID.match(location) and not location.startswith("."):
            loaded = datasets.load_dataset(location, cache_dir=cache_dir)
            files = []
        else:
            raise UserError(f"{location}: no such file or folder, and not a Hub repo id (owner/name)")
    except (DatasetsError, OSError, ValueError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        what = "" if path.exists() else "not a local file or folder, and as a Hub repo id "
        raise UserError(f"{location}: {what}datasets cannot load it ({type(err).__name__}: {message})") from None
    finally:
        datasets.logging.set_verbosity(verbosity)
    if isinstance(loaded, datasets.Dataset):
        loaded = {str(loaded.split) if loaded.split else "train": loaded}
    return dict(loaded), path, files


def _describe(feature) -> str:
    if hasattr(feature, "names"):
        return f"ClassLabel {', '.join(feature.names[:8])}{', ...' if len(feature.names) > 8 else ''}"
    return getattr(feature, "dtype", None) if type(feature).__name__ == "Value" else type(feature).__name__


def _rows(ds, split: str, source: str, columns: Columns, labeller: Labeller | None, location: str):
    """(Item, None) or (None, Reject) for every row, file by file of the split's Arrow files."""
    files = [f["filename"] for f in ds.cache_files]
    if not files or getattr(ds, "_indices", None) is not None:
        raise UserError(f"{location} split {split}: not backed by Arrow files as stored (in memory, or a "
                        "selection of rows); save it with save_to_disk and convert that folder")
    row = 0
    for file in files:
        part = _image_table(file, columns.image, location, split)
        values = {c: part.data.column(c).to_pylist() for c in (columns.label, columns.box, *columns.keep) if c}
        for local in range(part.num_rows):
            path = f"{split}[{row}]"
            meta, reject = labeller(values[labeller.column][local], path, split) if labeller else ({}, None)
            box, bad = _box(values[columns.box][local]) if columns.box else (None, None)
            reject = reject or (Reject(path, split, "bad-row", f"{columns.box} {bad}") if bad else None)
            if reject is not None:
                yield None, reject
            else:
                kept = {c: as_json(values[c][local]) for c in columns.keep}
                yield Item(sample_key(source, path), split, path, file, offset=local, box=box,
                           meta={"row": row, **kept, **meta}, origin=f"{split} row {row}", column=columns.image), None
            row += 1
    if row != ds.num_rows:
        raise UserError(f"{location} split {split}: its Arrow files hold {row} rows, the dataset {ds.num_rows}")


def _image_table(file: str, column: str, location: str = "", split: str = ""):
    """The Arrow file's image column as `Image(decode=False)`: {'bytes', 'path'} per row."""
    from datasets import Dataset, Image

    part = Dataset.from_file(file)
    try:
        return part.cast_column(column, Image(decode=False))
    except (TypeError, ValueError, NotImplementedError) as err:
        raise UserError(f"{location} split {split}: column {column!r} ({_describe(part.features[column])}) "
                        f"cannot be images ({type(err).__name__}); an Image feature, bytes or file paths "
                        "are expected") from None


@functools.lru_cache(maxsize=8)
def _opened(file: str, column: str):
    """Each worker process opens (memory-maps) an Arrow file once."""
    return _image_table(file, column).select_columns([column])


def read_image(item: Item) -> tuple[bytes, dict]:
    """The encoded image of `item`'s row, and {'image_path': ...} when the dataset names its file.
    Raises FileNotFoundError (one argument: the reason) for a row without an image or whose
    image is a path that does not exist."""
    cell = _opened(item.file, item.column)[item.offset][item.column]
    data, path = (cell or {}).get("bytes"), (cell or {}).get("path")
    extra = {"image_path": path} if path else {}
    if data is not None:
        return data, extra
    if not path:
        raise FileNotFoundError(f"column {item.column!r} is empty in this row")
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: the image file the dataset names does not exist")
    return Path(path).read_bytes(), extra


def _box(value: Any) -> tuple[tuple[float, float, float, float] | None, str | None]:
    """A cell [x, y, width, height] -> ((x0, y0, x1, y1), None); (None, None) for a missing box,
    (None, why) for a malformed one."""
    if value is None:
        return None, None
    try:
        x, y, w, h = (float(v) for v in value)
    except (TypeError, ValueError):
        return None, f"{str(value)[:60]!r} is not [x, y, width, height]"
    if any(math.isnan(v) for v in (x, y, w, h)):
        return None, None
    if w <= 0 or h <= 0 or not all(math.isfinite(v) for v in (x, y, w, h)):
        return None, f"{[x, y, w, h]} has no area"
    return xywh_to_xyxy((x, y, w, h)), None


def _source_name(name: str | None, location: str) -> str:
    """A key prefix without '-' or '.' (the stream splits keys there): from --name or the location."""
    base = name or Path(location.rstrip("/")).stem
    clean = re.sub(r"[^a-z0-9_]+", "_", base.lower()).strip("_")
    if not clean:
        what = f"--name {name!r}" if name else f"no source name can be made from {location!r}"
        raise UserError(f"{what}: give --name with letters or digits")
    return clean


def _names(spec: str | None) -> list[str] | None:
    return [s.strip() for s in spec.split(",") if s.strip()] if spec else None
