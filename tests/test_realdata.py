"""Real data end to end (issue 13 #2-5) on scikit-learn's bundled diabetes table (442 patients,
10 features; `sklearn/datasets/data/diabetes_data_raw.csv.gz`, shipped inside the package, no
download), as CSV and as Parquet: import, train with --standardize --intercept --holdout 0.2
under real mpirun, and compare with numpy.linalg.lstsq on the same training rows; predict;
solve; every bad input with its message."""

import csv
import json
import os

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_diabetes

from conftest import mpirun, python_m
from mpigd import holdout

TARGET = "progression"


def diabetes_table():
    data = load_diabetes(scaled=False)
    columns = {name: data.data[:, i] for i, name in enumerate(data.feature_names)}
    return pa.table({**columns, TARGET: data.target}), data


def write_table(table, path):
    path = str(path)
    if path.endswith(".parquet"):
        pq.write_table(table, path)
    else:
        pcsv.write_csv(table, path)
    return path


def imported(tmp, table_path, *args):
    out = str(tmp / (os.path.basename(table_path) + ".h5"))
    proc = python_m("import", table_path, "--target", TARGET, "--out", out, "--force", *args)
    assert proc.returncode == 0, proc.stderr
    return out


def one_error(run_or_proc):
    """The single `mpigd: error:` line of a failed command (exit code 2), without its prefix."""
    assert run_or_proc.returncode == 2, run_or_proc
    lines = [l for l in (run_or_proc.stdout + run_or_proc.stderr).splitlines() if "mpigd: error" in l]
    assert len(lines) == 1, run_or_proc
    return lines[0].removeprefix("mpigd: error: ").removeprefix("rank 0: ")


def r2(y, pred):
    return 1 - np.sum((pred - y) ** 2) / np.sum((y - y.mean()) ** 2)


def lstsq_with_intercept(X, y):
    A = np.column_stack([X, np.ones(len(X))])
    solution = np.linalg.lstsq(A, y, rcond=None)[0]
    return solution[:-1], solution[-1]


def rel(a, b):
    return np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(b)


# --- the rule --------------------------------------------------------------------------------

def splitmix64(i, seed):
    """The documented rule, written out in Python integers (independent of the numpy code)."""
    mask = (1 << 64) - 1
    z = (i + (seed + 1) * 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return (z ^ (z >> 31)) >> 11


def test_holdout_rule_is_the_documented_hash():
    rows = np.arange(0, 5000, dtype=np.int64)
    for seed in (0, 7):
        expected = np.array([splitmix64(int(i), seed) * 2.0**-53 < 0.2 for i in rows])
        np.testing.assert_array_equal(holdout.held_out(rows, 0.2, seed), expected)
    share = holdout.held_out(np.arange(100_000), 0.2, 0).mean()
    assert 0.19 < share < 0.21
    assert (holdout.held_out(rows, 0.2, 0) != holdout.held_out(rows, 0.2, 1)).any()


# --- train, predict, solve on the diabetes table ----------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The diabetes table as CSV and Parquet, imported, trained on 2 ranks and 1 (the rule holds
    out the same rows for both; more ranks than the machine's 2 cores only slow the test)."""
    tmp = tmp_path_factory.mktemp("realdata")
    table, data = diabetes_table()
    runs = {}
    for name, ranks in (("diabetes.csv", 2), ("diabetes.parquet", 1)):
        h5 = imported(tmp, write_table(table, tmp / name))
        # A test file of the same features: the last 100 patients, imported on their own.
        test_h5 = imported(tmp, write_table(table.slice(342), tmp / f"test-{name}"))
        out = str(tmp / f"run-{name}")
        run = mpirun(ranks, "--data", h5, "--standardize", "--intercept", "--holdout", "0.2",
                     "--test-data", test_h5, "--eval-every", "250", "--reference", "exact",
                     "--iters", "40000", "--tol", "1e-11", out=out)
        assert run.returncode == 0, run
        runs[name] = (run, h5)
    return tmp, data, runs


@pytest.mark.parametrize("name", ["diabetes.csv", "diabetes.parquet"])
def test_weights_and_r2_match_lstsq_on_the_training_rows(trained, name):
    tmp, data, runs = trained
    run, _ = runs[name]
    out = holdout.held_out(np.arange(len(data.target)), 0.2, 0)
    X, y = data.data[~out], data.target[~out]
    w_ls, b_ls = lstsq_with_intercept(X, y)
    w, b = run.weights
    assert rel(np.append(w, b), np.append(w_ls, b_ls)) < 1e-6
    result = run.result
    named = {row["name"]: row["weight"] for row in result["weights"]}
    assert list(named) == [*data.feature_names, "(intercept)"]
    np.testing.assert_allclose([named[n] for n in data.feature_names], w_ls, rtol=1e-6, atol=1e-6 * np.abs(w_ls).max())
    metrics = result["metrics"]
    assert (metrics["train"]["rows"], metrics["holdout"]["rows"]) == ((~out).sum(), out.sum())
    assert metrics["train"]["r2"] == pytest.approx(r2(y, X @ w_ls + b_ls), rel=1e-6)
    held = data.data[out] @ w_ls + b_ls
    assert metrics["holdout"]["r2"] == pytest.approx(r2(data.target[out], held), rel=1e-6)
    assert metrics["holdout"]["rmse"] == pytest.approx(np.sqrt(np.mean((held - data.target[out]) ** 2)), rel=1e-6)
    assert metrics["holdout"]["mae"] == pytest.approx(np.mean(np.abs(held - data.target[out])), rel=1e-6)
    test_pred = data.data[342:] @ w_ls + b_ls
    assert metrics["test"]["rows"] == 100
    assert metrics["test"]["r2"] == pytest.approx(r2(data.target[342:], test_pred), rel=1e-6)
    with h5py.File(os.path.join(run.out, "weights.h5"), "r") as f:
        assert [n.decode() for n in f["feature_names"][()]] == list(data.feature_names)
        assert json.loads(f.attrs["encoding"])["target"] == TARGET
    assert "largest weights" in run.stdout and "s5" in run.stdout and "holdout   rows" in run.stdout


def test_history_has_held_out_loss_and_suboptimality_and_plots(trained):
    _, _, runs = trained
    run, _ = runs["diabetes.csv"]
    with open(os.path.join(run.out, "history.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    last = len(rows) - 1
    evaluated = [int(r["iteration"]) for r in rows if r["holdout_loss"]]
    assert evaluated == sorted({0, last} | set(range(250, last + 1, 250)))
    result = run.result
    assert float(rows[-1]["holdout_loss"]) == pytest.approx(result["metrics"]["holdout"]["loss"], rel=1e-12)
    sub = np.array([float(r["suboptimality"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    ref = result["reference"]
    assert ref["method"] == "cholesky" and ref["reduce_bytes"] == 8 * (10 * 10 + 10)
    # L(w_t) - L(w*) = 1/2 e^T A e agrees with the loss column minus L(w*) where they can be told apart
    big = sub > 1e-6 * loss
    np.testing.assert_allclose(sub[big], loss[big] - ref["loss_star"], rtol=1e-6)
    assert sub[-1] < 1e-9 * loss[-1] and ref["final_w_relative_error"] < 1e-6
    assert float(rows[-1]["w_relative_error"]) == pytest.approx(ref["final_w_relative_error"])
    assert result["metrics"]["eval_seconds_in_loop"] > 0
    from mpigd.studies.plots import _curves_of, plot_loss

    assert [name for name, _, _ in _curves_of(rows)] == ["|g_t| / |g_0|", "L(w_t) − L(w*)"]
    assert os.path.getsize(plot_loss(run.out, os.path.join(run.out, "plots"))) > 10_000


@pytest.mark.parametrize("kind", ["csv", "parquet", "h5"])
def test_predict_equals_x_w_plus_b_in_input_order(trained, kind):
    tmp, data, runs = trained
    run, h5 = runs["diabetes.csv"]
    w, b = run.weights
    table, _ = diabetes_table()
    order = np.random.default_rng(1).permutation(len(data.target))[:300]
    new = table.take(pa.array(order)).drop_columns([TARGET])
    source = {"csv": lambda: write_table(new, tmp / "new.csv"),
              "parquet": lambda: write_table(new, tmp / "new.parquet"), "h5": lambda: h5}[kind]()
    preds = str(tmp / f"preds-{kind}.csv")
    got = mpirun(3, "predict", run.out, "--data", source, "--out", preds, "--block-mb", "0.004")
    assert got.returncode == 0, got
    with open(preds, newline="") as handle:
        rows = list(csv.DictReader(handle))
    X_new = data.data[order] if kind != "h5" else data.data
    expected = X_new @ w + b
    assert [int(r["row"]) for r in rows] == list(range(1, len(X_new) + 1))
    np.testing.assert_allclose([float(r["prediction"]) for r in rows], expected, rtol=1e-9)
    if kind == "h5":  # the file has y: predict reports the fit on it
        assert "target" in rows[0] and "R²" in got.stdout


@pytest.mark.parametrize("holdout_args", [(), ("--holdout", "0.2")])
def test_solve_equals_lstsq(trained, holdout_args):
    tmp, data, runs = trained
    _, h5 = runs["diabetes.parquet"]
    out = str(tmp / f"solve{len(holdout_args)}.json")
    got = mpirun(2, "solve", "--data", h5, "--intercept", *holdout_args, "--out", out)
    assert got.returncode == 0, got
    keep = ~holdout.held_out(np.arange(len(data.target)), 0.2, 0) if holdout_args else slice(None)
    w_ls, b_ls = lstsq_with_intercept(data.data[keep], data.target[keep])
    report = json.load(open(out))
    found = [row["weight"] for row in report["weights"]]
    assert rel(found, np.append(w_ls, b_ls)) < 1e-10
    assert report["method"] == "cholesky" and report["reduce_bytes"] == 880
    assert "880 bytes per rank, once" in got.stdout and "184 bytes per rank per iteration" in got.stdout


def test_one_hot_collinear_with_intercept_uses_lstsq_and_refuses_unseen_category(tmp_path):
    """sex as two one-hot columns + intercept: XᵀX is singular (said so); sex=3 is unseen."""
    table, data = diabetes_table()
    h5 = imported(tmp_path, write_table(table, tmp_path / "d.csv"), "--categorical", "sex")
    solved = mpirun(2, "solve", "--data", h5, "--intercept")
    assert solved.returncode == 0, solved
    assert "rank-deficient (rank 10 of 11" in solved.stdout and "lstsq" in solved.stdout
    run = mpirun(2, "--data", h5, "--standardize", "--intercept", "--reference", "exact", "--iters",
                 "500", "--quiet", out=str(tmp_path / "run"))
    assert run.returncode == 0, run
    assert run.result["reference"]["method"] == "lstsq"
    names = [row["name"] for row in run.result["weights"]]
    assert names[:3] == ["age", "sex=1", "sex=2"]
    sexes = np.where(np.arange(len(data.target)) == 5, 3, data.data[:, 1]).astype(int)
    bad = table.set_column(1, "sex", pa.array(sexes))
    got = mpirun(2, "predict", run.out, "--data", write_table(bad, tmp_path / "bad.csv"),
                 "--out", str(tmp_path / "p.csv"))
    message = one_error(got)
    assert "column 'sex'" in message and "category '3' at data row 6" in message
    assert not os.path.exists(tmp_path / "p.csv")


# --- bad inputs --------------------------------------------------------------------------------

def test_predict_bad_inputs(trained, tmp_path):
    tmp, data, runs = trained
    run, h5 = runs["diabetes.csv"]
    out = str(tmp_path / "p.csv")
    message = one_error(mpirun(2, "predict", str(tmp_path / "nowhere"), "--data", h5, "--out", out))
    assert "run directory" in message and "does not exist" in message
    os.makedirs(tmp_path / "empty")
    message = one_error(mpirun(2, "predict", str(tmp_path / "empty"), "--data", h5, "--out", out))
    assert "holds no weights.h5: not a completed training run" in message
    fewer = str(tmp_path / "fewer.h5")
    with h5py.File(fewer, "w") as f:
        f["X"], f["y"] = data.data[:, :7], data.target
    message = one_error(mpirun(2, "predict", run.out, "--data", fewer, "--out", out))
    assert "has 7 features but the run was trained on 10 (age, sex" in message
    renamed = str(tmp_path / "renamed.h5")
    with h5py.File(renamed, "w") as f:
        f["X"], f["y"] = data.data, data.target
        f.attrs["feature_names"] = ["age", "sex", "BMI", *data.feature_names[3:]]
    message = one_error(mpirun(2, "predict", run.out, "--data", renamed, "--out", out))
    assert "feature 2 is 'BMI', the run's is 'bmi'" in message
    table, _ = diabetes_table()
    lacking = write_table(table.drop_columns(["s3"]), tmp_path / "lacking.csv")
    message = one_error(mpirun(2, "predict", run.out, "--data", lacking, "--out", out))
    assert "has no column 's3', which the run was trained with" in message
    message = one_error(mpirun(1, "predict", run.out, "--data", str(tmp_path / "no.csv"), "--out", out))
    assert "no.csv does not exist" in message
    assert not os.path.exists(out)


def test_table_for_a_run_without_encoding(tmp_path):
    table, data = diabetes_table()
    plain = str(tmp_path / "plain.h5")
    with h5py.File(plain, "w") as f:
        f["X"], f["y"] = data.data, data.target
    run = mpirun(1, "--data", plain, "--iters", "3", "--quiet", out=str(tmp_path / "run"))
    assert run.returncode == 0, run
    assert [row["name"] for row in run.result["weights"]] == [f"x{j}" for j in range(10)]
    message = one_error(mpirun(1, "predict", run.out, "--data", write_table(table, tmp_path / "t.csv"),
                               "--out", str(tmp_path / "p.csv")))
    assert "not made by `mpigd import`, so there is no encoding to apply" in message


@pytest.mark.parametrize("args,expected", [
    (("--holdout", "1.5"), "--holdout must be a fraction in [0, 1) of the rows to keep out of training, e.g. 0.2; got 1.5"),
    (("--holdout", "1"), "--holdout must be a fraction in [0, 1)"),
    (("--holdout", "-0.1"), "--holdout must be a fraction in [0, 1)"),
    (("--holdout", "abc"), "--holdout must be a number (a fraction like 0.2), got 'abc'"),
    (("--eval-every", "10"), "--eval-every evaluates held-out rows: give --holdout FRACTION or --test-data"),
    (("--holdout", "0.2", "--eval-every", "-1"), "--eval-every must be >= 0"),
    (("--holdout-seed", "-3", "--holdout", "0.1"), "--holdout-seed must be >= 0"),
])
def test_bad_evaluation_options(tmp_path, args, expected):
    message = one_error(mpirun(2, "--data", str(tmp_path / "x.h5"), *args, out=str(tmp_path / "r")))
    assert expected in message


def test_bad_fraction_for_solve_and_too_few_rows(tmp_path):
    assert "--holdout must be a fraction in [0, 1)" in one_error(
        mpirun(1, "solve", "--data", str(tmp_path / "x.h5"), "--holdout", "2"))
    tiny = str(tmp_path / "tiny.h5")
    with h5py.File(tiny, "w") as f:
        f["X"], f["y"] = np.eye(3), np.ones(3)
    message = one_error(mpirun(2, "--data", tiny, "--holdout", "0.01", out=str(tmp_path / "r")))
    assert "--holdout 0.01 of 3 rows: no row was held out; use more data or another fraction" in message


def test_test_data_with_other_features(trained, tmp_path):
    tmp, data, runs = trained
    _, h5 = runs["diabetes.csv"]
    fewer = str(tmp_path / "fewer.h5")
    with h5py.File(fewer, "w") as f:
        f["X"], f["y"] = data.data[:, :9], data.target
    message = one_error(mpirun(2, "--data", h5, "--test-data", fewer, out=str(tmp_path / "r1")))
    assert "--test-data" in message and "has 9 features but the training data has 10" in message
    renamed = str(tmp_path / "renamed.h5")
    with h5py.File(renamed, "w") as f:
        f["X"], f["y"] = data.data, data.target
        f.attrs["feature_names"] = ["AGE", *data.feature_names[1:]]
    message = one_error(mpirun(2, "--data", h5, "--test-data", renamed, out=str(tmp_path / "r2")))
    assert "feature 0 is 'AGE', not 'age'" in message


def test_resume_holds_out_the_same_rows(trained, tmp_path):
    """A run that crashed and resumed: bitwise the w of an uninterrupted run, same held-out losses."""
    _, _, runs = trained
    _, h5 = runs["diabetes.csv"]
    args = ("--data", h5, "--standardize", "--intercept", "--holdout", "0.2", "--reference", "exact",
            "--eval-every", "100", "--iters", "600", "--tol", "0", "--quiet")
    crashed = mpirun(2, *args, "--checkpoint-every", "100", out=str(tmp_path / "a"),
                     env={"MPIGD_INJECT_FAULT": "1:loop:350"})
    assert crashed.returncode != 0 and os.path.exists(tmp_path / "a" / "checkpoint.h5")
    resumed = mpirun(2, "--resume", str(tmp_path / "a"), "--quiet")
    whole = mpirun(2, *args, out=str(tmp_path / "b"))
    assert resumed.returncode == 0 and whole.returncode == 0, (resumed, whole)
    assert "holdout R² 0.47" in whole.stdout  # --quiet's one line names the held-out fit
    with h5py.File(tmp_path / "a" / "weights.h5") as a, h5py.File(tmp_path / "b" / "weights.h5") as b:
        assert np.array_equal(a["w"][()], b["w"][()])
    histories = []
    for name in ("a", "b"):
        with open(tmp_path / name / "history.csv", newline="") as handle:
            histories.append({int(r["iteration"]): r for r in csv.DictReader(handle)})
    for t in (300, 400, 500, 600):
        for column in ("holdout_loss", "suboptimality"):
            assert histories[0][t][column] == histories[1][t][column] != ""
    assert histories[0][200]["holdout_loss"] == ""  # before the checkpoint: not kept in it
