"""The import direction of docs/design.md §4, read from rlhfctl's source with `ast`.

Every import of an rlhfctl module counts, at the top of a module or inside a
function, relative ones resolved. A module may import its own layer or a
lower one, and no group of modules may import one another in a circle. Only
a command (`rlhfctl/commands/`) imports rlhfctl modules inside a function:
the implementation it runs, so that `--help` stays light.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import rlhfctl

PACKAGE = Path(rlhfctl.__file__).parent

# lowest first; a name covers its submodules (except `rlhfctl`, the package __init__ alone)
LAYERS = [
    ("rlhfctl", "rlhfctl.records", "rlhfctl.resumable", "rlhfctl.sources", "rlhfctl.errors", "rlhfctl.console"),
    ("rlhfctl.toy", "rlhfctl.grading", "rlhfctl.data", "rlhfctl.models", "rlhfctl.artifacts", "rlhfctl.locks",
     "rlhfctl.packing", "rlhfctl.logprobs"),
    ("rlhfctl.generation",),
    ("rlhfctl.rm",),
    ("rlhfctl.rl",),
    ("rlhfctl.training",),
    ("rlhfctl.eval", "rlhfctl.report"),
    ("rlhfctl.commands", "rlhfctl.demo"),
    ("rlhfctl.cli", "rlhfctl.__main__"),
]
DEFERRING = ("rlhfctl.commands",)  # the modules that may import rlhfctl modules inside a function


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the rlhfctl module imported
    where: str  # FILE:LINE
    text: str  # the statement
    deferred: bool  # inside a function


def modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the package at ``root`` (a package is its __init__)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _known(name: str, known: dict[str, Path]) -> str | None:
    """``name`` or its nearest enclosing module that is in ``known``."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _absolute(node: ast.ImportFrom, source: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = source if is_package else source.rpartition(".")[0]
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    return f"{base}.{node.module}" if node.module else base


def imports_of(source: str, path: Path, known: dict[str, Path]) -> list[Import]:
    """The rlhfctl modules ``source`` imports; ``from P import m`` counts as an import of the module P.m where there is one."""
    root = source.split(".")[0]
    is_package = path.name == "__init__.py"
    found = []

    def add(node: ast.stmt, name: str, deferred: bool) -> None:
        target = _known(name, known)
        if name.split(".")[0] == root and target is not None:
            found.append(Import(source, target, f"{path}:{node.lineno}", ast.unparse(node), deferred))

    def visit(node: ast.AST, deferred: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(child, alias.name, inside)
            elif isinstance(child, ast.ImportFrom):
                module = _absolute(child, source, is_package)
                for alias in child.names:
                    full = f"{module}.{alias.name}"
                    add(child, full if full in known else module, inside)
            visit(child, inside)

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


def import_graph(root: Path) -> list[Import]:
    known = modules(root)
    return [imp for name, path in known.items() for imp in imports_of(name, path, known)]


def layer_of(module: str, layers=LAYERS) -> int | None:
    for i, names in enumerate(layers):
        if any(module == n or (n != "rlhfctl" and module.startswith(n + ".")) for n in names):
            return i
    return None


def _layer_name(module: str, layers) -> str:
    i = layer_of(module, layers)
    return f"layer {i + 1} ({', '.join(n.removeprefix('rlhfctl.') for n in layers[i])})"


def upward_imports(graph: list[Import], layers=LAYERS) -> list[str]:
    """One line for each import of a higher layer, and one for each module that no layer names."""
    problems, unplaced = [], {}
    for imp in graph:
        mine, theirs = layer_of(imp.source, layers), layer_of(imp.target, layers)
        for module, layer in ((imp.source, mine), (imp.target, theirs)):
            if layer is None:
                unplaced.setdefault(module, imp.where)
        if mine is not None and theirs is not None and theirs > mine:
            problems.append(f"{imp.where}: {imp.source} in {_layer_name(imp.source, layers)} imports {imp.target} in "
                            f"{_layer_name(imp.target, layers)}, a higher one: {imp.text}")
    problems += [f"{where}: {module} belongs to no layer (add it to LAYERS in {Path(__file__).name})"
                 for module, where in unplaced.items()]
    return sorted(problems)


def _counts(imp: Import) -> bool:
    """A package's __init__ importing its own submodules (to re-export them) is no cycle with them."""
    return imp.source != imp.target and not imp.target.startswith(imp.source + ".")


def cycles(graph: list[Import]) -> list[str]:
    """One line for each group of modules that import one another in a circle (a strongly connected
    component of more than one module), naming the imports that close it."""
    edges: dict[str, set[str]] = {}
    for imp in graph:
        edges.setdefault(imp.source, set())
        edges.setdefault(imp.target, set())
        if _counts(imp):
            edges[imp.source].add(imp.target)
    problems = []
    for group in _strongly_connected(edges):
        if len(group) > 1:
            inside = sorted({f"{imp.where}: {imp.text}" for imp in graph
                             if _counts(imp) and imp.source in group and imp.target in group})
            problems.append(f"import cycle between {', '.join(sorted(group))}:\n    " + "\n    ".join(inside))
    return problems


def _strongly_connected(edges: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                groups.append(group)
    return groups


def deferred_imports(graph: list[Import], allowed=DEFERRING) -> list[str]:
    """One line for each rlhfctl module imported inside a function outside the modules that may defer."""
    return sorted({f"{imp.where}: {imp.source} imports {imp.target} inside a function (import it at the top): {imp.text}"
                   for imp in graph if imp.deferred and not any(imp.source == a or imp.source.startswith(a + ".")
                                                                 for a in allowed)})


# --- rlhfctl ----------------------------------------------------------------------------------------

GRAPH = import_graph(PACKAGE)


def test_the_graph_sees_rlhfctl_imports():
    """Not vacuous: the real package's top-level and in-function imports are found."""
    pairs = {(imp.source, imp.target, imp.deferred) for imp in GRAPH}
    assert ("rlhfctl.cli", "rlhfctl.commands.rollout", False) in pairs
    assert ("rlhfctl.commands.rollout", "rlhfctl.generation.rollout", True) in pairs
    assert ("rlhfctl.grading.code", "rlhfctl.grading.sandbox", False) in pairs  # `from rlhfctl.grading import sandbox`
    assert len({imp.source for imp in GRAPH}) > 50


def test_imports_go_downward_only():
    problems = upward_imports(GRAPH)
    assert not problems, "\n".join(problems)


def test_no_import_cycles():
    problems = cycles(GRAPH)
    assert not problems, "\n".join(problems)


def test_only_commands_import_rlhfctl_modules_inside_functions():
    problems = deferred_imports(GRAPH)
    assert not problems, "\n".join(problems)


# --- the checks fail where they should --------------------------------------------------------------

def _package(tmp_path: Path, files: dict[str, str]) -> list[Import]:
    for name, text in files.items():
        path = tmp_path / "rlhfctl" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(tmp_path / "rlhfctl")


def test_the_checks_find_an_upward_import_a_cycle_and_a_deferred_import(tmp_path):
    graph = _package(tmp_path, {
        "__init__.py": "",
        "errors.py": "",
        "rm/__init__.py": "",
        "rm/scores.py": "def f():\n    from ..training import loop\n",  # relative, deferred, upward
        "training/__init__.py": "",
        "training/loop.py": "from rlhfctl.rm.scores import f\n",
        "generation/__init__.py": "from rlhfctl.generation.a import x\n",  # re-export: no cycle
        "generation/a.py": "from rlhfctl.generation import b\nx = 1\n",
        "generation/b.py": "import rlhfctl.generation.a\nimport rlhfctl.errors\n",
        "mystery.py": "from rlhfctl import errors\n",
    })
    scores = str(tmp_path / "rlhfctl" / "rm" / "scores.py")

    upward = upward_imports(graph)
    assert f"{scores}:2: rlhfctl.rm.scores in layer 4 (rm) imports rlhfctl.training.loop in layer 6 (training), " \
           "a higher one: from ..training import loop" in upward
    assert f"{tmp_path / 'rlhfctl' / 'mystery.py'}:1: rlhfctl.mystery belongs to no layer (add it to LAYERS in " \
           "test_architecture.py)" in upward
    assert len(upward) == 2

    found = cycles(graph)
    assert len(found) == 2
    assert any(f.startswith("import cycle between rlhfctl.generation.a, rlhfctl.generation.b:") for f in found)
    rm_cycle = next(f for f in found if "rlhfctl.rm.scores" in f)
    assert rm_cycle.startswith("import cycle between rlhfctl.rm.scores, rlhfctl.training.loop:")
    assert f"{scores}:2: from ..training import loop" in rm_cycle
    assert "from rlhfctl.rm.scores import f" in rm_cycle

    assert deferred_imports(graph) == [f"{scores}:2: rlhfctl.rm.scores imports rlhfctl.training.loop inside a "
                                       "function (import it at the top): from ..training import loop"]
    assert deferred_imports(graph, allowed=("rlhfctl.rm",)) == []


def test_a_package_reexporting_its_submodules_is_no_cycle(tmp_path):
    graph = _package(tmp_path, {
        "__init__.py": "",
        "grading/__init__.py": "from rlhfctl.grading.code import C\nfrom .math import M\n",
        "grading/code.py": "from rlhfctl.grading import math\nC = 1\n",
        "grading/math.py": "M = 1\n",
    })
    assert {(i.source, i.target) for i in graph} == {
        ("rlhfctl.grading", "rlhfctl.grading.code"), ("rlhfctl.grading", "rlhfctl.grading.math"),
        ("rlhfctl.grading.code", "rlhfctl.grading.math")}
    assert cycles(graph) == [] and upward_imports(graph) == []


# --- configs are built by keyword -------------------------------------------------------------------

CONFIG_SUFFIXES = ("Config", "Options", "Params", "Settings")
CONFIG_NAMES = ("Shaping", "Schedule")


def _config_classes(root: Path) -> set[str]:
    """Names of the dataclasses of the package at ``root`` that hold settings."""
    names = set()
    for path in modules(root).values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and (node.name.endswith(CONFIG_SUFFIXES) or node.name in CONFIG_NAMES):
                names.add(node.name)
    return names


def positional_config_calls(root: Path) -> list[str]:
    """``FILE:LINE: Name(...)`` for each construction of a settings class with a positional argument."""
    known = _config_classes(root)
    found = []
    for path in modules(root).values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and node.args:
                name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
                if name in known:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno}: {name}(...) takes positional arguments")
    return found


def test_configs_are_built_by_keyword():
    assert positional_config_calls(PACKAGE) == []


def test_the_keyword_check_finds_a_positional_config(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from dataclasses import dataclass\n\n@dataclass\nclass RunConfig:\n    lr: float\n    wd: float\n")
    (pkg / "b.py").write_text("from pkg.a import RunConfig\n\nok = RunConfig(lr=1.0, wd=0.1)\nbad = RunConfig(1.0, 0.1)\n")
    assert positional_config_calls(pkg) == ["pkg/b.py:4: RunConfig(...) takes positional arguments"]
