"""The layout rules of docs/architecture.md, checked on the source: sizes, directions, no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = sorted(p for d in ("sso", "steps", "flows") for p in (ROOT / d).rglob("*.py"))
MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_STEP_BODY = 400, 55, 12


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def _top_level_imports(tree: ast.Module) -> set[str]:
    """Modules imported at module load (not inside functions)."""
    out = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_and_functions_are_short(path):
    tree = _tree(path)
    assert path.read_text().count("\n") <= MAX_MODULE_LINES
    long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long


def test_no_private_names_across_modules_and_no_step_imports_another_step():
    bad = []
    for path in LIBRARY:
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("sso", "steps"):
                bad += [(str(path), node.module, a.name) for a in node.names if a.name.startswith("_")]
                if path.parts[-2] == "steps" and node.module.startswith("steps"):
                    bad.append((str(path), node.module, "step imports a step"))
    assert not bad


def test_no_import_cycle_in_the_library():
    graph = {}
    for path in LIBRARY:
        if path.parts[-2] == "flows":
            continue
        graph[_module_name(path)] = {m for m in _top_level_imports(_tree(path)) if m.split(".")[0] in ("sso", "steps")}
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for dep in graph.get(node, ()):
            if state.get(dep) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(stack + [node, dep])}")
            if dep in graph and not state.get(dep):
                visit(dep, stack + [node])
        state[node] = 2

    for node in graph:
        if not state.get(node):
            visit(node, [])


def test_flow_step_bodies_read_like_sentences():
    classes = {"sso_base.py": "SSOBase", "sso_flow.py": "SSOFlow", "sso_online_flow.py": "SSOOnlineFlow",
               "sso_multinode_flow.py": "SSOMultiNodeFlow"}
    steps = []
    for name, cls_name in classes.items():
        cls = next(n for n in _tree(ROOT / "flows" / name).body if isinstance(n, ast.ClassDef) and n.name == cls_name)
        steps += [f for f in cls.body if isinstance(f, ast.FunctionDef)
                  and any(getattr(d, "id", None) == "step" for d in f.decorator_list)]
    assert len(steps) >= 18
    for f in steps:
        body = [s for s in f.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        lines = body[-1].end_lineno - body[0].lineno + 1
        assert lines <= MAX_STEP_BODY, (f.name, lines)
