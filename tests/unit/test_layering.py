"""The layering rule (docs/architecture.md): the coordinator's code and the sites' code never
import each other, not even lazily inside a function; what wires both lives in harness/ (or
the CLI). Read from the source's syntax trees, so an import hidden in a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
FORBIDDEN = {"server": "fedtl.client", "client": "fedtl.server", "shared": ("fedtl.client", "fedtl.server", "fedtl.cli")}


def imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_never_imports_the_other_side(package):
    banned = FORBIDDEN[package]
    banned = (banned,) if isinstance(banned, str) else banned
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    found = [f"{path.relative_to(ROOT)}:{line}: import {name}" for path in files for line, name in imports(path)
             if any(name == b or name.startswith(b + ".") for b in banned)]
    assert not found, "\n".join(found)


def test_the_rule_sees_an_import_inside_a_function(tmp_path):
    """The test above can fail: a lazy import is found like any other."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from fedtl.client.worker import SiteWorker\n    return SiteWorker\n")
    assert imports(module) == [(2, "fedtl.client.worker")]


def test_the_run_config_keys_are_the_ones_the_flower_app_declares():
    """Flower refuses a run config key the app does not declare: both spell the same keys."""
    import tomllib

    from fedtl.shared.protocol import RunConfigKey

    declared = tomllib.loads((ROOT / "server" / "flower_app" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    named = {v for k, v in vars(RunConfigKey).items() if k.isupper()}
    assert set(declared) == named


def test_no_function_runs_past_sixty_lines_without_saying_why():
    """A function a maintainer must scroll to read is split into named steps, or its docstring
    says why it is not ("long because")."""
    long = []
    for package in ("server", "client", "shared", "cli", "harness"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > 60 and "long because" not in (ast.get_docstring(node) or ""):
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert not long, "\n".join(long)
