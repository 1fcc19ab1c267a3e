"""Run configurations: dataclasses filled from a YAML file plus `key=value` overrides (OmegaConf
structured configs over the stage's dataclasses).

    cfg = load_config(PretrainConfig, "pretrain_mae/configs/tiny_cpu.yaml",
                      ["optim.base_lr=3e-4", "data.batch_size=32"])

A YAML file may name a `base:` file (relative to itself) whose values it changes: mappings merge
key by key into the base's, lists and scalars replace. It may name its `stage:` (a key of
STAGES); a file of another stage is refused in one line that says which command runs it.
Unknown keys are errors that name the closest valid key; values are parsed as YAML scalars
(`1e-4`, `true`, `[0.9, 0.95]`; only true/false are booleans, so `no` stays a string) and checked
against the field's type, then against its declared range or choices (shared/config_fields.py).
`to_dict` gives back the resolved configuration, which every checkpoint stores beside itself.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import types
import typing
from functools import partial
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config_fields import check_values, describe, flow as _flow, plain as _plain
from .config_fields import one_of, ranged  # noqa: F401 - the stages' field helpers
from .errors import UserError

T = TypeVar("T")

# a config's `stage:` -> (the stage's number, the command that runs it); a config dataclass names
# its own in a `STAGE` class attribute
STAGES = {"pretrain_mae": ("1", "affect-pretrain"), "finetune_affectnet": ("2", "affect-finetune"),
          "eri_extract": ("3a", "affect-extract"), "eri_train": ("3b", "affect-train-eri")}
HEADER_KEYS = ("base", "stage")  # keys of a YAML file that are about the file, not config values


class _Loader(yaml.SafeLoader):
    """YAML 1.2's scalars: only true/false are booleans (YAML 1.1 also reads yes/no/on/off, which
    turned `mixed_precision: no` into False), and 1e-4 (no dot) is a number."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
    r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple = ()) -> T:
    """The configuration `cls` (a dataclass) from its defaults, the YAML file `path` (with its
    bases) and the `key=value` overrides, in that order. Raises UserError (one line) for a
    missing or malformed file, a file of another stage, an unknown key, a value of the wrong
    type or outside its range, or values that `cls.check()` (when it has one) refuses together."""
    node = OmegaConf.structured(cls)
    layers = read_layers(path) if path is not None else []
    for source, stage, _ in reversed(layers):  # the named file's own stage first
        _check_stage(cls, source, stage, layers[-1])
    for source, _, data in layers:
        _check_keys(cls, data, "", f"{source}: ")
        node = _omega(partial(OmegaConf.merge, node, data), cls, data, f"{source}: ")
    for item in overrides:
        key, value = parse_override(item)
        nested: dict[str, Any] = {}
        _set_dotted(nested, key, value)
        _check_keys(cls, nested, "", "")  # may wrap a scalar into a list
        value = _get_dotted(nested, key)
        # a section's given keys merge into it; any other value (a dict-valued key too) is replaced
        merge = dataclasses.is_dataclass(_strip_optional(_type_at(cls, key)))
        _omega(partial(OmegaConf.update, node, key, value, merge=merge), cls, nested, "")
    cfg = _omega(partial(OmegaConf.to_object, node), cls, {}, "")
    check_values(cfg)
    if hasattr(cfg, "check"):  # relations between keys, which no single field's range can say
        cfg.check()
    return cfg


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """`cls` from its defaults and the mapping `data`, checked as load_config checks a file;
    `prefix` is put before the keys named in errors (where `data` sits in a larger config)."""
    data = dict(data)
    _check_keys(cls, data, prefix, "")
    node = _omega(partial(OmegaConf.merge, OmegaConf.structured(cls), data), cls, data, "", prefix)
    cfg = _omega(partial(OmegaConf.to_object, node), cls, data, "", prefix)
    check_values(cfg, prefix)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """The configuration as plain YAML-able values (tuples become lists)."""
    return _plain(dataclasses.asdict(cfg))


def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A resolved configuration as dotted key -> value (a non-empty mapping value is opened up)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# keys that say where a run goes, how it is watched and which part of it this job does (stage
# 3b's `fold`, a SLURM array task), not what it learns
NOT_LEARNED = ("run.output_dir", "run.resume", "run.log_every", "run.save_every", "run.keep_last",
               "run.stop_check_every", "run.trackers", "run.project", "data.num_workers", "data.device_cache", "fold")


def setting_changes(then: dict[str, Any], now: dict[str, Any], ignore: tuple[str, ...] = NOT_LEARNED) -> list[str]:
    """How resolved configuration `now` differs from `then` (both nested, as to_dict or a saved
    config.yaml gives them), as "key: then -> now". The keys in `ignore` (an item ending in "."
    stands for a section), and keys only one side has (a setting added or removed by another
    version), are left out."""
    a, b = flat(_plain(then)), flat(_plain(now))
    skip = lambda k: any(k == i or (i.endswith(".") and k.startswith(i)) for i in ignore)  # noqa: E731
    return [f"{k}: {_flow(a[k])} -> {_flow(b[k])}" for k in sorted(set(a) & set(b)) if not skip(k) and a[k] != b[k]]


def parse_cli(argv: list[str] | None, description: str) -> argparse.Namespace:
    """The command line every stage takes: [--config FILE] [--resume auto|STATE] [--print-config]
    [key=value ...]."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--resume", help="'auto' (newest complete state of the run) or a state folder")
    return parser.parse_intermixed_args(argv)  # key=value before and after the flags


def add_config_arguments(parser: argparse.ArgumentParser,
                         example: str = "optim.base_lr=1e-4 data.batch_size=128") -> None:
    """--config, --print-config and the key=value overrides, as every stage takes them."""
    parser.add_argument("--config", help="YAML config (unset keys keep the defaults of the stage's config.py); it "
                        "may name a `base:` config whose values it changes")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved configuration (--config and overrides applied) as YAML, every key "
                        "with its default, range or choices and meaning, then exit without doing anything")
    parser.add_argument("overrides", nargs="*", help=f"key=value, e.g. {example}")


def print_config(cfg: Any) -> int:
    """Print `cfg` as --print-config shows it (see config_fields.describe); returns status 0."""
    stage = getattr(type(cfg), "STAGE", None)
    header = ["# the resolved configuration: key: value  # default; range or choices; meaning"]
    if stage in STAGES:
        header[0] = f"# {STAGES[stage][1]} (stage {STAGES[stage][0]}): " + header[0][2:]
        header.append(f"stage: {stage}")
    print(describe(cfg, header), end="", flush=True)
    return 0


def read_layers(path: str | Path, _seen: tuple[Path, ...] = ()) -> list[tuple[Path, str | None, dict]]:
    """(file, its stage, its values) of `path` and of its bases, the deepest base first."""
    path = Path(path)
    data = read_yaml(path)
    base, stage = data.pop("base", None), data.pop("stage", None)
    if base is None:
        return [(path, stage, data)]
    if not isinstance(base, str):
        raise UserError(f"{path}: base: expected the path of a config file, got {base!r}")
    base_path = path.parent / base
    if base_path.resolve() in _seen + (path.resolve(),):
        raise UserError(f"{path}: base: {base} is a base of itself")
    if not base_path.is_file():  # relative to the file that names it, not to where the command runs
        what = "is a folder, not a config file" if base_path.is_dir() else "not found"
        raise UserError(f"{path}: base: {base} {what} (looked for {base_path})")
    return read_layers(base_path, _seen + (path.resolve(),)) + [(path, stage, data)]


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping; a missing file or bad YAML is one line (with the line and column)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: a folder, not a config file") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = "; ".join(str(s) for s in (err.context, err.problem) if s)
        raise UserError(f"{where}: not valid YAML: {what}") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of config keys at the top level")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """`key=value` -> (key, value parsed as a YAML scalar or flow collection; the text if not YAML)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"override {item!r}: expected key=value, e.g. optim.base_lr=1e-4")
    try:
        return key.strip(), yaml.load(value, Loader=_Loader)
    except yaml.YAMLError:
        return key.strip(), value


def _check_stage(cls: type, source: Path, stage: Any, named: tuple[Path, str | None, dict]) -> None:
    """`source` (the named file or one of its bases) is of `cls`'s stage, or says none."""
    own = getattr(cls, "STAGE", None)
    if stage is None or own is None or stage == own:
        return
    if stage not in STAGES:
        raise UserError(f"{source}: stage: {stage!r} is no stage; one of {', '.join(STAGES)}")
    number, command = STAGES[stage]
    if source == named[0]:
        raise UserError(f"{source} is a config of stage {number} ({stage}): run it with {command}")
    this = f"a config of stage {STAGES[own][0]} ({own})" if own in STAGES else "a config of this stage"
    run_it = "" if named[1] == own else f"run {named[0]} with {command}, or "
    raise UserError(f"{named[0]}: its base {source} is a config of stage {number} ({stage}): {run_it}"
                    f"give it a base that is {this}")


def _check_keys(cls: type, data: dict, prefix: str, where: str) -> None:
    """Refuse unknown keys and scalars given for sections; a scalar given for a list becomes a
    one-item list (`model.modalities=visual`)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in list(data):
        if key not in names:
            raise UserError(where + _unknown_key(f"{prefix}{key}", [prefix + n for n in names]))
        tp, value = _strip_optional(hints[key]), data[key]
        if value is None:
            continue
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise UserError(f"{where}config key '{prefix}{key}' is a section; expected a mapping, got {value!r}")
            _check_keys(tp, value, f"{prefix}{key}.", where)
        elif typing.get_origin(tp) in (list, tuple):
            if not isinstance(value, (list, tuple)):
                data[key] = value = [value]
            args = typing.get_args(tp)
            if typing.get_origin(tp) is tuple and args and args[-1] is not Ellipsis and len(value) != len(args):
                raise UserError(f"{where}config key '{prefix}{key}' expects {len(args)} values, got {_flow(value)}")


def _omega(action: Callable, cls: type, data: dict, where: str, prefix: str = ""):
    """Run an OmegaConf action; its errors become one line naming the key, what it expects and
    what it got."""
    try:
        return action()
    except OmegaConfBaseException as err:
        key = str(getattr(err, "full_key", "") or "")
        expected = _expected(cls, key)
        got = _get_dotted(data, key, default=dataclasses.MISSING)
        if key and expected and got is not dataclasses.MISSING:
            raise UserError(f"{where}config key '{prefix}{key}' expects {expected}, got {_flow(got)}") from None
        msg = str(getattr(err, "msg", "") or err).splitlines()[0]
        raise UserError(f"{where}config key '{prefix}{key}': {msg}" if key else f"{where}{msg}") from None


_WORDS = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}


def _type_at(cls: type, key: str) -> Any:
    """The declared type of the dotted `key` of dataclass `cls` (None inside a plain mapping)."""
    tp: Any = cls
    for part in key.split(".") if key else []:
        tp = _strip_optional(tp)
        if not dataclasses.is_dataclass(tp):
            return None
        tp = typing.get_type_hints(tp).get(part)
    return tp


def _expected(cls: type, key: str) -> str | None:
    tp = _type_at(cls, key)
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)
    tp = _strip_optional(tp)
    origin = typing.get_origin(tp)
    words = (_WORDS.get(tp) or ("a list" if origin in (list, tuple) else "a mapping" if origin is dict else None))
    return words and words + (" or null" if optional else "")


def _strip_optional(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _unknown_key(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys here: {', '.join(sorted(valid))}"
    return f"unknown config key '{key}'{hint}"


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        data = data.setdefault(part, {})
    data[parts[-1]] = value


def _get_dotted(data: Any, key: str, default: Any = None) -> Any:
    for part in key.split(".") if key else []:
        if not isinstance(data, dict):
            return default
        matches = [k for k in data if str(k) == part]
        if not matches:
            return default
        data = data[matches[0]]
    return data
