"""A write that fails for lack of space (or an I/O error): one line that says what to do.

ENOSPC, EDQUOT and EIO are not bugs: the file system is full, over quota or failing. The
write that failed has already been undone (rundir.atomic_write removes its partial file),
so the line says what could not be written, roughly how much space it needs, and what is
still safe on disk: the last checkpoint, which the atomic rename kept whole.
"""

import errno
import os
import re
import shutil

from . import progress
from .errors import ExitCode, MpigdError, world_size

CODES = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
         errno.EIO: "an I/O error (the disk or the file system is failing)"}
# h5py reports the C library's failure as text: "... errno = 28, error message = '...'".
_H5_ERRNO = re.compile(r"errno = (\d+)")


def reason(exc: BaseException) -> str | None:
    """What kind of storage failure `exc` is (a phrase), or None if it is something else."""
    code = getattr(exc, "errno", None)
    if code not in CODES:
        found = _H5_ERRNO.search(str(exc))
        code = int(found.group(1)) if found else None
    return CODES.get(code)


def resume_command(run_dir: str, size: int) -> str:
    """How to continue a run: under Slurm a new job, else mpirun."""
    if "SLURM_JOB_ID" in os.environ:
        return f"sbatch slurm/train.sbatch --resume {run_dir}"
    return f"mpirun -n {size} python -m mpigd --resume {run_dir}"


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def error(exc: BaseException, path: str, partial: str, checkpoint_name: str,
          size: int = 0) -> MpigdError:
    """The MpigdError (exit code DISK) for a storage failure while writing `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    needed = max(_size(partial), _size(path), size)  # what was written, the old file, the text
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        free = 0
    amount = (f"it needs at least {needed / 1024:.0f} KB, {free / 1024:.0f} KB are free there"
              if needed else f"{free / 1024:.0f} KB are free there")
    last = progress.STATE[progress.CHECKPOINT]
    where = os.path.join(directory, checkpoint_name)
    if last >= 0 and os.path.exists(where):
        safe = (f"the previous checkpoint {where} (iteration {last}) is intact; free space and "
                f"continue with `{resume_command(directory, world_size())}`")
    else:
        safe = "nothing was left half-written; free space (or choose another --out) and run again"
    return MpigdError(f"could not write {path}: {reason(exc)} ({amount}); {safe}",
                      exit_code=ExitCode.DISK)
