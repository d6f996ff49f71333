"""The bench's generation rows: `generate` by 1 and by 2 ranks, into a new file and over its
own earlier file, as whole commands (mpirun and start-up included).

Both are what users run. A sweep's data directory, `scale` and `generate --out-dir` write
only files that are absent (a new file); `generate --out FILE` run again replaces FILE.
Replacing adds the file system's freeing of the old file's blocks, which one rank does
whatever the number of ranks; the bench times that removal on its own too, so the gap
between the two rows can be read off the table. Rounds alternate 1 and 2 ranks, and which
of them goes first, so a passing load, or the state of the machine's memory, hits both alike.
"""

import os
import statistics
import time

from .. import generate_parallel
from ..launch import run_mpigd

GENERATE_FEATURES = 40


def _remove(path: str) -> float:
    """Remove `path` and its parts directories (a joined file's); return the seconds it took."""
    started = time.perf_counter()
    if os.path.exists(path):
        os.remove(path)
    generate_parallel.remove_stale_parts(path)
    return time.perf_counter() - started


def _generate(ranks: int, path: str, rows: int, timeout: float) -> float:
    """Wall seconds of `mpirun -n ranks python -m mpigd generate ... --out path`."""
    os.sync()  # the dirty pages of earlier runs are not this run's to write
    started = time.perf_counter()
    run_mpigd(ranks, "generate", "--rows", rows, "--features", GENERATE_FEATURES, "--out", path,
              timeout=timeout)
    return time.perf_counter() - started


def generate_case(work: str, rows: int, repeat: int, timeout: float) -> dict:
    """Medians of `repeat` rounds; each round, for 1 and 2 ranks (in turn first): a new
    file, then the same command again over it."""
    seconds = {(ranks, kind): [] for ranks in (1, 2) for kind in ("new", "replace")}
    removals = []
    paths = {ranks: os.path.join(work, f"generate-{ranks}.h5") for ranks in (1, 2)}
    try:
        for round_ in range(repeat):
            # 1 then 2 ranks, then 2 then 1: what one command leaves in memory (on this VM,
            # freed memory returned to the host, slow to touch again) falls on both alike
            for ranks in (1, 2) if round_ % 2 == 0 else (2, 1):
                path = paths[ranks]
                if os.path.exists(path):  # the previous round's file: a new one is wanted
                    removals.append(_remove(path))
                seconds[ranks, "new"].append(_generate(ranks, path, rows, timeout))
                seconds[ranks, "replace"].append(_generate(ranks, path, rows, timeout))
    finally:
        for path in paths.values():
            _remove(path)
    case = {"rows": rows, "features": GENERATE_FEATURES, "bytes": rows * GENERATE_FEATURES * 8,
            "remove_all_s": removals,
            "remove_s": statistics.median(removals) if removals else None}
    for (ranks, kind), times in seconds.items():
        case[f"{kind}_{ranks}_all_s"] = times
        case[f"{kind}_{ranks}_s"] = statistics.median(times)
    for kind in ("new", "replace"):
        case[f"{kind}_speedup"] = case[f"{kind}_1_s"] / case[f"{kind}_2_s"]
    return case
