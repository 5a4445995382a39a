"""The package's imports run one way (docs/architecture.md): model <- spaces <- search core <-
commands -> dashboards, with no cycle and no private name taken from another module.

Read from the source with ``ast`` (nothing is imported), so a violation is reported with its file
and line. An import inside ``if TYPE_CHECKING:`` is a type annotation, not a dependency, and is
not counted; an import inside a function is counted like any other (it must not hide a cycle),
and must say on its line why it is there (a heavy library kept out of start-up, torch kept out
of the driver).
"""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"model": "attntune.model", "spaces": "attntune.spaces", "search": "attntune.search", "dashboards": "attntune.dashboards"}
# What the user runs: each command may use the search core and the dashboards; nothing below may
# use a command. Everything else in attntune.search is the search core.
COMMANDS = {
    "attntune.search.cli",
    "attntune.search.cli_base",
    "attntune.search.cli_model",
    "attntune.search.cli_jobs",
    "attntune.search.run",
    "attntune.search.export",
    "attntune.search.submit",
    "attntune.search.ui",
    "attntune.search.train_cmd",
    "attntune.search.production",
    "attntune.search.pyfunc_model",
}
LAYERS = {"model": 0, "spaces": 1, "core": 2, "dashboards": 3, "commands": 4}


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module
    names: tuple[str, ...]  # names taken from it ("" for a module import)
    line: int
    local: bool  # inside a function
    text: str  # the source line


def modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def layer(module: str) -> int:
    if module in COMMANDS:
        return LAYERS["commands"]
    pkg = module.split(".")[1]
    return LAYERS["core" if pkg == "search" else pkg]


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports_of(module: str, path: Path, known: dict[str, Path]) -> Iterator[Import]:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()

    def visit(node: ast.AST, local: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                continue
            inner = local or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("attntune."):
                line = lines[child.lineno - 1]
                mods = [n.name for n in child.names if f"{child.module}.{n.name}" in known]
                for name in mods:  # `from attntune.search import cli`: the submodule itself
                    yield Import(module, f"{child.module}.{name}", ("",), child.lineno, inner, line)
                rest = tuple(n.name for n in child.names if n.name not in mods)
                if rest:
                    yield Import(module, child.module, rest, child.lineno, inner, line)
            elif isinstance(child, ast.Import):
                for n in child.names:
                    if n.name.startswith("attntune."):
                        yield Import(module, n.name, ("",), child.lineno, inner, lines[child.lineno - 1])
            yield from visit(child, inner)

    yield from visit(ast.parse(text), False)


def all_imports() -> list[Import]:
    known = modules()
    return [imp for m, p in known.items() for imp in imports_of(m, p, known)]


def test_no_import_cycle_between_modules() -> None:
    edges: dict[str, set[str]] = {}
    for imp in all_imports():
        if imp.target != imp.source:
            edges.setdefault(imp.source, set()).add(imp.target)
    try:
        graphlib.TopologicalSorter(edges).prepare()
    except graphlib.CycleError as e:
        pytest.fail("import cycle: " + " imports ".join(reversed(e.args[1])))


def test_imports_run_one_way() -> None:
    """model <- spaces <- search core <- commands -> dashboards; dashboards use the core only."""
    imports = [i for i in all_imports() if i.target in modules()]
    wrong = [f"{i.source}:{i.line} imports {i.target}" for i in imports if layer(i.target) > layer(i.source)]
    assert wrong == []
    # The walk sees each documented direction in the real code (a walk that saw nothing would pass).
    names = {v: k for k, v in LAYERS.items()}
    seen = {(names[layer(i.source)], names[layer(i.target)]) for i in imports}
    assert {("spaces", "model"), ("core", "spaces"), ("commands", "core"), ("commands", "dashboards"),
            ("dashboards", "core")} <= seen, seen  # fmt: skip


def test_no_private_name_crosses_a_module() -> None:
    imports = all_imports()
    wrong = [
        f"{i.source}:{i.line} takes {n} from {i.target}"
        for i in imports
        for n in i.names
        if n.startswith("_") and i.target != i.source
    ]
    assert wrong == []
    # The names a module takes are seen: the dashboards take the read model's from search.records.
    dashboards = [i for i in imports if i.source.startswith("attntune.dashboards.")]
    taken = {n for i in dashboards if i.target == "attntune.search.records" for n in i.names}
    assert "SearchData" in taken, taken


def test_every_import_inside_a_function_says_why() -> None:
    """A function-local import of our own modules is allowed only to keep a heavy library (torch,
    MLflow, Ray, plotly) out of start-up or out of the driver; its line says so in a comment."""
    local = [i for i in all_imports() if i.local]
    assert any(i.source == "attntune.search.cli" for i in local)  # the CLI's lazy imports are seen
    silent = [f"{i.source}:{i.line}: {i.text.strip()}" for i in local if "#" not in i.text]
    assert silent == []
