"""The bad-input matrix: every way a user can get the input wrong ends the same way.

Each case launches real `mpirun` (2 ranks unless stated) and asserts: a non-zero exit
code, every rank gone within 10 s, exactly one `mpigd: error:` line in stdout and stderr
together (no traceback, no per-rank duplicate, no MPI abort noise), a message that says
what is wrong and how to fix it, and no result.json.

With MPIGD_MATRIX_OUT=FILE each case appends a row `| case | ranks | exit | s | message |`
to FILE (scripts/failure_matrix.sh makes the table from it).
"""

import fcntl
import os
import re
import shutil

import h5py
import numpy as np
import pytest

from conftest import mpirun, write_h5

DEADLINE_S = 10
NOISE = ("Traceback", "MPI_Abort", "application called", "BAD TERMINATION", "unexpected error",
         "YOUR APPLICATION TERMINATED", "Warning")
# Iterate with a fixed small step, quietly, on the `problem` fixture.
FIXED = ["--lr", "2e-4", "--tol", "0", "--quiet"]

CASES = {}
HELD = []  # file descriptors a case keeps open (with a lock) for the length of its run


def case(name, ranks=2):
    """Register `make(tmp_path, problem) -> (args, [fragments the message must hold])`."""
    def register(make):
        CASES[name] = (ranks, make)
        return make
    return register


def tiny(tmp_path, X=None, y=None, name="tiny.h5", **options):
    """A 40 x 3 problem (or the given arrays) written to tmp_path/name."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((40, 3)) if X is None else X
    y = rng.standard_normal(len(X)) if y is None else y
    return write_h5(tmp_path / name, X, y, **options)


def lmax(X):
    return float(np.linalg.eigvalsh(X.T @ X).max())


def crashed_run_with_checkpoint(path, out):
    """A run that wrote checkpoints and then died (an injected fault on rank 1)."""
    mpirun(2, "--data", path, "--iters", 40, *FIXED, "--checkpoint-every", 5, out=out,
           env={"MPIGD_INJECT_FAULT": "1:loop:7"})
    assert os.path.exists(os.path.join(out, "checkpoint.h5"))


# --- the file itself -------------------------------------------------------------------

@case("missing file")
def _(tmp_path, problem):
    return ["--data", str(tmp_path / "absent.h5")], ["does not exist", "mpigd generate"]


@case("not an HDF5 file")
def _(tmp_path, problem):
    path = tmp_path / "notes.h5"
    path.write_bytes(bytes(range(256)) * 4)  # binary of no kind tables.sniff knows
    return ["--data", str(path)], ["not a readable HDF5 file", "file signature not found", "--data"]


@case("a CSV table given as --data")
def _(tmp_path, problem):
    path = tmp_path / "houses.csv"
    path.write_text("rooms,price\n3,250\n4,310\n")
    return ["--data", str(path)], ["houses.csv looks like a CSV table, not HDF5", "python -m mpigd import",
                                   "--target COLUMN", f"--out {tmp_path / 'houses'}.h5"]


@case("truncated HDF5")
def _(tmp_path, problem):
    path = problem[2]
    os.truncate(path, os.path.getsize(path) // 2)
    return ["--data", path], ["truncated file", "copy it again"]


@case("corrupt HDF5 metadata")
def _(tmp_path, problem):
    path = problem[2]
    with open(path, "r+b") as handle:
        handle.seek(800)
        handle.write(b"\xa5" * 600)  # the group's symbol table: h5py raises RuntimeError
    return ["--data", path], ["damaged", "copy it again"]


@case("--data is a directory")
def _(tmp_path, problem):
    return ["--data", str(tmp_path)], ["is a directory", "--data takes an HDF5 file"]


@case("file locked by a writer")
def _(tmp_path, problem):
    path = problem[2]
    held = os.open(path, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)  # what h5py.File(path, "w"/"a") holds while writing
    HELD.append(held)
    return ["--data", path], ["could not lock it", "wait until it is done", "HDF5_USE_FILE_LOCKING=FALSE"]


# --- the datasets ----------------------------------------------------------------------

@case("X dataset absent")
def _(tmp_path, problem):
    return (["--data", problem[2], "--x-dataset", "features"],
            ["'features' not found", "datasets there: X, y", "--x-dataset"])


@case("y dataset absent")
def _(tmp_path, problem):
    return (["--data", problem[2], "--y-dataset", "target"],
            ["'target' not found", "datasets there: X, y", "--y-dataset"])


@case("X is a group")
def _(tmp_path, problem):
    path = tmp_path / "grouped.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("train/X", data=np.ones((40, 3)))
        f.create_dataset("y", data=np.ones(40))
    return (["--data", str(path), "--x-dataset", "train"],
            ["'train' is a group, not a dataset", "datasets there: train/X, y", "--x-dataset"])


@case("X not 2-D")
def _(tmp_path, problem):
    return (["--data", tiny(tmp_path, X=np.ones(40))],
            ["must be 2-D", "shape (40,)", "(rows, 1)"])


@case("X 3-D", ranks=3)
def _(tmp_path, problem):
    return (["--data", tiny(tmp_path, X=np.ones((40, 3, 2)))],
            ["must be 2-D", "(40, 3, 2)"])


@case("y length != rows of X")
def _(tmp_path, problem):
    return (["--data", tiny(tmp_path, y=np.ones(39))],
            ["has 39 rows but X 'X' has 40", "--y-dataset"])


@case("y not a vector")
def _(tmp_path, problem):
    return (["--data", tiny(tmp_path, y=np.ones((40, 2)))],
            ["shape (n,) or (n, 1)", "(40, 2)"])


@case("non-numeric X (strings)")
def _(tmp_path, problem):
    path = tmp_path / "strings.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=np.array([["a", "b"]] * 40, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("y", data=np.ones(40))
    return ["--data", str(path)], ["'X' has dtype", "not a number type", "float64"]


@case("non-numeric y (compound)")
def _(tmp_path, problem):
    y = np.zeros(40, dtype=[("value", "f8"), ("weight", "f8")])
    return (["--data", tiny(tmp_path, y=y)],
            ["'y' has dtype", "not a number type", "float64"])


@case("non-numeric X (bool)")
def _(tmp_path, problem):
    return (["--data", tiny(tmp_path, X=np.ones((40, 3), dtype=bool))],
            ["'X' has dtype bool", "not a number type"])


@case("zero rows")
def _(tmp_path, problem):
    return (["--data", tiny(tmp_path, X=np.ones((0, 3)), y=np.ones(0))],
            ["has no rows", "--data"])


@case("zero features")
def _(tmp_path, problem):
    return (["--data", tiny(tmp_path, X=np.ones((40, 0)))],
            ["zero features", "--x-dataset"])


@case("fewer rows than workers", ranks=3)
def _(tmp_path, problem):
    return (["--data", tiny(tmp_path, X=np.ones((2, 3)), y=np.ones(2))],
            ["2 rows cannot be shared by 3 workers", "mpirun -n 2"])


@case("fewer rows than workers (dedicated server)", ranks=4)
def _(tmp_path, problem):
    return (["--data", tiny(tmp_path, X=np.ones((2, 3)), y=np.ones(2)), "--dedicated-server"],
            ["2 rows cannot be shared by 3 workers", "mpirun -n 3"])


# --- the values ------------------------------------------------------------------------

def _with_bad_value(tmp_path, where, value):
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((40, 3)), rng.standard_normal(40)
    (X[33] if where == "X" else y[33:34])[-1] = value
    return tiny(tmp_path, X=X, y=y)


@case("NaN in X")
def _(tmp_path, problem):
    return ["--data", _with_bad_value(tmp_path, "X", np.nan)], ["rank 1", "X row 33", "clean or drop"]


@case("Inf in X", ranks=3)
def _(tmp_path, problem):
    return ["--data", _with_bad_value(tmp_path, "X", np.inf)], ["rank 2", "X row 33", "clean or drop"]


@case("NaN in y")
def _(tmp_path, problem):
    return ["--data", _with_bad_value(tmp_path, "y", np.nan)], ["rank 1", "y row 33", "clean or drop"]


@case("Inf in y", ranks=4)
def _(tmp_path, problem):
    return ["--data", _with_bad_value(tmp_path, "y", -np.inf)], ["rank 3", "y row 33", "clean or drop"]


@case("NaN in several rows and ranks", ranks=3)
def _(tmp_path, problem):
    X = np.ones((40, 3))
    X[[2, 5, 30], 1] = np.nan
    return ["--data", tiny(tmp_path, X=X)], ["rank 0", "X row 2, X row 5", "clean or drop"]


@case("values overflow float32")
def _(tmp_path, problem):
    X = np.full((40, 3), 3e19, dtype=np.float32)  # finite, but X^T X is not in float32
    return (["--data", tiny(tmp_path, X=X, y=np.ones(40, dtype=np.float32))],
            ["not finite", "float32", "--dtype float64"])


@case("values overflow float32 (fixed --lr)")
def _(tmp_path, problem):
    y = np.full(40, 1e20, dtype=np.float32)  # finite, but 1/2 ||y||^2 is not in float32
    return (["--data", tiny(tmp_path, X=np.ones((40, 3), dtype=np.float32), y=y), "--lr", "0.01"],
            ["the loss became inf at iteration 0, before any update", "float32", "--dtype float64"])


# --- the options -----------------------------------------------------------------------

@case("--lr 0")
def _(tmp_path, problem):
    return ["--data", problem[2], "--lr", "0"], ["--lr must be > 0", "auto"]


@case("--lr negative")
def _(tmp_path, problem):
    return ["--data", problem[2], "--lr=-0.1"], ["--lr must be > 0", "auto"]


@case("--lr not a number")
def _(tmp_path, problem):
    return ["--data", problem[2], "--lr", "fast"], ["--lr must be a number", "'fast'", "auto"]


@case("--lr nan")
def _(tmp_path, problem):
    return ["--data", problem[2], "--lr", "nan"], ["--lr must be finite"]


@case("--iters 0")
def _(tmp_path, problem):
    return ["--data", problem[2], "--iters", "0"], ["--iters must be >= 1"]


@case("--iters not a number")
def _(tmp_path, problem):
    return ["--data", problem[2], "--iters", "2.5"], ["--iters must be a whole number", "'2.5'"]


@case("--iters too large")
def _(tmp_path, problem):
    return ["--data", problem[2], "--iters", "1000000000"], ["--iters must be <= 10000000", "--standardize"]


@case("--straggler without seconds")
def _(tmp_path, problem):
    return ["--data", problem[2], "--straggler", "1"], ["RANK:SECONDS", "1:0.05"]


@case("--straggler bad rank")
def _(tmp_path, problem):
    return ["--data", problem[2], "--straggler", "last:0.1"], ["RANK:SECONDS", "'last:0.1'"]


@case("--straggler bad seconds")
def _(tmp_path, problem):
    return ["--data", problem[2], "--straggler", "1:soon"], ["--straggler SECONDS must be a number"]


@case("--straggler negative seconds")
def _(tmp_path, problem):
    return ["--data", problem[2], "--straggler", "1:-1"], ["--straggler SECONDS must be >= 0"]


@case("--straggler rank out of range")
def _(tmp_path, problem):
    return ["--data", problem[2], "--straggler", "5:0.1"], ["rank 5 does not exist", "0..1"]


@case("--tol negative")
def _(tmp_path, problem):
    return ["--data", problem[2], "--tol=-1"], ["--tol must be >= 0", "0 runs all --iters"]


@case("--threads 0")
def _(tmp_path, problem):
    return ["--data", problem[2], "--threads", "0"], ["--threads must be >= 1"]


@case("--checkpoint-every negative")
def _(tmp_path, problem):
    return ["--data", problem[2], "--checkpoint-every=-5"], ["--checkpoint-every must be >= 0"]


@case("--dtype float16")
def _(tmp_path, problem):
    return (["--data", problem[2], "--dtype", "float16"],
            ["invalid choice: 'float16'", "`python -m mpigd train --help`"])


@case("--dedicated-server with --mode allreduce")
def _(tmp_path, problem):
    return (["--data", problem[2], "--dedicated-server", "--mode", "allreduce"],
            ["--dedicated-server needs --mode server"])


@case("unknown option")
def _(tmp_path, problem):
    return (["--data", problem[2], "--iterations", "5"],
            ["unrecognized arguments: --iterations", "`python -m mpigd train --help`"])


# --- the output ------------------------------------------------------------------------

@case("--out under a regular file")
def _(tmp_path, problem):
    (tmp_path / "file").write_text("")
    return (["--data", problem[2], "--out", str(tmp_path / "file" / "sub")],
            ["not writable", "choose another --out"])


@case("--out is an existing file")
def _(tmp_path, problem):
    (tmp_path / "file").write_text("")
    return (["--data", problem[2], "--out", str(tmp_path / "file")],
            ["is a file, not a directory", "choose another --out"])


@case("--out holds a previous result")
def _(tmp_path, problem):
    out = tmp_path / "run"
    first = mpirun(2, "--data", problem[2], "--iters", 2, *FIXED, out=str(out))
    assert first.returncode == 0, first
    shutil.copy(out / "result.json", out / "previous.json")  # the test checks it is untouched
    return ["--data", problem[2]], ["already holds a result", "--force"]


# --- the config file -------------------------------------------------------------------

@case("config: unknown key")
def _(tmp_path, problem):
    path = tmp_path / "run.toml"
    path.write_text(f'data = "{problem[2]}"\niterations = 50\n')
    return ["--config", str(path)], ["unknown key 'iterations'", "known keys:", "iters"]


@case("config: wrong type")
def _(tmp_path, problem):
    path = tmp_path / "run.toml"
    path.write_text(f'data = "{problem[2]}"\niters = "fifty"\n')
    return ["--config", str(path)], ["key 'iters' must be an integer", "'fifty'"]


@case("config: code in a value")
def _(tmp_path, problem):
    path = tmp_path / "run.toml"
    path.write_text(f'data = "{problem[2]}"\nlr = "__import__(\'os\').system(\'touch pwned\')"\n')
    return ["--config", str(path)], ["key 'lr' must be \"auto\" or a number", "__import__"]


@case("config: not TOML")
def _(tmp_path, problem):
    path = tmp_path / "run.toml"
    path.write_text("iters: 50\n")
    return ["--config", str(path)], ["is not valid TOML", "line 1"]


@case("config: file missing")
def _(tmp_path, problem):
    return ["--config", str(tmp_path / "absent.toml")], ["cannot read config file", "No such file"]


# --- resume ----------------------------------------------------------------------------

@case("resume: feature count differs")
def _(tmp_path, problem):
    X, y, path = problem
    out = str(tmp_path / "run")
    crashed_run_with_checkpoint(path, out)
    write_h5(path, np.hstack([X, X[:, :1]]), y)
    return ["--resume", out], ["features 6", "now has 7", "same data, or start a new run"]


@case("resume: data differ", ranks=3)
def _(tmp_path, problem):
    X, y, path = problem
    out = str(tmp_path / "run")
    crashed_run_with_checkpoint(path, out)
    X[500, 3] += 1e-9  # one value, same shape
    write_h5(path, X, y)
    return ["--resume", out], ["same shape and dtype", "other values", "content checksum", "original data"]


@case("resume: no checkpoint")
def _(tmp_path, problem):
    (tmp_path / "run").mkdir()
    return ["--resume", str(tmp_path / "run")], ["no checkpoint", "--checkpoint-every"]


@case("resume: checkpoint damaged")
def _(tmp_path, problem):
    out = str(tmp_path / "run")
    crashed_run_with_checkpoint(problem[2], out)
    os.truncate(os.path.join(out, "checkpoint.h5"), 1000)
    return ["--resume", out], ["cannot read checkpoint", "damaged", "start a new run"]


@case("resume: --iters below the checkpoint")
def _(tmp_path, problem):
    out = str(tmp_path / "run")
    crashed_run_with_checkpoint(problem[2], out)
    return ["--resume", out, "--iters", "3"], ["at iteration 5, past --iters 3", "larger --iters"]


@case("resume: a finished run")
def _(tmp_path, problem):
    out = tmp_path / "run"
    first = mpirun(2, "--data", problem[2], "--iters", 2, *FIXED, out=str(out))
    assert first.returncode == 0, first
    shutil.copy(out / "result.json", out / "previous.json")  # the test checks it is untouched
    return ["--resume", str(out)], ["holds a finished run", "nothing to resume"]


@case("resume: with --config")
def _(tmp_path, problem):
    out = str(tmp_path / "run")
    crashed_run_with_checkpoint(problem[2], out)
    (tmp_path / "run.toml").write_text("iters = 50\n")
    return ["--resume", out, "--config", str(tmp_path / "run.toml")], ["drop --config"]


# --- divergence ------------------------------------------------------------------------

@case("diverge: loss grows")
def _(tmp_path, problem):
    lr = 2.5 / lmax(problem[0])  # too large, but the loss stays finite for a long time
    return (["--data", problem[2], "--lr", repr(lr), "--iters", "500", "--tol", "0"],
            ["diverged", "grew for 5 iterations in a row", f"--lr {lr:.6g}", "--lr auto"])


@case("diverge: loss grows (allreduce)", ranks=3)
def _(tmp_path, problem):
    lr = 2.5 / lmax(problem[0])
    return (["--data", problem[2], "--lr", repr(lr), "--iters", "500", "--mode", "allreduce"],
            ["diverged", "grew for 5 iterations in a row", "--lr auto"])


@case("diverge: loss Inf")
def _(tmp_path, problem):
    return (["--data", problem[2], "--lr", "1e300"],
            ["diverged at iteration 1", "loss became inf", "--lr 1e+300", "--lr auto"])


@case("diverge: loss NaN")
def _(tmp_path, problem):
    return (["--data", problem[2], "--lr", "1e306", "--dedicated-server"],
            ["diverged at iteration 1", "loss became nan", "--lr 1e+306", "--lr auto"])


# --- the matrix ------------------------------------------------------------------------

def _record(name, ranks, run, line, tmp_path):
    table = os.environ.get("MPIGD_MATRIX_OUT")
    if table:
        message = line.removeprefix("mpigd: error: ").replace(str(tmp_path), "<tmp>")
        message = message.replace("|", "\\|")
        with open(table, "a") as handle:
            handle.write(f"| {name} | {ranks} | {run.returncode} | {run.seconds:.1f} | {message} |\n")


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path, problem):
    ranks, make = CASES[name]
    args, fragments = make(tmp_path, problem)
    out = str(tmp_path / "run")
    if "--out" not in args and "--resume" not in args:
        args = [*args, "--out", out]
    try:
        run = mpirun(ranks, *args, timeout=60)
    finally:
        while HELD:
            os.close(HELD.pop())
    text = run.stdout + run.stderr
    lines = [line for line in text.splitlines() if "mpigd: error" in line]
    _record(name, ranks, run, lines[0] if lines else "(no message)", tmp_path)
    assert run.returncode != 0, run
    assert run.seconds < DEADLINE_S, f"{name}: all ranks took {run.seconds:.1f} s to exit"
    assert len(lines) == 1 and lines[0].startswith("mpigd: error: "), run
    for noise in NOISE:
        assert noise not in text, run
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    previous = os.path.join(out, "previous.json")
    if os.path.exists(previous):  # a previous result stays as it was
        with open(previous, "rb") as before, open(os.path.join(out, "result.json"), "rb") as now:
            assert before.read() == now.read()
    else:
        assert not os.path.exists(os.path.join(out, "result.json"))
    if name.startswith("diverge"):  # the history up to the diverged iteration is kept
        with open(os.path.join(out, "history-diverged.csv")) as handle:
            rows = handle.read().splitlines()
        last = int(re.search(r"diverged at iteration (\d+)", lines[0]).group(1))
        assert rows[0].startswith("iteration,loss") and len(rows) == last + 2
        assert rows[-1].startswith(f"{last},")
    assert not os.path.exists(tmp_path / "pwned")


# --- inputs that look odd but are fine -------------------------------------------------

@pytest.mark.parametrize("dtype", ["int32", "float16", "uint8"])
def test_other_number_types_are_computed_in_float64(tmp_path, dtype):
    rng = np.random.default_rng(4)
    X = rng.integers(0, 5, size=(60, 3)).astype(dtype)
    y = (X.astype(np.float64) @ [1.0, 2.0, 3.0]).astype(dtype)
    out = str(tmp_path / "run")
    run = mpirun(2, "--data", tiny(tmp_path, X=X, y=y), "--iters", 500, "--quiet", out=out)
    assert run.returncode == 0, run
    assert run.result["dtype"] == "float64"
    assert np.allclose(run.weights[0], [1.0, 2.0, 3.0], atol=1e-3)
