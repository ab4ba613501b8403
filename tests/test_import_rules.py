"""ssl_core stays framework-free: no ray, no mlflow, neither imported directly nor pulled in."""
import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "ssl_core"


def test_ssl_core_source_has_no_ray_or_mlflow_imports():
    offenders = []
    for f in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{f.name}: {n}" for n in names if n.split(".")[0] in ("ray", "mlflow")]
    assert not offenders, offenders


def test_importing_every_ssl_core_module_loads_neither_ray_nor_mlflow():
    mods = sorted(f"ssl_core.{p.stem}" for p in CORE.glob("*.py") if p.stem != "__init__")
    assert "ssl_core.masking" in mods and "ssl_core.model" in mods
    code = ("import importlib, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow'))\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
