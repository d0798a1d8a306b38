"""The package's import structure: every import points down, no circle, no import hidden in a function.

The folders show the architecture (README, "Layout"). Each room of mobilenet_np and weights_tools has a
rank below; a module may import modules of its own room or of lower ranks only, the imports of the
whole tree form no cycle, and no function or class body imports the project's own modules (an
import hidden there usually dodges a cycle). Read from the source with `ast`, nothing is run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mobilenet_np", "weights_tools")

# room -> rank: the ground at 0, the command line at the top.
RANKS = {
    "mobilenet_np.errors": 0, "mobilenet_np.registry": 0, "mobilenet_np.tables": 0, "mobilenet_np.checks": 0,
    "mobilenet_np.fileio": 1, "mobilenet_np.ops": 1, "mobilenet_np.hub": 1,
    "mobilenet_np.layers": 2, "mobilenet_np.outputs": 2,
    "mobilenet_np.fast": 3, "mobilenet_np.formats": 3, "mobilenet_np.quantized": 3, "mobilenet_np.training": 3,
    "mobilenet_np.configuration_utils": 3,   # from_pretrained reads the formats
    "mobilenet_np.networks": 4, "mobilenet_np.image_processing": 4, "mobilenet_np.summary": 4,
    "mobilenet_np.auto": 5, "mobilenet_np.pipelines": 5, "mobilenet_np.commandline": 5,
    "mobilenet_np.evaluation": 6,
    "mobilenet_np.trainer": 6,           # datasets through the image processors, the loop builds networks
    "mobilenet_np": 7, "mobilenet_np.__main__": 9,
    "weights_tools": 8,
    "mobilenet_np.cli": 9,
}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def room(module: str) -> str:
    """The longest RANKS entry that is the module or a package above it."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in RANKS:
            return ".".join(parts[:n])
    raise AssertionError(f"{module}: in no room of RANKS (add it to this test, with the rank it belongs at)")


def resolve(module: str, is_package: bool, node: ast.ImportFrom, known) -> list[str]:
    """Absolute names of the modules a `from X import a, b` runs: X.a where that is a module, else X."""
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    submodules = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known]
    return submodules if len(submodules) == len(node.names) else [target] + submodules


def imports(module: str, path: Path, known: dict[str, Path], root: Path = ROOT) -> tuple[set[str], list[str]]:
    """(the project's modules imported at module level, function-level imports of the project's modules)."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    top, hidden = set(), []

    def names(node) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        return resolve(module, is_package, node, known)

    def visit(node, depth):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                own = [n for n in names(child) if n in known]
                if depth == 0:
                    top.update(own)
                elif own:
                    hidden.append(f"{path.relative_to(root)}:{child.lineno} imports {', '.join(own)}")
            inner = depth + isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))
            visit(child, inner)

    visit(tree, 0)
    return top - {module}, hidden


@pytest.fixture(scope="module")
def graph():
    known = modules()
    edges, hidden = {}, []
    for module, path in known.items():
        edges[module], found = imports(module, path, known)
        hidden += found
    return known, edges, hidden


def test_no_function_or_class_body_imports_the_projects_own_modules(graph):
    _, _, hidden = graph
    assert not hidden, "imports hidden in functions:\n" + "\n".join(hidden)


def test_every_import_points_down_or_within_its_room(graph):
    _, edges, _ = graph
    upward = [f"{a} ({room(a)}, rank {RANKS[room(a)]}) imports {b} ({room(b)}, rank {RANKS[room(b)]})"
              for a, targets in edges.items() for b in sorted(targets)
              if RANKS[room(b)] > RANKS[room(a)]]
    assert not upward, "imports that run back up:\n" + "\n".join(upward)


def test_the_imports_form_no_circle(graph):
    _, edges, _ = graph
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module):
        state[module] = 1
        stack.append(module)
        for target in sorted(edges.get(module, ())):
            # importing a package's submodule runs the package's __init__ first, which may import
            # that very submodule: not a circle of the code's own making, so packages are not followed up.
            if module.startswith(target + "."):
                continue
            if state.get(target) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(target):] + [target]))
            if state.get(target) is None:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)


def test_the_checker_sees_what_it_must_refuse(tmp_path):
    """The rules bite: a hidden import, an upward import and a circle in a made-up package are all found."""
    package = tmp_path / "mobilenet_np"
    (package / "networks").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "ops.py").write_text("from .networks import base\n")                    # ground -> networks: up
    (package / "networks" / "__init__.py").write_text("")
    (package / "networks" / "base.py").write_text("from . import other\ndef f():\n    from .. import ops\n")
    (package / "networks" / "other.py").write_text("from . import base\n")           # a circle
    known = {"mobilenet_np": package / "__init__.py", "mobilenet_np.ops": package / "ops.py",
             "mobilenet_np.networks": package / "networks" / "__init__.py",
             "mobilenet_np.networks.base": package / "networks" / "base.py",
             "mobilenet_np.networks.other": package / "networks" / "other.py"}
    edges, hidden = {}, []
    for module, path in known.items():
        edges[module], found = imports(module, path, known, root=tmp_path)
        hidden += found
    assert hidden == ["mobilenet_np/networks/base.py:3 imports mobilenet_np.ops"]
    assert "mobilenet_np.networks.base" in edges["mobilenet_np.ops"]
    assert RANKS[room("mobilenet_np.networks.base")] > RANKS[room("mobilenet_np.ops")]
    with pytest.raises(AssertionError, match="import circle"):
        test_the_imports_form_no_circle((known, edges, hidden))
