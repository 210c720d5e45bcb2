"""The package's shape: layers that import only downwards, no import circles, no oversized files, public names."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "unideploy"
#: lower number = lower layer; a module may import only from its own layer or a lower one
LAYERS = {"core": 0, "runtime": 1, "tools": 2, "apps": 3, "cli": 4}
#: package-root modules: public entry points (lazy re-exports), not a layer of their own
ROOT_MODULES = {"unideploy", "unideploy.__main__", "unideploy.ray", "unideploy.testing"}
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): p for p in PKG.rglob("*.py")}


def _imports(mod: str, path: Path) -> set[str]:
    """Every unideploy module named by an import in ``path`` (at top level or inside functions)."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = mod.split(".")[: len(mod.split(".")) - node.level + (1 if is_pkg else 0)]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {n for n in found if n == "unideploy" or n.startswith("unideploy.")}


def _layer(mod: str) -> int | None:
    parts = mod.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_imports_point_down_the_layers():
    bad = []
    for mod, path in _modules().items():
        if mod in ROOT_MODULES:
            continue
        own = _layer(mod)
        assert own is not None, f"{mod} is outside the layers {sorted(LAYERS)}; put it in one"
        for target in _imports(mod, path):
            if target in ROOT_MODULES or _layer(target) is None:
                if own < LAYERS["cli"]:  # the root re-exports every layer: only the CLI sits above it
                    bad.append(f"{mod} imports the package root ({target})")
                continue
            other = _layer(target)
            if other > own:
                bad.append(f"{mod} (layer {own}) imports {target} (layer {other})")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_circles():
    tool = SRC.parents[1] / "shared" / "tools" / "import_cycles.py"
    if not tool.exists():
        pytest.skip("shared/tools/import_cycles.py is not beside this checkout")
    r = subprocess.run([sys.executable, str(tool), str(SRC), "unideploy"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_file_over_the_line_limit():
    long = {str(p.relative_to(SRC)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_package_root_holds_only_entry_points():
    root = {p.name for p in PKG.iterdir() if p.suffix == ".py"}
    assert root == {"__init__.py", "__main__.py", "ray.py", "testing.py"}, sorted(root)


@pytest.mark.parametrize("module", [
    "unideploy", "unideploy.core.errors", "unideploy.core.spec", "unideploy.core.results", "unideploy.core.options",
    "unideploy.core.registry", "unideploy.core.sinks", "unideploy.core.sources", "unideploy.runtime",
    "unideploy.runtime.backends", "unideploy.runtime.families", "unideploy.tools.compare", "unideploy.tools.bench",
])
def test_public_modules_export_what_all_names(module):
    mod = importlib.import_module(module)
    assert hasattr(mod, "__all__"), f"{module} has no __all__"
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert not missing, f"{module}.__all__ names what it does not have: {missing}"
    assert len(set(mod.__all__)) == len(mod.__all__)
