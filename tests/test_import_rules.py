"""Import rules over every module of both packages (subpackages included):

* ssl_core stays framework-free: no ray, no mlflow, neither imported directly nor pulled in;
* no import cycle among the project's modules, counting imports inside functions too (a
  function-level import must not hide a cycle).
"""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ssl_core", "pipelines")


def modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of both packages."""
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def imports(f: Path) -> list[str]:
    """Every module name ``f`` imports, anywhere in the file."""
    names = []
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


def graph() -> dict[str, set[str]]:
    """Edges between project modules: ``from a.b import c`` points at ``a.b.c`` when that is a
    module, else at ``a.b``."""
    mods = modules()
    g = {}
    for name, f in mods.items():
        edges = set()
        for imp in imports(f):
            if imp in mods:
                edges.add(imp)
        # `from a.b import c` also listed a.b: keep it only when c is not a submodule
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in mods and not node.level:
                if all(f"{node.module}.{a.name}" in mods for a in node.names):
                    edges.discard(node.module)
        edges.discard(name)
        g[name] = edges
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def test_the_walk_sees_every_module():
    mods = modules()
    assert {"ssl_core.objectives.mlm", "ssl_core.training.loop", "pipelines.configs",
            "pipelines.train"} <= set(mods)
    g = graph()
    assert "ssl_core.encoder" in g["ssl_core.objectives.mlm"]     # a module-level import
    assert "ssl_core.encoder" in g["ssl_core.export"]             # a function-level import


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_a_cycle_would_be_found():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]


def test_ssl_core_source_has_no_ray_or_mlflow_imports():
    offenders = [f"{name}: {imp}" for name, f in modules().items() if name.startswith("ssl_core")
                 for imp in imports(f) if imp.split(".")[0] in ("ray", "mlflow")]
    assert not offenders, offenders


def test_importing_every_ssl_core_module_loads_neither_ray_nor_mlflow():
    mods = sorted(m for m in modules() if m.startswith("ssl_core"))
    assert "ssl_core.objectives.contrastive" in mods and "ssl_core.training.step" in mods
    code = ("import importlib, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow'))\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    assert out.stdout.strip() == ""
