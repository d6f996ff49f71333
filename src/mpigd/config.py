"""One dataclass for a training run: defaults here, then a TOML file, then the command line.

Validation turns every bad value into an MpigdError that names the option and says
what would be accepted. Nothing from a file or the command line is ever evaluated.
"""

import math
import os
import sys
from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import Literal, NamedTuple

from .errors import MpigdError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class Mode(str, Enum):
    """Who updates w: the server (Bcast + Reduce through rank 0) or every rank (Allreduce)."""

    SERVER = "server"
    ALLREDUCE = "allreduce"


class Straggler(NamedTuple):
    """`--straggler RANK:SECONDS`: sleep added to RANK's compute every iteration."""

    rank: int
    seconds: float

    def __str__(self) -> str:
        # "1:0" stays "1:0" (result.json and checkpoints keep the option as it was typed)
        short = format(self.seconds, "g")
        return f"{self.rank}:{short if float(short) == self.seconds else repr(self.seconds)}"


KERNELS = ("auto", "blas", "numba")
PROGRESS = ("auto", "bar", "lines", "none")
KERNEL_VARIABLE = "MPIGD_KERNEL"  # the kernel's default when --kernel is not given


@dataclass
class TrainConfig:
    data: str | None = None          # HDF5 input; None = the embedded synthetic default
    x_dataset: str = "X"
    y_dataset: str = "y"
    iters: int = 1000                # maximum number of updates
    lr: float | Literal["auto"] = "auto"  # step size, or "auto" = 1 / lambda_max(X^T X)
    tol: float = 1e-6                # stop when ||g_t|| <= tol * ||g_0||; 0 = never
    out: str | None = None           # run directory; None = runs/<timestamp>
    force: bool = False              # allow replacing a previous result in `out`
    dedicated_server: bool = False   # rank 0 holds no rows, only serves and updates
    dtype: str = "auto"              # compute precision: auto (the file's), float64, float32
    standardize: bool = False
    intercept: bool = False
    threads: int | None = None       # BLAS threads per rank; None = 1 when ranks > 1
    straggler: Straggler | None = None  # sleep added to one rank's compute ("RANK:SECONDS")
    jitter: float = 0.0              # mean of a random sleep added to every rank's compute
    seed: int = 0                    # start vector of the power iteration for --lr auto
    quiet: bool = False
    mode: Mode = Mode.SERVER         # server (Bcast/Reduce) or allreduce (peer to peer)
    trace: bool = False              # write trace.json (Chrome trace events)
    checkpoint_every: int = 0        # write checkpoint.h5 every K iterations; 0 = never
    kernel: str | None = None        # auto, blas or numba; None = $MPIGD_KERNEL, else auto
    # methods (issue 14; mpigd.methods): gd is the lecture's loop, unchanged
    method: str = "gd"               # gd, momentum, cg or sgd
    batch_size: int | None = None    # sgd: rows per step in total; None = all rows
    epochs: int | None = None        # sgd: passes over the data; None = --iters steps
    lr_decay: float = 0.0            # sgd: lr_t = lr / (1 + lr_decay * epochs done)
    full_loss_every: int | None = None  # sgd: steps between full-data losses; None = one epoch
    # Real data (issue 13): held-out rows, a test file, the exact answer for reference.
    holdout: float = 0.0             # fraction of rows kept out of training (holdout.py's rule)
    holdout_seed: int = 0            # seed of that rule
    test_data: str | None = None     # another HDF5 file with the same features, evaluated
    eval_every: int = 0              # held-out/test loss every K iterations; 0 = at the end only
    reference: str | None = None     # "exact": w* by distributed normal equations
    stall_timeout: float | None = None  # watchdog limit (s); None = default rule, 0 = off
    progress: str = "auto"           # bar, lines, none; auto: console.progress_style

    def to_dict(self) -> dict:
        """Plain JSON/HDF5-attribute values, as the options are spelled on the command line."""
        settings = asdict(self)
        settings["mode"] = Mode(self.mode).value
        settings["straggler"] = None if self.straggler is None else str(self.straggler)
        return settings


FIELDS = {f.name: f for f in fields(TrainConfig)}
_BOOLEAN = {"force", "dedicated_server", "standardize", "intercept", "quiet", "trace"}
_INTEGER = {"iters", "threads", "seed", "checkpoint_every"}
_FLOAT = {"tol", "jitter", "stall_timeout"}
_STRING = {"data", "x_dataset", "y_dataset", "out", "dtype", "straggler", "mode", "kernel", "progress"}
_FLOAT |= {"holdout"}  # the real-data options (issue 13)
_INTEGER |= {"holdout_seed", "eval_every"}
_STRING |= {"test_data", "reference"}
# What a resumed run may change: everything else would make it a different computation.
# StopRules and the phase clocks hold (iters x phases) arrays on every rank: a typo like
# --iters 1e12 must be refused, not met with a MemoryError. Longer runs chain --resume.
MAX_ITERS = 10**7
RESUME_OVERRIDABLE = {"iters", "tol", "quiet", "threads", "straggler", "jitter", "trace",
                      "checkpoint_every", "mode", "dedicated_server", "force", "kernel",
                      "stall_timeout", "progress"}

# --- methods (issue 14) ---
METHODS = ("gd", "momentum", "cg", "sgd")
_INTEGER |= {"batch_size", "epochs", "full_loss_every"}
_FLOAT |= {"lr_decay"}
_STRING |= {"method"}


def _validate_method(config: "TrainConfig") -> None:
    # --seed also draws sgd's batches; from the command line it arrived as text (a crash before)
    config.seed = _number(config.seed, "--seed", int)
    if config.method not in METHODS:
        raise MpigdError(f"--method must be one of {', '.join(METHODS)}, got {config.method!r}")
    for name in ("batch_size", "epochs", "full_loss_every"):
        value = getattr(config, name)
        if value is not None:
            value = _number(value, _option(name), int)
            if value < 1:
                raise MpigdError(f"{_option(name)} must be >= 1, got {value}")
            setattr(config, name, value)
    config.lr_decay = _number(config.lr_decay, "--lr-decay")
    if config.lr_decay < 0:
        raise MpigdError(f"--lr-decay must be >= 0 (0 = constant lr), got {config.lr_decay}")
    sgd_only = [_option(n) for n in ("batch_size", "epochs", "full_loss_every")
                if getattr(config, n) is not None] + (["--lr-decay"] if config.lr_decay else [])
    if config.method == "sgd" and config.holdout:
        raise MpigdError("--method sgd does not take --holdout: its batches are numbered by the "
                         "file's rows; keep the evaluation rows in another file (--test-data)")
    if sgd_only and config.method != "sgd":
        raise MpigdError(f"{', '.join(sgd_only)} only apply to --method sgd (got --method "
                         f"{config.method})")


def _option(name):
    return "--" + name.replace("_", "-")


def load_file(path: str) -> dict:
    """Settings from a TOML file; keys are option names (dashes or underscores)."""
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except OSError as exc:
        raise MpigdError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise MpigdError(f"config file {path} is not valid TOML: {exc}") from None
    settings, unknown, wrong = {}, [], []
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            unknown.append(f"'{key}'")
            continue
        try:
            settings[name] = _typed(name, value, f"key '{key}'")
        except MpigdError as exc:
            wrong.append(str(exc))
    # Every mistake of the file at once: fixing one and rerunning to meet the next is tedious.
    problems = []
    if unknown:
        known = ", ".join(sorted(FIELDS))
        problems.append(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                        f"(known keys: {known})")
    problems += wrong
    if problems:
        raise MpigdError(f"config file {path}: " + "; ".join(problems))
    return settings


def _typed(name, value, where):
    """Check a TOML value's type against the option's; TOML already parsed the literal."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = (
        (name in _BOOLEAN and isinstance(value, bool))
        or (name in _INTEGER and number and isinstance(value, int))
        or (name in _FLOAT and number)
        or (name in _STRING and isinstance(value, str))
        or (name == "lr" and (value == "auto" or number))
    )
    if not ok:
        wanted = ("true/false" if name in _BOOLEAN else "an integer" if name in _INTEGER
                  else "a number" if name in _FLOAT else '"auto" or a number' if name == "lr"
                  else "a string")
        raise MpigdError(f"{where} must be {wanted}, got {value!r}")
    return value


def build(file_settings: dict, cli_settings: dict) -> TrainConfig:
    """Defaults < file < command line, then validated."""
    merged = TrainConfig().to_dict()
    merged.update(file_settings)
    merged.update(cli_settings)
    return validate(TrainConfig(**merged))


def for_resume(saved: dict, cli_settings: dict) -> TrainConfig:
    """The config of a resumed run: the checkpoint's, with the few allowed overrides."""
    before = validate(TrainConfig(**{name: saved[name] for name in FIELDS if name in saved}))
    after = validate(TrainConfig(**{**before.to_dict(), **cli_settings}))
    changed = [name for name in FIELDS
               if name not in RESUME_OVERRIDABLE and getattr(after, name) != getattr(before, name)]
    if changed:
        names = ", ".join(_option(n) for n in changed)
        allowed = ", ".join(_option(n) for n in sorted(RESUME_OVERRIDABLE))
        raise MpigdError(f"--resume continues the run as it was configured; {names} cannot "
                         f"change (allowed: {allowed})")
    return after


def _number(text, option, cast=float, hint=""):
    try:
        value = cast(text)
    except (TypeError, ValueError):
        what = "a whole number" if cast is int else "a number"
        raise MpigdError(f"{option} must be {what}{hint}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise MpigdError(f"{option} must be finite, got {text!r}")
    return value


def parse_straggler(text: "str | Straggler") -> Straggler:
    """'RANK:SECONDS' -> Straggler(rank, seconds)."""
    if isinstance(text, Straggler):
        return text
    rank, sep, seconds = str(text).partition(":")
    if not sep or not rank.strip().isdigit():
        raise MpigdError(f"--straggler must look like RANK:SECONDS, e.g. 1:0.05; got {text!r}")
    delay = _number(seconds, "--straggler SECONDS")
    if delay < 0:
        raise MpigdError(f"--straggler SECONDS must be >= 0, got {seconds!r}")
    return Straggler(int(rank), delay)


def kernel_setting(requested: str | None) -> str:
    """--kernel, else $MPIGD_KERNEL, else auto: the one place the variable is read."""
    source = "--kernel"
    if requested is None:
        requested, source = os.environ.get(KERNEL_VARIABLE) or "auto", KERNEL_VARIABLE
    kernel = requested.strip().lower()
    if kernel not in KERNELS:
        raise MpigdError(f"{source} must be one of {', '.join(KERNELS)}; got {requested!r}")
    return kernel


def validate(config: TrainConfig) -> TrainConfig:
    if config.lr != "auto":
        config.lr = _number(config.lr, "--lr", hint=" (or auto)")
        if config.lr <= 0:
            raise MpigdError(f"--lr must be > 0 (or 'auto'), got {config.lr}")
    config.iters = _number(config.iters, "--iters", int)
    if config.iters < 1:
        raise MpigdError(f"--iters must be >= 1, got {config.iters}")
    if config.iters > MAX_ITERS:
        raise MpigdError(f"--iters must be <= {MAX_ITERS} (the history is kept in memory), got "
                         f"{config.iters}; a problem that needs more updates is badly conditioned: "
                         "try --standardize, and let --tol stop the run")
    config.tol = _number(config.tol, "--tol")
    if config.tol < 0:
        raise MpigdError(f"--tol must be >= 0 (0 runs all --iters), got {config.tol}")
    if config.threads is not None:
        config.threads = _number(config.threads, "--threads", int)
        if config.threads < 1:
            raise MpigdError(f"--threads must be >= 1, got {config.threads}")
    config.checkpoint_every = _number(config.checkpoint_every, "--checkpoint-every", int)
    if config.checkpoint_every < 0:
        raise MpigdError(f"--checkpoint-every must be >= 0 (0 = never), got {config.checkpoint_every}")
    if config.mode not in tuple(Mode):
        raise MpigdError(f"--mode must be server or allreduce, got {config.mode!r}")
    config.mode = Mode(config.mode)
    if config.dedicated_server and config.mode is Mode.ALLREDUCE:
        raise MpigdError("--dedicated-server needs --mode server: with allreduce there is no server")
    if config.dtype not in ("auto", "float64", "float32"):
        raise MpigdError(f"--dtype must be auto, float64 or float32, got {config.dtype!r}")
    if config.progress not in PROGRESS:
        raise MpigdError(f"--progress must be one of {', '.join(PROGRESS)}, got {config.progress!r}")
    if config.straggler is not None:
        config.straggler = parse_straggler(config.straggler)
    config.seed = _number(config.seed, "--seed", int)  # `--seed 1` arrived as a string: crashed
    config.jitter = _number(config.jitter, "--jitter")
    if config.jitter < 0:
        raise MpigdError(f"--jitter must be >= 0 seconds (0 = none), got {config.jitter}")
    config.kernel = kernel_setting(config.kernel)
    _validate_method(config)
    _validate_evaluation(config)
    if config.stall_timeout is not None:
        config.stall_timeout = _number(config.stall_timeout, "--stall-timeout")
        if not config.stall_timeout >= 0:
            raise MpigdError(f"--stall-timeout must be >= 0 seconds (0 = no watchdog), got "
                             f"{config.stall_timeout}")
    for name in ("x_dataset", "y_dataset"):
        if not getattr(config, name):
            raise MpigdError(f"{_option(name)} must not be empty")
    return config


def _validate_evaluation(config: TrainConfig) -> None:
    """--holdout, --holdout-seed, --test-data, --eval-every, --reference (issue 13)."""
    fraction = _number(config.holdout, "--holdout", hint=" (a fraction like 0.2)")
    if not 0 <= fraction < 1:
        raise MpigdError(f"--holdout must be a fraction in [0, 1) of the rows to keep out of "
                         f"training, e.g. 0.2; got {config.holdout}")
    config.holdout = fraction
    config.holdout_seed = _number(config.holdout_seed, "--holdout-seed", int)
    if config.holdout_seed < 0:
        raise MpigdError(f"--holdout-seed must be >= 0, got {config.holdout_seed}")
    config.eval_every = _number(config.eval_every, "--eval-every", int)
    if config.eval_every < 0:
        raise MpigdError(f"--eval-every must be >= 0 (0 = at the end only), got {config.eval_every}")
    if config.eval_every and not (config.holdout or config.test_data):
        raise MpigdError("--eval-every evaluates held-out rows: give --holdout FRACTION or "
                         "--test-data FILE.h5 too")
    if config.reference not in (None, "", "none", "exact"):
        raise MpigdError(f"--reference must be exact (or none), got {config.reference!r}")
    config.reference = "exact" if config.reference == "exact" else None
    config.test_data = config.test_data or None
