"""The package's architecture holds: hardware imports neither pruning nor matplotlib, no
module imports a private name from another package, no source module grows past ~400 lines."""
import ast
import subprocess
import sys
from pathlib import Path

import analogformer

SRC = Path(analogformer.__file__).parent


def _modules():
    return sorted(p for p in SRC.rglob("*.py"))


def test_importing_the_tile_map_loads_no_pruning_and_no_matplotlib():
    code = ("import sys, analogformer.hardware.mapping, analogformer.hardware.energy; "
            "bad = sorted(m for m in sys.modules if m.startswith(('analogformer.pruning', 'matplotlib'))); "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_every_package_imports_on_its_own_in_a_fresh_interpreter():
    """No import cycle: each subpackage imports first in a fresh process."""
    for pkg in ("nn", "device", "hardware", "training", "pruning", "tasks", "study", "report"):
        subprocess.run([sys.executable, "-c", f"import analogformer.{pkg}"], check=True)


def _package(path: Path) -> str:
    rel = path.relative_to(SRC).parts
    return rel[0] if len(rel) > 1 else ""


def test_no_private_name_is_imported_across_packages():
    offenders = []
    for path in _modules():
        tree = ast.parse(path.read_text())
        here = path.relative_to(SRC).parts[:-1]
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.level == 0:
                continue
            target = list(here[:len(here) - node.level + 1]) + (node.module.split(".") if node.module else [])
            other = target[0] if target and (SRC / target[0]).is_dir() else ""
            if other == _package(path):
                continue
            offenders += [f"{path.relative_to(SRC)}: {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert offenders == []


def test_no_source_module_is_over_400_lines():
    long = {str(p.relative_to(SRC)): n for p in _modules() if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
