"""Load YAML into pydantic models, with errors that name the file, line and field.

People edit these files by hand; "validation error for SiteConfig" is not enough to act on.
Every error names the file, the dotted field path and the line it came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration file is missing, unreadable or invalid. The message is for people."""


def _line_index(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            _line_index(value, path + (key.value,), out)
            out.setdefault(path + (key.value,), key.start_mark.line + 1)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_index(item, path + (i,), out)


def _nearest_line(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def read_yaml(path: Path) -> tuple[Any, dict[tuple[Any, ...], int]]:
    """Parse a YAML file; return its data and a map from field path to line number."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}, {where}: invalid YAML: {problem}") from None
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _line_index(node, (), lines)
    return data, lines


def format_validation_error(path: Path, exc: ValidationError, lines: dict[tuple[Any, ...], int]) -> str:
    parts = [f"{path}: {exc.error_count()} problem(s)"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        field = ".".join(str(p) for p in loc) or "(top level)"
        line = _nearest_line(lines, loc)
        where = f"line {line}, " if line else ""
        parts.append(f"  {path}, {where}field '{field}': {err['msg']}")
    return "\n".join(parts)


def load_model(model: type[M], path: Path | str, **context: Any) -> M:
    """Validate the YAML at ``path`` as ``model``; raise ConfigError naming file, line and field."""
    path = Path(path)
    data, lines = read_yaml(path)
    if data is None:
        raise ConfigError(f"{path}: file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}, line 1: expected a mapping of settings, got {type(data).__name__}")
    try:
        return model.model_validate(data, context={"base_dir": path.parent, **context})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc, lines)) from None
