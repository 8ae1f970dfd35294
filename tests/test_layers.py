"""The library's layers import downwards only: the body/data layer (lsr1/hmr) knows no optimizer, task or
learner; hand-designed optimizers (lsr1/optim) and tasks (lsr1/tasks) know no learner; `lsr1.meta` drives a
learner through its declared hooks and probes for none. Read from the source, so a new import fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LSR1 = Path(__file__).resolve().parents[1] / "lsr1"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (inside functions and TYPE_CHECKING blocks too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("hmr", ("lsr1.optim", "lsr1.tasks", "lsr1.learned", "lsr1.learners", "lsr1.meta")),
        ("optim", ("lsr1.tasks", "lsr1.learned", "lsr1.learners", "lsr1.meta")),
        ("tasks", ("lsr1.learned", "lsr1.learners", "lsr1.meta")),
    ],
)
def test_a_layer_imports_nothing_above_it(package, forbidden):
    wrong = {
        f"{path.relative_to(LSR1.parent)}: {module}"
        for path in (LSR1 / package).rglob("*.py")
        for module in _imports(path)
        if module.startswith(forbidden)
    }
    assert not wrong, sorted(wrong)


def _probes(source: str) -> list[str]:
    """The attribute names that getattr/hasattr look up by a literal string in `source`."""
    return [
        node.args[1].value
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("getattr", "hasattr")
        and len(node.args) > 1
        and isinstance(node.args[1], ast.Constant)
    ]


def test_the_driver_calls_the_learner_hooks_and_probes_for_none():
    assert _probes((LSR1 / "meta.py").read_text()) == []
    assert _probes("init_for = getattr(optimizer, 'init_for', None)") == ["init_for"]  # what it would catch
