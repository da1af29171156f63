"""The package's import graph is a DAG, function-level imports included (issue 17).

Every `import` statement anywhere in a module counts, at module level or inside a function.
Function-level imports are allowed only where they are listed in LAZY with the reason: they
keep a cost off a normal start, they never dodge a cycle.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "fetcher"

# (importer, imported): why the import waits until it is needed.
LAZY = {
    # aiobotocore costs ~0.35 CPU-s per start; a pod with static keys never needs it.
    ("fetcher.source.factory", "fetcher.source.boto"),
    # Each subcommand pulls in only its own modules (publish brings aiobotocore).
    ("fetcher.cli", "fetcher.commands.inspect"),
    ("fetcher.cli", "fetcher.commands.publish"),
    ("fetcher.cli", "fetcher.commands.sidecar"),
    # cryptography costs ~60 ms per start (issue 14); only a configured trust policy (signer
    # key or certificate) loads a key or checks a signature with it.
    ("fetcher.trust", "fetcher.verify.omskeys"),
    ("fetcher.commands.signed", "fetcher.verify.omskeys"),
    # gguf's dataclasses cost ~5 ms per start (issue 14); only a model with .gguf files reads it.
    ("fetcher.verify.checks", "fetcher.verify.gguf"),
    ("fetcher.commands.fetch", "fetcher.verify.gguf"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str, known: set[str]) -> str | None:
    """`fetcher.cache.directio` or, for `from fetcher.cache import directio`, the module."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    tree = ast.parse(path.read_text(), str(path))
    top: set[str] = set()
    nested: set[str] = set()
    module_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] or [node.module]
        assert not (isinstance(node, ast.ImportFrom) and node.level), f"relative import in {path}"
        for name in names:
            target = _resolve(name, known)
            if target and target != "fetcher":
                (top if id(node) in module_level else nested).add(target)
    return top, nested


def _graph() -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    graph: dict[str, set[str]] = {}
    lazy: set[tuple[str, str]] = set()
    for name, path in files.items():
        top, nested = _imports(path, known)
        graph[name] = (top | nested) - {name}
        lazy |= {(name, target) for target in nested - top}
    return graph, lazy


def test_import_graph_is_acyclic() -> None:
    graph, _ = _graph()
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None


def test_function_level_imports_are_only_the_listed_ones() -> None:
    _, lazy = _graph()
    assert lazy == LAZY, f"unlisted: {lazy - LAZY}; listed but gone: {LAZY - lazy}"


def test_readme_module_map_lists_every_module() -> None:
    readme = (PACKAGE.parent / "README.md").read_text()
    start = readme.index("## Development")
    section = readme[start : readme.index("```\n", readme.index("```\n", start) + 4)]
    listed = set()
    folder = ""
    for line in section.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith("fetcher/") and name.endswith("/"):
            folder = name
            # "fetcher/observe/  log.py (...), metrics.py (...)": modules named inline
            listed |= {folder + w.strip("(),") for w in line.split() if w.endswith(".py")}
        elif name.startswith("fetcher/"):
            listed.add(name)
        elif line.startswith("  ") and name.endswith(".py"):
            listed.add(folder + name)
    modules = {
        str(p.relative_to(PACKAGE.parent))
        for p in PACKAGE.rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    }
    assert modules - listed == set(), "modules missing from the README's module map"
    assert listed - modules == set(), "the README's module map names modules that do not exist"


def test_no_test_module_imports_conftest_or_another_test_module() -> None:
    # Shared helpers live in tests/helpers.py (issue 17); fixtures come from conftest by name.
    tests = PACKAGE.parent / "tests"
    offenders = []
    for path in tests.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                last = node.module.rsplit(".", 1)[-1]
                if last == "conftest" or last.startswith("test_"):
                    offenders.append(f"{path.relative_to(tests)}: {node.module}")
    assert offenders == []
