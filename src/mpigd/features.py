"""Feature names: read from an imported file, carried to weights.h5, result.json and the summary.

A file written by `import` names its columns (`feature_names`, after one-hot expansion)
and records its encoding; any other file gets x0, x1, ... so every weight has a name.
"""

import numpy as np

INTERCEPT = "(intercept)"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def names_in(h5file, x_dataset: str = "X") -> "list[str] | None":
    """The feature names an open HDF5 file records for X (file or dataset attribute), or None."""
    for holder in (h5file.get(x_dataset), h5file):
        if holder is None:
            continue
        found = holder.attrs.get("feature_names")
        if found is not None:
            return [_text(v) for v in np.atleast_1d(found)]
    return None


def default_names(count: int) -> "list[str]":
    return [f"x{j}" for j in range(count)]


def of_file(path: str, x_dataset: str, count: int) -> "tuple[list[str], str | None]":
    """(a name per feature, the import's encoding JSON or None) for the data file `path`."""
    import h5py

    if path.startswith("synthetic:"):  # in-place data (--data synthetic:RxD): no file, no names
        return default_names(count), None
    with h5py.File(path, "r") as h5file:
        names = names_in(h5file, x_dataset)
        encoding = h5file.attrs.get("encoding")
    if names is None or len(names) != count:
        names = default_names(count)
    return names, None if encoding is None else _text(encoding)


def named(names: "list[str]", w: np.ndarray, intercept: "float | None") -> "list[dict]":
    """result.json's `weights`: one {"name", "weight"} per feature, the intercept last."""
    rows = [{"name": n, "weight": float(v)} for n, v in zip(names, w)]
    if intercept is not None:
        rows.append({"name": INTERCEPT, "weight": float(intercept)})
    return rows


def largest(weights: "list[dict]", scale: "list[float] | None", count: int = 5,
            where: str = "all in result.json") -> "list[str]":
    """Console lines for the `count` largest weights; with --standardize ranked by |w_j| s_j.

    In original units a weight's size depends on its feature's unit; times the feature's
    standard deviation it is the effect of a typical change, which compares across features.
    """
    features = [row for row in weights if row["name"] != INTERCEPT]
    size = [abs(r["weight"]) * (scale[j] if scale else 1.0) for j, r in enumerate(features)]
    order = sorted(range(len(features)), key=lambda j: -size[j])[:count]
    width = max([len(features[j]["name"]) for j in order] + [len(INTERCEPT)])
    how = "|w| x std of the feature" if scale else "|w|"
    lines = [f"largest weights (original units, ranked by {how}; {where}):"]
    lines += [f"  {features[j]['name']:<{width}} {features[j]['weight']:>+14.6g}" for j in order]
    lines += [f"  {r['name']:<{width}} {r['weight']:>+14.6g}" for r in weights if r["name"] == INTERCEPT]
    return lines
