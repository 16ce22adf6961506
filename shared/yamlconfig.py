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


def _check_unique_keys(path: Path, node: yaml.Node) -> None:
    """YAML lets a repeated key silently replace the first; in a hand-edited config that loses settings."""
    if isinstance(node, yaml.MappingNode):
        first: dict[object, int] = {}
        for key, value in node.value:
            line = key.start_mark.line + 1
            if key.value in first:
                raise ConfigError(f"{path}, line {line}: key '{key.value}' appears twice in the same block "
                                  f"(first on line {first[key.value]}); YAML would keep only the last one. "
                                  "Merge them into one.")
            first[key.value] = line
            _check_unique_keys(path, value)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_unique_keys(path, item)


def _nearest_line(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def read_yaml(path: Path) -> tuple[Any, dict[tuple[Any, ...], int]]:
    """Parse a YAML file; return its data and a map from field path to line number."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; give the path of the YAML file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason}); save it as UTF-8") from None
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
        _check_unique_keys(path, node)
        _line_index(node, (), lines)
    return data, lines


def read_mapping(path: Path) -> tuple[dict[str, Any], dict[tuple[Any, ...], int]]:
    """A YAML file that must hold a mapping of settings (every fedtl config does)."""
    data, lines = read_yaml(path)
    if data is None:
        raise ConfigError(f"{path}: file is empty")
    if not isinstance(data, dict):
        kind = {list: "a list", str: "a single value"}.get(type(data), type(data).__name__)
        raise ConfigError(f"{path}, line 1: expected a mapping of settings (key: value lines), got {kind}")
    return data, lines


def format_validation_error(path: Path, exc: ValidationError, lines: dict[tuple[Any, ...], int]) -> str:
    parts = [f"{path}: {exc.error_count()} problem(s)"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        field = ".".join(str(p) for p in loc) or "(top level)"
        line = _nearest_line(lines, loc)
        where = f"line {line}, " if line else ""
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"  {path}, {where}field '{field}': {message}")
    return "\n".join(parts)


def load_model(model: type[M], path: Path | str, **context: Any) -> M:
    """Validate the YAML at ``path`` as ``model``; raise ConfigError naming file, line and field."""
    path = Path(path)
    data, lines = read_mapping(path)
    try:
        return model.model_validate(data, context={"base_dir": path.parent, **context})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc, lines)) from None
