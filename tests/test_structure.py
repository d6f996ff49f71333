"""The shape of the package: small modules, short functions, imports that only run downward.

Read from the source (ast), so a new circle or a 200-line function fails here, in review
time, not months later when someone has to change it.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "mpigd"
MODULES = sorted(SOURCE.rglob("*.py"))
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# The compiled kernels are one loop each, kept whole on purpose (numba compiles them as is).
LONG_FUNCTIONS_ALLOWED = {("fused.py", "_pass")}


def _module_name(path):
    parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path):
    """Project modules imported by `path`, anywhere in it (function-local imports count)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" \
                and node.args and isinstance(node.args[0], ast.Constant):
            candidates = [node.args[0].value]  # cli's table of command modules
        else:
            continue
        found |= {c for c in candidates if c.startswith("mpigd")}
    return found


def _graph():
    known = {_module_name(p) for p in MODULES}
    graph = {}
    for path in MODULES:
        name = _module_name(path)
        found = {m for m in _imports(path) if m in known and m != name}
        # `from . import state` names the package and its submodule: the arrow is to the
        # submodule; a module's own enclosing packages are loaded before it anyway.
        found = {m for m in found if not name.startswith(m + ".")
                 and not any(other.startswith(m + ".") and other in found for other in found)}
        graph[name] = found
    return graph


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SOURCE)))
def test_module_is_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.name}: {lines} lines > {MAX_MODULE_LINES}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SOURCE)))
def test_functions_are_short(path):
    long = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES and (path.name, node.name) not in LONG_FUNCTIONS_ALLOWED:
                long.append(f"{node.name} ({length} lines)")
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


def test_no_import_circles():
    graph = _graph()
    state, circles = {}, []

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                circles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles: " + "; ".join(circles)


def test_the_training_path_never_imports_the_studies():
    graph = _graph()
    training = {"mpigd.train", "mpigd.train_cli", "mpigd.solver", "mpigd.objective", "mpigd.data",
                "mpigd.comm", "mpigd.timing", "mpigd.config", "mpigd.checkpoint", "mpigd.result"}
    reached, todo = set(), list(training)
    while todo:
        node = todo.pop()
        if node not in reached:
            reached.add(node)
            todo += graph.get(node, ())
    assert not {m for m in reached if m.startswith("mpigd.studies")}


def test_the_check_sees_imports():
    # The graph is not empty by accident: the trainer is known to use the solver.
    assert "mpigd.solver" in _graph()["mpigd.train"]


def test_collecting_the_tests_does_not_start_mpi():
    # A test module that imports mpi4py.MPI (directly or through mpigd) starts MPI inside
    # the pytest process; under Open MPI every job launched afterwards then inherits the
    # runtime's state and its mpiexec exits 1 without a word.
    code = ("import sys, pytest; code = pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', "
            f"{str(Path(__file__).parent)!r}]); print('MPI imported:', 'mpi4py.MPI' in sys.modules); "
            "sys.exit(int(code))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert "MPI imported: False" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
