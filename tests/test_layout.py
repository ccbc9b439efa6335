"""The library's layout: imports point one way, and no public function hides a module of its name."""

import ast
import importlib
import pkgutil
from pathlib import Path

import repairlib

PACKAGE = Path(repairlib.__file__).parent
# Each module may import only modules listed before it (the order of repairlib/__init__.py's docstring).
ORDER = ("plumbing", "distributed", "data", "models", "batchnorm", "evalcache", "evaluation", "train", "zoo", "spec", "stats", "points",
         "endpoints", "alignment", "interpolation", "fusion", "correction", "metrics", "pipeline", "analysis",
         "baselines", "plots", "book", "cli", "__main__")


def imported_modules(path: Path) -> set:
    """The repairlib modules (first component below ``repairlib``) a file imports, lazily or not."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("repairlib"):
            parts = node.module.split(".")
            found |= {parts[1]} if len(parts) > 1 else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("repairlib.")}
    return found


def test_every_module_has_a_place_in_the_order():
    modules = {m.name for m in pkgutil.iter_modules([str(PACKAGE)])}
    assert modules == set(ORDER), f"add new modules to ORDER (and the package docstring): {modules ^ set(ORDER)}"
    assert ", ".join(ORDER[:-1]) in " ".join(repairlib.__doc__.split()), "the package docstring lists the order"


def test_imports_point_one_way():
    backwards = []
    for name in ORDER:
        path = PACKAGE / f"{name}.py" if (PACKAGE / f"{name}.py").exists() else PACKAGE / name / "__init__.py"
        files = [path] if path.name != "__init__.py" else sorted(path.parent.glob("*.py"))
        for file in files:
            for target in imported_modules(file) - {name, "__version__"}:
                if target in ORDER and ORDER.index(target) >= ORDER.index(name):
                    backwards.append(f"{file.relative_to(PACKAGE)} imports {target}")
    assert not backwards, backwards


def test_no_public_function_shadows_a_module():
    for info in pkgutil.walk_packages([str(PACKAGE)], "repairlib."):
        if info.name.endswith("__main__"):
            continue  # importing it runs the CLI
        module = importlib.import_module(info.name)
        parent, _, leaf = info.name.rpartition(".")
        assert getattr(importlib.import_module(parent), leaf) is module, (
            f"{parent}.{leaf} is not the module {info.name}: a function or class of that name hides it")
