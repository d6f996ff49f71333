"""`python -m mpigd import`: real tables (scikit-learn's bundled diabetes data) as CSV and
Parquet, one-hot encoding, missing values, every bad table, bounded memory, and training
on the result under real mpirun."""

import gzip
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_diabetes

from conftest import mpirun, python_m
from mpigd import encoding, tables
from mpigd.errors import MpigdError

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def diabetes(scaled=False):
    data = load_diabetes(scaled=scaled)
    columns = {name: data.data[:, i] for i, name in enumerate(data.feature_names)}
    return pa.table({**columns, "progression": data.target}), data


def write_table(table, path, delimiter=","):
    path = str(path)
    if path.endswith(".parquet"):
        pq.write_table(table, path)
    else:
        pcsv.write_csv(table, path, write_options=pcsv.WriteOptions(delimiter=delimiter))
    return path


def run_import(table_path, *args):
    proc = python_m("import", table_path, *args)
    return proc.returncode, proc.stdout, proc.stderr


def imported(path):
    with h5py.File(path, "r") as f:
        return f["X"][()], f["y"][()], f["source_row"][()], dict(f.attrs), encoding.read(f)


def error_of(table_path, *args, out=None):
    out = out or f"{table_path}.h5"
    code, stdout, stderr = run_import(table_path, *args, "--out", out)
    assert code == 2, (stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpigd: error: "), stderr
    assert not os.path.exists(out)
    leftovers = [n for n in os.listdir(os.path.dirname(out) or ".") if ".partial-" in n]
    assert not leftovers, leftovers
    return lines[0]


# --- real data, exact values --------------------------------------------------------------

@pytest.mark.parametrize("name,delimiter,scaled", [
    ("diabetes.csv", ",", False), ("diabetes.csv", ",", True), ("diabetes-semicolon.csv", ";", False),
    ("diabetes-tab.tsv", "\t", True), ("diabetes.parquet", None, False), ("diabetes.parquet", None, True),
])
def test_diabetes_imports_exactly(tmp_path, name, delimiter, scaled):
    table, data = diabetes(scaled)
    source = write_table(table, tmp_path / name, delimiter or ",")
    out = tmp_path / "diabetes.h5"
    code, stdout, stderr = run_import(source, "--target", "progression", "--out", out)
    assert code == 0, stderr
    X, y, rows, attrs, enc = imported(out)
    assert X.dtype == np.float64 and X.shape == (442, 10)
    np.testing.assert_array_equal(X, data.data)  # exact: the text round trip loses nothing
    np.testing.assert_array_equal(y, data.target)
    np.testing.assert_array_equal(rows, np.arange(1, 443))
    assert list(attrs["feature_names"]) == list(data.feature_names) == enc.feature_names
    assert attrs["target"] == enc.target == "progression"
    assert attrs["source"] == os.path.abspath(source)
    assert attrs["source_sha256"] == hashlib.sha256(Path(source).read_bytes()).hexdigest()
    assert (attrs["source_rows"], attrs["rows"], attrs["rows_dropped"]) == (442, 442, 0)
    assert attrs["source_format"] == ("parquet" if name.endswith(".parquet") else "csv")
    assert attrs["delimiter"] == (delimiter or "")
    assert "features: 10: age, sex, bmi" in stdout and "wrote" in stdout


def test_float32_and_gzip(tmp_path):
    table, data = diabetes()
    plain = write_table(table, tmp_path / "d.csv")
    packed = tmp_path / "d.csv.gz"
    packed.write_bytes(gzip.compress(Path(plain).read_bytes()))
    code, _, stderr = run_import(packed, "--target", "progression", "--out", tmp_path / "d.h5",
                                 "--dtype", "float32")
    assert code == 0, stderr
    X, y, _, attrs, _ = imported(tmp_path / "d.h5")
    assert X.dtype == np.float32 and attrs["dtype"] == "float32"
    np.testing.assert_array_equal(X, data.data.astype(np.float32))
    np.testing.assert_array_equal(y, data.target.astype(np.float32))


def test_imported_file_trains_under_mpirun(tmp_path):
    """The file is trainer input: 2 real ranks, --standardize --intercept, weights = lstsq."""
    table, data = diabetes()
    out = tmp_path / "diabetes.h5"
    assert run_import(write_table(table, tmp_path / "d.parquet"), "--target", "progression",
                      "--out", out)[0] == 0
    run = mpirun(2, "--data", out, "--standardize", "--intercept", "--iters", 30000, "--tol", 1e-11,
                 "--quiet", out=str(tmp_path / "run"))
    assert run.returncode == 0, run
    w, b = run.weights
    A = np.column_stack([data.data, np.ones(len(data.data))])
    exact = np.linalg.lstsq(A, data.target, rcond=None)[0]
    np.testing.assert_allclose(np.append(w, b), exact, rtol=1e-6)


# --- categories -------------------------------------------------------------------------

CITY_CSV = "size,city,rooms,price\n50,Paris,2,500\n80,Lyon,3,400\n65,Paris,2,550\n120,Berlin,4,610\n"


def test_text_column_becomes_one_hot(tmp_path):
    source = tmp_path / "flats.csv"
    source.write_text(CITY_CSV)
    code, stdout, stderr = run_import(source, "--target", "price", "--out", tmp_path / "f.h5")
    assert code == 0, stderr
    X, y, _, attrs, enc = imported(tmp_path / "f.h5")
    assert enc.feature_names == ["size", "city=Berlin", "city=Lyon", "city=Paris", "rooms"]
    np.testing.assert_array_equal(X, [[50, 0, 0, 1, 2], [80, 0, 1, 0, 3], [65, 0, 0, 1, 2],
                                      [120, 1, 0, 0, 4]])
    np.testing.assert_array_equal(y, [500, 400, 550, 610])
    record = json.loads(attrs["encoding"])
    assert record["columns"][1] == {"name": "city", "kind": "categorical",
                                    "categories": ["Berlin", "Lyon", "Paris"], "drop_first": False}
    assert "one-hot:  city: 3 categories (Berlin, Lyon, Paris)" in stdout


def test_drop_first_features_and_explicit_categorical(tmp_path):
    source = tmp_path / "flats.csv"
    source.write_text(CITY_CSV)
    code, _, stderr = run_import(source, "--target", "price", "--out", tmp_path / "f.h5", "--drop-first",
                                 "--features", "rooms,city", "--categorical", "city,rooms")
    assert code == 0, stderr
    X, _, _, _, enc = imported(tmp_path / "f.h5")
    assert enc.feature_names == ["rooms=3", "rooms=4", "city=Lyon", "city=Paris"]
    np.testing.assert_array_equal(X, [[0, 0, 0, 1], [1, 0, 1, 0], [0, 0, 0, 1], [0, 1, 0, 0]])


def test_categorical_none_leaves_text_out(tmp_path):
    source = tmp_path / "flats.csv"
    source.write_text(CITY_CSV)
    code, stdout, stderr = run_import(source, "--target", "price", "--out", tmp_path / "f.h5",
                                      "--categorical", "none")
    assert code == 0, stderr
    assert imported(tmp_path / "f.h5")[4].feature_names == ["size", "rooms"]
    assert "ignored:  'city': text (string)" in stdout


def test_encoding_applies_to_new_rows_and_refuses_unseen_category(tmp_path):
    source = tmp_path / "flats.csv"
    source.write_text(CITY_CSV)
    assert run_import(source, "--target", "price", "--out", tmp_path / "f.h5")[0] == 0
    X_train, _, _, _, enc = imported(tmp_path / "f.h5")
    # The raw training table, encoded again the way predict will: the same X.
    blocks = list(encoding.encode_table(str(source), enc))
    np.testing.assert_array_equal(np.vstack([b.X for b in blocks]), X_train)
    assert blocks[0].y is None and list(blocks[0].rows) == [1, 2, 3, 4]
    # A new table without the target column, one city never seen at import.
    new = tmp_path / "new.csv"
    new.write_text("city,size,rooms\nLyon,70,3\nMadrid,90,3\n")
    with pytest.raises(MpigdError, match=r"column 'city' of .*new.csv has category 'Madrid' at data "
                                         r"row 2 that the training table did not have \(known: Berlin, Lyon, Paris\)"):
        list(encoding.encode_table(str(new), enc))
    batch = pa.record_batch([pa.array([70.0]), pa.array([3.0]), pa.array(["Rome"])],
                            names=["size", "rooms", "city"])
    with pytest.raises(MpigdError, match="category 'Rome' at data row 7"):
        encoding.encode_batch(enc, batch, 7, with_target=False)
    known = encoding.encode_batch(enc, batch.set_column(2, "city", pa.array(["Lyon"])), 7, with_target=False)
    np.testing.assert_array_equal(known.X, [[70, 0, 1, 0, 3]])
    assert list(known.rows) == [7]


def test_encoding_json_round_trip_and_none_for_other_files(tmp_path):
    enc = encoding.Encoding((encoding.Column("a", "numeric"),
                             encoding.Column("c", "categorical", ("x", "y"), True)), "t")
    again = encoding.Encoding.from_json(enc.to_json())
    assert again == enc and again.feature_names == ["a", "c=y"]
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["X"] = np.zeros((2, 2))
        assert encoding.read(f) is None
    with pytest.raises(MpigdError, match="feature names collide .*: a=b"):
        encoding.Encoding((encoding.Column("a=b", "numeric"),
                           encoding.Column("a", "categorical", ("b",))), "t")


def test_bool_and_dictionary_columns(tmp_path):
    csv_path = write(tmp_path, "b.csv", "flag,x,y\ntrue,1,2\nfalse,2,3\ntrue,3,5\n")
    assert run_import(csv_path, "--target", "y", "--out", tmp_path / "b.h5")[0] == 0
    X, _, _, _, enc = imported(tmp_path / "b.h5")
    assert enc.feature_names == ["flag", "x"]
    np.testing.assert_array_equal(X, [[1, 1], [0, 2], [1, 3]])
    parquet = str(tmp_path / "b.parquet")
    pq.write_table(pa.table({"flag": [True, False, True], "n": pa.array([1, 2, 3], pa.int32()),
                             "zone": pa.array(["b", "a", "b"]).dictionary_encode(),
                             "zip": ["75001", "75002", "75001"], "y": [2.0, 3.0, 5.0]}), parquet)
    assert run_import(parquet, "--target", "y", "--out", tmp_path / "p.h5")[0] == 0
    X, _, _, _, enc = imported(tmp_path / "p.h5")
    # Parquet's string type is the writer's word: an all-digits zip code stays a category.
    assert enc.feature_names == ["flag", "n", "zone=a", "zone=b", "zip=75001", "zip=75002"]
    np.testing.assert_array_equal(X, [[1, 1, 0, 1, 1, 0], [0, 2, 1, 0, 0, 1], [1, 3, 0, 1, 1, 0]])


# --- missing values -----------------------------------------------------------------------

MISSING_CSV = "a,b,city,y\n1,2,P,3\n4,,P,6\n7,8,,9\n1,1,L,NA\n2,3,L,4\n5,nan,P,1\n"


def test_missing_drop_drops_exactly_those_rows(tmp_path):
    source = tmp_path / "m.csv"
    source.write_text(MISSING_CSV)
    code, stdout, stderr = run_import(source, "--target", "y", "--missing", "drop", "--out", tmp_path / "m.h5")
    assert code == 0, stderr
    X, y, rows, attrs, enc = imported(tmp_path / "m.h5")
    np.testing.assert_array_equal(rows, [1, 5])
    np.testing.assert_array_equal(X, [[1, 2, 0, 1], [2, 3, 1, 0]])  # city=L, city=P
    np.testing.assert_array_equal(y, [3, 4])
    assert (attrs["source_rows"], attrs["rows"], attrs["rows_dropped"]) == (6, 2, 4)
    assert "6 rows, 4 dropped for missing values" in stdout


def test_missing_drop_on_parquet_with_nan_and_null(tmp_path):
    source = str(tmp_path / "m.parquet")
    pq.write_table(pa.table({"a": [1.0, np.nan, 3.0, np.inf], "b": pa.array([1, None, 2, 3], pa.int64()),
                             "y": [1.0, 2.0, 3.0, 4.0]}), source)
    assert run_import(source, "--target", "y", "--missing", "drop", "--out", tmp_path / "m.h5")[0] == 0
    X, y, rows, _, _ = imported(tmp_path / "m.h5")
    np.testing.assert_array_equal(rows, [1, 3])
    np.testing.assert_array_equal(X, [[1, 1], [3, 2]])


# --- bad tables: one line each ------------------------------------------------------------

def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_missing_values_are_named_with_rows(tmp_path):
    message = error_of(write(tmp_path, "m.csv", MISSING_CSV), "--target", "y")
    assert ("missing or non-finite values in" in message and "column 'b' at data rows 2, 6" in message
            and "column 'city' at data row 3" in message and "column 'y' at data row 4" in message
            and "1-based, header not counted" in message and "--missing drop" in message)


def test_text_in_numeric_column_first_block(tmp_path):
    path = write(tmp_path, "t.csv", "a,b,y\n1,2,3\n4,5,6\n7,x8,9\n1,2,3\n")
    message = error_of(path, "--target", "y")
    assert "text in numeric column 'b'" in message and "'x8' at data row 3" in message
    assert "--categorical b" in message


def test_text_in_numeric_column_after_the_first_block(tmp_path):
    rows = "".join(f"{i},{i * 0.5},{i % 7}\n" for i in range(30000))
    path = write(tmp_path, "t.csv", "a,b,y\n" + rows + "3,oops,1\n" + rows[:200])
    message = error_of(path, "--target", "y", "--block-mb", "0.0625")
    assert "text in numeric column 'b'" in message and "'oops' at data row 30001" in message


def test_absent_target_lists_the_columns(tmp_path):
    message = error_of(write(tmp_path, "a.csv", "a,b,y\n1,2,3\n"), "--target", "price")
    assert "target column 'price' not found" in message and "columns there: a, b, y" in message


def test_target_not_numeric(tmp_path):
    message = error_of(write(tmp_path, "a.csv", CITY_CSV), "--target", "city")
    assert "target column 'city'" in message and "not numeric" in message and "'Paris' at data row 1" in message


@pytest.mark.parametrize("text,expected", [
    ("a,b,y\n", "has a header but no data rows"),
    ("", "is empty: a table needs a header row and data rows"),
])
def test_empty_table(tmp_path, text, expected):
    assert expected in error_of(write(tmp_path, "e.csv", text), "--target", "y")


def test_empty_parquet(tmp_path):
    source = str(tmp_path / "e.parquet")
    pq.write_table(pa.table({"a": pa.array([], pa.float64()), "y": pa.array([], pa.float64())}), source)
    assert "has a header but no data rows" in error_of(source, "--target", "y")


def test_duplicate_column_names(tmp_path):
    message = error_of(write(tmp_path, "d.csv", "a,b,a,y\n1,2,3,4\n"), "--target", "y")
    assert "duplicate column names: 'a'" in message


def test_unknown_feature_name(tmp_path):
    message = error_of(write(tmp_path, "a.csv", "a,b,y\n1,2,3\n"), "--target", "y", "--features", "a,c")
    assert "--features names 'c', which is not a column" in message and "columns there: a, b, y" in message


def test_text_feature_without_categorical(tmp_path):
    message = error_of(write(tmp_path, "a.csv", CITY_CSV), "--target", "price", "--features", "city",
                       "--categorical", "none")
    assert "feature column 'city' has type string" in message and "--categorical" in message


def test_all_rows_dropped(tmp_path):
    message = error_of(write(tmp_path, "a.csv", "a,b,y\n1,,3\n,2,\n"), "--target", "y", "--missing", "drop")
    assert "every one of the 2 data rows" in message and "nothing left to import" in message


def test_malformed_row_gives_its_line(tmp_path):
    message = error_of(write(tmp_path, "a.csv", "a,b,y\n1,2,3\n4,5,6,7\n"), "--target", "y")
    assert "not a well-formed CSV table at line 3" in message and "expected 3 fields, got 4" in message


def test_too_many_categories(tmp_path):
    rows = "".join(f"id{i},{i}\n" for i in range(50))
    message = error_of(write(tmp_path, "a.csv", "id,y\n" + rows), "--target", "y", "--max-categories", "20")
    assert "'id'" in message and "more than 20 distinct values" in message


@pytest.mark.parametrize("kind", ["junk", "npy", "hdf5", "absent", "directory"])
def test_not_a_table(tmp_path, kind):
    path = tmp_path / f"input.{kind}"
    if kind == "junk":
        path.write_bytes(bytes(range(256)) * 8)
        expected = "not a CSV or Parquet table"
    elif kind == "npy":
        np.save(path, np.zeros(3))
        expected = "a NumPy .npy array, not a table"
    elif kind == "hdf5":
        with h5py.File(path, "w") as f:
            f["X"] = np.zeros((2, 2))
        expected = "already an HDF5 file: train on it with `--data`"
    elif kind == "absent":
        expected = "does not exist"
    else:
        path.mkdir()
        expected = "is a directory"
    assert expected in error_of(str(path), "--target", "y", out=str(tmp_path / "out.h5"))


def test_out_exists_needs_force(tmp_path):
    source = write(tmp_path, "a.csv", "a,y\n1,2\n")
    out = tmp_path / "a.h5"
    out.write_text("keep me")
    code, _, stderr = run_import(source, "--target", "y", "--out", out)
    assert code == 2 and "exists; pass --force to replace it" in stderr and out.read_text() == "keep me"
    assert run_import(source, "--target", "y", "--out", out, "--force")[0] == 0


def test_without_pyarrow_says_how_to_install(tmp_path):
    source = write(tmp_path, "a.csv", "a,y\n1,2\n")
    hide = "import sys; sys.modules['pyarrow'] = None; from mpigd.__main__ import main; main()"
    proc = subprocess.run([sys.executable, "-c", hide, "import", source, "--target", "y", "--out",
                           str(tmp_path / "a.h5")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("mpigd: error: reading CSV/Parquet tables needs pyarrow: "
                                   "pip install 'mpigd[table]' (or pip install pyarrow)")


# --- file kinds (issue 16: --data that is not HDF5) -------------------------------------

def test_sniff_and_delimiter(tmp_path):
    table, _ = diabetes()
    assert tables.sniff(write_table(table, tmp_path / "d.csv")) == "csv"
    assert tables.sniff(write_table(table, tmp_path / "d.parquet")) == "parquet"
    np.save(tmp_path / "a.npy", np.zeros(2))
    np.savez(tmp_path / "a.npz", a=np.zeros(2))
    assert tables.sniff(str(tmp_path / "a.npy")) == "npy" and tables.sniff(str(tmp_path / "a.npz")) == "npz"
    with h5py.File(tmp_path / "a.h5", "w", userblock_size=512) as f:
        f["X"] = np.zeros(2)
    assert tables.sniff(str(tmp_path / "a.h5")) == "hdf5"
    assert tables.sniff(write(tmp_path, "t.txt", "hello\n")) == "text"
    assert tables.sniff(write(tmp_path, "e.txt", "")) == "empty"
    assert tables.detect_delimiter('"a;b",c,d') == ","
    assert tables.detect_delimiter("a;b;c") == ";" and tables.detect_delimiter("a\tb|c\td") == "\t"
    assert tables.detect_delimiter("single") == ","


@pytest.mark.parametrize("kind", ["csv", "parquet", "npy"])
def test_data_that_is_not_hdf5_says_how_to_convert(tmp_path, kind):
    table, _ = diabetes()
    if kind == "npy":
        path = str(tmp_path / "d.npy")
        np.save(path, np.zeros((3, 2)))
        expected = (f"d.npy is a NumPy .npy array, not HDF5: write it and its targets y (one per row) "
                    f"to HDF5 with h5py, in Python: `f = h5py.File('{tmp_path / 'd'}.h5', 'w'); "
                    f"f['X'] = numpy.load('{path}')")
    else:
        path = write_table(table, tmp_path / f"d.{kind}")
        what = "looks like a CSV table" if kind == "csv" else "is a Parquet table"
        expected = (f"d.{kind} {what}, not HDF5: convert it with "
                    f"`python -m mpigd import {path} --target COLUMN --out {tmp_path / 'd'}.h5`")
    run = mpirun(2, "--data", path, "--quiet", out=str(tmp_path / "run"))
    assert run.returncode == 2, run
    errors = [line for line in (run.stdout + run.stderr).splitlines() if "mpigd: error" in line]
    assert len(errors) == 1 and expected in errors[0], run


# --- memory -------------------------------------------------------------------------------

def _memory_script():
    spec = importlib.util.spec_from_file_location("import_memory", SCRIPTS / "import_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peak_memory_does_not_grow_with_rows(tmp_path):
    """6x the rows, the same peak RSS: the import holds blocks, never the table or X.

    Blocks of 1/8 MiB keep pyarrow's read-ahead (32 blocks, 4 MiB) well below both tables'
    sizes (7 and 42 MiB), so both runs reach the steady state. scripts/import_memory.sh
    measures 10^7 rows at the default block size.
    """
    memory = _memory_script()
    _, floor, _, _ = memory.peak_kib([])
    peaks, sizes = {}, {}
    for rows in (100_000, 600_000):
        source = str(tmp_path / f"t{rows}.csv")
        memory.write_csv(source, rows)
        out = tmp_path / f"t{rows}.h5"
        code, peak, _, err = memory.peak_kib(["import", source, "--target", "y", "--out", out,
                                              "--block-mb", "0.125"], timeout=300)
        assert code == 0, err
        peaks[rows], sizes[rows] = peak / 1024, os.path.getsize(out) / 2**20
        os.remove(source)
    # X, y and source_row grow by ~65 MiB (500000 rows x (14 + 2) x 8 bytes); the peak must not.
    assert sizes[600_000] - sizes[100_000] > 60, sizes
    assert peaks[600_000] < peaks[100_000] + 15, (peaks, floor / 1024)
    assert peaks[600_000] < floor / 1024 + 120, (peaks, floor / 1024)
