"""The layering rule: `hdmap/` (data, models, metrics, one trial) imports nothing from `sweeps/`, Ray or W&B."""

import ast
import subprocess
import sys
from pathlib import Path

HDMAP = Path(__file__).resolve().parents[1] / "hdmap"
FORBIDDEN = ("sweeps", "ray", "wandb", "wandb_workspaces")


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_hdmap_source_never_imports_the_layers_above():
    offenders = {
        str(p.relative_to(HDMAP.parent)): sorted(_imported_roots(p) & set(FORBIDDEN)) for p in HDMAP.rglob("*.py")
    }
    assert {p: r for p, r in offenders.items() if r} == {}


def test_importing_all_of_hdmap_loads_neither_ray_nor_sweeps():
    # (W&B is not checked here: timm.utils imports it optionally when it is installed.)
    code = (
        "import importlib, pkgutil, sys, hdmap\n"
        "for m in pkgutil.walk_packages(hdmap.__path__, 'hdmap.'): importlib.import_module(m.name)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'sweeps'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
