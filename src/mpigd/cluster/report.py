"""Tables for people: `cluster status` and `cluster measure`."""

from .shaping import format_rate


def _table(header, rows):
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *rows]]
    return "\n".join(lines)


def _ms(value):
    return f"{value:g} ms" if value else "-"


def format_status(report, only=None):
    """The status dict of Cluster.status() as a table (one host if `only`)."""
    rows = []
    for host in report["hosts"]:
        if only and host["name"] != only:
            continue
        if host["delayer_alive"]:
            delayer = f"pid {host['delayer_pid']} alive" + (
                f", {host['delayer_dropped']} dropped" if host["delayer_dropped"] else "")
        else:
            delayer = "DEAD"
        rows.append([host["name"], host["address"], f"{host['clock_offset_s']:+g} s",
                     _ms(host["in_delay_ms"]), _ms(host["out_delay_ms"]),
                     format_rate(host["in_rate_bps"]), format_rate(host["out_rate_bps"]),
                     "PARTITIONED" if host["partitioned"] else "-", delayer])
    header = ["host", "address", "clock", "in delay", "out delay", "in rate", "out rate", "fault", "delayer"]
    lines = [f"cluster {report['name']} ({report['phase']}, since {report['created']}): "
             f"{len(report['hosts'])} hosts in {report['directory']}",
             _table(header, rows),
             "one-way delay A->B = A's out delay + B's in delay. The network is real; the CPUs are "
             f"not: every host shares this machine's {report['cpus']} CPUs."]
    if report["problems"]:
        lines.append("PROBLEMS (`python -m mpigd.cluster repair` re-applies the record, `down` removes it):")
        lines += [f"  - {p}" for p in report["problems"]]
    return "\n".join(lines)


def format_measure(result):
    """The dict of measure.measure() as a table."""
    rows = []
    for row in result["rows"]:
        asked = "-" if row["asked"] is None else f"{row['asked']:.3f}"
        error = "-" if row["error"] is None else f"{row['error']:+.3f}"
        rows.append([row["what"], row["unit"], asked, f"{row['measured']:.3f}", error, row["note"]])
    title = (f"{result['source']} <-> {result['target']}: one-way delay {result['one_way_ms']:g} ms "
             f"{result['source']}->{result['target']}, rate {format_rate(result['rate_bps'])}")
    return title + "\n" + _table(["measurement", "unit", "asked", "measured", "error", "note"], rows)
