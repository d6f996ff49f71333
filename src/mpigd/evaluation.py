"""What a run measures besides its training loss: held-out and test rows, and the exact w*.

The trainer calls three things, in order:
  `split_rows`  after loading: the training rows, and the held-out (--holdout) and test
                (--test-data) rows of this rank;
  `Watch.build` after preprocessing: those rows in training units, and w* (--reference exact);
  `Watch`       after every iteration: every --eval-every K iterations one Bcast of w and one
                Reduce of the metric sums of the held-out sets; with w* rank 0 also keeps a
                copy of w_t (reference.py measures the distances after the loop). Its time is
                kept out of the phases and out of wall_s (`seconds`); the other ranks wait for
                rank 0's evaluation in their next Bcast, so with --eval-every the bcast phase of
                those iterations includes it (K large keeps that small);
  `Watch.final` at the end: RMSE, MAE, R² of training, held-out and test rows, one Reduce.
"""

import time

import numpy as np
from mpi4py import MPI

from . import holdout, metrics
from .holdout import Rows


def split_rows(comm, config, X, y, lo: int, rows_total: int, path: str) -> "tuple[Rows, dict]":
    """Collective: (training Rows, {"holdout": Rows, "test": Rows} as configured)."""
    train, held = holdout.split(comm, X, y, lo, config.holdout, config.holdout_seed) \
        if config.holdout else (Rows(X, y, rows_total), None)
    sets = {} if held is None else {"holdout": held}
    if config.test_data:
        sets["test"] = holdout.read_test_rows(comm, config.test_data, config, path, X.shape[1], X.dtype)
    return train, sets


def to_training_units(rows: Rows, transform) -> None:
    """The preprocessing of the training rows (standardize.prepare), applied to other rows."""
    rows.X -= transform.mean.astype(rows.X.dtype)
    rows.X /= transform.scale.astype(rows.X.dtype)
    rows.y -= rows.y.dtype.type(transform.y_mean)


class Watch:
    """Per-iteration evaluation on held-out rows and distance to w*; the final metrics."""

    def __init__(self, comm, sets: dict, every: int, reference, length: int):
        self.comm, self.root = comm, comm.rank == 0
        self.sets, self.every, self.reference = sets, every, reference
        self.columns = {f"{name}_loss": np.full(length, np.nan) for name in sets} if every else {}
        self.seconds = 0.0  # rank 0's time in here during the loop: taken out of wall_s
        self.encoding = None  # the import's encoding of the data (annotate), for weights.h5
        self._sums = np.zeros(metrics.SUMS * len(sets))
        self._total = np.zeros_like(self._sums) if self.root else None

    @classmethod
    def build(cls, comm, config, train: Rows, sets: dict, transform, resume,
              features: int) -> "Watch":
        """Collective: the held-out sets in training units, w* if asked, the start recorded."""
        from . import reference

        for rows in sets.values():
            to_training_units(rows, transform)
        ref = None
        if config.reference == "exact":
            normal = reference.normal_equations(comm, train.X, train.y)
            if comm.rank == 0:
                ref = reference.Reference(normal, reference.solve(normal.A, normal.b), config.iters + 1)
        watch = cls(comm, sets, config.eval_every, ref, config.iters + 1)
        start, w0 = (resume.iteration, resume.w) if resume is not None else (0, np.zeros(features))
        watch._record(start, w0, evaluate=bool(watch.columns))
        watch.seconds = 0.0
        return watch

    def __call__(self, t: int, w: np.ndarray, rules) -> None:
        """After iteration t: rank 0's w is w_t+1, or w_t if the loop is stopping."""
        started = time.perf_counter()
        index = t + 1 if rules.outcome is None else t  # rules decide on rank 0
        self._record(index, w, evaluate=bool(self.columns) and (t + 1) % self.every == 0)
        self.seconds += time.perf_counter() - started

    def _record(self, index, w, evaluate):
        if self.reference is not None:
            self.reference.track(index, w)
        if evaluate:
            total = self._reduce(w, with_train=None)
            if self.root and index < len(next(iter(self.columns.values()))):
                for i, name in enumerate(self.sets):
                    self.columns[f"{name}_loss"][index] = metrics.loss_of(total[metrics.SUMS * i:])

    def _reduce(self, w, with_train):
        """Collective: rank 0's w to all, every set's sums (and the training rows') reduced."""
        wbuf = np.array(w, dtype=np.float64)
        self.comm.Bcast(wbuf, root=0)
        parts = [metrics.sums(rows.X, rows.y, wbuf) for rows in self.sets.values()]
        if with_train is not None:
            parts.append(metrics.sums(with_train.X, with_train.y, wbuf))
        local = np.concatenate(parts) if parts else np.zeros(0)
        total = np.zeros_like(local) if self.root else None
        self.comm.Reduce(local, total, op=MPI.SUM, root=0)
        return total

    def final(self, w: np.ndarray, train: Rows, last: int) -> "dict | None":
        """Collective: {"train": ..., "holdout": ..., "test": ...} metrics on rank 0 (None elsewhere)."""
        started = time.perf_counter()
        if self.reference is not None:
            self.reference.measure_kept()
        total = self._reduce(w, with_train=train)
        if not self.root:
            return None
        names = list(self.sets) + ["train"]
        found = {name: metrics.from_sums(total[metrics.SUMS * i : metrics.SUMS * (i + 1)])
                 for i, name in enumerate(names)}
        for name in self.sets:
            if self.columns and last < len(self.columns[f"{name}_loss"]):
                self.columns[f"{name}_loss"][last] = found[name]["loss"]
        found["seconds"] = time.perf_counter() - started
        found["eval_seconds_in_loop"] = self.seconds
        return found

    def history_columns(self, length: int) -> dict:
        """Extra history.csv columns (NaN = not evaluated at that iteration)."""
        columns = {name: values[:length] for name, values in self.columns.items()}
        if self.reference is not None:
            columns["w_relative_error"] = self.reference.relative_error[:length]
            columns["suboptimality"] = self.reference.suboptimality[:length]
        return columns


def annotate(result, config, prepared, trajectory, found: dict) -> None:
    """Rank 0: named weights, metrics and the reference in `result` (and the encoding to keep)."""
    from . import features

    names, prepared.watch.encoding = features.of_file(prepared.path, config.x_dataset,
                                                      prepared.info.features)
    transform, intercept = prepared.transform, config.intercept
    w, b = transform.original_weights(trajectory.w)
    result.weights = features.named(names, w, b if intercept else None)
    result.metrics = {**found, "holdout_fraction": config.holdout, "holdout_seed": config.holdout_seed,
                      "test_data": config.test_data, "eval_every": config.eval_every,
                      "how": "RMSE, MAE, R² of the final w; one Reduce of 5 sums per set of rows"}
    reference = prepared.watch.reference
    if reference is not None:
        summary = reference.summary(trajectory.w, result.final_loss)
        w_star, b_star = transform.original_weights(reference.w_star)
        summary["w_star"] = features.named(names, w_star, b_star if intercept else None)
        result.reference = summary
