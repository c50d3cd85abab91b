"""Every fewstep module imports on its own and in any order, and no two modules import each other.

The cycle check reads the source (AST): an import inside a function counts as much as one at the top,
because a lazy import that closes a cycle is an order-dependent failure waiting for the first caller
that imports the other side first. Imports under `if TYPE_CHECKING:` do not run and are not counted.
Models reached through "module:function" strings (the registry) are not imports of the registry.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import fewstep

PKG_DIR = Path(fewstep.__file__).resolve().parent


def _modules() -> dict[str, tuple[Path, bool]]:
    """{dotted name: (file, is_package)} for every module under fewstep/."""
    mods = {}
    for path in sorted(PKG_DIR.rglob("*.py")):
        parts = list(path.relative_to(PKG_DIR.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return mods


def _imports(tree: ast.AST):
    """Import nodes of a module, skipping the bodies of `if TYPE_CHECKING:` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """module -> the fewstep modules it imports (anywhere in its code)."""
    mods = _modules()
    graph = {}
    for name, (path, is_pkg) in mods.items():
        deps = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in mods)
                continue
            if node.level:  # relative: resolve against this module's package
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            for alias in node.names:
                # `from pkg import submodule` depends on the submodule; `from mod import name` on mod
                target = f"{prefix}.{alias.name}"
                if target in mods:
                    deps.add(target)
                elif prefix in mods:
                    deps.add(prefix)
        deps.discard(name)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative DFS with colours)."""
    colour = dict.fromkeys(graph, 0)  # 0 new, 1 on the path, 2 done
    for start in sorted(graph):
        if colour[start]:
            continue
        path, iters = [start], [iter(sorted(graph[start]))]
        colour[start] = 1
        while path:
            nxt = next(iters[-1], None)
            if nxt is None:
                colour[path.pop()] = 2
                iters.pop()
            elif colour[nxt] == 1:
                return path[path.index(nxt):] + [nxt]
            elif colour[nxt] == 0:
                colour[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph[nxt])))
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_graph_sees_relative_and_lazy_imports():
    graph = import_graph()
    assert len(graph) > 40
    # a top-level relative import and an import inside a function body are both edges
    assert "fewstep.errors" in graph["fewstep.upscaler"]
    assert "fewstep.resshift.pipeline" in graph["fewstep.resshift.models"]


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


_IMPORT_SCRIPT = r"""
import importlib, json, random, sys
names = json.loads(sys.argv[1])
failures = []
def forget():
    for m in [m for m in sys.modules if m == "fewstep" or m.startswith("fewstep.")]:
        del sys.modules[m]
for name in names:  # each alone: nothing of fewstep imported before it
    forget()
    try:
        importlib.import_module(name)
    except Exception as e:
        failures.append(f"{name} alone: {type(e).__name__}: {e}")
for seed in (0, 1, 2):  # all of them, in shuffled orders
    forget()
    order = list(names)
    random.Random(seed).shuffle(order)
    for name in order:
        try:
            importlib.import_module(name)
        except Exception as e:
            failures.append(f"{name} (order seed {seed}): {type(e).__name__}: {e}")
print(json.dumps(failures))
"""


def test_every_module_imports_alone_and_in_any_order():
    names = sorted(_modules())
    env = dict(os.environ, PYTHONPATH=str(PKG_DIR.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", _IMPORT_SCRIPT, json.dumps(names)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    failures = json.loads(out.stdout.strip().splitlines()[-1])
    assert failures == []
