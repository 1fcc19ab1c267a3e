"""Labels of a Hugging Face dataset as shard metadata, optionally mapped to AffectNet's expressions.

`--label-map angry=anger,disgust=5,...` names, for each label of the dataset (its ClassLabel
name or its value, compared case-insensitively), an AffectNet expression (name or code 0-10):
the shards then carry `expression`, `expression_name` and the `.cls` code the fine-tuning
stream reads, as AffectNet's own shards do. Code 10 (No-Face) makes a `no-face` reject.
"""
from __future__ import annotations

import math
from typing import Any

from .affectnet import EXPRESSIONS, NO_FACE
from ..items import Reject
from ...errors import UserError


def parse_label_map(spec: str) -> dict[str, int]:
    """'angry=anger,3=Happy' -> {'angry': 6, '3': 1}: dataset label (lower case) -> expression code.
    Raises UserError for a malformed entry, an unknown expression or a label listed twice."""
    names = {name.lower(): code for code, name in enumerate(EXPRESSIONS)}
    expected = (f"comma-separated 'label=expression' pairs, the expression one of {', '.join(EXPRESSIONS)} "
                f"or its code 0-{NO_FACE}, e.g. 'angry=anger,happy=1'")
    out: dict[str, int] = {}
    for entry in (e.strip() for e in spec.split(",")):
        label, sep, target = (p.strip() for p in entry.partition("="))
        if not entry or not sep or not label or not target:
            raise UserError(f"--label-map: {entry!r} is not 'label=expression'; expected {expected}")
        code = int(target) if target.isdigit() else names.get(target.lower())
        if code is None or not 0 <= code <= NO_FACE:
            raise UserError(f"--label-map: {target!r} (for {label!r}) is not an AffectNet expression; expected {expected}")
        if label.lower() in out:
            raise UserError(f"--label-map: label {label!r} is listed twice")
        out[label.lower()] = code
    return out


def label_text(value: Any, names: list[str] | None) -> str | None:
    """How a label is named in a map: its ClassLabel name, else its value as text (3.0 -> '3').
    None for a missing label (null, or ClassLabel's -1)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or (names is not None and value == -1):
        return None
    if names is not None:
        return names[value]
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class Labeller:
    """Turns one row's label value into sample metadata, or a Reject.

    `names`: the ClassLabel names when the column is a ClassLabel; `mapping`: parse_label_map's
    result or None (then the dataset's own label is stored, under `label` / `label_name`).
    """

    def __init__(self, column: str, names: list[str] | None, mapping: dict[str, int] | None):
        self.column, self.names, self.mapping = column, names, mapping
        self.mapped = 0  # rows whose label the map knew: none at all means a wrong map
        self.unmapped: dict[str, int] = {}

    def __call__(self, value: Any, path: str, split: str) -> tuple[dict, Reject | None]:
        if self.names is not None and value is not None and not -1 <= value < len(self.names):
            return {}, Reject(path, split, "bad-row", f"{self.column} {value} is outside its ClassLabel's "
                                                      f"{len(self.names)} names")
        text = label_text(value, self.names)
        meta = {"label": as_json(value) if text is not None else None}
        if self.names is not None and text is not None:
            meta["label_name"] = text
        if self.mapping is None:
            if text is None:
                meta["label_missing"] = f"column {self.column!r} is empty in this row"
            return meta, None
        return self._mapped(meta, text, path, split)

    def _mapped(self, meta: dict, text: str | None, path: str, split: str) -> tuple[dict, Reject | None]:
        code = None if text is None else self.mapping.get(text.lower())
        if code is None and text is not None and self.names is not None:
            code = self.mapping.get(str(meta["label"]))  # a ClassLabel may be mapped by its index too
        if text is None:
            reason = f"column {self.column!r} is empty in this row"
        elif code is None:
            reason = f"label {text!r} is not in --label-map"
            self.unmapped[text] = self.unmapped.get(text, 0) + 1
        else:
            self.mapped += 1
            if code == NO_FACE:
                return meta, Reject(path, split, "no-face", f"label {text!r} maps to {EXPRESSIONS[NO_FACE]}")
            return {**meta, "expression": code, "expression_name": EXPRESSIONS[code]}, None
        return {**meta, "expression": None, "expression_missing": reason}, None


def check_mapped(labellers: list[Labeller], location: str) -> None:
    """A map that knows none of the labels found (in any split) is a wrong map, not missing labels."""
    if not labellers or labellers[0].mapping is None or any(lab.mapped for lab in labellers):
        return
    unmapped = sorted({text for lab in labellers for text in lab.unmapped})
    if unmapped:
        raise UserError(f"{location}: --label-map names none of the labels in column {labellers[0].column!r} "
                        f"(found: {', '.join(unmapped[:12])}; the map has: {', '.join(labellers[0].mapping)})")


def as_json(value: Any) -> Any:
    """A cell as the sample JSON can hold it: numbers, text, lists and dicts as they are, NaN as
    None, anything else (dates, bytes) as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): as_json(v) for k, v in value.items()}
    return str(value)
