"""Plots: real PNGs from a small real sweep, without a display."""

import os
import subprocess
import sys

import pytest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SWEEP_FIGURES = {"speedup.png", "efficiency.png", "breakdown.png", "straggler.png", "loss.png"}


def mpigd(*args, timeout=240):
    # No display, and a backend that would need one: the plots must not care.
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["MPLBACKEND"] = "TkAgg"
    return subprocess.run([sys.executable, "-m", "mpigd", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env=env)


def assert_real_png(path, min_bytes=10_000):
    import matplotlib.image

    assert path.exists(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > min_bytes
    pixels = matplotlib.image.imread(str(path))
    assert pixels.shape[0] > 300 and pixels.shape[1] > 500 and pixels[..., :3].std() > 0.05


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("plots") / "sweep"
    proc = mpigd("scale", "--ranks", "1,2", "--rows", 2000, "--features", 4, "--iters", 5, "--repeat", 1,
                 "--straggler-delays", "0,0.005", "--out", out, "--plots")
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_scale_with_plots_writes_every_figure(sweep):
    out, proc = sweep
    for name in SWEEP_FIGURES:
        assert_real_png(out / name)
        assert str(out / name) in proc.stdout


def test_plot_command_on_a_sweep(sweep, tmp_path):
    out, _ = sweep
    proc = mpigd("plot", out, "--out", tmp_path / "figures")
    assert proc.returncode == 0, proc.stderr
    assert set(os.listdir(tmp_path / "figures")) == SWEEP_FIGURES
    for name in SWEEP_FIGURES:
        assert_real_png(tmp_path / "figures" / name)


def test_plot_command_on_one_run_draws_its_loss(sweep, tmp_path):
    out, _ = sweep
    proc = mpigd("plot", out / "p002-delay0ms-r1", "--out", tmp_path / "one")
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(tmp_path / "one") == ["loss.png"]
    assert_real_png(tmp_path / "one" / "loss.png")


def test_scale_report_with_plots(sweep, tmp_path):
    out, _ = sweep
    proc = mpigd("scale-report", out, "--out", tmp_path / "report", "--plots")
    assert proc.returncode == 0, proc.stderr
    written = set(os.listdir(tmp_path / "report"))
    assert SWEEP_FIGURES | {"scaling.csv", "scaling.json", "scaling.txt"} == written


@pytest.mark.parametrize("command", ["scale", "scale-report"])
def test_plots_without_matplotlib_fail_before_any_work(tmp_path, command):
    """`scale --plots` used to run the whole sweep and only then say that matplotlib is missing."""
    out = tmp_path / "s"
    args = (["scale", "--ranks", "1", "--rows", 100, "--features", 2, "--iters", 2, "--repeat", 1,
             "--comm-model", "none", "--out", out, "--plots"] if command == "scale"
            else ["scale-report", str(tmp_path), "--plots"])
    code = ("import sys; sys.modules['matplotlib'] = None; from mpigd.__main__ import main; "
            "main(sys.argv[1:])")
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and "plots need matplotlib" in proc.stderr, proc.stderr
    assert proc.stderr.count("mpigd: error") == 1
    assert not out.exists()  # nothing was run, no sweep directory made
