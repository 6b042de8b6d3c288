"""The package's layers hold: no module imports one above it, and no imports go round.

Read from the source (every ``import`` and ``from ... import`` of a makejobs module, at
module level or inside a function; those under ``if TYPE_CHECKING:`` are for annotations
and do not count). The layers are the picture of the README and of makejobs/__init__.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "makejobs"

#: Lowest first. A module may import its own layer and those below.
LAYERS: list[set[str]] = [
    # what everything may use: errors, pure parsing, small vocabularies
    {
        "errors",
        "protocol",
        "_checks",
        "_outcomes",
        "_forks",
        "_procfs",
        "_guardian_main",
        "_settle",
    },
    # the operating system: descriptors, escrows, records
    {"_posix", "ledger", "token", "_reader"},
    # the token pool, and handing it to children
    {
        "_advertised",
        "_core",
        "_opening",
        "_lending",
        "guardian",
        "pool",
        "advertise",
        "process",
        "aio",
        "relay",
    },
    # Jobserver and Future: one process per job
    {"_child", "future", "_engine", "_job", "_forkserver", "jobserver", "criteria", "waiting"},
    # the concurrent.futures executor
    {"_frames", "_worker", "_worker_handle", "_manager", "executor"},
    # front ends: the command line and the plugins
    {"__init__", "__main__", "cli", "pytest_plugin", "setuptools", "_pytest_slots"},
]


def layer_of(module: str) -> int:
    top = module.split(".")[0]
    for number, names in enumerate(LAYERS):
        if top in names:
            return number
    raise AssertionError(f"makejobs.{module} is in no layer: add it to LAYERS")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts)
        found["cli" if name == "cli.__init__" else name] = path
    return found


def imports(name: str, path: Path) -> set[str]:
    """The makejobs modules *name* imports (relative to the package), annotations aside."""
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    if name == "__init__":
        package = []
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if "TYPE_CHECKING" in ast.unparse(node.test):
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            for alias in node.names:
                if alias.name.startswith("makejobs."):
                    found.add(alias.name[len("makejobs.") :])

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                module = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module and node.module.startswith("makejobs"):
                module = node.module[len("makejobs") :].lstrip(".")
            else:
                return
            for alias in node.names:
                candidate = f"{module}.{alias.name}" if module else alias.name
                found.add(candidate if candidate in ALL else module)

    Visitor().visit(ast.parse(path.read_text()))
    found.discard(name)
    found.discard("")
    return found


ALL = modules()


def test_no_module_imports_one_of_a_higher_layer() -> None:
    wrong = []
    for name, path in ALL.items():
        for target in imports(name, path):
            if layer_of(target) > layer_of(name):
                wrong.append(f"makejobs.{name} imports makejobs.{target}")
    assert not wrong, wrong


def test_imports_never_go_round() -> None:
    graph = {name: imports(name, path) - {"__init__"} for name, path in ALL.items()}
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            raise AssertionError(" -> ".join([*trail[trail.index(name) :], name]))
        if name in done:
            return
        for target in sorted(graph.get(name, ())):
            visit(target, [*trail, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_long_modules_say_why() -> None:
    """No module over ~700 lines without the reason written at its top."""
    unexplained = []
    for path in ALL.values():
        text = path.read_text()
        if text.count("\n") > 750:
            docstring = ast.get_docstring(ast.parse(text)) or ""
            if "Why this module is long" not in docstring:
                unexplained.append(f"makejobs/{path.relative_to(PACKAGE)}")
    assert not unexplained, unexplained
