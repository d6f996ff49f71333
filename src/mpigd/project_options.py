"""The grammar of `python -m mpigd project` (its work is mpigd.studies.project)."""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "project", help="predict time/iteration, speedup, efficiency at rank counts past the machine",
        description="From a measured run or sweep and a network (comm_model.json, or --latency and "
        "--bandwidth), predict strong and weak scaling with its terms (compute / m, update, message "
        "steps, the wait for the slowest of m ranks); names where the speedup peaks.")
    p.add_argument("baseline", metavar="DIR", help="a run directory (result.json) or a sweep directory")
    p.add_argument("--comm-model", metavar="FILE.json", help="fitted comm_model.json [DIR/comm_model.json]")
    p.add_argument("--latency", metavar="TIME", help="per message step, e.g. 1.5us or 50us")
    p.add_argument("--bandwidth", metavar="RATE", help="per link, e.g. 12GB/s or 1.2GB/s")
    p.add_argument("--ranks", metavar="LIST", help="rank counts [1,2,4,...,4096]")
    p.add_argument("--kind", choices=("strong", "weak", "both"), default="both", help="[both]")
    p.add_argument("--noise", choices=("relative", "absolute"), default="relative", help="compute "
                   "deviations scale with the compute per rank, or stay in seconds (--jitter) [relative]")
    p.add_argument("--out", metavar="DIR", help="for projection.json/.txt/.png [RUN/projection]")
    p.add_argument("--plots", action="store_true", help="also write projection.png (needs matplotlib)")
