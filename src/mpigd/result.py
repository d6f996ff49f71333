"""result.json as a typed object: what a completed run reports, and reading it back.

The trainer builds a `Result` on rank 0 and saves it as the last file of the run; the
studies (scaling, plots, bench) load it with `Result.load` instead of guessing at string
keys. The JSON keys are the field names, nested objects are dataclasses too, and keys
that a later version adds are ignored by an older reader, so files stay compatible in
both directions. `README.md` ("Outputs") documents every field.
"""

import dataclasses
import json
import typing
import types
from dataclasses import dataclass

import numpy as np

from . import rundir
from .errors import MpigdError


@dataclass
class PhaseSummary:
    """One phase's total seconds per rank, summarized over ranks."""

    mean_s: float
    min_s: float
    max_s: float


@dataclass
class RankEntry:
    """What one rank did: its rows, its load and memory, its phase totals."""

    rank: int
    host: str
    rows: int
    row_range: list[int]
    load_s: float
    peak_rss_mb: float
    cpus: int              # of the rank's host: tells oversubscription
    compute_s: float
    bcast_s: float
    reduce_s: float
    update_s: float
    sync_s: float
    comm_wait_s: float = 0.0   # absent in results of mpigd < 0.2


@dataclass
class DataSource:
    path: str
    x_dataset: str
    y_dataset: str
    x_dtype: str
    y_dtype: str


@dataclass
class KernelInfo:
    name: str              # blas or numba: the same on every rank
    setup_s: float         # rank 0's import/compile/cache-load time, paid before the loop


@dataclass
class CheckpointStats:
    every: int
    count: int = 0
    seconds: float = 0.0


@dataclass
class Preprocessing:
    intercept: bool
    standardize: bool
    feature_mean: list[float]
    feature_scale: list[float]
    y_mean: float


@dataclass
class Result:
    version: str
    config: dict
    mode: str
    ranks: int
    workers: int
    rows: int
    features: int
    dtype: str
    data: DataSource
    run_dir: str
    iterations: int        # updates
    evaluations: int       # gradient passes = iterations + 1
    stop_reason: str
    converged: bool        # |g|/|g0| reached --tol (False at max_iters, and with --tol 0)
    final_loss: float
    initial_loss: float
    grad_norm_rel: float
    lr: float
    lr_mode: str
    lambda_max: float | None
    power_iterations: int | None
    wall_s: float
    s_per_iter: float
    load_s: float
    phases: dict[str, PhaseSummary]
    per_rank: list[RankEntry]
    imbalance: float
    threads: dict
    slurm: dict | None
    mpi: dict
    timing: dict
    started: str
    resumed_from: int | None = None
    kernel: KernelInfo | None = None
    checkpoints: CheckpointStats | None = None
    preprocessing: Preprocessing | None = None
    clocks: dict | None = None   # offsets of every rank's clock to rank 0's (clocks.py)
    placement: dict | None = None  # hosts, ranks per host, oversubscription (placement.py)
    more_iterations_estimate: int | None = None  # not converged: to reach --tol at the recent rate
    communication: dict | None = None  # rounds, bytes per rank, to tolerance (methods.rounds)
    weights: list[dict] | None = None   # [{"name", "weight"}] in original units, intercept last
    metrics: dict | None = None         # RMSE/MAE/R² of train, holdout, test rows (evaluation.py)
    reference: dict | None = None       # --reference exact: w*, its loss, the distance to it

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str) -> str:
        """Write result.json atomically (numpy scalars and arrays become JSON numbers/lists)."""
        return rundir.write_json(path, self.to_dict(), default=_jsonable)

    def phase_per_iteration(self, phase: str, stat: str = "mean_s") -> float:
        """A phase's total (mean/min/max over ranks) divided by the gradient passes."""
        summary = self.phases.get(phase)
        return getattr(summary, stat) / self.evaluations if summary else 0.0

    @classmethod
    def from_dict(cls, data: dict) -> "Result":
        return _build(cls, data)

    @classmethod
    def load(cls, path: str) -> "Result":
        """Read a result.json; a missing, partial or foreign file is one clear error."""
        try:
            with open(path) as handle:
                return cls.from_dict(json.load(handle))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise MpigdError(f"{path} is not a complete mpigd result ({type(exc).__name__}: "
                             f"{exc}); remove it or the run directory") from None


def _build(cls, data):
    """A dataclass from a dict: nested dataclasses too; KeyError names a missing field."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__} must be a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            values[f.name] = _convert(hints[f.name], data[f.name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise KeyError(f"{cls.__name__}.{f.name}")
    return cls(**values)


def _convert(hint, value):
    if value is None:
        return None
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value)
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        return [_build(args[0], v) for v in value]
    if origin is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
        return {k: _build(args[1], v) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType) and len(args) == 1 \
            and dataclasses.is_dataclass(args[0]):
        return _build(args[0], value)
    return value


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")

