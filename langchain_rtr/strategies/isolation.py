"""The PAL sandbox's OS layer: which isolation this machine allows, and its command lines.

:func:`isolation_mode` probes once per process for the strongest layer (bubblewrap first; see
:mod:`langchain_rtr.strategies.sandbox` for what each one contains) and announces, once and
loudly, any fallback to a weaker one.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
import warnings
from typing import Literal

__all__ = [
    "NOBODY",
    "IsolationMode",
    "bwrap_prefix",
    "interpreter",
    "isolation_mode",
    "mode_prefix",
]

IsolationMode = Literal["bwrap", "root", "userns", "none"]

NOBODY = 65534
"""The uid and gid programs run as."""


def interpreter() -> str:
    """The real interpreter binary (a venv's ``python`` is a link to it; ``-S`` ignores venvs)."""
    return os.path.realpath(sys.executable)


def _probe(cmd: list[str]) -> bool:
    try:
        done = subprocess.run(
            [*cmd, interpreter(), "-I", "-S", "-c", "pass"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


_LIB_DIRS = ("/lib", "/lib64", "/lib32", "/libx32", "/usr/lib", "/usr/lib64", "/usr/lib32")
_DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")
_WORK_TMPFS_BYTES = 64 * 1024 * 1024


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def bwrap_prefix(work: str | None = None, readable: tuple[str, ...] = ()) -> list[str]:
    """The bubblewrap command line: a filesystem of the interpreter's files and nothing else.

    The program's folder ``work`` (the same path as on the host, so messages match) is a
    directory on a private, size-capped tmpfs ``/tmp``; only ``work/program.py`` comes from
    the host, read-only. ``readable`` adds folders (site-packages) bound read-only.
    """
    root = os.geteuid() == 0
    args = ["bwrap", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
    args += ["--unshare-cgroup-try", "--die-with-parent", "--new-session"]
    if root:  # privileged mode: keep only what the wrapper needs to become nobody for good
        args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        args += ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY)]
    links: list[str] = []
    binds: list[str] = []
    for lib in _LIB_DIRS:
        if os.path.islink(lib):
            links += ["--symlink", os.readlink(lib), lib]
        elif os.path.isdir(lib):
            binds.append(lib)
    prefix = os.path.realpath(sys.base_prefix)
    wanted = [os.path.join(prefix, "lib"), os.path.join(prefix, "lib64"), interpreter()]
    for path in (*wanted, *readable):
        real = os.path.realpath(path)
        if os.path.exists(real) and not any(_under(real, b) for b in binds):
            binds.append(real)
    binds.sort(key=len)
    dirs: set[str] = set()
    for path in binds:
        parent = os.path.dirname(path)
        while parent not in ("/", "") and not any(_under(parent, b) for b in binds):
            dirs.add(parent)
            parent = os.path.dirname(parent)
    # What lives under the host's /tmp (a venv there) is bound after the private /tmp is made,
    # which would hide it otherwise.
    late = [f for f in sorted(dirs, key=len) if _under(f, "/tmp")]
    late_binds = [p for p in binds if _under(p, "/tmp")]
    for folder in sorted(dirs, key=len):  # created world-traversable, whatever the host's mode
        if folder not in late:
            args += ["--perms", "0755", "--dir", folder]
    for path in binds:
        if path not in late_binds:
            args += ["--ro-bind", path, path]
    args += links
    args += ["--proc", "/proc", "--perms", "0755", "--tmpfs", "/dev"]
    for device in _DEVICES:
        args += ["--dev-bind", device, device]
    args += ["--size", str(_WORK_TMPFS_BYTES), "--perms", "1777", "--tmpfs", "/tmp"]
    for folder in late:
        if folder != "/tmp":
            args += ["--perms", "0755", "--dir", folder]
    for path in late_binds:
        args += ["--ro-bind", path, path]
    if work is not None:
        parent = os.path.dirname(work)
        while parent not in ("/", "/tmp", ""):
            args += ["--perms", "0755", "--dir", parent]
            parent = os.path.dirname(parent)
        program = os.path.join(work, "program.py")
        args += ["--perms", "0777", "--dir", work, "--ro-bind", program, program, "--chdir", work]
    return [*args, "--"]


def mode_prefix(mode: IsolationMode) -> list[str]:
    """The command prefix of ``mode`` without a program folder (for probes and the fallbacks)."""
    if mode == "root":
        return [
            "unshare", "--net", "--",
            "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
        ]  # fmt: skip
    if mode == "userns":
        return ["unshare", "--user", "--map-root-user", "--net", "--"]
    if mode == "bwrap":
        return bwrap_prefix()
    return []


_FALLBACK_NOTE = {
    "root": "a network namespace and uid nobody only: the program can read world-readable "
    "host files and see host processes",
    "userns": "a network namespace only, with the caller's own file permissions: the program "
    "can read and write what the caller can",
    "none": "no OS isolation at all: only the resource limits and the in-process audit hook, "
    "which determined native code can evade",
}


@functools.lru_cache(maxsize=1)
def isolation_mode() -> IsolationMode:
    """The strongest OS isolation this machine allows, probed once per process.

    ``"bwrap"`` is the only mode that contains a program at the OS layer alone; any other
    outcome is announced once, loudly (a ``RuntimeWarning`` and an error log record naming the
    layer fallen back to). Install bubblewrap (Debian package ``bubblewrap``) to get it; as a
    non-root user it also needs unprivileged user namespaces. Set
    ``RTR_SANDBOX_ISOLATION`` to ``bwrap``, ``root``, ``userns`` or ``none`` to skip the probe.
    """
    mode = _probe_mode()
    if mode != "bwrap":
        message = (
            f"PAL sandbox: bubblewrap isolation is not available here; falling back to "
            f"isolation mode {mode!r} ({_FALLBACK_NOTE[mode]}). Install bubblewrap "
            f"(apt-get install bubblewrap) to contain programs at the OS layer."
        )
        logging.getLogger(__name__).error(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    return mode


def _probe_mode() -> IsolationMode:
    forced = os.environ.get("RTR_SANDBOX_ISOLATION", "").strip().lower()
    if forced in ("bwrap", "root", "userns", "none"):
        return forced  # type: ignore[return-value]
    if not sys.platform.startswith("linux"):
        return "none"
    if shutil.which("bwrap") is not None and _probe(mode_prefix("bwrap")):
        return "bwrap"
    if shutil.which("unshare") is None:
        return "none"
    root = hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("setpriv") is not None
    if root and _probe(mode_prefix("root")):
        return "root"
    if _probe(mode_prefix("userns")):
        return "userns"
    return "none"
