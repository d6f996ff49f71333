"""A scaling report (scaling.build_report) as files and text: scaling.csv, .json, .txt."""

import csv
import io
import json
import os

from .. import rundir
from .plots import write_all
from .scaling import SERIES_KEY

# --- writing and printing ------------------------------------------------------------------

_CSV_SERIES = SERIES_KEY
_CSV_POINT = ("ranks", "workers", "rows", "repeats", "s_per_iter", "s_per_iter_min", "s_per_iter_max",
              "speedup", "efficiency", "compute_s", "compute_slowest_s", "compute_max_s", "comm_s",
              "bcast_s", "reduce_s", "sync_s", "sync_max_s", "update_s", "imbalance", "imbalance_iter",
              "predicted_s", "predicted_comm_s", "predicted_speedup", "error", "model_source",
              "oversubscribed", "ranks_per_host", "cpus_per_host", "emulated_cluster", "load_s", "hosts",
              "run_dirs")


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, list):
        return ";".join(map(str, value))
    if isinstance(value, float):
        return repr(value)
    return value


def write_report(report: dict, out: str) -> str:
    """scaling.csv, scaling.json and scaling.txt (the table) in `out`; returns the table."""
    os.makedirs(out, exist_ok=True)
    table = format_report(report)
    rows = [[_csv_value(s[k]) for k in _CSV_SERIES] + [_csv_value(p.get(k)) for k in _CSV_POINT]
            for s in report["series"] for p in s["points"]]
    csv_name, json_name, text_name = rundir.REPORT_FILES
    rundir.write_text(os.path.join(out, csv_name), _csv_text(rows))
    rundir.write_text(os.path.join(out, json_name), json.dumps(report, indent=2) + "\n")
    rundir.write_text(os.path.join(out, text_name), table + "\n")
    return table


def _csv_text(rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_CSV_SERIES + _CSV_POINT)
    writer.writerows(rows)
    return buffer.getvalue()


def _ms(seconds):
    return "" if seconds is None else f"{1e3 * seconds:.3f}"


def _cache_bytes() -> int | None:
    """The largest CPU cache of this machine (Linux sysfs), or None."""
    sizes = []
    base = "/sys/devices/system/cpu/cpu0/cache"
    for entry in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        try:
            with open(os.path.join(base, entry, "size")) as handle:
                text = handle.read().strip()
        except OSError:
            continue
        if text[:-1].isdigit() and text[-1] in "KM":
            sizes.append(int(text[:-1]) << (10 if text[-1] == "K" else 20))
    return max(sizes, default=None)


def _above_ideal(point, series):
    """Why a speedup can beat m: a shard that now fits in cache, or noise; say which fits."""
    if point["ranks"] == series["baseline_ranks"] or point["efficiency"] <= 1.02:
        return ""
    itemsize = 4 if series["dtype"] == "float32" else 8
    shard = point["rows"] / point["workers"] * series["features"] * itemsize
    cache = _cache_bytes()
    spread = (point["s_per_iter_max"] - point["s_per_iter_min"]) / point["s_per_iter"]
    why = (f"each rank's {shard / 2**20:.1f} MB shard fits in the {cache / 2**20:.0f} MB cache"
           if cache and shard <= cache else
           f"repeats spread {100 * spread:.0f} %: noise?" if spread > 0.04 else
           f"each rank's shard is {shard / 2**20:.1f} MB: more cache per rank?")
    return f"above ideal: {why}"


def _note(point, series=None):
    hosts = len(point["hosts"])
    where = (f"{hosts} emulated hosts, one machine's CPUs" if point.get("emulated_cluster")
             else f"{hosts} hosts" if hosts > 1 else "")
    if point["oversubscribed"]:
        ranks = point["ranks"] if point.get("emulated_cluster") else point["ranks_per_host"]
        what = f"oversubscribed ({ranks} ranks > {point['cpus_per_host']} CPUs)"
    elif point["oversubscribed"] is None:
        what = "host CPUs unknown"
    else:
        what = ""
    above = _above_ideal(point, series) if series else ""
    return "; ".join(part for part in (where, what, above) if part)


def _straggler_rank(points):
    if all(p["straggler_rank"] == p["ranks"] - 1 for p in points):
        return "the last rank"
    return "rank " + ", ".join(sorted({str(p["straggler_rank"]) for p in points}))


def format_series(s: dict) -> str:
    delayed = s["straggle_s"] > 0
    points = s["points"]
    lines = [
        f"{s['kind']} scaling, {s['mode']} mode: {s['problem']} x {s['features']} features "
        f"{s['dtype']}{', dedicated server' if s['dedicated_server'] else ''}"
        + (f"; straggler: +{1e3 * s['straggle_s']:g} ms per iteration on {_straggler_rank(points)}"
           if delayed else "")
        + f"; median of {max(p['repeats'] for p in points)} repeat(s); baseline {s['baseline_ranks']} "
        f"rank{'s' if s['baseline_ranks'] > 1 else ''}",
    ]
    header = (f"{'ranks':>5} {'ms/iter':>9} {'speedup':>7} {'effic':>6} {'compute':>8} {'slowest':>8} "
              f"{'comm':>7} {'sync':>7} {'update':>7} {'imbal':>6} {'predicted':>9} {'error':>7}  note")
    lines += [header, "-" * len(header)]
    for p in points:
        predicted = _ms(p.get("predicted_s"))
        if predicted and p.get("model_source") == "tree":
            predicted = "~" + predicted
        error = "" if p.get("error") is None else f"{100 * p['error']:+.1f}%"
        lines.append(
            f"{p['ranks']:>5} {_ms(p['s_per_iter']):>9} {p['speedup']:>7.3f} {p['efficiency']:>6.3f} "
            f"{_ms(p['compute_s']):>8} {_ms(p['compute_slowest_s']):>8} {_ms(p['comm_s']):>7} "
            f"{_ms(p['sync_s']):>7} {_ms(p['update_s']):>7} {p['imbalance_iter']:>6.3f} {predicted:>9} "
            f"{error:>7}  {_note(p, s)}".rstrip())
    return "\n".join(lines)


def format_straggler(effect: dict) -> str:
    verdict = ("the wall follows the slowest rank" if effect["follows_slowest"]
               else "the wall does NOT follow the slowest rank here")
    delays = ", ".join(f"{1e3 * d:g}" for d in effect["delays_s"])
    walls = ", ".join(f"{1e3 * t:.2f}" for t in effect["s_per_iter"])
    return (f"straggler study, {effect['mode']} mode, {effect['ranks']} ranks: delay {delays} ms -> "
            f"{walls} ms/iter\n  per ms of delay: wall/iter {effect['wall_slope']:+.2f} ms, slowest "
            f"rank's compute {effect['slowest_slope']:+.2f} ms, mean compute "
            f"{effect['mean_compute_slope']:+.2f} ms, longest wait (sync) {effect['wait_slope']:+.2f} ms: "
            f"{verdict}")


LEGEND = """\
times in ms per iteration (training loop only; median of the repeats):
  compute  mean over ranks of the local gradient     slowest  the slowest rank's compute, per iteration
  comm     Bcast + Reduce + waits for messages in flight, mean over ranks
  sync     the wait for the slowest rank's longer compute (a straggler), mean over ranks
  update   the server's w update                     imbal    slowest / compute (1 = perfectly even)
speedup = T_b / T_m (weak: m/b * T_b / T_m), efficiency = speedup * b / m, b = the series' smallest rank count
predicted = T_compute(b) * rows-per-worker ratio * imbal(m) + T_update(b) + T_comm(m) [+ straggler delay],
  T_comm = Bcast + Barrier + Reduce (allreduce mode: Barrier + Allreduce) of d+1 doubles from
  comm_model.json (~: rank count not benchmarked, scaled by ceil(log2 p)); error = predicted / measured - 1
oversubscribed: more ranks than CPUs on a host: such rows check correctness, not speed;
  emulated hosts (mpigd cluster) are namespaces of one machine: real network, shared CPUs"""


def format_report(report: dict) -> str:
    blocks = [format_series(s) for s in report["series"]]
    blocks += [format_straggler(e) for e in report["stragglers"]]
    if report["model"] is None:
        blocks.append("no comm_model.json: no prediction (run `mpirun -n P python -m mpigd bench-comm "
                      "--out DIR/comm_model.json` per rank count P, or `scale` with --comm-model auto)")
    blocks.append(LEGEND)
    return "\n\n".join(blocks)


def publish(report: dict, out: str, plots: bool, say, who: str) -> list[str]:
    """Write the report's files (and the plots if asked), print the table and what was written."""
    say(write_report(report, out))
    written = [os.path.join(out, name) for name in rundir.REPORT_FILES]
    if plots:
        written += write_all(report, out)
    say(f"\nmpigd {who}: wrote " + ", ".join(written))
    return written
