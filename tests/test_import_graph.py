"""The package's modules import each other without a circle.

A static scan (``ast``) of every ``import`` / ``from ... import`` statement of the source tree, wherever it stands
(module level, under ``if TYPE_CHECKING:``, inside a function: a deferred import does not make a circle
acceptable), gives the graph of imports between the package's own modules; a circle is reported as the modules in
order. ``conversions/`` and ``configs/`` are scanned under the names they install as (``lerobot_defi.conversions``,
``lerobot_defi.presets``).
"""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Source folder -> the package name it installs as (pyproject's [tool.setuptools.package-dir]).
SOURCE_PACKAGES = {
    "lerobot_defi": "lerobot_defi",
    "lerobot_policy_defi": "lerobot_policy_defi",
    "conversions": "lerobot_defi.conversions",
    "configs": "lerobot_defi.presets",
}


def module_files(repo: Path, packages: dict[str, str]) -> dict[str, Path]:
    """``{dotted module name: file}`` of every ``.py`` file under the source folders."""
    modules = {}
    for folder, package in packages.items():
        for path in sorted((repo / folder).rglob("*.py")):
            parts = path.relative_to(repo / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def imported_names(path: Path, module: str) -> set[str]:
    """Every dotted name an import statement of ``path`` may load (``from a import b`` gives ``a`` and ``a.b``);
    relative imports are resolved against ``module``."""
    is_package = path.name == "__init__.py"
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """``{module: the package's modules it imports}``."""
    return {
        module: {name for name in imported_names(path, module) if name in modules and name != module}
        for module, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None (depth-first search in a fixed order)."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for target in sorted(graph.get(node, ())):
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target not in done:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_circle():
    modules = module_files(REPO, SOURCE_PACKAGES)
    assert "lerobot_defi.pretrain.gfdm.trainer" in modules and "lerobot_defi.conversions.cli" in modules
    graph = import_graph(modules)
    assert "lerobot_defi.pretrain.gfdm.validation" in graph["lerobot_defi.pretrain.gfdm.trainer"]
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_a_circle_through_a_type_checking_or_deferred_import_is_found(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import B\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import c\nclass B: ...\n"
    )
    (package / "c.py").write_text("def f():\n    import pkg.a\n")
    (package / "d.py").write_text("import pkg.a\n")
    graph = import_graph(module_files(tmp_path, {"pkg": "pkg"}))
    assert graph["pkg.b"] == {"pkg", "pkg.c"} and graph["pkg.d"] == {"pkg.a"}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    (package / "c.py").write_text("def f():\n    import os\n")
    assert find_cycle(import_graph(module_files(tmp_path, {"pkg": "pkg"}))) is None
