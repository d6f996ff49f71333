"""Running the system tools the cluster is built with (ip, tc, iptables, ebtables, unshare).

Every call has a timeout and turns a failure into one MpigdError that names the command
and quotes its stderr, so a broken step says what broke instead of a traceback.
"""

import os
import shlex
import shutil
import subprocess

from ..errors import MpigdError

TOOL_TIMEOUT = 30.0  # seconds; a system tool that takes longer is stuck

# Tool -> Debian package that provides it (for the "install it with" hint).
TOOLS = {
    "ip": "iproute2", "tc": "iproute2", "iptables": "iptables", "ebtables": "iptables",
    "nsenter": "util-linux", "unshare": "util-linux", "mount": "mount", "umount": "mount",
}


def quoted(argv):
    """A command line as a user would type it (for messages)."""
    return " ".join(shlex.quote(str(a)) for a in argv)


def run(argv, timeout=TOOL_TIMEOUT, check=True, input=None):
    """Run a tool to completion; raise MpigdError (with its stderr) if it fails and `check`."""
    argv = [str(a) for a in argv]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              input=input, stdin=None if input is not None else subprocess.DEVNULL)
    except FileNotFoundError:
        raise MpigdError(f"{argv[0]} not found: {_install_hint([argv[0]])}") from None
    except subprocess.TimeoutExpired:
        raise MpigdError(f"`{quoted(argv)}` did not finish within {timeout:g} s") from None
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip() or "no output"
        raise MpigdError(f"`{quoted(argv)}` failed (exit code {proc.returncode}): {detail}")
    return proc


def in_netns(netns, argv):
    """argv run inside the named network namespace (nsenter, not `ip netns exec`: no new /sys)."""
    return ["nsenter", f"--net=/run/netns/{netns}", "--", *argv]


def _install_hint(missing):
    packages = sorted({TOOLS.get(name, name) for name in missing})
    return ("install it with `apt-get install " + " ".join(packages) + "` (Debian/Ubuntu) or "
            "your distribution's equivalent")


def require_root_and_tools(tools=tuple(TOOLS)):
    """Refuse, with what to do, unless this process is root and has every tool it needs."""
    if os.geteuid() != 0:
        raise MpigdError("the emulated cluster needs root: it creates network namespaces, a "
                         "bridge, traffic shaping and iptables rules; run it as root, e.g. "
                         "`sudo $(command -v python) -m mpigd.cluster ...`")
    missing = [name for name in tools if shutil.which(name) is None]
    if missing:
        raise MpigdError(f"the emulated cluster needs {', '.join(missing)}: {_install_hint(missing)}")
