"""The one line a stalled job prints: who did not arrive, where, for how long, what was saved."""

import os

from . import progress
from .diskfull import resume_command
from .errors import ExitCode
from .rundir import CHECKPOINT


def _who(rank: int, hosts: list[str]) -> str:
    return f"rank {rank} ({hosts[rank]})"


def _on_disk(run_dir: str | None) -> int:
    """The iteration of run_dir's checkpoint as read back from the file, -1 if unreadable.

    Read rather than taken from rank 0's heartbeats: rank 0 may have frozen right after
    writing it, before telling anyone, and reading it proves it intact."""
    if run_dir is None:
        return -1
    try:
        import h5py

        with h5py.File(os.path.join(run_dir, CHECKPOINT), "r") as f:
            f["w"][()]
            return int(f.attrs["iteration"])
    except (OSError, KeyError, ValueError):
        return -1


def _checkpoint(states: dict, run_dir: str | None, size: int) -> str:
    newest = _on_disk(run_dir)
    if newest < 0:  # not visible from this host: what rank 0 last said it wrote
        newest = max(s[progress.CHECKPOINT] for s in states.values())
    if run_dir is None or newest < 0:
        return ("no checkpoint was written (--checkpoint-every K keeps one): the run must start "
                "over")
    return (f"the last checkpoint, {run_dir}/{CHECKPOINT} at iteration {newest}, is intact; "
            f"continue with `{resume_command(run_dir, size)}`")


def _where(state: tuple) -> str:
    stage, step, phase = state[progress.STAGE], state[progress.STEP], state[progress.PHASE]
    if stage in (progress.LOOP, progress.POWER):
        unit = "iteration" if stage == progress.LOOP else "power-iteration pass"
        return f"{progress.PHASE_NAMES[phase]}, {unit} {step}"
    return progress.STAGE_NAMES[stage]


def describe(states: dict, silent: dict, waited: dict, hosts: list[str], limit_s: float,
             option_text: str, run_dir: str | None, size: int, heard_anyone: bool) -> str:
    """The message: `states` rank -> progress.STATE as last known, `silent` rank -> seconds
    unheard, `waited` live rank -> seconds since its last progress."""
    arrived = [r for r in waited if states[r][progress.PHASE] == progress.WAITING
               and states[r][progress.STAGE] in (progress.LOOP, progress.POWER)]
    busy = [r for r in waited if r not in arrived]
    parts = []
    for rank in sorted(silent):
        cause = "frozen, dead or cut off" if heard_anyone else \
            "frozen, dead, or this rank is the one cut off"
        parts.append(f"{_who(rank, hosts)} did not arrive: silent for {silent[rank]:.1f} s "
                     f"({cause})")
    for rank in busy:
        parts.append(f"{_who(rank, hosts)} did not arrive: alive but still "
                     f"{_where(states[rank])} after {waited[rank]:.1f} s")
    if not parts:
        parts.append("every rank is waiting inside a collective: their messages are lost "
                     "(a network fault)")
    if arrived:
        longest = max(waited[r] for r in arrived)
        names = ", ".join(_who(r, hosts) for r in sorted(arrived))
        parts.append(f"{names} waited {longest:.1f} s "
                     f"{progress.PHASE_NAMES[progress.WAITING].split(' (')[0]}")
    stage = max(states[r][progress.STAGE] for r in waited)
    at = max(states[r][progress.STEP] for r in waited)
    where = (f"at iteration {at}" if stage == progress.LOOP else f"at power-iteration pass {at}"
             if stage == progress.POWER else f"while {progress.STAGE_NAMES[stage]}")
    return (f"stalled {where}: no progress for {max(waited.values()):.1f} s (stall limit {limit_s:.3g} s, "
            f"{option_text}): " + "; ".join(parts) + "; " + _checkpoint(states, run_dir, size)
            + f"; every rank is being ended (exit code {int(ExitCode.STALLED)})")
