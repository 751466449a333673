"""The house rules that import-linter does not check (docs/architecture.md): private symbols of torch, Hydra and
loky in one file per library, no import cycle between modules, and modules that stay small or say why not."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("flopsweep", "flopsweep_server")
SOURCES = sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))

# the one file allowed to import each library's private symbols
PRIVATE_HOME = {"torch": "flopsweep/measure/_torch.py", "hydra": "flopsweep/sweep/_hydra.py",
                "loky": "flopsweep/sweep/_loky.py", "joblib": "flopsweep/sweep/_loky.py",
                "multiprocessing": "flopsweep/sweep/_loky.py"}
# torch.ops.aten._foo is an operator's name (a key of the formula registry), not a private Python symbol
PUBLIC_NAMESPACES = (("torch", "ops"),)
MAX_LINES = 300


def _private(parts: list[str]) -> bool:
    return any(p.startswith("_") and not (p.startswith("__") and p.endswith("__")) for p in parts[1:])


def _public_namespace(parts: list[str]) -> bool:
    return any(tuple(parts[:len(ns)]) == ns for ns in PUBLIC_NAMESPACES)


def _dotted(node: ast.AST) -> list[str]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else []


def private_uses(path: Path) -> set[tuple[str, str]]:
    """(library, symbol) for every private symbol of a watched library that ``path`` imports or reaches by
    attribute (``torch._C._foo``, ``from hydra._internal import ...``, ``from joblib.externals.loky import _x``)."""
    tree = ast.parse(path.read_text())
    aliases: dict[str, list[str]] = {}  # local name -> the dotted module it stands for
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                aliases[alias.asname or parts[0]] = parts if alias.asname else parts[:1]
                if parts[0] in PRIVATE_HOME and _private(parts):
                    found.add((parts[0], alias.name))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            for alias in node.names:
                full = [*parts, alias.name]
                aliases[alias.asname or alias.name] = full
                library = "loky" if "loky" in parts else parts[0]
                if library in PRIVATE_HOME and _private(full):
                    found.add((library, ".".join(full)))
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}  # a.b of a.b.c: seen in a.b.c
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            chain = _dotted(node)
            if chain and chain[0] in aliases:
                full = [*aliases[chain[0]], *chain[1:]]
                library = "loky" if "loky" in full else full[0]
                if library in PRIVATE_HOME and _private(full) and not _public_namespace(full):
                    found.add((library, ".".join(full)))
    return found


def test_private_symbols_of_each_library_are_imported_in_one_file():
    misplaced = {}
    for path in SOURCES:
        rel = path.relative_to(REPO).as_posix()
        for library, symbol in private_uses(path):
            if PRIVATE_HOME[library] != rel:
                misplaced.setdefault(rel, []).append(symbol)
    assert not misplaced, f"private symbols outside their one file ({PRIVATE_HOME}): {misplaced}"
    # and the homes do hold them: the check sees what it is meant to see
    assert ("torch", "torch.utils._python_dispatch.TorchDispatchMode") in private_uses(REPO / PRIVATE_HOME["torch"])
    assert any(lib == "hydra" for lib, _ in private_uses(REPO / PRIVATE_HOME["hydra"]))


# a library whose public API is its top level: a module below it is its internals (transformers.models.gemma3...)
TOP_LEVEL_API = {"transformers": "flopsweep/models/_transformers.py", "diffusers": None}


def submodule_imports(path: Path) -> set[str]:
    """Every module below the top level of a :data:`TOP_LEVEL_API` library that ``path`` imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
        found |= {n for n in names if n.split(".")[0] in TOP_LEVEL_API and "." in n}
    return found


def test_a_library_whose_api_is_its_top_level_is_reached_below_it_in_one_file():
    misplaced = {rel: sorted(found) for path in SOURCES
                 if (found := submodule_imports(path)) and
                 (rel := path.relative_to(REPO).as_posix()) not in TOP_LEVEL_API.values()}
    assert not misplaced, f"a library's internals outside their one file ({TOP_LEVEL_API}): {misplaced}"
    assert "transformers.vision_utils" in submodule_imports(REPO / TOP_LEVEL_API["transformers"])


def test_the_private_symbol_check_sees_attributes_and_aliases(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import torch\nimport torch.nn as nn\nfrom torch.utils import _pytree as pt\n"
                     "x = torch._C._get_tracing_state\ny = nn._reduction\nz = torch.ops.aten._softmax\n")
    assert private_uses(probe) == {("torch", "torch._C._get_tracing_state"), ("torch", "torch.nn._reduction"),
                                   ("torch", "torch.utils._pytree")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, at any depth of its code (a function's import counts too)."""
    modules = {_module_name(p): p for p in SOURCES}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, *filter(None, [base])])
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    edges.add(target)  # a module's own package is imported first by Python, not by the module
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> Optional[list[str]]:
    """A cycle of ``graph`` (its nodes in order, the first again at the end), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> Optional[list[str]]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_between_modules():
    graph = import_graph()
    assert "flopsweep.sweep.state" in graph["flopsweep.sweep.app"]  # the graph sees the imports
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]  # and finds one
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_a_module_over_300_lines_says_why_at_its_top(path):
    lines = path.read_text().splitlines()
    if len(lines) > MAX_LINES:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert "Why one file" in doc, f"{len(lines)} lines and no 'Why one file' paragraph in the docstring"


def test_architecture_md_names_every_module_and_how_many_are_over_300_lines():
    """A newcomer found four modules (models/dit.py, cli/parser.py, measure/experts.py, flex.py) missing from its
    map, and 'the eight over' 300 lines where nine were."""
    import re

    doc = (REPO / "docs" / "architecture.md").read_text()
    modules = [p for p in (REPO / "flopsweep").rglob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    unnamed = [str(p.relative_to(REPO)) for p in modules
               if f"`{p.name}`" not in doc and f"`{p.parent.name}/{p.name}`" not in doc]
    assert unnamed == []
    over = sum(len(p.read_text().splitlines()) > MAX_LINES for p in (REPO / "flopsweep").rglob("*.py"))
    words = {"seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12}
    said = re.search(r"the (\w+) over it", doc)
    assert said and words.get(said.group(1)) == over, (said and said.group(0), over)


def test_no_line_is_wider_than_120_columns():
    """The package, its tests and benchmarks (docs/architecture.md); lines of 122 to 174 columns had crept in."""
    code = [*SOURCES, *sorted((REPO / "tests").rglob("*.py")), *sorted((REPO / "benchmarks").rglob("*.py"))]
    wide = [f"{p.relative_to(REPO)}:{n}" for p in code for n, line in enumerate(p.read_text().splitlines(), 1)
            if len(line) > 120]
    assert wide == []


def test_the_api_the_docs_show_is_there_after_import_flopsweep(tmp_path):
    """``import flopsweep`` then ``flopsweep.analysis.compare`` and ``flopsweep.projection.parallel.per_device``, in a
    new interpreter (each was an AttributeError); every projection module reachable so."""
    import subprocess
    import sys

    import flopsweep.projection as projection

    code = ("import flopsweep\nprint(callable(flopsweep.analysis.compare), "
            "callable(flopsweep.projection.parallel.per_device), callable(flopsweep.projection.serving.plan))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.stdout.split() == ["True"] * 3, out.stderr
    folder = Path(projection.__file__).parent
    assert set(projection.MODULES) == {p.stem for p in folder.glob("*.py")} - {"__init__"}
