"""Packaging and CLI surface: every package ships, only `dcollapse` is a top-level name, every command has help."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dcollapse.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"dcollapse": ROOT / "dcollapse", "dcollapse.kernels": ROOT / "kernels", "dcollapse.cli": ROOT / "cli"}


def source_packages() -> set[str]:
    """Every directory with an __init__.py under the three mapped roots, as the dotted name it installs under."""
    names = set()
    for prefix, root in MAPPED.items():
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root).parts
            names.add(".".join((prefix, *rel)))
    return names


def test_pyproject_ships_every_package_under_the_dcollapse_name_only():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(config["packages"]) == source_packages()
    assert {name.split(".")[0] for name in config["packages"]} == {"dcollapse"}
    assert config["package-dir"] == {"dcollapse": "dcollapse", "dcollapse.kernels": "kernels", "dcollapse.cli": "cli"}


def commands() -> list[tuple[str, ...]]:
    """Every leaf command path, e.g. ("train",), ("synth", "ctr")."""
    root = typer.main.get_command(app)
    paths = []

    def walk(group, path: tuple[str, ...]) -> None:
        if hasattr(group, "commands"):  # a click group
            for name, sub in group.commands.items():
                walk(sub, (*path, name))
        else:
            paths.append(path)

    walk(root, ())
    return paths


def test_the_app_has_the_commands_of_a_users_day():
    names = {path[0] for path in commands()}
    assert {"preprocess", "train", "spectrum", "compare", "gradients", "sweep"} <= names


@pytest.mark.parametrize("path", commands(), ids=" ".join)
def test_every_command_help_shows_an_example(path):
    result = CliRunner().invoke(app, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "Example" in result.output and f"dcollapse {' '.join(path)}" in result.output


def test_importing_the_app_does_not_import_torch():
    """`dcollapse --help` and `dcollapse preprocess` stay fast: commands import torch only when they run."""
    heavy = "('torch', 'matplotlib', 'sklearn', 'scipy')"
    code = f"import sys, dcollapse.cli.app; print(sorted(m for m in {heavy} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "[]"
