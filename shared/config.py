"""Run configurations: dataclasses filled from a YAML file plus `key=value` overrides.

    cfg = load_config(PretrainConfig, "pretrain_mae/configs/tiny_cpu.yaml",
                      ["optim.base_lr=3e-4", "data.batch_size=32"])

Unknown keys are errors that name the closest valid key; values are parsed as YAML scalars
(`1e-4`, `true`, `[0.9, 0.95]`) and checked against the field's type. `to_dict` gives back the
resolved configuration, which every checkpoint stores beside itself.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import UserError

T = TypeVar("T")


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple = ()) -> T:
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise UserError(f"{path}: config file not found") from None
        except yaml.YAMLError as err:
            raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected a mapping of config keys at the top level")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r}: expected key=value, e.g. optim.base_lr=1e-4")
        _set_dotted(data, key.strip(), _parse_value(value))
    return from_dict(cls, data)


def parse_cli(argv: list[str] | None, description: str) -> argparse.Namespace:
    """The command line every stage takes: [--config FILE] [--resume auto|STATE] [key=value ...]."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (unset keys keep the defaults of the stage's config.py)")
    parser.add_argument("--resume", help="'auto' (newest complete state of the run) or a state folder")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. optim.base_lr=1e-4 data.batch_size=128")
    return parser.parse_args(argv)


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise UserError(_unknown_key(prefix + key, [prefix + n for n in fields]))
        kwargs[key] = _coerce(hints[key], value, prefix + key)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return _plain(dataclasses.asdict(cfg))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _unknown_key(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys here: {', '.join(sorted(valid))}"
    return f"unknown config key '{key}'{hint}"


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        node = data.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"override {key}: '{part}' is not a section")
        data = node
    data[parts[-1]] = value


def _coerce(tp, value, key: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        errors = []
        for arg in args:
            try:
                return _coerce(arg, value, key)
            except UserError as err:
                errors.append(str(err))
        raise UserError(errors[0])
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}' is a section; expected a mapping, got {value!r}")
        return from_dict(tp, value, key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            value = [value]
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        items = [_coerce(inner, v, key) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}' expects a mapping, got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is str and isinstance(value, bool):  # YAML 1.1 reads no/yes/off/on as booleans
        return "yes" if value else "no"
    if tp is str and isinstance(value, (int, float)):
        return str(value)
    if tp is float and isinstance(value, str):
        try:  # PyYAML reads 1e-4 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    expected = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}
    if tp in expected and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise UserError(f"config key '{key}' expects {expected[tp]}, got {value!r}")
    return value
