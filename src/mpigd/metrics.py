"""How well a fit predicts: RMSE, MAE and R² from five sums that any partition of rows adds up.

Per rank: n, Σr², Σ|r|, Σ(y−c), Σ(y−c)² with r = prediction − y and c a shift every rank
shares (the training mean of y when known): the sums of all ranks travel in one buffer
Reduce, and rank 0 turns them into the metrics. The shift keeps Σ(y−c)² − (Σ(y−c))²/n,
the total sum of squares, free of cancellation when y has a large mean.
"""

import math

import numpy as np

SUMS = 5  # numbers per set of rows
_BLOCK_ROWS = 1 << 15


def sums(X: np.ndarray, y: np.ndarray, w: np.ndarray, offset: float = 0.0,
         shift: float = 0.0) -> np.ndarray:
    """[n, Σr², Σ|r|, Σ(y−shift), Σ(y−shift)²] for predictions X w + offset (float64)."""
    out = np.zeros(SUMS)
    out[0] = len(X)
    w = w.astype(X.dtype, copy=False)
    for lo in range(0, len(X), _BLOCK_ROWS):  # blocks: scratch stays small whatever the shard
        yb = y[lo : lo + _BLOCK_ROWS].astype(np.float64)
        r = (X[lo : lo + _BLOCK_ROWS] @ w).astype(np.float64) + offset - yb
        out[1] += float(r @ r)
        out[2] += float(np.abs(r).sum())
        yb -= shift
        out[3] += float(yb.sum())
        out[4] += float(yb @ yb)
    return out


def loss_of(total: np.ndarray) -> float:
    """½ Σr²: the training objective on these rows."""
    return 0.5 * float(total[1])


def from_sums(total: np.ndarray) -> dict:
    """{"rows", "rmse", "mae", "r2", "loss"} from reduced sums (r2 is None for constant y)."""
    n = float(total[0])
    if n == 0:
        return {"rows": 0, "rmse": None, "mae": None, "r2": None, "loss": 0.0}
    spread = float(total[4]) - float(total[3]) ** 2 / n
    return {"rows": int(n), "rmse": math.sqrt(float(total[1]) / n), "mae": float(total[2]) / n,
            "r2": 1.0 - float(total[1]) / spread if spread > 0 else None, "loss": loss_of(total)}


def line(name: str, found: dict) -> str:
    """One console line: `holdout   rows 88   RMSE 54.1  MAE 44.0  R² 0.512`."""
    def show(value):
        return "n/a" if value is None else f"{value:.6g}"

    return (f"{name:<9} rows {found['rows']:>8}   RMSE {show(found['rmse'])}   "
            f"MAE {show(found['mae'])}   R² {show(found['r2'])}")
