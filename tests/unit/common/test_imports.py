"""`services/common/` knows no service: no module in it imports one, not even lazily."""

from __future__ import annotations

import ast
from pathlib import Path

import services.common

COMMON = Path(services.common.__file__).parent


def _imported(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_common_imports_no_service():
    offenders = []
    for path in sorted(COMMON.rglob("*.py")):
        for name in _imported(ast.parse(path.read_text(), filename=str(path))):
            if name.startswith("services.") and not (name + ".").startswith("services.common."):
                offenders.append(f"{path.relative_to(COMMON.parent.parent)}: {name}")
    assert not offenders, offenders


def test_the_walk_finds_lazy_imports():
    tree = ast.parse("def f():\n    from services.engine_vllm.registry import vllm_supports\n")
    assert _imported(tree) == ["services.engine_vllm.registry"]
