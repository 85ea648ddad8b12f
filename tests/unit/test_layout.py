"""The test tree's layering: bench may import tests/support; nothing under tests/ imports
bench, a test module, or another module's private name (helpers live in tests/support)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> Iterator[tuple[str, list[str]]]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, [alias.name for alias in node.names]


def _modules() -> list[Path]:
    return sorted(TESTS.rglob("*.py"))


def test_nothing_under_tests_imports_bench() -> None:
    offenders = [f"{p.relative_to(TESTS)}: {module}" for p in _modules() for module, _ in _imports(p)
                 if module == "bench" or module.startswith("bench.")]
    assert offenders == []


def test_test_modules_import_helpers_only_from_the_support_package() -> None:
    offenders = []
    for path in _modules():
        for module, names in _imports(path):
            local = module == "tests" or module.startswith("tests.")
            if local and not (module == "tests.support" or module.startswith("tests.support.")):
                offenders.append(f"{path.relative_to(TESTS)}: {module}")
            elif local and any(name.startswith("_") for name in names):
                offenders.append(f"{path.relative_to(TESTS)}: private name from {module}")
    assert offenders == []


def test_every_test_file_is_either_unit_or_integration() -> None:
    stray = [p.name for p in TESTS.glob("test_*.py")]
    assert stray == [], "put tests in tests/unit (fast, no daemon) or tests/integration"
