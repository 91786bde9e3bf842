"""The import graph of modelseal: no cycle, and the layers of ARCHITECTURE.md.

Pure `ast`: nothing is imported (torch included), so this runs in well under a second.
Every `import` / `from ... import` of a modelseal module in every file under src/modelseal
counts, at module level or inside functions and methods; relative imports are resolved;
`from pkg import x` where pkg.x is a module counts as importing pkg.x, and importing a
package counts as importing its __init__. A package's __init__ importing its own
submodules is not a cycle (a submodule's import does not count as importing its parents).

Layers, top to bottom (an import may only go down, or sideways inside one package):
  applications  cli, api, __main__, demo, zoobuild (use several tasks)
  tasks         lock, watermark, audit (never import each other)
  attacks       evaluation tools the tasks use (import no task)
  config        the options of every command, the one home of their defaults: the tasks and
                attacks take them (imports only errors)
  foundation    models, data, stats, errors, runs, parallel, report, quality
"""
from __future__ import annotations

import ast
from pathlib import Path


SRC = Path(__file__).resolve().parents[1] / "src"
PKG = "modelseal"

APPLICATIONS = {"modelseal.cli", "modelseal.api", "modelseal.__main__", "modelseal.demo", "modelseal.zoobuild"}
TASKS = {"modelseal.lock", "modelseal.watermark", "modelseal.audit"}
ATTACKS = {"modelseal.attacks"}
CONFIG = {"modelseal.config"}
FOUNDATION = {"modelseal.models", "modelseal.data", "modelseal.stats", "modelseal.errors", "modelseal.runs",
              "modelseal.parallel", "modelseal.report", "modelseal.quality"}
ROOT = {PKG}  # modelseal/__init__.py (the version): importable from anywhere
# Names in the layers above that need not exist yet (planned modules).
PLANNED: set[str] = set()

# Imports that break a rule below on purpose: {(importer, imported): why}. Empty: none does.
# Add an entry here (with the reason) rather than loosening a rule.
EXCEPTIONS: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module under src/modelseal."""
    out = {}
    for f in sorted((SRC / PKG).rglob("*.py")):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


MODULES = _modules()


def _ours(name: str) -> bool:
    return name == PKG or name.startswith(PKG + ".")


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """(imported module, line) for every modelseal import in `path`, wherever it is."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if _ours(a.name)]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not _ours(mod):
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}"
                found.append((sub if sub in MODULES else mod, node.lineno))
    return sorted(dict.fromkeys(found), key=lambda f: f[1])


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}
GRAPH = {name: sorted({m for m, _ in found if m in MODULES}) for name, found in IMPORTS.items()}


def _in(name: str, group: set[str]) -> bool:
    return any(name == g or name.startswith(g + ".") for g in group)


def _where(name: str) -> str:
    return f"{MODULES[name].relative_to(SRC.parent)}"


def _top(name: str) -> str:
    return ".".join(name.split(".")[:2])


def _package_graph() -> dict[str, list[str]]:
    """GRAPH with every module replaced by its top-level package or module (modelseal.X)."""
    out: dict[str, set[str]] = {}
    for a, targets in GRAPH.items():
        out.setdefault(_top(a), set()).update(_top(b) for b in targets if _top(b) != _top(a))
    return {k: sorted(v) for k, v in out.items()}


def _cycles(graph: dict[str, list[str]] | None = None) -> list[list[str]]:
    """One cycle (a -> ... -> a) per strongly connected component that has one (Tarjan)."""
    graph = GRAPH if graph is None else graph
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
            if len(comp) > 1 or v in graph[v]:
                comps.append(set(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_through(graph, min(comp), comp) for comp in comps]


def _cycle_through(graph: dict[str, list[str]], start: str, comp: set[str]) -> list[str]:
    """The shortest way from `start` back to itself inside its component (breadth first)."""
    prev, queue = {start: None}, [start]
    for v in queue:
        for w in graph[v]:
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return [*reversed(path), start]
            if w in comp and w not in prev:
                prev[w] = v
                queue.append(w)
    raise AssertionError(f"no cycle through {start}")


def _violations(importers: set[str], allowed, rule: str) -> list[str]:
    bad = []
    for name, found in sorted(IMPORTS.items()):
        if not _in(name, importers):
            continue
        for mod, line in found:
            if not allowed(name, mod) and (name, mod) not in EXCEPTIONS:
                bad.append(f"{_where(name)}:{line} imports {mod} ({rule})")
    return bad


def test_the_walk_sees_imports_inside_functions_and_resolves_relative_ones(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import os\n\n\nclass A:\n    def f(self):\n        from ..errors import InputError\n"
                 "        from . import codec, keys as k\n        import modelseal.stats\n"
                 "        from .. import parallel, __version__\n")
    assert _imports("modelseal.watermark.x", f) == [
        ("modelseal.errors", 6), ("modelseal.watermark.codec", 7), ("modelseal.watermark.keys", 7),
        ("modelseal.stats", 8), ("modelseal.parallel", 9), ("modelseal", 9)]
    init = tmp_path / "__init__.py"
    init.write_text("from .keys import load_key\n")
    assert _imports("modelseal.watermark", init) == [("modelseal.watermark.keys", 1)]


def test_every_module_is_in_a_layer():
    for group in (*APPLICATIONS, *TASKS, *ATTACKS, *CONFIG, *FOUNDATION):
        exists = any(_in(m, {group}) for m in MODULES)  # a package without __init__.py too
        assert exists or group in PLANNED, f"{group} is named in a layer but does not exist"
    placed = APPLICATIONS | TASKS | ATTACKS | CONFIG | FOUNDATION | ROOT
    loose = [f"{_where(m)}" for m in MODULES if not (m in ROOT or _in(m, placed - ROOT))]
    assert not loose, "place these in a layer in tests/test_imports.py: " + ", ".join(loose)


def test_every_modelseal_import_names_a_module():
    missing = [f"{_where(name)}:{line} imports {mod}, which does not exist"
               for name, found in sorted(IMPORTS.items()) for mod, line in found if mod not in MODULES]
    assert not missing, "\n".join(missing)


def test_no_import_cycle():
    cycles = _cycles()
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_cycle_between_packages():
    """Two packages whose modules import each other both ways (say watermark.verify ->
    attacks.image and attacks.utility -> watermark.verify) make a cycle, even when no cycle of
    modules closes."""
    cycles = _cycles(_package_graph())
    assert not cycles, "package cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_foundation_imports_only_foundation():
    bad = _violations(FOUNDATION, lambda a, b: _in(b, FOUNDATION) or b in ROOT,
                      "models, data, stats, errors, runs, parallel, report and quality sit below config, "
                      "attacks, the tasks and the applications")
    assert not bad, "\n".join(bad)


def test_attacks_import_no_task():
    bad = _violations(ATTACKS, lambda a, b: _in(b, ATTACKS | CONFIG | FOUNDATION) or b in ROOT,
                      "attacks sit below the tasks: what a task shares with them moves down a layer")
    assert not bad, "\n".join(bad)


def test_tasks_import_neither_each_other_nor_applications():
    def own_or_below(a: str, b: str) -> bool:
        task = next(t for t in TASKS if _in(a, {t}))
        return _in(b, {task} | ATTACKS | CONFIG | FOUNDATION) or b in ROOT

    bad = _violations(TASKS, own_or_below, "tasks do not import each other nor an application; what two "
                      "tasks share moves down a layer")
    assert not bad, "\n".join(bad)


def test_demo_and_zoo_building_do_not_import_the_cli():
    bad = _violations({"modelseal.demo", "modelseal.zoobuild"},
                      lambda a, b: not _in(b, {"modelseal.cli", "modelseal.api", "modelseal.__main__"}),
                      "applications are called by the CLI, never the reverse")
    assert not bad, "\n".join(bad)


def test_config_imports_only_errors():
    bad = _violations({"modelseal.config"}, lambda a, b: b == "modelseal.errors",
                      "config holds the options of every command: pydantic, the standard library and errors only")
    assert not bad, "\n".join(bad)


def test_the_checks_see_a_planted_cycle_and_an_upward_import(monkeypatch):
    graph = {k: list(v) for k, v in GRAPH.items()}
    graph["modelseal.errors"] = [*graph["modelseal.errors"], "modelseal.stats"]
    graph["modelseal.stats"] = [*graph["modelseal.stats"], "modelseal.errors"]
    assert ["modelseal.errors", "modelseal.stats", "modelseal.errors"] in _cycles(graph)
    monkeypatch.setitem(globals(), "IMPORTS", {"modelseal.stats": [("modelseal.watermark.keys", 7)]})
    bad = _violations(FOUNDATION, lambda a, b: _in(b, FOUNDATION) or b in ROOT, "rule")
    assert bad == ["src/modelseal/stats.py:7 imports modelseal.watermark.keys (rule)"]
