"""The house: imports go one way, the command line on top; every command writes only where it is told to."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cifarlit"
FACE = {"cli", "__main__"}  # the command-line face: it imports the rest, nothing imports it
# The floors, bottom up: a module imports its own floor's package or lower ones, never higher, and data and
# models (one floor) know nothing of each other.
FLOORS = {"": 0, "utils": 0, "data": 1, "models": 1, "training": 2, "commands": 3, "cli": 4, "__main__": 5}


def name_of(path: Path) -> str:
    """``data.datamodule`` for src/cifarlit/data/datamodule.py, ``cli`` for cli.py, ``data`` for its __init__."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {name_of(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(dotted: str) -> str:
    """The module a dotted ``cifarlit.x.y`` import names (``x.y``, or ``x`` when it is a name inside x)."""
    parts = dotted.split(".")[1:]
    while parts and ".".join(parts) not in MODULES:
        parts.pop()
    return ".".join(parts)


def imports(module: Path) -> set[str]:
    """The cifarlit modules ``module`` imports, at the top or inside functions (``from cifarlit.x import y`` names
    the module ``x.y`` when there is one)."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "cifarlit":
            for alias in node.names:
                found.add(_resolve(f"{node.module}.{alias.name}"))
        elif isinstance(node, ast.Import):
            found |= {_resolve(a.name) for a in node.names if a.name.startswith("cifarlit.")}
    return found - {name_of(module)}


GRAPH = {name: imports(path) for name, path in MODULES.items()}


def floor(module: str) -> tuple[int, str]:
    top = module.split(".")[0]
    return FLOORS[top if top in FLOORS else ""], top


def test_every_module_stands_on_a_floor():
    assert {m.split(".")[0] for m in GRAPH} - {""} <= set(FLOORS), "a new package needs its floor in FLOORS"
    assert {"data.datamodule", "models.lit_mlp", "training.trainer", "commands.prepare", "utils.errors"} <= set(GRAPH)


def test_the_graph_sees_function_level_imports():
    # nets.py and trainer.py import inside functions; a parser that only read the top would miss them
    assert "utils.errors" in GRAPH["models.nets"] and "data.explore" in GRAPH["training.trainer"]


def test_every_command_the_cli_dispatches_is_a_module_of_commands():
    from cifarlit.cli import COMMANDS  # run_command imports cifarlit.commands.<name> by name, when it is run

    assert {f"commands.{name}" for name in COMMANDS} <= set(GRAPH)


@pytest.mark.parametrize("module", sorted(set(GRAPH) - FACE))
def test_nothing_imports_the_command_line_back(module):
    assert not GRAPH[module] & FACE, f"{module} imports {GRAPH[module] & FACE}"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_go_down_the_floors(module):
    level, package = floor(module)
    for target in GRAPH[module]:
        target_level, target_package = floor(target)
        assert target_level < level or target_package == package or target_level == 0 and level == 0, (
            f"{module} (floor {level}) imports {target} (floor {target_level})"
        )


def test_the_public_face_is_the_design_cards():
    import cifarlit

    assert cifarlit.CIFAR10DataModule.__name__ == "CIFAR10DataModule" and cifarlit.LitMLP.__name__ == "LitMLP"


def test_the_imports_have_no_cycle():
    done, path = set(), []

    def visit(module: str) -> None:
        if module in path:
            raise AssertionError(f"import cycle: {' -> '.join([*path[path.index(module) :], module])}")
        if module in done:
            return
        path.append(module)
        for target in sorted(GRAPH.get(module, ())):
            visit(target)
        path.pop()
        done.add(module)

    for module in GRAPH:
        visit(module)


def test_a_copy_of_the_template_has_ci_and_pre_commit_that_run_the_makefile_checks():
    import yaml

    root = PACKAGE.parents[1]
    workflow = yaml.safe_load((root / ".github" / "workflows" / "ci.yml").read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` key as True
    assert {"push", "pull_request"} <= set(triggers)
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    runs = [step.get("run", "") for step in steps]
    assert any(r.startswith("make lint") for r in runs) and any(r.startswith("make test") for r in runs)
    assert any(step.get("with", {}).get("cache") == "pip" for step in steps)
    hooks = {h["id"] for repo in yaml.safe_load((root / ".pre-commit-config.yaml").read_text())["repos"]
             for h in repo["hooks"]}  # fmt: skip
    assert {"ruff-check", "ruff-format"} <= hooks
    assert "make lint" in (root / ".ci" / "run").read_text()


def test_the_readme_points_at_tests_that_exist():
    import re

    root = PACKAGE.parents[1]
    named = re.findall(r"(tests/\w+\.py)::(\w+)", (root / "README.md").read_text())
    assert len(named) >= 5
    for path, test in named:
        assert f"def {test}(" in (root / path).read_text(), f"README names {path}::{test}, which is not there"
    layout = (root / "README.md").read_text().split("## How the code is laid out")[1]
    listed = set(re.findall(r"`((?:\w+/)?\w+)\.py`", layout))
    modules = {p.relative_to(PACKAGE).with_suffix("").as_posix() for p in PACKAGE.rglob("*.py")}
    missing = {m for m in modules if not m.endswith("__init__") and m != "__main__"} - listed
    assert not missing, f"README's layout does not describe {sorted(missing)}"  # every module, by its path
