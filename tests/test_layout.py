"""The house: imports go one way, the command line on top; every command writes only where it is told to."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cifarlit"
FACE = {"cli", "__main__"}  # the command-line face: it imports the rest, nothing imports it


def imports(module: Path) -> set[str]:
    """The cifarlit modules ``module`` imports, at the top or inside functions (``from cifarlit import x`` too)."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cifarlit"):
            if node.module == "cifarlit":
                found |= {alias.name for alias in node.names}
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("cifarlit.")}
    return found - {module.stem}


GRAPH = {path.stem: imports(path) for path in sorted(PACKAGE.glob("*.py"))}


def test_the_graph_sees_function_level_imports():
    # nets.py and trainer.py import inside functions; a parser that only read the top would miss them
    assert "errors" in GRAPH["nets"] and {"report", "predict"} <= GRAPH["trainer"]
    assert {"compare", "tune", "export"} <= GRAPH["cli"]


@pytest.mark.parametrize("module", sorted(set(GRAPH) - FACE))
def test_nothing_imports_the_command_line_back(module):
    assert not GRAPH[module] & FACE, f"{module} imports {GRAPH[module] & FACE}"


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
    listed = set(re.findall(r"`(\w+)\.py`", (root / "README.md").read_text().split("## How the code is laid out")[1]))
    assert {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"} <= listed  # every module described
