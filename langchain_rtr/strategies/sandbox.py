"""Run model-written Python (PAL) in a contained child process.

Layers, outermost first:

1. **OS isolation** (chosen once per process, see :func:`isolation_mode`), strongest first:
   - ``bwrap``: bubblewrap gives the program its own mount, PID, IPC, UTS and network
     namespaces. Its filesystem holds only the interpreter and the system libraries it links
     against (read-only, ``nosuid``), a minimal ``/dev`` (null, zero, random, urandom), its own
     ``/proc``, and a private ``/tmp`` whose only entry is the program's writable folder: no
     ``/home``, no host ``/tmp`` or ``/dev/shm``, no host process visible or signallable, no
     network (not even loopback). It runs as ``nobody``: as root, bubblewrap keeps only
     ``CAP_SETUID``/``CAP_SETGID`` and the wrapper drops to ``nobody`` for good (so the host
     sees ``nobody`` and ``RLIMIT_NPROC`` binds); otherwise a user namespace maps ``nobody`` to
     the caller.
   - ``root``: ``unshare -n`` (a network namespace with no interfaces) and ``setpriv`` to
     ``nobody`` with no groups; host files stay readable.
   - ``userns``: unprivileged ``unshare --user --map-root-user -n`` (no network; the caller's
     own file permissions).
   - ``none``: a plain child process; only layers 2-3 apply.
   Anything weaker than ``bwrap`` is announced once per process with a ``RuntimeWarning`` (and
   a log record) naming the layer in use.
2. **Resource limits**, set by the wrapper before any model code runs (after the uid drop, since
   ``RLIMIT_NPROC=0`` set earlier would make the ``execve`` after ``setuid`` fail):
   ``RLIMIT_AS`` (memory), ``RLIMIT_CPU``, ``RLIMIT_NPROC=0`` (no fork, no threads),
   ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE``, ``RLIMIT_CORE=0``. Plus ``python -I -S -B`` (no user
   site, no site-packages, no environment variables), ``env`` holding only locale and thread
   caps, a fresh temporary working folder removed afterwards, a new session so the whole
   process group is killed on timeout, and output read with a byte cap.
3. **An audit hook** (``sys.addaudithook``) inside the child: blocks ``socket.*``,
   ``subprocess.Popen``, ``os.system``/``exec*``/``spawn*``/``fork``/``posix_spawn``/``kill``,
   ``ctypes`` (import and every ``ctypes.*`` event), sub-interpreters, ``resource.setrlimit``,
   ``gc`` object walks, reads outside the temp folder and the Python library, and every write,
   delete, rename, chmod or mkdir outside the temp folder. It is a second layer, not a boundary
   on its own: CPython's audit hooks can be evaded by determined native code, which layers 1-2
   are there to contain.

Every failure comes back as a :class:`SandboxResult` with ``ok=False`` and a readable ``error``;
nothing here raises on a hostile or broken program.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass

from langchain_rtr.strategies.isolation import (
    NOBODY,
    IsolationMode,
    bwrap_prefix,
    interpreter,
    isolation_mode,
    mode_prefix,
)

__all__ = [
    "PythonSandbox",
    "SandboxResult",
    "arun_program",
    "extract_program",
    "isolation_mode",
    "run_program",
]

_STDERR_CAP = 16_000
_ERROR_MARK = "__RTR_SANDBOX_ERROR__ "

# The child's entry point. argv: [-c, config-json]. Everything the hook needs is bound into
# closures before the model's code runs, and no reference to the hook stays reachable.
_WRAPPER = r"""
import sys, json
def _rtr_setup():
    import posix, resource, builtins
    cfg = json.loads(sys.argv[1])
    tmp = cfg["tmp"]
    if cfg["drop"]:
        posix.setgroups([])
        posix.setgid(cfg["drop"])
        posix.setuid(cfg["drop"])
    for name, value in (("RLIMIT_AS", cfg["mem"]), ("RLIMIT_CPU", cfg["cpu"]),
                        ("RLIMIT_FSIZE", cfg["fsize"]), ("RLIMIT_NOFILE", 64),
                        ("RLIMIT_CORE", 0), ("RLIMIT_NPROC", 0)):
        if hasattr(resource, name):
            lim = getattr(resource, name)
            hard = value + 1 if name == "RLIMIT_CPU" else value
            try:
                resource.setrlimit(lim, (value, hard))
            except (ValueError, OSError):
                pass
    sys.path[:] = list(sys.path) + list(cfg["extra_path"])
    read_roots = tuple(p.rstrip("/") for p in [tmp] + list(sys.path) if p)
    write_roots = (tmp.rstrip("/"),)
    _lstat, _readlink, _getcwd = posix.lstat, posix.readlink, posix.getcwd
    S_IFMT, S_IFLNK = 0o170000, 0o120000
    def resolve(path):
        if type(path) is bytes:
            path = path.decode("utf-8", "surrogateescape")
        if type(path) is not str:
            raise PermissionError("sandbox: only str/bytes paths are allowed")
        if not path.startswith("/"):
            path = _getcwd() + "/" + path
        parts, seen = [], 0
        todo = path.split("/")[::-1]
        while todo:
            part = todo.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if parts:
                    parts.pop()
                continue
            candidate = "/" + "/".join(parts + [part])
            try:
                st = _lstat(candidate)
                is_link = (st.st_mode & S_IFMT) == S_IFLNK
            except OSError:
                is_link = False
            if is_link:
                seen += 1
                if seen > 40:
                    raise PermissionError("sandbox: too many symlinks")
                target = _readlink(candidate)
                if target.startswith("/"):
                    parts = []
                todo.extend(target.split("/")[::-1])
            else:
                parts.append(part)
        return "/" + "/".join(parts)
    def under(path, roots):
        return any(path == r or path.startswith(r + "/") for r in roots)
    def check(path, write, event):
        if type(path) is int:
            return
        real = resolve(path)
        if real in ("/dev/null",):
            return
        if not under(real, write_roots if write else read_roots):
            what = "write" if write else "read"
            raise PermissionError(
                f"sandbox: {what} outside the sandbox is blocked ({event} {real})")
    deny_prefix = ("socket.", "ctypes.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn",
                   "os.fork", "os.forkpty", "os.system", "os.kill", "os.killpg", "os.startfile",
                   "os.symlink", "os.link", "os.setxattr",
                   "os.removexattr", "pty.", "resource.setrlimit", "resource.prlimit",
                   "gc.get_objects", "gc.get_referrers", "gc.get_referents",
                   "sys._current_frames", "sys.setprofile", "sys.settrace",
                   "cpython.PyInterpreterState_New",
                   "_posixsubprocess.", "winreg.", "msvcrt.", "_winapi.", "mmap.")
    deny_modules = frozenset(("_posixsubprocess", "_xxsubinterpreters", "_interpreters",
                              "_testcapi", "_testinternalcapi", "_testmultiphase",
                              "_xxinterpchannels", "faulthandler")
                             + (() if cfg["packages"] else ("ctypes", "_ctypes")))
    packages = bool(cfg["packages"])
    write_events = frozenset(("os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
                              "os.truncate", "os.utime", "shutil.rmtree", "shutil.copyfile",
                              "shutil.copymode", "shutil.copystat", "shutil.copytree",
                              "shutil.move", "shutil.chown", "os.chflags", "os.lchflags"))
    read_events = frozenset(("os.listdir", "os.scandir", "os.chdir", "glob.glob",
                             "os.walk", "os.fwalk"))
    code_attrs = frozenset(("__code__", "__globals__", "__closure__"))
    O_WRITE = posix.O_WRONLY | posix.O_RDWR | posix.O_CREAT | posix.O_TRUNC | posix.O_APPEND
    def hook(event, args):
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            write = (type(mode) is str and any(c in mode for c in "wax+")) or (
                type(flags) is int and flags & O_WRITE != 0)
            check(path, write, event)
            return
        if event == "import":
            name = args[0] if args else ""
            if type(name) is str and name.split(".")[0] in deny_modules:
                raise ImportError(f"sandbox: importing {name} is blocked")
            return
        if packages and event == "ctypes.dlopen" and args and args[0] is None:
            return  # sympy imports ctypes, which opens the running process; nothing else
        if event.startswith(deny_prefix):
            raise PermissionError(f"sandbox: {event} is blocked")
        if event in write_events:
            for p in args[:2] if event.startswith(("shutil.copy", "shutil.move")) else args[:1]:
                check(p, True, event)
            if event in ("os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown") and \
                    len(args) > 2 and args[-1] is not None and event != "os.chown":
                raise PermissionError(f"sandbox: {event} with dir_fd is blocked")
            return
        if event == "os.rename":
            if len(args) > 3 and (args[2] is not None or args[3] is not None):
                raise PermissionError("sandbox: os.rename with dir_fd is blocked")
            check(args[0], True, event)
            check(args[1], True, event)
            return
        if event in read_events:
            if args and args[0] is not None:
                check(args[0], False, event)
            return
        if event == "object.__setattr__" and len(args) > 1 and args[1] in code_attrs:
            raise PermissionError("sandbox: replacing function code is blocked")
    if cfg["hook"]:
        # subprocess must stay importable (sympy imports it) while process creation is not:
        # Popen is refused by the hook, and its C back end is replaced before anyone sees it.
        import _posixsubprocess
        def _no_fork_exec(*args, **kwargs):
            raise PermissionError("sandbox: creating processes is blocked")
        _posixsubprocess.fork_exec = _no_fork_exec
        sys.addaudithook(hook)
    return cfg
_rtr_cfg = _rtr_setup()
del _rtr_setup
def _rtr_main(cfg):
    import builtins, io, traceback, types
    class _Counting(io.TextIOBase):
        def __init__(self, inner):
            self._inner = inner
            self.count = 0
        def write(self, text):
            self.count += len(text)
            return self._inner.write(text)
        def flush(self):
            self._inner.flush()
        def writable(self):
            return True
    out = _Counting(sys.stdout)
    sys.stdout = out
    module = types.ModuleType("__main__")
    module.__dict__["__builtins__"] = builtins
    module.__file__ = cfg["tmp"] + "/program.py"
    sys.modules["__main__"] = module
    try:
        with open(cfg["tmp"] + "/program.py", encoding="utf-8") as fh:
            source = fh.read()
        code = compile(source, "program.py", "exec")
        exec(code, module.__dict__)
        solution = module.__dict__.get("solution")
        if out.count == 0 and callable(solution):
            result = solution()
            if result is not None:
                print(result)
    except SystemExit:
        raise
    except BaseException as exc:
        try:
            traceback.print_exc(limit=4)
        except BaseException:
            pass
        message = str(exc).replace("\n", " ")[:500]
        sys.stderr.write("\n%s%s: %s\n" % (cfg["mark"], type(exc).__name__, message))
        sys.stderr.flush()
        out.flush()
        sys.exit(1)
    out.flush()
_rtr_main(_rtr_cfg)
"""


@dataclass(frozen=True)
class SandboxResult:
    """The outcome of one sandboxed run.

    Attributes:
        ok: The program finished normally (exit status 0, within every limit).
        output: What it printed to stdout (at most ``max_output_bytes``, decoded as UTF-8).
        error: Why it failed, in one readable line; None when ``ok``.
        duration_s: Wall-clock seconds from start to the end of the child.
        exit_code: The child's exit status (negative: killed by that signal); None if not run.
        isolation: The OS layer that was used ("bwrap", "root", "userns" or "none").
        stderr: The tail of what it wrote to stderr (for debugging).
    """

    ok: bool
    output: str
    error: str | None
    duration_s: float
    exit_code: int | None = None
    isolation: str = "none"
    stderr: str = ""


_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+\-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def extract_program(text: str) -> str:
    """The Python program in a model output.

    Fenced ``python``/``py`` blocks are joined in order (models often split definitions and a
    call); failing that, the longest fenced block of any language; failing that, the whole text.
    """
    blocks = [(lang.lower(), body) for lang, body in _FENCE_RE.findall(text)]
    python = [body for lang, body in blocks if lang in ("python", "py", "python3")]
    if python:
        return "\n\n".join(b.rstrip() for b in python) + "\n"
    untagged = [body for lang, body in blocks if lang in ("", "code")]
    if untagged:
        return str(max(untagged, key=len))
    return text


def _describe_failure(code: int | None, stderr: str, timeout_s: float, memory_mb: int) -> str:
    marked = [ln for ln in stderr.splitlines() if ln.startswith(_ERROR_MARK)]
    if marked:
        detail = marked[-1][len(_ERROR_MARK) :].strip()
        if detail.startswith("MemoryError"):
            return f"program ran out of memory (limit {memory_mb} MB): {detail}"
        return f"program raised {detail}"
    if code is not None and code < 0:
        sig = -code
        if sig == getattr(signal, "SIGXCPU", -1):
            return f"program exceeded its CPU time limit ({timeout_s:g}s)"
        if sig == getattr(signal, "SIGXFSZ", -1):
            return "program wrote a file larger than the sandbox allows"
        if sig == signal.SIGKILL:
            return "program was killed (CPU or memory limit)"
        if sig == signal.SIGSEGV:
            return "program crashed (segmentation fault)"
        try:
            return f"program was killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"program was killed by signal {sig}"
    last = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    tail = last[-1][:300] if last else "no message"
    if "MemoryError" in stderr:
        return f"program ran out of memory (limit {memory_mb} MB)"
    return f"program exited with status {code}: {tail}"


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        with contextlib.suppress(OSError):
            proc.kill()


def run_program(
    code: str,
    *,
    timeout_s: float = 5,
    memory_mb: int = 512,
    max_output_bytes: int = 64_000,
    site_packages: bool = False,
    audit_hook: bool = True,
) -> SandboxResult:
    """Run ``code`` in the sandbox; the result is what it prints, or what ``solution()`` returns.

    ``solution()`` is called (and its return value printed) only when the program defines it
    and printed nothing itself.

    Args:
        code: Python source (not a model output: see :func:`extract_program`).
        timeout_s: Wall-clock limit; the whole process group is killed when it passes.
        memory_mb: Address-space limit of the child.
        max_output_bytes: Stdout cap; past it the child is killed and the run fails.
        site_packages: Let the program import the installed packages (sympy, numpy) that this
            interpreter sees; the standard library only when False. Packages need ``ctypes``
            importable, so in this mode importing it is allowed but every use of it (loading a
            library, looking up or calling a C function, touching raw memory) is blocked.
        audit_hook: Install the in-process audit hook (switch off only to test the OS layer).

    Returns:
        A :class:`SandboxResult`; never raises.
    """
    started = time.monotonic()
    mode: IsolationMode = "none"
    tmp: str | None = None
    try:
        if not isinstance(code, str):
            return SandboxResult(False, "", f"program must be str, got {type(code).__name__}", 0.0)
        mode = isolation_mode()
        tmp = tempfile.mkdtemp(prefix="rtr-pal-")
        tmp = os.path.realpath(tmp)
        with open(os.path.join(tmp, "program.py"), "w", encoding="utf-8") as fh:
            fh.write(code)
        if mode == "root":
            os.chown(tmp, NOBODY, NOBODY)
            os.chown(os.path.join(tmp, "program.py"), NOBODY, NOBODY)
        extra_path: list[str] = []
        if site_packages:
            paths = sysconfig.get_paths()
            extra_path = sorted({os.path.realpath(paths[key]) for key in ("purelib", "platlib")})
        config = {
            "tmp": tmp,
            "mem": int(memory_mb) * 1024 * 1024,
            "cpu": max(1, int(timeout_s + 0.999)) + 1,
            "fsize": 16 * 1024 * 1024,
            "extra_path": extra_path,
            "packages": bool(site_packages),
            "hook": bool(audit_hook),
            "drop": NOBODY if mode == "bwrap" and os.geteuid() == 0 else 0,
            "mark": _ERROR_MARK,
        }
        env = {
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": tmp,
            "TMPDIR": tmp,
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        if mode == "bwrap":
            prefix, python = bwrap_prefix(tmp, tuple(extra_path)), interpreter()
        else:
            prefix, python = mode_prefix(mode), sys.executable
        cmd = [*prefix, python, "-I", "-S", "-B", "-X", "utf8", "-c", _WRAPPER, json.dumps(config)]
        return _supervise(cmd, env, tmp, mode, timeout_s, memory_mb, max_output_bytes, started)
    except Exception as exc:  # noqa: BLE001 - the caller must get a result, not a crash
        return SandboxResult(
            False,
            "",
            f"sandbox could not run the program: {exc!r}",
            time.monotonic() - started,
            isolation=mode,
        )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _supervise(
    cmd: list[str],
    env: dict[str, str],
    tmp: str,
    mode: IsolationMode,
    timeout_s: float,
    memory_mb: int,
    max_output_bytes: int,
    started: float,
) -> SandboxResult:
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp,
        env=env,
        start_new_session=True,
        close_fds=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out = bytearray()
    err = bytearray()
    timed_out = overflow = False
    deadline = started + timeout_s
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ, "out")
            sel.register(proc.stderr, selectors.EVENT_READ, "err")
            open_streams = 2
            while open_streams:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                for key, _ in sel.select(remaining):
                    chunk = os.read(key.fd, 65_536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        open_streams -= 1
                    elif key.data == "out":
                        out += chunk
                        if len(out) > max_output_bytes:
                            overflow = True
                    elif len(err) < _STDERR_CAP:
                        err += chunk[: _STDERR_CAP - len(err)]
                if overflow:
                    break
        if not (timed_out or overflow):
            try:
                proc.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
    finally:
        _kill_group(proc)  # also any stray children, before the leader is reaped
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
    duration = time.monotonic() - started
    output = bytes(out[:max_output_bytes]).decode("utf-8", errors="replace")
    stderr = bytes(err).decode("utf-8", errors="replace")
    if overflow:
        error = f"program printed more than {max_output_bytes} bytes; it was stopped"
        return SandboxResult(False, output, error, duration, proc.returncode, mode, stderr)
    if timed_out:
        error = f"program timed out after {timeout_s:g}s"
        return SandboxResult(False, output, error, duration, proc.returncode, mode, stderr)
    if proc.returncode != 0:
        error = _describe_failure(proc.returncode, stderr, timeout_s, memory_mb)
        return SandboxResult(False, output, error, duration, proc.returncode, mode, stderr)
    return SandboxResult(True, output, None, duration, 0, mode, stderr)


async def arun_program(
    code: str,
    *,
    timeout_s: float = 5,
    memory_mb: int = 512,
    max_output_bytes: int = 64_000,
    site_packages: bool = False,
    audit_hook: bool = True,
) -> SandboxResult:
    """:func:`run_program` in a worker thread, so the event loop keeps running."""
    return await asyncio.to_thread(
        functools.partial(
            run_program,
            code,
            timeout_s=timeout_s,
            memory_mb=memory_mb,
            max_output_bytes=max_output_bytes,
            site_packages=site_packages,
            audit_hook=audit_hook,
        )
    )


@dataclass(frozen=True)
class PythonSandbox:
    """A :class:`~langchain_rtr.strategies.base.ProgramRunner` for PAL: model output -> result."""

    timeout_s: float = 5
    memory_mb: int = 512
    max_output_bytes: int = 64_000
    site_packages: bool = False

    def run(self, text: str) -> SandboxResult:
        """Extract the program from a model output and run it."""
        return run_program(
            extract_program(text),
            timeout_s=self.timeout_s,
            memory_mb=self.memory_mb,
            max_output_bytes=self.max_output_bytes,
            site_packages=self.site_packages,
        )

    async def arun(self, text: str) -> SandboxResult:
        """Same as :meth:`run` without blocking the event loop."""
        return await asyncio.to_thread(self.run, text)
