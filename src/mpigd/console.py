"""What rank 0 shows on the console: progress while training, and the summary at the end.

Files are written elsewhere (rundir.py, result.py); this module only prints.
"""

import sys
import time

from . import features, metrics
from .placement import notes
from .result import Result
from .timing import PHASES


class Progress:
    """Rank 0's progress: a live line on a terminal, plain lines in batch logs."""

    def __init__(self, max_iters, enabled, stream=sys.stdout, start=0):
        self.max_iters, self.enabled, self.stream, self.start = max_iters, enabled, stream, start
        self.tty = enabled and stream.isatty()
        self.every = max(1, max_iters // 10)
        self.last = time.monotonic()

    def __call__(self, t, rules):
        if not self.enabled or rules is None:
            return
        now = time.monotonic()
        done = bool(rules.reason)
        if self.tty:
            if done or now - self.last > 0.1:
                self.last = now
                width = 30
                filled = int(width * min(t, self.max_iters) / self.max_iters)
                bar = "#" * filled + "." * (width - filled)
                self.stream.write(f"\r  [{bar}] {t}/{self.max_iters}  loss {rules.loss[t]:.6e}"
                                  + ("\n" if done else ""))
                self.stream.flush()
        elif done or t == self.start or t % self.every == 0 or now - self.last > 30:
            self.last = now
            rel = rules.grad_norm[t] / rules.grad_norm[0] if rules.grad_norm[0] else 0.0
            print(f"  iter {t:>6}/{self.max_iters}  loss {rules.loss[t]:.6e}  |g|/|g0| {rel:.3e}",
                  file=self.stream, flush=True)


def summary(result: Result) -> str:
    """The console summary: what ran, how it ended, and where the time went."""
    r, wall = result, result.wall_s
    lines = [
        "",
        f"mpigd {r.version}: {r.ranks} ranks ({r.workers} workers), "
        f"{r.rows} rows x {r.features} features, {r.dtype}",
        f"  stopped: {r.stop_reason} after {r.iterations} iterations "
        f"({r.evaluations} gradient passes), lr {r.lr:.6g}",
        f"  final loss {r.final_loss:.9e}   |g|/|g0| {r.grad_norm_rel:.3e}",
        f"  load {r.load_s:.3f} s   train {wall:.3f} s   {1e3 * r.s_per_iter:.3f} ms/iteration",
        "",
        f"  {'phase':<9} {'mean s':>10} {'max s':>10} {'% wall':>7}",
    ]
    for name in PHASES:
        stats = r.phases[name]
        share = 100 * stats.mean_s / wall if wall > 0 else 0.0
        lines.append(f"  {name:<9} {stats.mean_s:>10.4f} {stats.max_s:>10.4f} {share:>6.1f}%")
    lines.append(f"  imbalance (max/mean compute): {r.imbalance:.3f}")
    lines += [f"  {line}" if line else "" for line in _fit(r)]
    lines += [f"  {line}" for line in _not_converged(r)]
    if r.placement:
        lines += [f"  note: {line}" for line in notes(r.placement, r.ranks)]
    return "\n".join(lines)


def _fit(r: Result) -> list[str]:
    """How well the final w fits (train/holdout/test), how far it is from w*, its largest weights."""
    lines = []
    if r.metrics:
        lines += ["", "fit of the final w (original units):"]
        lines += [f"  {metrics.line(name, r.metrics[name])}" for name in ("train", "holdout", "test")
                  if name in r.metrics]
    if r.reference:
        ref = r.reference
        lines.append(f"exact w* ({ref['method']}, one Reduce of {ref['reduce_bytes']} bytes): "
                     f"|w - w*|/|w*| {ref['final_w_relative_error']:.3e}   "
                     f"L(w) - L(w*) {ref['final_suboptimality']:.3e}")
        if ref["method"] != "cholesky":
            lines.append(f"  note: {ref['note']}")
    if r.weights:
        scale = r.preprocessing.feature_scale if r.preprocessing and r.preprocessing.standardize else None
        lines += [""] + features.largest(r.weights, scale)
    return lines


def _not_converged(r: Result) -> list[str]:
    """What to say when the run stopped at --iters short of --tol (exit 0, but not done)."""
    tol = r.config.get("tol", 0)
    if r.converged or r.stop_reason != "max_iters" or not tol:
        return []
    more = r.more_iterations_estimate
    pace = (f"at the recent rate about {more} more iterations would reach it" if more else
            "|g| has stopped falling")
    return [f"NOT CONVERGED: |g|/|g0| = {r.grad_norm_rel:.3e} after {r.iterations} iterations, "
            f"asked <= {tol:g} (--tol); {pace}.",
            "  try: more --iters" + (f" (e.g. --iters {r.iterations + more})" if more else "")
            + "; --standardize --intercept when features have different scales or means"]


def quiet_summary(result: Result) -> str:
    """The one line of --quiet (and a warning line if the run was oversubscribed)."""
    line = (f"mpigd: {result.stop_reason} after {result.iterations} iterations, "
            f"final loss {result.final_loss:.9e}, {result.wall_s:.3f} s")
    held = {k: v for k, v in (result.metrics or {}).items() if k in ("holdout", "test")}
    line += "".join(f", {name} R² {found['r2']:.6g}" for name, found in held.items()
                    if found.get("r2") is not None)
    over = [n for n in notes(result.placement, result.ranks) if n.startswith("oversubscribed")] \
        if result.placement else []
    warning = _not_converged(result)[:1]
    return "\n".join([line] + [f"mpigd: {w}" for w in warning] + [f"mpigd: note: {n}" for n in over])
