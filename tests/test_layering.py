"""The import graph of course_lib has no upward edge, and no intra-package import hides in a function body.

The layers, bottom first, are written down in CONTRIBUTING.md ("course_lib, from the bottom up"); a
module may import from a lower layer (or from its own unit: a module of methods from another one
of methods) and never from a higher one. Imports are read from the source with ``ast``, at module
level and inside functions alike.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "course_lib"

# unit -> layer, bottom first (CONTRIBUTING.md); a unit is a top-level module or subpackage of course_lib
LAYERS: list[set[str]] = [
    {"progress", "threads", "checks", "cache"},  # import nothing from course_lib but each other
    {"device"},
    {"hooks", "lm"},
    {"zoo"},
    {"games"},
    {"methods", "metrics"},
    {"plot"},
    {"widgets"},
    {"grading", "late_policy", "paper", "nbmeta", "notebooks"},
    {"grader"},
    {"autograde"},  # nbgrader's preprocessor, over the grader
    {"cli"},
    {"__init__"},  # `import course_lib`: the whole library
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}

# Known exceptions, each with the work that removes it. Remove an entry when its edge is gone (the test
# says so); never add one for new code.
UPWARD_FOR_NOW = {
}
IN_BODY_FOR_NOW: dict[str, str] = {}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path):
    """(line, imported course_lib module, at module level?) for every import of course_lib in ``path``."""
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    package = parts if parts[-1] == "__init__" else parts[:-1]
    if package[-1] == "__init__":
        package = package[:-1]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    # module-level code inside if/try blocks still runs at import
    for n in tree.body:
        if isinstance(n, (ast.If, ast.Try)):
            top |= {id(m) for m in ast.walk(n)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "course_lib":
                continue
            names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "course_lib"]
        else:
            continue
        for name in names:
            yield node.lineno, name, id(node) in top


def _files():
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_unit_has_a_layer():
    units = {_unit(".".join(p.relative_to(ROOT.parent).with_suffix("").parts)) for p in _files()}
    assert not units - set(RANK), f"give these modules a layer in tests/test_layering.py and CONTRIBUTING.md: {sorted(units - set(RANK))}"


def test_no_upward_import():
    found, used = [], set()
    for path in _files():
        rel = path.relative_to(ROOT).as_posix()
        me = _unit(".".join(path.relative_to(ROOT.parent).with_suffix("").parts))
        for line, name, _ in _imports(path):
            other = _unit(name)
            if other == me or RANK[other] < RANK[me]:
                continue
            if (rel, other) in UPWARD_FOR_NOW:
                used.add((rel, other))
                continue
            found.append(f"course_lib/{rel}:{line} ({me}, layer {RANK[me]}) imports {name} (layer {RANK[other]})")
    assert not found, "imports from a higher layer (put the helper in a lower module):\n" + "\n".join(found)
    assert not set(UPWARD_FOR_NOW) - used, f"these exceptions are gone, remove them: {sorted(set(UPWARD_FOR_NOW) - used)}"


def test_no_course_lib_import_hidden_in_a_function():
    found, used = [], set()
    for path in _files():
        rel = path.relative_to(ROOT).as_posix()
        for line, name, at_top in _imports(path):
            if at_top:
                continue
            if rel in IN_BODY_FOR_NOW:
                used.add(rel)
                continue
            found.append(f"course_lib/{rel}:{line} imports {name} inside a function")
    assert not found, "import course_lib modules at the top of the file:\n" + "\n".join(found)
    assert not set(IN_BODY_FOR_NOW) - used, f"these exceptions are gone, remove them: {sorted(set(IN_BODY_FOR_NOW) - used)}"
