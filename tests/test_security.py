"""Security rules, enforced: no pickle anywhere data or messages travel, inputs opened
read-only, TOML parsed by tomllib, nothing from the command line or a config evaluated.

Two kinds of evidence: a static scan (ast) of every module of the package, whose checker
is itself tested on snippets; and real runs under `mpirun` with mpi4py's pickle poisoned
and with the input files locked against writers.
"""

import ast
import fcntl
import hashlib
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import mpirun, python_m, write_h5
from mpigd.launch import find_mpiexec

SOURCE = Path(__file__).resolve().parents[1] / "src" / "mpigd"
MODULES = sorted(SOURCE.rglob("*.py"))  # subpackages (studies/, ...) included

# mpi4py's lowercase methods pickle their argument (and unpickle what arrives).
PICKLING_METHODS = {
    "bcast", "reduce", "allreduce", "send", "recv", "ssend", "bsend", "isend", "irecv", "issend",
    "ibsend", "sendrecv", "gather", "scatter", "allgather", "alltoall", "scan", "exscan", "mrecv",
    "imrecv", "mprobe", "improbe", "neighbor_allgather", "neighbor_alltoall",
}
# Uppercase calls that make a new communicator out of one.
COMM_FACTORIES = {"Dup", "Split", "Split_type", "Create", "Create_group", "Create_cart",
                  "Create_graph", "Create_dist_graph_adjacent", "Idup", "Get_parent", "Merge"}
UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve",
                  "yaml", "joblib", "toml"}
UNSAFE_BUILTINS = {"eval", "exec", "compile", "input"}


def _dotted(node):
    return ast.unparse(node)


def _looks_like_comm(node, comm_names):
    """True for `comm`, `self.comm`, `MPI.COMM_WORLD`, `sub_comm`, `world`, `x.Dup()`..."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr in COMM_FACTORIES
    last = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
    return bool(re.search(r"comm|world", last, re.IGNORECASE)) or last in comm_names


def _comm_names(tree):
    """Names bound (anywhere in the module) to something that looks like a communicator."""
    names, grew = set(), True
    while grew:
        grew = False
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and _looks_like_comm(node.value, names):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id not in names:
                        names.add(target.id)
                        grew = True
    return names


def findings(source, filename="<snippet>"):
    """Every violation of the rules in `source`, as 'file:line: what' strings."""
    tree = ast.parse(source, filename)
    comms = _comm_names(tree)
    found = []

    def report(node, what):
        found.append(f"{filename}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in UNSAFE_MODULES:
                    report(node, f"imports {alias.name}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            report(node, f"imports from {node.module}")
        elif isinstance(node, ast.Attribute) and node.attr == "pickle" and _dotted(node.value) == "MPI":
            report(node, "touches MPI.pickle")
        elif isinstance(node, ast.Call):
            func = node.func
            keywords = {k.arg: k.value for k in node.keywords}
            if isinstance(func, ast.Name) and func.id in UNSAFE_BUILTINS:
                report(node, f"calls {func.id}()")
            elif isinstance(func, ast.Name) and func.id == "__import__" and not (
                    node.args and isinstance(node.args[0], ast.Constant)):
                report(node, "calls __import__ on a computed name")
            elif isinstance(func, ast.Attribute):
                name, receiver = func.attr, func.value
                if name in PICKLING_METHODS and _looks_like_comm(receiver, comms):
                    report(node, f"pickling MPI call {_dotted(func)}() (use the uppercase buffer one)")
                if name == "load" and _dotted(receiver) in ("np", "numpy"):
                    flag = keywords.get("allow_pickle")
                    if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                        report(node, "np.load with allow_pickle")
                if name in ("read_pickle", "system", "popen") or (
                        name.startswith("spawn") and _dotted(receiver) == "os"):
                    report(node, f"calls {_dotted(func)}()")
                shell = keywords.get("shell")
                if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
                    report(node, f"{_dotted(func)}(shell=...) runs a shell")
    return found


def h5py_opens(source, filename="<snippet>"):
    """(line, mode, path expression) of every h5py.File(...) call."""
    opens = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Call) and _dotted(node.func) in ("h5py.File", "File"):
            mode = node.args[1] if len(node.args) > 1 else {k.arg: k.value for k in node.keywords}.get("mode")
            mode = mode.value if isinstance(mode, ast.Constant) else None if mode is None else "?"
            opens.append((node.lineno, mode, _dotted(node.args[0]) if node.args else "?"))
    return opens


# --- the static scan -------------------------------------------------------------------

def test_the_scan_sees_every_module():
    names = {path.name for path in MODULES}
    assert {"comm.py", "solver.py", "train.py", "data.py", "config.py", "checkpoint.py"} <= names


@pytest.mark.parametrize("snippet", [
    "comm.bcast(w, root=0)",
    "MPI.COMM_WORLD.allreduce(1)",
    "self.comm.gather(x)",
    "world = MPI.COMM_WORLD\nworld.send(x, dest=1)",
    "sub = comm.Split(0)\nother = sub\nother.reduce(x)",
    "MPI.COMM_WORLD.Dup().scatter(x)",
    "comm.isend(x, 1).wait()",
    "import pickle",
    "from pickle import loads",
    "import yaml\nyaml.load(text)",
    "import cloudpickle",
    "eval(text)",
    "exec(code)",
    "__import__(name)",
    "np.load(path, allow_pickle=True)",
    "os.system(command)",
    "subprocess.run(command, shell=True)",
    "MPI.pickle.__init__(dumps, loads)",
])
def test_the_checker_catches(snippet):
    assert findings(snippet), snippet


@pytest.mark.parametrize("snippet", [
    "comm.Bcast(buffer, root=0)",
    "comm.Allreduce(mine, total, op=MPI.SUM)",
    "np.add.reduce(x)",
    "functools.reduce(f, xs)",
    "trajectory.clock.gather(comm)",
    "ax.scatter(x, y)",
    "np.load(path)",
    "subprocess.run(argv, shell=False)",
    "__import__('mpi4py').__version__",
    "tomllib.load(handle)",
])
def test_the_checker_lets_pass(snippet):
    assert not findings(snippet), snippet


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SOURCE)))
def test_no_pickle_no_eval_in(path):
    """Buffers, not pickles: only uppercase mpi4py calls; nothing is ever evaluated."""
    assert findings(path.read_text(), path.name) == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SOURCE)))
def test_hdf5_files_are_read_only_or_written_whole(path):
    """Every h5py.File names its mode; a write mode only ever creates a temporary file
    that is renamed into place afterwards, so no existing file (an input) is modified."""
    for line, mode, target in h5py_opens(path.read_text(), path.name):
        assert mode is not None and mode != "?", f"{path.name}:{line}: h5py.File without a literal mode"
        assert mode == "r" or "partial" in target, \
            f"{path.name}:{line}: h5py.File({target}, {mode!r}) modifies a file in place"


def test_inputs_are_opened_read_only():
    opens = {str(path.relative_to(SOURCE)): h5py_opens(path.read_text(), path.name) for path in MODULES}
    assert [mode for _, mode, _ in opens["data.py"]] == ["r"]  # the training data
    assert "r" in [mode for _, mode, _ in opens["checkpoint.py"]]  # the checkpoint to resume


def test_toml_is_parsed_by_tomllib():
    tree = ast.parse((SOURCE / "config.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names}
    assert "tomllib" in imported
    loads = [_dotted(node.func) for node in ast.walk(tree)
             if isinstance(node, ast.Call) and _dotted(node.func).endswith(("load", "loads"))]
    assert loads == ["tomllib.load"]


# --- nothing from the command line or a config file is evaluated ------------------------

def _payload(marker):
    return f"__import__('os').system('touch {marker}')"


@pytest.mark.parametrize("option,value", [
    ("--lr", "{code}"), ("--iters", "{code} or 5"), ("--tol", "{code}"), ("--threads", "{code}"),
    ("--seed", "{code}"), ("--checkpoint-every", "{code}"), ("--straggler", "1:{code}"),
])
def test_command_line_values_are_not_evaluated(tmp_path, option, value):
    marker = tmp_path / "pwned"
    run = python_m("--data", "x.h5", option, value.format(code=_payload(marker)), cwd=tmp_path)
    assert run.returncode == 2 and run.stderr.count("mpigd: error:") == 1, run.stderr
    assert not marker.exists()


@pytest.mark.parametrize("key", ["lr", "iters", "tol", "threads", "seed", "straggler", "dtype", "mode"])
def test_config_values_are_not_evaluated(tmp_path, key):
    marker = tmp_path / "pwned"
    config = tmp_path / "run.toml"
    config.write_text(f'{key} = "{_payload(marker)}"\n')
    run = python_m("--config", config, cwd=tmp_path)
    assert run.returncode == 2 and run.stderr.count("mpigd: error:") == 1, run.stderr
    assert key in run.stderr
    assert not marker.exists()


def test_names_and_paths_are_only_names_and_paths(problem, tmp_path):
    """Strings that are used (dataset names, the data path) reach h5py as plain strings."""
    marker = tmp_path / "pwned"
    _, _, path = problem
    for args in (["--data", path, "--x-dataset", _payload(marker)],
                 ["--data", f"$(touch {marker})"], ["--data", f"`touch {marker}`; {path}"]):
        run = mpirun(2, *args, "--quiet", out=str(tmp_path / "run"), cwd=tmp_path)
        assert run.returncode == 2 and run.stderr.count("mpigd: error:") == 1, run
    assert not marker.exists()


# --- input files are never opened for writing ------------------------------------------

def _fingerprint(path):
    stat = os.stat(path)
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest(), stat.st_mtime_ns, stat.st_size


class shared_lock:
    """Hold a shared flock on a file. HDF5 takes a shared lock to read and an exclusive one
    to write, so while this is held any open for writing fails, even as root."""

    def __init__(self, *paths):
        self.paths = paths

    def __enter__(self):
        self.fds = [os.open(p, os.O_RDONLY) for p in self.paths]
        for fd in self.fds:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)

    def __exit__(self, *exc):
        for fd in self.fds:
            os.close(fd)


def test_the_lock_stops_writers(tmp_path):
    path = write_h5(tmp_path / "d.h5", np.ones((4, 2)), np.ones(4))
    with shared_lock(path):
        with h5py.File(path, "r") as f:
            assert f["X"].shape == (4, 2)
        for mode in ("r+", "a"):
            with pytest.raises(OSError, match="lock"):
                h5py.File(path, mode)


LOCKING = {"HDF5_USE_FILE_LOCKING": "TRUE"}


def test_training_and_resume_leave_the_inputs_untouched(problem, tmp_path):
    _, _, path = problem
    before = _fingerprint(path)
    out = str(tmp_path / "run")
    with shared_lock(path):
        crashed = mpirun(2, "--data", path, "--iters", 30, "--tol", 0, "--quiet", "--standardize",
                         "--intercept", "--checkpoint-every", 4, out=out,
                         env={**LOCKING, "MPIGD_INJECT_FAULT": "1:loop:9"})
        assert "InjectedFault" in crashed.stderr and "lock" not in crashed.stderr, crashed
        checkpoint = os.path.join(out, "checkpoint.h5")
        with shared_lock(checkpoint):  # resuming reads it; new checkpoints are new files
            resumed = mpirun(3, "--resume", out, env=LOCKING)
            assert resumed.returncode == 0, resumed
    assert _fingerprint(path) == before


# --- real runs with mpi4py's pickle poisoned --------------------------------------------

SITECUSTOMIZE = '''
"""Test harness: make mpi4py's pickle raise in every process of the job.

A run that succeeds with this in place sent and received buffers only.
"""
import os
import sys


def _refuse(*args, **kwargs):
    raise RuntimeError("POISONED: mpi4py tried to pickle a message")


class _PoisonMPI:
    def find_spec(self, name, path=None, target=None):
        if name != "mpi4py.MPI":
            return None
        # mpi4py may pick its MPI module with a finder of its own: ask the others.
        spec = next(filter(None, (finder.find_spec(name, path, target) for finder in sys.meta_path
                                  if finder is not self and hasattr(finder, "find_spec"))))
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            module.pickle.__init__(_refuse, _refuse)
            marks = os.environ["MPIGD_POISON_MARKS"]
            open(os.path.join(marks, str(os.getpid())), "w").close()

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _PoisonMPI())
'''


@pytest.fixture
def poisoned(tmp_path):
    """env for mpirun with the poison on PYTHONPATH; .marks() counts poisoned processes."""
    site = tmp_path / "poison"
    marks = tmp_path / "marks"
    site.mkdir()
    marks.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    pythonpath = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))

    class Poisoned(dict):
        def marks(self):
            count = len(os.listdir(marks))
            for name in os.listdir(marks):
                os.remove(marks / name)
            return count

    return Poisoned(PYTHONPATH=pythonpath, MPIGD_POISON_MARKS=str(marks))


def test_the_poison_works(poisoned, tmp_path):
    script = tmp_path / "pickles.py"
    script.write_text("from mpi4py import MPI\nprint(MPI.COMM_WORLD.allreduce(1))\n")
    proc = subprocess.run([find_mpiexec(), "-n", "2", sys.executable, str(script)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **poisoned}, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0 and "POISONED" in proc.stderr, proc.stderr
    assert poisoned.marks() == 2


@pytest.mark.parametrize("ranks,args", [
    (2, ["--iters", 20]),
    (2, ["--iters", 20, "--mode", "allreduce"]),
    (3, ["--iters", 20, "--dedicated-server", "--trace"]),
    (3, ["--iters", 20, "--standardize", "--intercept"]),
    (2, ["--iters", 20, "--standardize", "--intercept", "--mode", "allreduce"]),
], ids=["server", "allreduce", "dedicated-server+trace", "standardize+intercept",
        "allreduce+standardize+intercept"])
def test_training_never_pickles(problem, tmp_path, poisoned, ranks, args):
    _, _, path = problem
    run = mpirun(ranks, "--data", path, *args, "--quiet", out=str(tmp_path / "run"), env=poisoned)
    assert run.returncode == 0, run
    assert poisoned.marks() == ranks  # every rank ran with the poison in place
    assert run.result["iterations"] >= 1


@pytest.mark.parametrize("mode", ["server", "allreduce"])
def test_checkpoint_and_resume_never_pickle(problem, tmp_path, poisoned, mode):
    _, _, path = problem
    out = str(tmp_path / "run")
    crashed = mpirun(2, "--data", path, "--iters", 30, "--tol", 0, "--lr", 2e-4, "--quiet",
                     "--mode", mode, "--standardize", "--intercept", "--checkpoint-every", 4,
                     out=out, env={**poisoned, "MPIGD_INJECT_FAULT": "1:loop:9"})
    assert "InjectedFault" in crashed.stderr and "POISONED" not in crashed.stderr, crashed
    assert os.path.exists(os.path.join(out, "checkpoint.h5"))
    poisoned.marks()
    resumed = mpirun(3, "--resume", out, env=poisoned)
    resumed.out = out
    assert resumed.returncode == 0, resumed
    assert poisoned.marks() == 3
    assert resumed.result["resumed_from"] == 8 and resumed.result["iterations"] == 30


def test_errors_are_agreed_without_pickle(tmp_path, poisoned):
    """The error path (agree: Allreduce + Bcast of bytes) is pickle-free too."""
    X = np.ones((40, 3))
    X[33, 1] = np.nan
    run = mpirun(2, "--data", write_h5(tmp_path / "nan.h5", X, np.ones(40)), out=str(tmp_path / "r"),
                 env=poisoned)
    assert run.returncode == 2 and "rank 1: NaN or Inf" in run.stderr and "POISONED" not in run.stderr
    assert poisoned.marks() == 2


def test_bench_comm_never_pickles(tmp_path, poisoned):
    run = mpirun(2, "bench-comm", "--max-size", "1K", "--iters", 3, "--iters-large", 2, "--warmup", 1,
                 "--warmup-large", 1, "--quiet", "--out", str(tmp_path / "model.json"), env=poisoned)
    assert run.returncode == 0, run
    assert poisoned.marks() == 2
