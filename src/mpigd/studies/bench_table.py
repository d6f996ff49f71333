"""The bench's results as one table, with the targets they are judged against."""

from .probe import LABELS

RSS_FACTOR, RSS_EXTRA_MB = 1.15, 150      # peak RSS <= 1.15 x shard + 150 MB
TARGETS = {"kernel_pct": 90.0, "comm_ratio": 1.15, "clock_pct": 1.0, "startup_s": 1.5,
           "speedup_of_ceiling_pct": 90.0, "load_ratio": 1.2,
           "generate_speedup": 1.6}
_ROW = "{:<34} {:>14} {:>14} {:>9} {:>4}"


def _ok(flag):
    return "yes" if flag else "NO"


def _row(*cells):
    return _ROW.format(*cells)


def _kernel_rows(result):
    for c in result["kernels"]:
        what = f"{c['dtype']} d={c['features']} ({c['rows']} rows)"
        for name, label in LABELS.items():
            seconds = c[f"probe_{name}_s"]
            yield _row(f"probe {label} {what}", f"{seconds * 1e3:.1f} ms",
                       f"{c['bytes'] / seconds / 1e9:.1f} GB/s", "floor" if seconds == c["probe_s"] else "", "")
        for name in ("blas", "numba"):
            k = c[name]
            if k is None:
                yield _row(f"  kernel {name}", "not installed", "", "", "")
                continue
            judged = c["features"] >= 100
            yield _row(f"  kernel {name}", f"{k['seconds'] * 1e3:.1f} ms", f"{c['probe_s'] * 1e3:.1f} ms",
                       f"{k['pct_of_floor']:.0f} %",
                       _ok(k["pct_of_floor"] >= TARGETS["kernel_pct"]) if judged else "-")


def _load_rows(result):
    if "load" in result:
        m = result["load"]
        yield _row(f"plain h5py read d={m['features']} ({m['rows']} rows)", f"{m['plain_s'] * 1e3:.1f} ms",
                   "", "", "")
        yield _row("  mpigd load (read+check+checksum)", f"{m['mpigd_s'] * 1e3:.1f} ms",
                   f"{m['plain_s'] * 1e3:.1f} ms", f"{m['ratio']:.2f} x",
                   _ok(m["ratio"] <= TARGETS["load_ratio"]))
        if "scan" in m:  # which scan the load used (numba: one pass with the copy, scan_fused.py)
            yield _row(f"    scan: {m['scan']}", "", "", "", "")


def _comm_rows(result):
    if "comm" in result:
        m = result["comm"]
        bare = f"{m['bare_s'] * 1e6:.1f} us"
        yield _row(f"bare Bcast+Reduce ({m['ranks']} ranks, d={m['features']})", bare, "", "", "")
        yield _row("  trainer bcast+reduce / iter", f"{m['trainer_comm_s'] * 1e6:.1f} us", bare,
                   f"{m['ratio']:.2f} x", _ok(m["ratio"] <= TARGETS["comm_ratio"]))
        yield _row("  trainer + its sync Barrier", f"{m['trainer_comm_sync_s'] * 1e6:.1f} us", bare,
                   f"{m['ratio_with_sync']:.2f} x", "-")
    if "clock_pct" in result:
        yield _row("clocks per iteration (on - off)", f"{result['clock_s'] * 1e9:.0f} ns",
                   f"{result['reference_iteration_s'] * 1e3:.1f} ms", f"{result['clock_pct']:.4f} %",
                   _ok(result["clock_pct"] < TARGETS["clock_pct"]))


def _run_rows(result):
    if "memory" in result:
        for ranks, entries in result["memory"]["runs"].items():
            for e in entries:
                yield _row(f"peak RSS, {ranks}-rank run, rank {e['rank']}", f"{e['peak_rss_mb']:.0f} MB",
                           f"{e['shard_mb']:.0f} MB shard", f"{e['rss_over_shard']:.2f} x",
                           _ok(e["within_limit"]))
    if "startup_s" in result:
        yield _row("start-up, tiny 2-rank 10-iter run", f"{result['startup_s']:.2f} s",
                   f"{TARGETS['startup_s']} s", "", _ok(result["startup_s"] < TARGETS["startup_s"]))
    if "scaling" in result:
        s = result["scaling"]
        yield _row("read bandwidth 1 / 2 processes", f"{s['bandwidth_1_gb_s']:.1f} GB/s",
                   f"{s['bandwidth_2_gb_s']:.1f} GB/s", f"{s['ceiling']:.2f} x", "")
        yield _row("trainer s/iter 1 -> 2 ranks", f"{s['s_per_iter_1'] * 1e3:.1f} ms",
                   f"{s['s_per_iter_2'] * 1e3:.1f} ms", f"{s['speedup']:.2f} x", "")
        yield _row("  compute/iter (slowest rank)", f"{s['compute_s_1'] * 1e3:.1f} ms",
                   f"{s['compute_s_2'] * 1e3:.1f} ms", f"{s['compute_s_1'] / s['compute_s_2']:.2f} x", "")
        yield _row("  sync wait/iter, 2 ranks", f"{s['sync_s_2'] * 1e3:.1f} ms", "", "", "")
        yield _row("  speedup / bandwidth ceiling", f"{s['speedup']:.2f} x", f"{s['ceiling']:.2f} x",
                   f"{s['pct_of_ceiling']:.0f} %",
                   _ok(s["pct_of_ceiling"] >= TARGETS["speedup_of_ceiling_pct"]))


def _generate_rows(result):
    if "generate" in result:
        g = result["generate"]
        yield _row(f"generate {g['rows']}x{g['features']} ({g['bytes'] / 1e9:.2f} GB)", "1 rank", "2 ranks",
                   "", "")
        for kind, what in (("new", "into a new file"), ("replace", "over its earlier file")):
            yield _row(f"  {what}", f"{g[kind + '_1_s']:.2f} s", f"{g[kind + '_2_s']:.2f} s",
                       f"{g[kind + '_speedup']:.2f} x",
                       _ok(g[kind + "_speedup"] >= TARGETS["generate_speedup"]))
        if g["remove_s"] is not None:  # what replacing adds, on one rank whatever their number
            yield _row("  removing a file it replaces", f"{g['remove_s']:.2f} s", "", "", "")


def table(result: dict) -> str:
    """One human-readable table of everything measured."""
    shard = f"shard ~{result['rows_mb']:g} MB, " if result["kernels"] else ""
    lines = [f"mpigd bench: {result['ranks']} rank(s) measuring at once, {result['cpus']} CPUs, "
             f"{shard}medians of {result['repeat']}, "
             f"numba {'installed' if result['numba'] else 'not installed'}", "",
             _row("measurement", "measured", "floor/ref", "ratio", "ok"), "-" * 79]
    lines += [*_kernel_rows(result), *_load_rows(result), *_comm_rows(result), *_run_rows(result),
              *_generate_rows(result)]
    if result["ranks"] > 1:
        lines.append("peak RSS, start-up, scaling, generate: skipped under mpirun (run the bench without "
                     "mpirun)")
    lines.append("")
    lines.append("targets: kernel >= 90 % of the read floor (d >= 100); load <= 1.2 x a plain h5py "
                 "read; trainer comm <= 1.15 x bare; "
                 "clocks < 1 % of an iteration at 1e6 x 100; peak RSS <= 1.15 x shard + 150 MB; "
                 "start-up < 1.5 s; speedup >= 90 % of the bandwidth ceiling; generate by 2 ranks "
                 ">= 1.6 x by 1")
    return "\n".join(lines)
