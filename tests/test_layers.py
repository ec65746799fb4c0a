"""No imports back up the pipeline: a module imports only from its own layer or the ones below.

The layers are listed here, once, lowest first. Sources turn a body into events with narrow inputs
(settings values, the store interfaces they use) and never reach into the service or the API; the
library functions (keys, views, import, export) sit under both the API and the CLI, which are
thin layers over them. Every import counts, also one inside a function.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "profilehook"

# name -> modules (a package stands for everything in it), lowest layer first
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        ("profilehook", "profilehook.constants", "profilehook.errors", "profilehook.supervision"),
    ),
    (
        "values",
        (
            "profilehook.events",
            "profilehook.plain_batch",
            "profilehook.plain_segment_batch",
            "profilehook.changes",
            "profilehook.settings",
            "profilehook.validation",
            "profilehook.filters",
            "profilehook.metrics",
        ),
    ),
    (
        "backends",
        (
            "profilehook.sqlite_db",
            "profilehook.sqlite_shm",
            "profilehook.queues",
            "profilehook.stores",
        ),
    ),
    ("sources", ("profilehook.sources",)),
    (
        "library",
        (
            "profilehook.keys",
            "profilehook.views",
            "profilehook.backfill",
            "profilehook.export",
            "profilehook.erasure",
            "profilehook.segments",
            "profilehook.destinations",
        ),
    ),
    (
        "running",
        (
            "profilehook.applier",
            "profilehook.applier_endpoints",
            "profilehook.applier_process",
            "profilehook.retention",
            "profilehook.service",
            "profilehook.live",
            "profilehook.live_nats",
        ),
    ),
    ("api", ("profilehook.api", "profilehook.console")),
    ("cli", ("profilehook.cli", "profilehook.__main__")),
]


def module_names(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def layer_of(module: str) -> int | None:
    """The index of the layer whose longest entry holds ``module``; None when none does."""
    best: tuple[int, int] | None = None  # (length of the entry, layer)
    for index, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            # the root package's entry is its ``__init__`` alone, not everything under it
            inside = module == entry or (entry != "profilehook" and module.startswith(f"{entry}."))
            if inside and (best is None or len(entry) > best[0]):
                best = (len(entry), index)
    return None if best is None else best[1]


def imported(module: str, path: Path, known: set[str]) -> Iterator[tuple[int, str]]:
    """(line, module) of every profilehook module that ``module`` imports, at any depth."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "profilehook":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node.level, node.module)
            if base.split(".")[0] != "profilehook":
                continue
            for alias in node.names:
                # ``from profilehook import constants`` imports a module, not a name
                full = f"{base}.{alias.name}"
                yield node.lineno, full if full in known else base


def _absolute(module: str, is_package: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    parts = module.split(".")
    anchor = parts if is_package else parts[:-1]
    anchor = anchor[: len(anchor) - (level - 1)]
    return ".".join([*anchor, name] if name else anchor)


def violations(package: Path = PACKAGE) -> list[str]:
    modules = module_names(package)
    found = []
    for module, path in modules.items():
        own = layer_of(module)
        assert own is not None
        for line, target in imported(module, path, set(modules)):
            theirs = layer_of(target)
            if theirs is not None and theirs > own:
                found.append(
                    f"{path.relative_to(package.parent)}:{line}: {module} ({LAYERS[own][0]})"
                    f" imports {target} ({LAYERS[theirs][0]})"
                )
    return found


def test_every_module_belongs_to_a_layer():
    unplaced = [name for name in module_names() if layer_of(name) is None]
    assert not unplaced, f"add these modules to a layer in LAYERS: {unplaced}"


def test_no_module_imports_from_a_layer_above_its_own():
    found = violations()
    assert not found, "imports back up the pipeline:\n" + "\n".join(found)


def test_the_check_sees_imports_inside_functions_and_relative_ones(tmp_path: Path):
    package = tmp_path / "profilehook"
    (package / "sources").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sources" / "__init__.py").write_text("")
    (package / "cli.py").write_text("")
    (package / "api").mkdir()
    (package / "api" / "__init__.py").write_text("")
    (package / "api" / "routes.py").write_text("")
    (package / "sources" / "a.py").write_text("def f():\n    from profilehook.cli import main\n")
    (package / "sources" / "b.py").write_text("from ..api import routes\n")
    (package / "sources" / "c.py").write_text("from profilehook import errors\n")
    assert [v.split(": ", 1)[1] for v in violations(package)] == [
        "profilehook.sources.a (sources) imports profilehook.cli (cli)",
        "profilehook.sources.b (sources) imports profilehook.api.routes (api)",
    ]
