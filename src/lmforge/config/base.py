"""Typed config groups: loading YAML, dotted overrides, errors that say what to change, help text.

Every field is declared once with a type, a default and a one-line ``description``; that text is
the single source for ``lmforge <recipe> --help`` and for the error messages below.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lmforge.errors import ConfigError


class Group(BaseModel):
    """Base of every config group: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class RecipeConfig(Group):
    """Fields every recipe has."""

    output_dir: str = Field("runs/out", description="run directory written by this recipe")
    force: bool = Field(
        False, description="recompute even when a finished run with the same inputs exists"
    )


G = TypeVar("G", bound=Group)


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``3e-4`` as a float (PyYAML's YAML 1.1 rules need ``3.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: plain data only, no objects


def _nested_group(annotation: Any) -> type[Group] | None:
    """The Group class inside an annotation such as ``ModelConfig`` or ``ModelConfig | None``."""
    if isinstance(annotation, type) and issubclass(annotation, Group):
        return annotation
    if get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in get_args(annotation):
            found = _nested_group(arg)
            if found is not None:
                return found
    return None


def _all_keys(cls: type[Group], prefix: str = "") -> list[str]:
    keys = []
    for name, field in cls.model_fields.items():
        keys.append(prefix + name)
        sub = _nested_group(field.annotation)
        if sub is not None:
            keys.extend(_all_keys(sub, prefix + name + "."))
    return keys


def _check_unknown_keys(cls: type[Group], data: dict, source: str, prefix: str = "") -> None:
    """Reject unknown keys with the nearest valid name (pydantic would only say 'extra')."""
    for key, value in data.items():
        if key not in cls.model_fields:
            here = list(cls.model_fields)
            everywhere = _all_keys(cls)
            close = difflib.get_close_matches(str(key), here, n=1, cutoff=0.5) or [
                k.rsplit(".", 1)[-1] for k in difflib.get_close_matches(str(key), everywhere, n=1)
            ]
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(
                f"{source}: unknown key '{prefix}{key}'{hint} (valid keys here: {', '.join(here)})"
            )
        sub = _nested_group(cls.model_fields[key].annotation)
        if sub is not None and isinstance(value, dict):
            _check_unknown_keys(sub, value, source, prefix + key + ".")


def _describe_allowed(cls: type[Group], loc: tuple) -> str:
    """What a field accepts, from its annotation, for the error message."""
    target: Any = cls
    field = None
    for part in loc:
        if not (isinstance(target, type) and issubclass(target, Group)):
            break
        field = target.model_fields.get(str(part))
        if field is None:
            break
        target = _nested_group(field.annotation) or field.annotation
    if field is None:
        return ""
    ann = field.annotation
    text = _type_name(ann)
    return f" (allowed: {text}; {field.description})" if field.description else f" ({text})"


def _type_name(ann: Any) -> str:
    origin = get_origin(ann)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(ann))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(ann))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in get_args(ann))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if ann is type(None):
        return "null"
    return getattr(ann, "__name__", str(ann))


def parse_overrides(overrides: list[str]) -> dict:
    """``["train.lr=3e-4", "adapter.type=lora"]`` → nested dict; values are parsed as YAML."""
    result: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = _load_yaml(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with another override")
        node[parts[-1]] = value
    return result


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = _load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config groups")
    return data


def build_config(cls: type[G], data: dict, source: str = "<config>") -> G:
    """Validate ``data`` into ``cls``; ConfigError names the key path and what is allowed."""
    _check_unknown_keys(cls, data, source)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            key = ".".join(str(p) for p in loc)
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            where = f"{source}: {key}:" if key else f"{source}:"  # a whole-config check has no key
            lines.append(f"{where} {err['msg']}{shown}{_describe_allowed(cls, loc)}")
        raise ConfigError("\n".join(lines)) from None


def load_config(cls: type[G], path: str | Path | None, overrides: list[str] | None = None) -> G:
    """Read ``path`` (optional), apply dotted ``overrides`` and validate into ``cls``."""
    data = read_yaml(path) if path else {}
    source = str(path) if path else "<command line>"
    if overrides:
        data = deep_merge(data, parse_overrides(overrides))
        source += " + overrides"
    return build_config(cls, data, source)


def describe(cls: type[Group], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for every field, nested groups flattened with dotted keys."""
    rows = []
    for name, field in cls.model_fields.items():
        sub = _nested_group(field.annotation)
        if sub is not None:
            rows.append((prefix + name, "group", "", field.description or ""))
            rows.extend(describe(sub, prefix + name + "."))
            continue
        default = field.get_default(call_default_factory=True)
        rows.append(
            (prefix + name, _type_name(field.annotation), repr(default), field.description or "")
        )
    return rows


def to_dict(config: Group) -> dict:
    """The fully resolved config as plain JSON-able data (for manifests)."""
    return config.model_dump(mode="json")
