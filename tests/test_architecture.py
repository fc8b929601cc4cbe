"""The kit's layers, read from the source with ``ast`` (nothing of the kit is imported, so this runs in well under a second).

An import only goes down the table below, or stays within its own layer. Lower layers announce, higher ones
react: a stage that repeats a measurement marks the report stale through the run-directory contract
(``kit.rundir.mark_report_stale``), it does not import the report.

====  ==========  ==================================================================================================
rank  layer       modules
====  ==========  ==================================================================================================
0     ground      ``deploy`` (the edge side), ``kit.errors``, ``kit.io``, ``kit.rundir`` (the run-directory contract),
                  ``kit.progress``, ``kit.device``, ``kit.seeds``
1     blocks      registries the recipe is validated against: ``kit.distill`` (methods, losses), ``kit.views``
                  (transforms, presets, corruption families), ``kit.models`` (timm, local_cnn, checkpoints),
                  ``kit.verdict`` (checks and verdicts shared by the parity ladder and the KPI gate)
2     recipe      ``kit.recipe``
3     data        ``kit.data`` (index, split, decode, views preview)
4     measures    ``kit.evaluate``, ``kit.scorers`` (metrics and scorers on torch models and bundles)
5     build       ``kit.train``, ``kit.export``
6     verify      ``kit.verify``
7     report      ``kit.report``
8     feedback    ``kit.feedback``: after go-live (shadow, ingest, audit)
9     onboard     ``kit.onboard``, ``kit.sample_line``
10    run         ``kit.run``
11    top         ``kit.cli``, ``kit.doctor``, ``kit.__main__``, ``kit`` (the package face)
====  ==========  ==================================================================================================

Edges counted: module-level and function-level imports (a lazy import inside a function is still a dependency),
except those under ``if TYPE_CHECKING:``; importing ``a.b.c`` also runs the package faces ``a`` and ``a.b`` (unless
the importer lives inside them: its parents are already initialised); a face that re-exports lazily names its
modules as strings (``_EXPORTS = {"name": "kit.x.y"}``), and those count as the face's imports too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS: dict[str, int] = {
    "deploy": 0, "kit.errors": 0, "kit.io": 0, "kit.rundir": 0, "kit.progress": 0, "kit.device": 0, "kit.seeds": 0,
    "kit.distill": 1, "kit.views": 1, "kit.physical": 1, "kit.models": 1, "kit.verdict": 1, "kit.anomaly.model": 1, "kit.anomaly.metrics": 1,
    "kit.recipe": 2,
    "kit.data": 3,
    "kit.evaluate": 4, "kit.scorers": 4,
    "kit.train": 5, "kit.export": 5, "kit.anomaly.train": 5, "kit.anomaly.stages": 5, "kit.anomaly.export": 5,
    "kit.anomaly.record": 5,
    "kit.verify": 6, "kit.anomaly.verify": 6, "kit.anomaly.verdict": 6,
    "kit.report": 7, "kit.anomaly.report": 7, "kit.anomaly": 7,
    "kit.feedback": 8,
    "kit.onboard": 9, "kit.sample_line": 9,
    "kit.run": 10,
    "kit.cli": 11, "kit.doctor": 11, "kit.__main__": 11, "kit": 11,
}
HEAVY = ("torch", "timm", "albumentations")  # the training side's libraries: never on the edge side


def _modules() -> dict[str, Path]:
    mods = {}
    for top in ("kit", "deploy"):
        for path in (ROOT / top).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


MODULES = _modules()


def _typing_only(tree: ast.AST) -> set[int]:
    """Nodes under ``if TYPE_CHECKING:`` (never run)."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                skip.update(id(n) for n in ast.walk(sub))
    return skip


def _imported_names(module: str, path: Path) -> list[str]:
    """Every dotted name ``module`` imports (any library), at any depth of the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _typing_only(tree)
    names = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if path.name == "__init__.py" else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # ``from pkg import sub``: the submodule when there is one, else the module holding the name
            names += [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in MODULES else prefix for a in node.names]
        elif path.name == "__init__.py" and isinstance(node, ast.Constant) and node.value in MODULES:
            names.append(node.value)  # a lazy face: ``_EXPORTS = {"name": "kit.x.y"}``
    return names


def _owner(name: str) -> str | None:
    """The project module a dotted name lives in (None: a library)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for name in _imported_names(module, path):
            target = _owner(name)
            if target is None or target == module:
                continue
            edges[module].add(target)
            parts = target.split(".")
            for i in range(1, len(parts)):  # importing a.b.c runs the faces a and a.b
                face = ".".join(parts[:i])
                if face in MODULES and face != module and not module.startswith(face + "."):
                    edges[module].add(face)
    return edges


EDGES = _edges()


def _loops(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    loops = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        loops.append(sorted(component))
    return loops


def _layer(module: str) -> int:
    name = module
    while name not in LAYERS:
        if "." not in name:
            raise KeyError(module)
        name = name.rpartition(".")[0]
    return LAYERS[name]


def test_every_module_has_a_layer():
    missing = []
    for module in MODULES:
        try:
            _layer(module)
        except KeyError:
            missing.append(module)
    assert not missing, f"add these modules to LAYERS in tests/test_architecture.py: {', '.join(sorted(missing))}"


def test_the_loop_finder_finds_a_loop():
    assert _loops({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _loops({"a": {"b"}, "b": set()}) == []


def test_kit_has_no_import_loop():
    loops = [loop for loop in _loops(EDGES) if any(m == "kit" or m.startswith("kit.") for m in loop)]
    assert not loops, "import loops: " + "; ".join(" <-> ".join(loop) for loop in loops)


def test_deploy_has_no_import_loop():
    """Separate from the kit's: ``deploy.runtimes`` imports its backends (never the reverse), and the station is a
    package of its own (``deploy/serve/``) that nothing below it imports."""
    loops = [loop for loop in _loops(EDGES) if all(m.startswith("deploy") for m in loop)]
    assert not loops, "import loops: " + "; ".join(" <-> ".join(loop) for loop in loops)


def test_imports_only_go_down():
    upward = sorted(f"{m} ({_layer(m)}) -> {t} ({_layer(t)})" for m, targets in EDGES.items() for t in targets
                    if _layer(t) > _layer(m))
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m == "deploy" or m.startswith("deploy.")))
def test_deploy_never_imports_the_training_side(module):
    """The edge side runs where the kit, torch, timm and albumentations are not installed."""
    bad = sorted({n for n in _imported_names(module, MODULES[module]) if n.split(".")[0] in ("kit", *HEAVY)})
    assert not bad, f"{module} imports {', '.join(bad)}"


def test_every_folder_is_a_package():
    """``setuptools.packages.find`` skips a folder without ``__init__.py``: its modules would be missing from a wheel."""
    folders = {p.parent for top in ("kit", "deploy") for p in (ROOT / top).rglob("*.py")}
    missing = sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").is_file())
    assert not missing, f"no __init__.py in {', '.join(missing)}"


# The station is read by integrators who must change it: every function fits on a screen.
STATION_MAX_FUNCTION_LINES = 80


def test_no_station_function_is_longer_than_a_screen():
    long = []
    for path in sorted((ROOT / "deploy" / "serve").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > STATION_MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.name} {lines} lines")
    assert (ROOT / "deploy" / "serve" / "app.py").is_file()
    assert not long, "; ".join(long)
