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


class FieldError(ValueError):
    """A config error that belongs to a field other than the one being validated.

    A check across fields (``proximal_mu`` set with strategy ``fedavg``) runs in a model
    validator, which pydantic reports at the model itself (line 1, "(top level)"). Raising
    this instead names the field at fault, relative to the model, so the message points at
    its line.
    """

    def __init__(self, field: str | tuple[Any, ...], message: str):
        super().__init__(message)
        self.loc = tuple(field.split(".")) if isinstance(field, str) else tuple(field)


MAX_FILE_BYTES = 1 << 20  # a config is a page of settings; a megabyte is not one
MAX_VALUES = 20_000  # values after expanding YAML aliases (an alias bomb expands to billions)
MAX_DEPTH = 32  # nesting levels


def _check_size(path: Path, node: yaml.Node) -> None:
    """Refuse a document that expands too far (aliases) or nests too deep, before walking it.

    Sizes are counted once per node (aliases share nodes), so the check is linear in the file.
    """
    memo: dict[int, tuple[int, int]] = {}  # node -> (values, levels) below and including it

    def measure(n: yaml.Node, level: int) -> tuple[int, int]:
        if level + 1 > MAX_DEPTH:
            raise ConfigError(f"{path}, line {n.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep")
        if id(n) in memo:
            size, height = memo[id(n)]
            if level + height > MAX_DEPTH:
                raise ConfigError(f"{path}, line {n.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep")
            return size, height
        memo[id(n)] = (1, 1)  # an alias to its own ancestor (a cycle) counts once
        children = ([v for pair in n.value for v in pair] if isinstance(n, yaml.MappingNode)
                    else list(n.value) if isinstance(n, yaml.SequenceNode) else [])
        below = [measure(child, level + 1) for child in children]
        size, height = 1 + sum(b[0] for b in below), 1 + max((b[1] for b in below), default=0)
        if size > MAX_VALUES:
            raise ConfigError(f"{path}, line {n.start_mark.line + 1}: more than {MAX_VALUES:,} values once its "
                              "aliases (*name) are expanded; a fedtl config needs far fewer")
        memo[id(n)] = (size, height)
        return size, height

    measure(node, 0)


def _line_index(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            _line_index(value, path + (key.value,), out)
            out[path + (key.value,)] = key.start_mark.line + 1  # the key's line: a block value starts below it
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
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: {len(text):,} characters; a config file is at most {MAX_FILE_BYTES:,}")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            _check_size(path, node)
        data = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read") from None
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
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, FieldError):
            loc += cause.loc
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
