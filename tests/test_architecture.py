"""The layout's rules, checked: which part may import which, no import loop, and DAG files that
only wire tasks, each task calling one function of include/."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROJECT = ("include", "stack", "spark", "grafana", "tests")


def _imports(tree: ast.AST) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append(node.module)
    return out


def test_import_contracts_hold():
    """pyproject.toml's [tool.importlinter] contracts: include/ imports no tool, job, dashboard or
    plugin; no import loop between the modules of any package (imports inside functions count)."""
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'plugins'}"}
    run = subprocess.run([str(lint), "--no-cache"], cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "BROKEN" not in run.stdout


@pytest.mark.parametrize("path", sorted((REPO / "plugins").glob("*.py")), ids=lambda p: p.name)
def test_plugins_import_nothing_of_the_project(path):
    bad = [m for m in _imports(ast.parse(path.read_text())) if m.split(".")[0] in PROJECT]
    assert not bad, f"plugins/{path.name} imports {bad}: plugins extend Airflow only (include/ calls no plugin)"


def _is_task(fn: ast.FunctionDef) -> bool:
    for dec in fn.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
        if name == "task":
            return True
    return False


@pytest.mark.parametrize("path", sorted((REPO / "dags").glob("*.py")), ids=lambda p: p.name)
def test_dag_files_only_wire_tasks(path):
    """Each @task body is imports of include/ and one `return <a call of what it imported>`."""
    tree = ast.parse(path.read_text())
    for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and _is_task(n)):
        body = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        imports, rest = body[:-1], body[-1]
        where = f"dags/{path.name}: task {fn.name}"
        assert all(isinstance(s, ast.ImportFrom) and s.module and s.module.startswith("include.")
                   for s in imports), f"{where}: only imports from include/ before its one call"
        assert isinstance(rest, ast.Return) and isinstance(rest.value, ast.Call), f"{where}: must return one call"
        imported = {a.asname or a.name for s in imports for a in s.names}
        callee = rest.value.func
        root = callee.value.id if isinstance(callee, ast.Attribute) and isinstance(callee.value, ast.Name) else \
            getattr(callee, "id", None)
        assert root in imported, f"{where}: calls {ast.unparse(callee)}, not a function of include/"


@pytest.mark.parametrize("path", sorted((REPO / "dags").glob("*.py")), ids=lambda p: p.name)
def test_dag_files_import_only_light_modules_at_parse_time(path):
    """The scheduler parses DAG files every few seconds: at module level only Airflow's SDK, the
    standard library, the plugins and the project's shared names, table definitions and schedules."""
    tree = ast.parse(path.read_text())
    top = [m for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom) for m in _imports(node)]
    allowed_project = {"include.names", "include.tables", "include.schedules"}
    heavy = [m for m in top if m.split(".")[0] in PROJECT and m not in allowed_project]
    assert not heavy, f"dags/{path.name} imports {heavy} at parse time"
