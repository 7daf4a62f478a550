"""The tree shows the architecture: two sides that meet only through core/ and client/, no module too long."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "lib" / "loopstream"

# What each part may import from loopstream (beyond itself): the sidecar and the work side never import each
# other; core imports nothing of loopstream's but core.
ALLOWED = {
    "core": {"core"},
    "client": {"client", "core", "installed"},
    "sidecar": {"sidecar", "core", "client", "installed"},
    "work": {"work", "core", "client", "installed", "view"},
    "view": {"core"},
    "installed": set(),
}
TOP_LEVEL = {"__init__.py", "__main__.py", "installed.py", "view.py", "cli", "core", "client", "sidecar", "work"}


def modules():
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def part_of(path: Path) -> str:
    return path.relative_to(PKG).with_suffix("").parts[0]


def imported_parts(path: Path) -> set[str]:
    """The loopstream parts a module imports, at the top or inside a function."""
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module + "." + a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            bits = name.split(".")
            if bits[0] == "loopstream" and len(bits) > 1 and bits[1] != "__version__":
                parts.add(bits[1])
    return parts


def test_the_top_level_holds_only_what_every_side_shares():
    found = {p.name for p in PKG.iterdir() if p.name != "__pycache__"}
    assert found == TOP_LEVEL


def test_lib_uses_absolute_imports_only():
    relative = [f"{p.relative_to(PKG)}:{n.lineno}" for p in modules()
                for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.ImportFrom) and n.level]
    assert relative == []


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_imports_run_only_in_the_allowed_directions(part):
    wrong = {}
    for path in modules():
        if part_of(path) != part:
            continue
        extra = imported_parts(path) - ALLOWED[part] - {part}
        if extra:
            wrong[str(path.relative_to(PKG))] = sorted(extra)
    assert wrong == {}


def test_no_module_is_over_600_lines():
    long = {str(p.relative_to(PKG)): n for p in modules() if (n := len(p.read_text().splitlines())) > 600}
    assert long == {}


def test_every_package_docstring_names_each_of_its_modules():
    """The module map lives in the packages' docstrings (the README points there): each names its modules."""
    unnamed = {}
    for init in PKG.rglob("__init__.py"):
        if "__pycache__" in init.parts:
            continue
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        here = [p.stem for p in init.parent.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
        here += [p.name for p in init.parent.iterdir() if (p / "__init__.py").exists()]
        missing = sorted(name for name in here if name not in doc)
        if missing:
            unnamed[str(init.relative_to(PKG))] = missing
    assert unnamed == {}


def test_every_module_says_what_it_is():
    assert [str(p.relative_to(PKG)) for p in modules() if p.name != "__main__.py"
            and not ast.get_docstring(ast.parse(p.read_text()))] == []
