"""Make a persistent time namespace whose monotonic (and boot) clock runs `offset` s ahead.

    python -m mpigd.cluster.timens PATH OFFSET

util-linux's `unshare --monotonic` takes whole seconds only; this takes any offset (1.5 s):
it unshares a time namespace for its children, writes the offsets to
/proc/self/timens_offsets (allowed until a first process enters the namespace), and
bind-mounts the namespace at PATH, where `nsenter --time=PATH` finds it. Run as its own
process, because after unshare(CLONE_NEWTIME) every later child of the caller would be
born into the new namespace.
"""

import ctypes
import math
import os
import subprocess
import sys

CLONE_NEWTIME = 0x00000080


def offsets_text(offset):
    """/proc/PID/timens_offsets lines: whole seconds (may be negative) and 0 <= ns < 1e9."""
    seconds = math.floor(offset)
    nanoseconds = int(round((offset - seconds) * 1e9))
    if nanoseconds == 1_000_000_000:
        seconds, nanoseconds = seconds + 1, 0
    return f"monotonic {seconds} {nanoseconds}\nboottime {seconds} {nanoseconds}\n"


def main(argv=None):
    path, offset = (argv or sys.argv[1:])[:2]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWTIME) != 0:
        print(f"unshare(CLONE_NEWTIME): {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return 1
    try:
        with open("/proc/self/timens_offsets", "w") as handle:
            handle.write(offsets_text(float(offset)))
    except OSError as exc:
        print(f"cannot set a clock offset of {offset} s: {exc.strerror} (an offset may not make "
              "the host's monotonic clock negative)", file=sys.stderr)
        return 1
    bound = subprocess.run(["mount", "--bind", f"/proc/{os.getpid()}/ns/time_for_children", path],
                           capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    if bound.returncode != 0:
        print(f"mount --bind of the time namespace at {path}: {bound.stderr.strip()}", file=sys.stderr)
    return bound.returncode


if __name__ == "__main__":
    sys.exit(main())
