"""The command line as users meet it: console script, help, usage errors under mpirun."""

import os
import subprocess
import sys

from conftest import mpirun, python_m

import mpigd


def test_console_script_is_python_m_mpigd(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "mpigd")
    assert os.access(script, os.X_OK), "pip install should have created the `mpigd` script"
    proc = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"mpigd {mpigd.__version__}"
    out = tmp_path / "g.h5"
    proc = subprocess.run([script, "generate", "--rows", "10", "--features", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and out.exists(), proc.stderr


def test_help_is_printed_once_under_mpirun():
    top = mpirun(3, "--help")
    assert top.returncode == 0 and top.stdout.count("usage: mpigd") == 1
    assert "train --help" in top.stdout
    run = mpirun(3, "train", "--help")
    assert run.returncode == 0
    assert run.stdout.count("usage: mpigd train") == 1
    for option in ("--data", "--lr", "--dedicated-server", "--straggler", "--resume", "--mode"):
        assert option in run.stdout


def test_generate_usage_error():
    proc = python_m("generate", "--rows", "10")
    assert proc.returncode == 2
    assert proc.stderr.count("mpigd: error") == 1 and "--features" in proc.stderr
