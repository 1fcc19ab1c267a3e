"""What a config field may hold and what it means, declared as data on the dataclass field, and
the YAML listing of a whole configuration (`--print-config`) built from it.

    mask_ratio: float = ranged(0.75, ge=0, lt=1)  # the share of patches hidden
    mode: str = one_of("resampled", "resampled", "exact")

`check_values` refuses a value outside its range in one line naming the key, the value and the
range (`model.mask_ratio=1.5: must be in [0, 1)`); None always passes (an unset optional), and
in a list or tuple every item is checked. A field's doc is its `metadata["doc"]` or else the
comments next to it in the dataclass's source.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import re
import textwrap
import tokenize
from dataclasses import dataclass
from typing import Any

import yaml

from .errors import UserError


@dataclass(frozen=True)
class Range:
    """Bounds of a number: ge/le inclusive, gt/lt exclusive; None is unbounded."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def holds(self, value: float) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def __str__(self) -> str:
        low = (f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}" if self.gt is not None else None)
        high = (f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})" if self.lt is not None else None)
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f"{'>=' if self.ge is not None else '>'} {low[1:]}"
        return f"{'<=' if self.le is not None else '<'} {high[:-1]}" if high else "any number"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def ranged(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
           le: float | None = None, lt: float | None = None, doc: str | None = None):
    """A dataclass field whose value (each item of a list / tuple value) must lie in the range."""
    return _field(default, {"range": Range(ge=ge, gt=gt, le=le, lt=lt)}, doc)


def one_of(default: Any, *choices: Any, doc: str | None = None):
    """A dataclass field whose value (each item of a list value) must be one of `choices`."""
    return _field(default, {"choices": tuple(choices)}, doc)


def _field(default, metadata: dict, doc: str | None):
    if doc:
        metadata["doc"] = doc
    if isinstance(default, (list, dict)):  # mutable: one copy per instance
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def check_values(cfg: Any, prefix: str = "") -> None:
    """Raise UserError for the first value outside its declared range or choices."""
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            check_values(value, key + ".")
            continue
        rule = f.metadata.get("range") or f.metadata.get("choices")
        if rule is None or value is None:
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        if isinstance(rule, Range):
            bad = [v for v in items if isinstance(v, (int, float)) and not rule.holds(v)]
            need = f"must be {rule}"
        else:
            bad = [v for v in items if v not in rule]
            need = f"must be one of {', '.join(flow(c) for c in rule)}"
        if bad:
            many = isinstance(value, (list, tuple))
            which = f" (not {', '.join(flow(v) for v in bad)})" if many else ""
            raise UserError(f"{key}={flow(value)}: {'each item ' if many else ''}{need}{which}")


def rule_of(f: dataclasses.Field) -> str:
    """The field's range or choices in words ('' when it has none)."""
    if "range" in f.metadata:
        return f"{f.metadata['range']}"
    if "choices" in f.metadata:
        return f"one of {', '.join(flow(c) for c in f.metadata['choices'])}"
    return ""


def flow(value: Any) -> str:
    """`value` as one line of YAML (flow style)."""
    return yaml.safe_dump(plain(value), default_flow_style=True, width=10**9).strip().removesuffix("\n...").strip()


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """name -> doc of each field of dataclass `cls`: `metadata["doc"]`, else the comment lines right
    above the field and the comment at the end of its line, joined."""
    docs: dict[str, str] = {}
    try:
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        lines = []
    source = textwrap.dedent("".join(lines))
    comments: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0] - 1] = tok.string.lstrip("#").strip()
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    text = source.splitlines()
    above: list[str] = []
    for i, line in enumerate(text):
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(comments.get(i, stripped.lstrip("#").strip()))
            continue
        found = re.match(r"\s+(\w+)\s*:", line)
        if found and not stripped.startswith(("def ", "return")):
            inline = comments.get(i) if not stripped.startswith("#") else None
            docs[found.group(1)] = " ".join([*above, *([inline] if inline else [])])
        above = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("doc"):
            docs[f.name] = f.metadata["doc"]
    return docs


def describe(cfg: Any, header: list[str] | None = None) -> str:
    """`cfg` (a config dataclass) as YAML that loads back to the same values: every key with its
    value, and a comment with the default (the value of a default-constructed config), the range
    or choices and the field's doc. `header` lines come first (as comments, except `key: value`)."""
    out = list(header or [])
    _describe(cfg, type(cfg)(), 0, out)
    return "\n".join(out) + "\n"


def _describe(cfg: Any, default: Any, depth: int, out: list[str]) -> None:
    docs, pad = field_docs(type(cfg)), "  " * depth
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        base = getattr(default, f.name, None) if default is not None else None
        doc = docs.get(f.name, "")
        if dataclasses.is_dataclass(value):
            if doc:
                out.append(f"{pad}# {doc}")
            out.append(f"{pad}{f.name}:")
            _describe(value, base, depth + 1, out)
            continue
        notes = [f"default {flow(base)}", rule_of(f), doc]
        out.append(f"{pad}{f.name}: {flow(value)}  # " + "; ".join(n for n in notes if n))


def plain(value):
    """Dicts, lists and scalars only: tuples become lists."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
