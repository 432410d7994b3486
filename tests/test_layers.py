"""The layer map of docs/architecture.rst holds: no module imports upward against it, and no import circle.

The map is the table in docs/architecture.rst (layer, file, what it holds): every module of cussim/ and
bench/ and every file of kernels/ must be in it, a module imports only files listed before it (its own
layer's earlier files, or any lower layer's) or files of its own package folder, and the imports, read
with ast from every module (those inside functions too), form no circle. README's Layout lists the same
files.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAP_ROW = re.compile(r"^   (\w+)\s+((?:kernels|cussim|bench)/\S*)\s+\S")
PACKAGES = ("cussim", "bench")


def layer_map(text: str) -> list:
    """[(layer, path)] of the map's rows, in order (a path ending in / stands for a folder)."""
    return [(m.group(1), m.group(2)) for m in map(MAP_ROW.match, text.splitlines()) if m]


def module_name(path: Path) -> str:
    """cussim/_ssim.py -> cussim._ssim; cussim/torch/__init__.py -> cussim.torch."""
    parts = list(path.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str, is_package: bool, known) -> set:
    """The modules of ``known`` that ``source`` (module ``module``) imports, anywhere in it."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            # `from package import name` imports the submodule package.name where there is one
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


def import_graph(root: Path = ROOT) -> tuple[dict, dict]:
    """({module: the modules it imports}, {module: its path relative to root}) for cussim/ and bench/."""
    paths = {module_name(p.relative_to(root)): p.relative_to(root) for package in PACKAGES
             for p in sorted((root / package).rglob("*.py")) if "__pycache__" not in p.parts}
    graph = {m: imports((root / p).read_text(), m, p.name == "__init__.py", paths) for m, p in paths.items()}
    return graph, paths


def entry_of(path: Path, rows: list):
    """The index of the map's row holding ``path`` (a file row, or the folder row above it), or None."""
    for index, (_, entry) in enumerate(rows):
        if entry == path.as_posix() or (entry.endswith("/") and path.as_posix().startswith(entry)):
            return index
    return None


def against_the_map(graph: dict, paths: dict, rows: list) -> list:
    """Each import of a file listed at or after the importing file's row (its own folder's files excepted)."""
    bad = []
    for module, targets in sorted(graph.items()):
        here = entry_of(paths[module], rows)
        for target in sorted(targets):
            there = entry_of(paths[target], rows)
            if there is not None and here is not None and there > here:
                kind = "upward" if rows[there][0] != rows[here][0] else "against its layer's order"
                bad.append(f"{module} ({rows[here][0]}) imports {target} ({rows[there][0]}): {kind}")
    return bad


def circles(graph: dict) -> list:
    """Every import circle, as the list of modules round it (one per strongly connected component)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(module):
        index[module] = low[module] = counter[0]
        counter[0] += 1
        stack.append(module)
        on_stack.add(module)
        for target in graph.get(module, ()):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


@pytest.fixture(scope="module")
def rows():
    found = layer_map((ROOT / "docs" / "architecture.rst").read_text())
    assert len(found) > 20, "docs/architecture.rst: its layer table was not found"
    return found


def test_every_file_is_on_the_map(rows):
    graph, paths = import_graph()
    missing = [p.as_posix() for p in paths.values() if entry_of(p, rows) is None]
    missing += [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "kernels").glob("*.cu*"))
                if entry_of(p.relative_to(ROOT), rows) is None]
    assert missing == [], f"add these to the layer table of docs/architecture.rst: {missing}"
    gone = [entry for _, entry in rows if not (ROOT / entry).exists()]
    assert gone == [], f"docs/architecture.rst lists files that do not exist: {gone}"


def test_no_module_imports_against_the_map(rows):
    graph, paths = import_graph()
    assert against_the_map(graph, paths, rows) == []


def test_no_import_circle():
    graph, _ = import_graph()
    assert circles(graph) == []


def test_readme_layout_lists_the_map(rows):
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("```")[1]
    listed = [line.split()[0] for line in layout.splitlines() if line.strip()]
    assert set(listed) >= {entry for _, entry in rows if not entry.startswith("bench/")} | {"bench/"}


def test_the_checks_find_an_upward_import_and_a_circle(tmp_path):
    """The checks on a made-up package: a lower module importing a higher one, and two importing each other."""
    package = tmp_path / "cussim"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "_low.py").write_text("def f():\n    from . import _high\n")
    (package / "_high.py").write_text("from cussim import _low\nfrom cussim._low import f\n")
    rows = [("reference", "cussim/_low.py"), ("api", "cussim/_high.py"), ("api", "cussim/__init__.py")]
    paths = {module_name(p.relative_to(tmp_path)): p.relative_to(tmp_path) for p in package.glob("*.py")}
    graph = {m: imports((tmp_path / p).read_text(), m, p.name == "__init__.py", paths) for m, p in paths.items()}
    assert graph["cussim._high"] == {"cussim._low"} and graph["cussim._low"] == {"cussim._high"}
    assert against_the_map(graph, paths, rows) == ["cussim._low (reference) imports cussim._high (api): upward"]
    assert circles(graph) == [["cussim._high", "cussim._low"]]
