"""docs/ARCHITECTURE.md stays true: layers, no import cycles, short modules, no tracker numbers.

The layer table is parsed from docs/ARCHITECTURE.md ("## Layers": layer, module patterns, the
layers it may import), so the document and this test cannot drift. Every module of the package
is parsed with :mod:`ast`; every import counts, at module level or inside a function (or an
``if TYPE_CHECKING:`` block), absolute or relative, ``import x.y`` or ``from x import y`` (an
edge to ``x.y`` when that is a module, else to ``x``). The checker fails when

* a module imports a layer its row does not name (a layer above its own, or a sibling);
* a module matches no layer pattern;
* package modules import each other in a cycle;
* a package module is over 500 lines;
* code or docs cite a tracker number instead of a spec section or a document.

Each failure names the module, the line and the import. The same checker runs on small
synthetic packages written to ``tmp_path`` to show that each kind of failure is reported.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "vfio_user_mig"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
MAX_LINES = 500
#: The word "issue" (or "Issue", "issues") then a number, with or without "#": a tracker
#: number, not a reference a reader of the repository can follow.
TRACKER = re.compile(r"\b[Ii]ssues?\s*#?\d")
TRACKER_PLACES = ("vfio_user_mig", "tests", "docs", "README.md", "benchmarks", "notebooks",
                  "fuzz")
_SKIP_DIRS = {"__pycache__", ".ipynb_checkpoints", ".hypothesis", ".pytest_cache"}
_BINARY_SUFFIXES = {".png", ".svg", ".pdf", ".jpg", ".gif", ".pyc", ".so"}


# ---------------------------------------------------------------------------------------------
# The layer table
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layer:
    """One row of the table: its name, the module patterns it owns, the layers it may import."""

    name: str
    patterns: tuple[str, ...]
    may_import: frozenset[str]


def parse_layers(markdown: str) -> list[Layer]:
    """The rows of the first table under ``## Layers``, bottom to top.

    Columns: layer name, module patterns in backquotes (``fnmatch`` globs over dotted names),
    the layers it may import separated by commas (``-`` for none).
    """
    section = markdown.split("\n## Layers", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    layers = []
    for line in rows[2:]:  # header and separator rows first
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3:
            raise ValueError(f"layer table row needs 3 cells: {line!r}")
        name, modules, may = cells
        patterns = tuple(re.findall(r"`([^`]+)`", modules))
        allowed = frozenset(x.strip() for x in may.split(",") if x.strip() not in ("", "-"))
        layers.append(Layer(name, patterns, allowed))
    if not layers:
        raise ValueError("no layer table under '## Layers'")
    return layers


def table_problems(layers: Sequence[Layer]) -> list[str]:
    """A row may import only rows above it in the table (the layers below it)."""
    problems = []
    seen: set[str] = set()
    for layer in layers:
        for other in sorted(layer.may_import - seen):
            problems.append(f"layer {layer.name} may import {other}, which is not below it")
        seen.add(layer.name)
    return problems


def layer_of(module: str, layers: Sequence[Layer]) -> Layer | None:
    """The highest layer (last row) with a pattern matching ``module``, or None."""
    for layer in reversed(layers):
        if any(fnmatch.fnmatchcase(module, pattern) for pattern in layer.patterns):
            return layer
    return None


# ---------------------------------------------------------------------------------------------
# The import graph
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    statement: str

    def __str__(self) -> str:
        return f"{self.importer} (line {self.line}: {self.statement}) imports {self.imported}"


def package_modules(src: Path, package: str) -> dict[str, Module]:
    """Every ``.py`` module of ``package`` (a directory under ``src``) by dotted name."""
    modules = {}
    for path in sorted((src / package).rglob("*.py")):
        if _SKIP_DIRS & set(path.parts):
            continue
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        modules[".".join(parts)] = Module(".".join(parts), path, is_package)
    return modules


def _resolve(name: str, modules: dict[str, Module]) -> str | None:
    """The package module ``name`` refers to (itself or the longest existing prefix)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: Module, modules: dict[str, Module], package: str) -> list[Import]:
    """Every import of a package module by ``module``, wherever it is in the file."""
    source_text = module.path.read_text()
    tree = ast.parse(source_text, str(module.path))
    here = module.name if module.is_package else module.name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source
                       for a in node.names]
        else:
            continue
        statement = ast.get_source_segment(source_text, node) or ""
        statement = " ".join(statement.split())
        for target in targets:
            if target != package and not target.startswith(package + "."):
                continue
            resolved = _resolve(target, modules)
            if resolved is not None and resolved != module.name:
                found.append(Import(module.name, resolved, node.lineno, statement))
    return sorted(set(found), key=lambda i: (i.line, i.imported))


def import_graph(src: Path, package: str) -> tuple[dict[str, Module], list[Import]]:
    """The package's modules and every import between them."""
    modules = package_modules(src, package)
    imports = [imp for m in modules.values() for imp in imports_of(m, modules, package)]
    return modules, imports


# ---------------------------------------------------------------------------------------------
# The checks: each returns one message per failure
# ---------------------------------------------------------------------------------------------

def unassigned_modules(modules: Iterable[str], layers: Sequence[Layer]) -> list[str]:
    return [f"{m}: matches no layer of the table" for m in sorted(modules)
            if layer_of(m, layers) is None]


def layer_violations(imports: Iterable[Import], layers: Sequence[Layer]) -> list[str]:
    """Imports of a layer the importer's row does not name."""
    out = []
    for imp in imports:
        mine, theirs = layer_of(imp.importer, layers), layer_of(imp.imported, layers)
        if mine is None or theirs is None or mine is theirs:
            continue
        if theirs.name not in mine.may_import:
            allowed = ", ".join(sorted(mine.may_import)) or "nothing"
            out.append(f"{imp}: layer {mine.name} may not import layer {theirs.name} "
                       f"(it may import {allowed})")
    return out


def import_cycles(imports: Iterable[Import]) -> list[str]:
    """One message per strongly connected group of modules, showing its shortest cycle."""
    graph = nx.DiGraph()
    for imp in imports:
        if not graph.has_edge(imp.importer, imp.imported):
            graph.add_edge(imp.importer, imp.imported, imp=imp)
    out = []
    for group in sorted(sorted(c) for c in nx.strongly_connected_components(graph)
                        if len(c) > 1):
        sub = graph.subgraph(group)
        rotated = []
        for c in nx.simple_cycles(sub):  # start each at its smallest module: deterministic
            i = c.index(min(c))
            rotated.append(c[i:] + c[:i])
        cycle = min(rotated, key=lambda c: (len(c), c))
        edges = [sub.edges[a, b]["imp"] for a, b in zip(cycle, [*cycle[1:], cycle[0]],
                                                          strict=True)]
        steps = "; ".join(str(e) for e in edges)
        out.append(f"import cycle among {', '.join(group)}: {steps}")
    return out


def long_modules(modules: dict[str, Module], limit: int = MAX_LINES) -> list[str]:
    out = []
    for m in modules.values():
        n = len(m.path.read_text().splitlines())
        if n > limit:
            out.append(f"{m.name} ({m.path.name}) has {n} lines, over {limit}")
    return out


def _text_files(places: Iterable[Path]) -> Iterable[Path]:
    for place in places:
        if place.is_file():
            yield place
        elif place.is_dir():
            for path in sorted(place.rglob("*")):
                if (path.is_file() and not _SKIP_DIRS & set(path.parts)
                        and path.suffix not in _BINARY_SUFFIXES):
                    yield path


def tracker_references(places: Iterable[Path], root: Path) -> list[str]:
    """Every line citing a tracker number (:data:`TRACKER`)."""
    out = []
    for path in _text_files(places):
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            match = TRACKER.search(line)
            if match:
                out.append(f"{path.relative_to(root)}:{n}: cites {match.group(0)!r}: "
                           f"{line.strip()[:100]}")
    return out


def check_package(src: Path, package: str, layers: Sequence[Layer]) -> dict[str, list[str]]:
    """Every check of this module over one package."""
    modules, imports = import_graph(src, package)
    return {
        "table": table_problems(layers),
        "unassigned": unassigned_modules(modules, layers),
        "layers": layer_violations(imports, layers),
        "cycles": import_cycles(imports),
        "long": long_modules(modules),
    }


def _fail_with(problems: list[str]) -> None:
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# The real package
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real() -> dict[str, list[str]]:
    return check_package(ROOT, PACKAGE, parse_layers(ARCHITECTURE.read_text()))


def test_layer_table_is_ordered_bottom_to_top(real: dict[str, list[str]]) -> None:
    _fail_with(real["table"])


def test_every_module_has_a_layer(real: dict[str, list[str]]) -> None:
    _fail_with(real["unassigned"])


def test_no_module_imports_a_layer_above_its_own(real: dict[str, list[str]]) -> None:
    _fail_with(real["layers"])


def test_no_import_cycles(real: dict[str, list[str]]) -> None:
    _fail_with(real["cycles"])


def test_modules_are_short(real: dict[str, list[str]]) -> None:
    _fail_with(real["long"])


def test_no_tracker_references() -> None:
    _fail_with(tracker_references([ROOT / p for p in TRACKER_PLACES], ROOT))


def test_readme_links_the_architecture() -> None:
    assert "docs/ARCHITECTURE.md" in (ROOT / "README.md").read_text()


# ---------------------------------------------------------------------------------------------
# The checker on synthetic packages: each kind of failure is reported
# ---------------------------------------------------------------------------------------------

SYNTH_DOC = """# Synthetic

## Layers

| layer | modules | may import |
|---|---|---|
| base | `synth`, `synth.base`, `synth.base.*` | - |
| mid | `synth.mid`, `synth.mid.*` | base |
| top | `synth.top`, `synth.*.commands` | base, mid |

## Something else

| not | a | layer |
|---|---|---|
| x | `synth.x` | top |
"""


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


CLEAN = {
    "synth/__init__.py": "",
    "synth/base/__init__.py": "",
    "synth/base/core.py": "VALUE = 1\n",
    "synth/mid/__init__.py": "",
    "synth/mid/user.py": "from synth.base.core import VALUE\n",
    "synth/mid/commands.py": "from synth import top\n",
    "synth/top.py": "import synth.mid.user\nfrom .base import core\n",
}


def test_parse_layers_reads_the_layer_table_only() -> None:
    layers = parse_layers(SYNTH_DOC)
    assert [(x.name, x.may_import) for x in layers] == [
        ("base", frozenset()), ("mid", frozenset({"base"})), ("top", frozenset({"base", "mid"}))]
    assert layers[2].patterns == ("synth.top", "synth.*.commands")
    assert layer_of("synth.mid.commands", layers) is layers[2]  # the highest row wins
    assert layer_of("synth.mid.user", layers) is layers[1]
    assert layer_of("synth.other", layers) is None


def test_clean_synthetic_package_passes(tmp_path: Path) -> None:
    src = _write(tmp_path, CLEAN)
    result = check_package(src, "synth", parse_layers(SYNTH_DOC))
    assert result == {"table": [], "unassigned": [], "layers": [], "cycles": [], "long": []}
    _modules, imports = import_graph(src, "synth")
    assert {(i.importer, i.imported) for i in imports} == {
        ("synth.mid.user", "synth.base.core"), ("synth.mid.commands", "synth.top"),
        ("synth.top", "synth.mid.user"), ("synth.top", "synth.base.core")}


def test_upward_import_inside_a_function_is_reported(tmp_path: Path) -> None:
    src = _write(tmp_path, {**CLEAN, "synth/base/core.py":
                            "VALUE = 1\n\n\ndef late():\n    from synth.mid import user\n"
                            "    return user\n"})
    result = check_package(src, "synth", parse_layers(SYNTH_DOC))
    assert len(result["layers"]) == 1
    message = result["layers"][0]
    assert message.startswith("synth.base.core (line 5: from synth.mid import user) imports "
                              "synth.mid.user: layer base may not import layer mid")


def test_relative_upward_import_is_reported(tmp_path: Path) -> None:
    src = _write(tmp_path, {**CLEAN, "synth/mid/user.py": "from .. import top\n"})
    result = check_package(src, "synth", parse_layers(SYNTH_DOC))
    assert result["layers"] == ["synth.mid.user (line 1: from .. import top) imports synth.top: "
                                "layer mid may not import layer top (it may import base)"]


def test_import_cycle_is_reported(tmp_path: Path) -> None:
    src = _write(tmp_path, {**CLEAN, "synth/base/a.py": "from synth.base import b\n",
                            "synth/base/b.py": "import typing\n\nif typing.TYPE_CHECKING:\n"
                            "    from . import a\n"})
    result = check_package(src, "synth", parse_layers(SYNTH_DOC))
    assert result["layers"] == []
    assert result["cycles"] == [
        "import cycle among synth.base.a, synth.base.b: "
        "synth.base.a (line 1: from synth.base import b) imports synth.base.b; "
        "synth.base.b (line 4: from . import a) imports synth.base.a"]


def test_long_module_and_unassigned_module_are_reported(tmp_path: Path) -> None:
    src = _write(tmp_path, {**CLEAN, "synth/mid/big.py": "X = 0\n" * (MAX_LINES + 1),
                            "synth/stray.py": ""})
    result = check_package(src, "synth", parse_layers(SYNTH_DOC))
    assert result["long"] == [f"synth.mid.big (big.py) has {MAX_LINES + 1} lines, over 500"]
    assert result["unassigned"] == ["synth.stray: matches no layer of the table"]


def test_disordered_table_is_reported() -> None:
    doc = SYNTH_DOC.replace("| base | `synth`, `synth.base`, `synth.base.*` | - |",
                            "| base | `synth`, `synth.base`, `synth.base.*` | top |")
    assert table_problems(parse_layers(doc)) == [
        "layer base may import top, which is not below it"]


def test_tracker_references_are_reported(tmp_path: Path) -> None:
    word = "iss" + "ue"  # spelled apart so that this file does not cite one itself
    _write(tmp_path, {"docs/a.md": f"See the spec.\nFixed in {word} #8.\n",
                      "pkg/m.py": f'"""{word.title()} 7 item 2."""\n',
                      "pkg/ok.py": '"""PROTOCOL.md section 4; tissue 3 is not a tracker."""\n'})
    found = tracker_references([tmp_path / "docs", tmp_path / "pkg"], tmp_path)
    assert [f.split(": cites")[0] for f in found] == ["docs/a.md:2", "pkg/m.py:1"]
