"""YAML recipes and typed config loading: mapping → validated config dataclass, with the key named on errors.

Pure Python (like config.py): the CLI imports it, and `llmzip --help` must not pay for torch.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from llmzip.config import STAGE_CONFIGS, as_enum
from llmzip.errors import ConfigError

C = TypeVar("C")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Turn a YAML/JSON value into the annotated type, or fail naming the key."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(annotation, value, prefix=f"{key}.")  # type: ignore[arg-type]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return as_enum(annotation, value, key)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(annotation)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation in (int, float, str):
        if annotation is not str and isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            coerced = annotation(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}") from None
        if annotation is int and isinstance(value, float) and value != coerced:
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return coerced
    return value


def from_dict(cls: type[C], values: dict[str, Any], *, prefix: str = "") -> C:
    """Build a config dataclass from a mapping; unknown keys and bad values fail with the key's name."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key; known keys are {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{prefix}{err}") from None


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge two mappings; the override wins."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    """`distill.data.max_length=64` style override into a nested mapping."""
    parts = dotted.split(".")
    node = target
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {part} is not a section")
        node = child
    node[parts[-1]] = value


@dataclass
class Recipe:
    """A whole chain: `model` is the starting point; each present stage section runs in pipeline order."""

    model: str
    stages: dict[str, Any]  # stage name -> config instance, only the stages that run
    raw: dict[str, Any]


RECIPE_KEYS = {"model", "data", *STAGE_CONFIGS}


def load_recipe(values: dict[str, Any]) -> Recipe:
    """Validate a recipe mapping; the top-level `data` section is the default for every stage's `data`."""
    unknown = sorted(set(values) - RECIPE_KEYS)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown recipe section; known sections are {', '.join(sorted(RECIPE_KEYS))}")
    model = values.get("model")
    if not isinstance(model, str) or not model:
        raise ConfigError("model: the recipe needs `model:` (a model directory or hub id to start from)")
    shared_data = values.get("data") or {}
    if not isinstance(shared_data, dict):
        raise ConfigError("data: expected a mapping")
    stages: dict[str, Any] = {}
    for name, cls in STAGE_CONFIGS.items():
        if name not in values:
            continue
        section = values[name] if values[name] is not None else {}
        if not isinstance(section, dict):
            raise ConfigError(f"{name}: expected a mapping (or nothing, for all defaults)")
        if "data" in {f.name for f in dataclasses.fields(cls)}:
            section = {**section, "data": merge(shared_data, section.get("data") or {})}
        stages[name] = from_dict(cls, section, prefix=f"{name}.")
    for required in ("calibrate", "quantize", "export"):
        if required not in stages:
            raise ConfigError(f"{required}: the recipe needs a `{required}:` section (empty is fine: all defaults)")
    return Recipe(model=model, stages=stages, raw=values)


def apply_sets(values: dict[str, Any], items: list[str]) -> None:
    """`--set section.key=value` overrides (the value read as YAML), in order, into a recipe mapping."""
    import yaml

    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        set_dotted(values, key.strip(), yaml.safe_load(raw))


def read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise ConfigError(f"{path}: no such recipe file")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a recipe is a mapping with one section per stage")
    return values
