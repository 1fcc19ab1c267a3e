"""Where the shards of each source are, and how much of the mixture each source makes up.

A source is named and points at its shards in any of the ways clusters store them:
- a shard folder (or its manifest.json) written by `face-shards`, local or any fsspec URL:
  the shards of the chosen splits, with their sample counts;
- one or more shard URL patterns: local paths, brace patterns such as
  `faces-{000000..000127}.tar`, `pipe:` commands, fsspec URLs such as `s3://bucket/x.tar`
  (several joined by `::`).
Weights say what fraction of the pretraining samples each source contributes.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlparse

from webdataset.shardlists import expand_urls

from ..errors import UserError
from ..shards import manifest as mf


@dataclass
class Source:
    name: str
    urls: list[str]
    counts: list[int] | None = None  # samples per shard, when a manifest says
    weight: float | None = None  # None: not given (1 in the resampled mixture; exact mode: natural share)
    classes: list[dict[int, int]] | None = None  # samples per class code per shard, when a manifest says

    @property
    def samples(self) -> int | None:
        return sum(self.counts) if self.counts is not None else None

    @property
    def share(self) -> float:
        """The weight, 1 when none was given."""
        return 1.0 if self.weight is None else self.weight


def parse_weights(spec: str | dict[str, float] | None) -> dict[str, float]:
    """`"affectnet:1,celeba:0.5"` (or a dict) -> {"affectnet": 1.0, "celeba": 0.5}."""
    if spec is None or spec == "":
        return {}
    if isinstance(spec, dict):
        pairs = list(spec.items())
    else:
        pairs = []
        for part in str(spec).split(","):
            name, sep, value = part.strip().rpartition(":")
            if not sep or not name:
                raise UserError(f"weights {spec!r}: expected 'name:weight,name:weight,...'")
            pairs.append((name.strip(), value))
    weights = {}
    for name, value in pairs:
        try:
            weights[name] = float(value)
        except (TypeError, ValueError):
            raise UserError(f"weights: {name}:{value} is not a number") from None
        if weights[name] < 0:
            raise UserError(f"weights: {name} has a negative weight {value}")
    return weights


def is_shard_folder(spec: str) -> bool:
    if spec.endswith(".json"):
        return True
    if spec.endswith(".tar") or "{" in spec or spec.startswith("pipe:") or "::" in spec:
        return False
    if _is_local(spec) and Path(spec).is_dir():  # without a manifest, mf.load says what is wrong
        return True
    try:
        mf.load(spec)
        return True
    except UserError:
        return False


def _is_local(url: str) -> bool:
    scheme = urlparse(url).scheme
    return not url.startswith("pipe:") and (scheme == "" or len(scheme) == 1)  # len 1: a drive letter


def _missing_path(spec: str) -> bool:
    """A plain local path (no pattern, no list) that is not there."""
    return _is_local(spec) and "{" not in spec and "::" not in spec and not Path(spec).exists()


def resolve(name: str, spec: Any, splits: list[str] | None = None, pretraining: bool = False,
            weight: float | None = None) -> Source:
    """Turn one source's spec (folder, pattern(s) or {"urls": ..., "splits": ...}) into a Source.

    With `pretraining`, held-out splits are refused, and a folder's default splits are the
    ones that are not held out; otherwise all splits are the default. An explicit `weight`
    wins over one in the spec; without either the weight stays None (see Source.share).
    """
    if isinstance(spec, dict):
        splits = spec.get("splits", splits)
        weight = spec.get("weight") if weight is None else weight
        spec = spec.get("urls", spec.get("path"))
    weight = None if weight is None else float(weight)
    if isinstance(spec, str) and _missing_path(spec):  # a typo: say so now, not as 50 unreadable shards later
        raise UserError(f"source {name}: {spec} does not exist; expected a shard folder written by face-shards "
                        "(with manifest.json), a .tar file or a URL pattern")
    if isinstance(spec, str) and is_shard_folder(spec):
        return _from_manifest(name, spec, splits, pretraining, weight)
    patterns = [spec] if isinstance(spec, str) else list(spec or [])
    urls = [u for p in patterns for u in expand_urls(p)]
    if not urls:
        raise UserError(f"source {name}: no shard URLs in {spec!r}")
    local = [u for u in urls if _is_local(u)]
    if local and len(local) == len(urls) and not any(Path(u).exists() for u in local):
        raise UserError(f"source {name}: none of its {len(urls)} shard file(s) exists (first: {urls[0]}); "
                        "check the path or pattern")
    return Source(name, urls, None, weight)


def _from_manifest(name: str, location: str, splits: list[str] | None, pretraining: bool,
                   weight: float | None) -> Source:
    manifest = mf.load(location)
    available = manifest["splits"]
    if splits is None:
        splits = [s for s, e in available.items() if not (pretraining and e["holdout"])]
    if pretraining:
        held = [s for s in splits if available.get(s, {}).get("holdout")]
        if held:
            raise UserError(f"source {name}: split(s) {held} of {location} are held out (evaluation data) and can never be used for pretraining")
    if not manifest.get("complete", False):
        raise UserError(f"{location}: the conversion has not finished (manifest not complete); re-run face-shards to resume it")
    folder = mf.folder_of(location)
    chosen = mf.shards(manifest, splits)
    if not sum(e["samples"] for e in chosen):
        listed = ", ".join(f"{s}: {e['samples']}" for s, e in available.items())
        raise UserError(f"source {name}: {location} has no samples in split(s) {', '.join(splits) or '(none)'} "
                        f"(samples per split: {listed}); choose a split with samples or remove the source")
    classes = None
    if chosen and all("classes" in e for e in chosen):
        classes = [{int(c): n for c, n in e["classes"].items()} for e in chosen]
    return Source(name, [posixpath.join(folder, e["name"]) for e in chosen], [e["samples"] for e in chosen],
                  weight, classes)


def build_sources(specs: dict[str, Any], weights: str | dict[str, float] | None = None,
                  splits: list[str] | None = None, pretraining: bool = False) -> list[Source]:
    """All sources of a config: `{name: spec}` plus optional `name:weight,...`."""
    if not specs:
        raise UserError("no sources given; expected name -> shard folder or URL pattern")
    parsed = parse_weights(weights)
    unknown = sorted(set(parsed) - set(specs))
    if unknown:
        raise UserError(f"weights name unknown source(s) {unknown}; sources are {sorted(specs)}")
    sources = [resolve(n, s, splits, pretraining, parsed.get(n)) for n, s in specs.items()]
    if not any(s.share > 0 for s in sources):
        raise UserError("every source has weight 0")
    return sources


def class_subset(source: Source, codes: Iterable[int]) -> Source:
    """The same shards, counted for the samples whose class code is in `codes` only."""
    if source.classes is None:
        raise UserError(f"source {source.name}: its manifest has no per-class counts, which selecting "
                        "classes needs (re-run face-shards on a labelled dataset to add them)")
    keep = set(codes)
    counts = [sum(n for c, n in shard.items() if c in keep) for shard in source.classes]
    classes = [{c: n for c, n in shard.items() if c in keep} for shard in source.classes]
    return Source(source.name, source.urls, counts, source.weight, classes)
