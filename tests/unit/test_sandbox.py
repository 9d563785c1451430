"""The PAL sandbox: normal programs work, hostile ones come back as clear error results.

Every hostile program runs under the sandbox's limits (never unconfined) with a short timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import pytest

from langchain_rtr.strategies.sandbox import (
    SandboxResult,
    arun_program,
    extract_program,
    isolation_mode,
    run_program,
)

FAST = {"timeout_s": 3.0, "memory_mb": 256}


def _nobody_processes() -> set[str]:
    done = subprocess.run(["ps", "-eo", "pid=,user=,args="], capture_output=True, text=True)
    return {ln for ln in done.stdout.splitlines() if "rtr-pal" in ln or "-I -S -B" in ln}


def _no_leftovers(before: set[str], wait_s: float = 10.0) -> None:
    """No sandboxed process outlives the run that made it.

    Programs of tests running beside this one (another pytest-xdist worker) end on their own
    within their limits of a few seconds, so a process is a leftover only if it is still there
    after ``wait_s``; the children these tests leak when containment fails sleep 30 s or fork
    forever.
    """
    extra = _nobody_processes() - before
    deadline = time.monotonic() + wait_s
    while extra and time.monotonic() < deadline:
        time.sleep(0.5)
        extra &= _nobody_processes()
    assert not extra, f"sandboxed processes outlived their run: {sorted(extra)}"


@pytest.fixture
def caller_files(tmp_path: Path) -> Path:
    """A folder of the caller's that no program may read, change or delete."""
    (tmp_path / "secret.txt").write_text("TOP-SECRET-CALLER-DATA")
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "a.txt").write_text("keep me")
    return tmp_path


def _untouched(root: Path) -> None:
    assert (root / "secret.txt").read_text() == "TOP-SECRET-CALLER-DATA"
    assert (root / "keep" / "a.txt").read_text() == "keep me"
    assert sorted(p.name for p in root.iterdir()) == ["keep", "secret.txt"]


def _failed(result: SandboxResult, *words: str) -> None:
    assert isinstance(result, SandboxResult)
    assert not result.ok
    assert result.error, "a failure must say why"
    for word in words:
        assert word.lower() in result.error.lower(), result.error


# ---------------------------------------------------------------- normal programs


def test_print() -> None:
    result = run_program("print(6 * 7)")
    assert result.ok and result.output.strip() == "42" and result.error is None


def test_solution_return_value_is_printed() -> None:
    result = run_program("def solution():\n    return 3 / 4\n")
    assert result.ok and result.output.strip() == "0.75"


def test_solution_not_called_when_program_printed() -> None:
    code = "def solution():\n    print('called')\n    return 1\nprint(solution())\n"
    result = run_program(code)
    assert result.ok and result.output.split() == ["called", "1"]


def test_stdlib_math_and_temp_files() -> None:
    code = (
        "import math, fractions, itertools\n"
        "open('scratch.txt', 'w').write(str(math.comb(10, 3)))\n"
        "print(open('scratch.txt').read(), fractions.Fraction(1, 3) + fractions.Fraction(1, 6))\n"
    )
    result = run_program(code)
    assert result.ok, result.error
    assert result.output.split() == ["120", "1/2"]


def test_exception_becomes_error_with_message() -> None:
    result = run_program("raise ValueError('bad input 17')")
    _failed(result, "ValueError", "bad input 17")


def test_syntax_error() -> None:
    _failed(run_program("def f(:\n  pass"), "SyntaxError")


def test_not_a_string() -> None:
    _failed(run_program(123))  # type: ignore[arg-type]


def test_site_packages_sympy() -> None:
    code = "import sympy\nx = sympy.symbols('x')\nprint(sorted(sympy.solve(x**2 - 4, x)))"
    result = run_program(code, timeout_s=30, site_packages=True)
    assert result.ok, result.error
    assert result.output.strip() == "[-2, 2]"


async def test_async_variant_does_not_block() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    result = await arun_program("import time\ntime.sleep(0.5)\nprint('done')")
    task.cancel()
    assert result.ok and result.output.strip() == "done"
    assert ticks > 5


def test_extract_program() -> None:
    text = "Here:\n```python\ndef solution():\n    return 2\n```\nand\n```py\nx = 1\n```\n"
    code = extract_program(text)
    assert "def solution" in code and "x = 1" in code
    assert extract_program("print(1)") == "print(1)"
    assert extract_program("```\nprint(3)\n```").strip() == "print(3)"


# ---------------------------------------------------------------- hostile programs


def test_read_etc_passwd_never_reaches_output() -> None:
    result = run_program("print(open('/etc/passwd').read())", **FAST)
    assert "root:" not in result.output
    _failed(result, "outside the sandbox")


def test_read_callers_files(caller_files: Path) -> None:
    secret = str(caller_files / "secret.txt")
    code = f"import os\nprint(os.listdir({str(caller_files)!r}))\nprint(open({secret!r}).read())"
    result = run_program(code, **FAST)
    assert "TOP-SECRET" not in result.output and "secret.txt" not in result.output
    _failed(result)
    _untouched(caller_files)


def test_read_through_symlink_or_relative_path(caller_files: Path) -> None:
    depth = "../" * 12
    code = f"print(open({depth + str(caller_files / 'secret.txt').lstrip('/')!r}).read())"
    result = run_program(code, **FAST)
    assert "TOP-SECRET" not in result.output
    _failed(result)


def test_write_outside_temp_folder(caller_files: Path) -> None:
    target = caller_files / "planted.txt"
    code = (
        f"open({str(target)!r}, 'w').write('x')\n"
        f"open({str(caller_files / 'secret.txt')!r}, 'a').write('x')\n"
    )
    result = run_program(code, **FAST)
    _failed(result, "write")
    _untouched(caller_files)


def test_delete_files(caller_files: Path) -> None:
    secret = str(caller_files / "secret.txt")
    code = (
        "import os, shutil\n"
        f"try:\n    os.remove({secret!r})\nexcept Exception as e:\n    print(e)\n"
        f"try:\n    os.rename({secret!r}, 'stolen.txt')\nexcept Exception as e:\n    print(e)\n"
        f"shutil.rmtree({str(caller_files / 'keep')!r})\n"
    )
    _failed(run_program(code, **FAST))
    _untouched(caller_files)


def test_open_socket() -> None:
    code = (
        "import socket\n"
        "s = socket.create_connection(('127.0.0.1', 9), timeout=1)\n"
        "print('connected')"
    )
    result = run_program(code, **FAST)
    assert "connected" not in result.output
    _failed(result, "socket")


def test_spawn_process() -> None:
    for code in (
        "import subprocess\nprint(subprocess.run(['id'], capture_output=True).stdout)",
        "import os\nos.system('id')",
        "import os\nos.execv('/bin/sh', ['sh', '-c', 'id'])",
        "import os\nos.posix_spawn('/bin/id', ['id'], {})",
    ):
        result = run_program(code, **FAST)
        assert "uid=" not in result.output
        _failed(result, "blocked")


def test_fork_bomb_is_contained() -> None:
    before = _nobody_processes()
    result = run_program("import os\nwhile True:\n    os.fork()", **FAST)
    _failed(result)
    _no_leftovers(before)


def test_endless_loop_times_out() -> None:
    result = run_program("while True:\n    pass", timeout_s=1.0)
    _failed(result, "timed out")


def test_allocate_20_gb() -> None:
    result = run_program("x = bytearray(20 * 1024**3)\nprint(len(x))", **FAST)
    _failed(result, "memory")


def test_allocate_gradually() -> None:
    result = run_program("x = []\nwhile True:\n    x.append(bytearray(50 * 1024**2))", **FAST)
    _failed(result)


def test_print_100_mb_is_capped() -> None:
    result = run_program("import sys\nsys.stdout.write('x' * 100_000_000)", **FAST)
    _failed(result, "more than")
    assert len(result.output.encode()) <= 64_000


def test_print_forever_is_capped() -> None:
    result = run_program("while True:\n    print('y' * 1000)", max_output_bytes=10_000, **FAST)
    _failed(result, "more than")
    assert len(result.output.encode()) <= 10_000


def test_import_ctypes() -> None:
    _failed(run_program("import ctypes\nprint(ctypes.CDLL(None))", **FAST), "ctypes")


def test_ctypes_unusable_with_site_packages() -> None:
    for code in (
        "import ctypes\nprint(ctypes.CDLL(None).getpid())",
        "import ctypes\nprint(ctypes.CDLL('libc.so.6'))",
        "import ctypes\nprint(ctypes.string_at(id(1), 8))",
    ):
        _failed(run_program(code, site_packages=True, timeout_s=10), "ctypes")


def test_kill_and_rlimit_raising_blocked() -> None:
    _failed(run_program(f"import os\nos.kill({os.getpid()}, 9)", **FAST), "blocked")
    code = "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))"
    _failed(run_program(code, **FAST))


def test_replacing_posixsubprocess_backend_blocked() -> None:
    code = "import sys\ndel sys.modules['_posixsubprocess']\nimport _posixsubprocess"
    _failed(run_program(code, **FAST), "blocked")


def test_temp_folder_is_removed() -> None:
    result = run_program("import os\nprint(os.getcwd())")
    assert result.ok
    assert not Path(result.output.strip()).exists()


def test_environment_is_empty() -> None:
    os.environ["RTR_TEST_SECRET"] = "leak-me"
    try:
        result = run_program("import os\nprint(sorted(os.environ))")
    finally:
        del os.environ["RTR_TEST_SECRET"]
    assert result.ok and "RTR_TEST_SECRET" not in result.output


# ---------------------------------------------------------------- the OS layer alone


needs_os_layer = pytest.mark.skipif(
    isolation_mode() == "none", reason="no unshare/setpriv here: only the audit hook applies"
)


@needs_os_layer
def test_os_layer_blocks_network_without_hook() -> None:
    try:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
    except Exception:  # OSError, or pytest-socket's SocketBlockedError
        pytest.skip("loopback sockets are not available to this test")
    port = listener.getsockname()[1]
    try:
        code = (
            "import socket\n"
            f"socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            "print('connected')"
        )
        result = run_program(code, audit_hook=False, **FAST)
    finally:
        listener.close()
    assert "connected" not in result.output
    _failed(result)


@needs_os_layer
def test_os_layer_blocks_fork_without_hook() -> None:
    if isolation_mode() == "userns" and os.geteuid() == 0:
        pytest.skip("RLIMIT_NPROC does not bind root")
    # bounded: at most 20 children, each sleeping, all killed with the group
    code = (
        "import os, time\n"
        "for _ in range(20):\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(30)\n"
        "        os._exit(0)\n"
        "print('forked')\n"
    )
    before = _nobody_processes()
    result = run_program(code, audit_hook=False, **FAST)
    assert "forked" not in result.output
    _failed(result)
    _no_leftovers(before)


@pytest.mark.skipif(isolation_mode() != "root", reason="privilege drop only when run as root")
def test_os_layer_protects_callers_files_without_hook(caller_files: Path) -> None:
    os.chmod(caller_files, 0o755)
    code = (
        f"open({str(caller_files / 'secret.txt')!r}, 'w').write('gone')\n"
        f"open({str(caller_files / 'planted.txt')!r}, 'w').write('x')\n"
    )
    result = run_program(code, audit_hook=False, **FAST)
    _failed(result, "Permission")
    _untouched(caller_files)


# ------------------------------------------------ the OS layer alone: bubblewrap, no audit hook

# Where bubblewrap is installed (make setup and .ci/run install it), the OS layer alone must
# contain every program below: the audit hook is off.
needs_bwrap = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap is not installed (make setup installs it)"
)
BARE = {"audit_hook": False, **FAST}

_PROBE = """
import json, os
def attempt(what, action):
    try:
        got[what] = repr(action())[:4000]
    except BaseException as exc:
        got[what] = "DENIED " + type(exc).__name__
got = {}
"""


def _probe(body: str) -> dict[str, str]:
    result = run_program(_PROBE + body + "\nprint(json.dumps(got))", **BARE)
    assert result.ok, result.error
    parsed: dict[str, str] = json.loads(result.output)
    return parsed


@needs_bwrap
def test_bwrap_is_used_where_installed() -> None:
    assert isolation_mode() == "bwrap"
    assert run_program("print(1)").isolation == "bwrap"


@needs_bwrap
def test_os_layer_hides_host_files(caller_files: Path) -> None:
    paths = {
        "passwd": "/etc/passwd",
        "own source": __file__,
        "secret": str(caller_files / "secret.txt"),
        "host environ": f"/proc/{os.getpid()}/environ",
        "venv config": os.path.join(sys.prefix, "pyvenv.cfg"),
    }
    body = "".join(f"attempt({k!r}, lambda: open({v!r}, 'rb').read())\n" for k, v in paths.items())
    body += "attempt('pid 1', lambda: open('/proc/1/cmdline', 'rb').read())\n"
    got = _probe(body)
    for key in paths:
        assert got[key].startswith("DENIED"), (key, got[key])
    host_init = Path("/proc/1/cmdline").read_bytes()
    assert repr(host_init)[:4000] != got["pid 1"]


@needs_bwrap
def test_os_layer_hides_host_folders(caller_files: Path) -> None:
    body = (
        "attempt('/', lambda: sorted(os.listdir('/')))\n"
        "attempt('/tmp', lambda: sorted(os.listdir('/tmp')))\n"
        "attempt('/dev', lambda: sorted(os.listdir('/dev')))\n"
        "attempt('/home', lambda: os.listdir('/home'))\n"
        "attempt('/etc', lambda: os.listdir('/etc'))\n"
        f"attempt('caller', lambda: os.listdir({str(caller_files)!r}))\n"
        "attempt('cwd', lambda: os.getcwd())\n"
    )
    got = _probe(body)
    for key in ("/home", "/etc", "caller"):
        assert got[key].startswith("DENIED"), (key, got[key])
    top = set(eval(got["/"]))  # noqa: S307 - the repr of a list of str printed above
    interpreter_root = Path(os.path.realpath(sys.base_prefix)).parts[1]
    assert top <= {"usr", "lib", "lib64", "lib32", "libx32", "proc", "dev", "tmp", interpreter_root}
    assert eval(got["/tmp"]) == [Path(eval(got["cwd"])).name]  # noqa: S307
    assert "shm" not in eval(got["/dev"])  # noqa: S307


@needs_bwrap
def test_os_layer_hides_and_protects_host_processes() -> None:
    victim = subprocess.Popen(["sleep", "60"])
    try:
        body = (
            f"attempt('kill victim', lambda: os.kill({victim.pid}, 9))\n"
            f"attempt('kill caller', lambda: os.kill({os.getpid()}, 15))\n"
            f"attempt('victim proc', lambda: open('/proc/{victim.pid}/cmdline').read())\n"
            "attempt('pids', lambda: sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
            "attempt('uid', lambda: (os.getuid(), os.geteuid(), os.getgid()))\n"
        )
        got = _probe(body)
        assert victim.poll() is None, "a host process was killed from inside the sandbox"
    finally:
        victim.kill()
        victim.wait()
    for key in ("kill victim", "kill caller", "victim proc"):
        assert got[key].startswith("DENIED"), (key, got[key])
    assert victim.pid not in eval(got["pids"]) and len(eval(got["pids"])) <= 3  # noqa: S307
    assert eval(got["uid"]) == (65534, 65534, 65534)  # noqa: S307


@needs_bwrap
def test_os_layer_refuses_writes_outside_its_folder(caller_files: Path) -> None:
    name = f"rtr-sandbox-test-{uuid.uuid4().hex}"
    targets = {
        "host tmp": f"/tmp/{name}",
        "host shm": f"/dev/shm/{name}",
        "caller": str(caller_files / name),
        "interpreter": os.path.join(os.path.realpath(sys.base_prefix), "lib", name),
    }
    body = "".join(
        f"attempt({k!r}, lambda: open({v!r}, 'w').write('x'))\n" for k, v in targets.items()
    )
    body += "attempt('own folder', lambda: open('mine.txt', 'w').write('ok'))\n"
    got = _probe(body)
    assert got["own folder"] == "2"
    for key, target in targets.items():
        assert not Path(target).exists(), (key, got[key])
    _untouched(caller_files)


@needs_bwrap
def test_os_layer_blocks_every_loopback_port() -> None:
    listeners = []
    try:
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            try:
                listener = socket.socket(family)
                listener.bind((host, 0))
                listener.listen()
            except Exception:  # no IPv6 here, or pytest-socket
                continue
            listener.setblocking(False)
            listeners.append((listener, host, listener.getsockname()[1]))
        if not listeners:
            pytest.skip("loopback sockets are not available to this test")
        body = "import socket\n" + "".join(
            f"attempt({f'{h} {p}'!r}, lambda: socket.create_connection(({h!r}, {p}), timeout=1))\n"
            for _, h, p in listeners
        )
        body += "attempt('localhost', lambda: socket.getaddrinfo('localhost', 80))\n"
        got = _probe(body)
        for listener, host, port in listeners:
            assert got[f"{host} {port}"].startswith("DENIED"), got
            with pytest.raises(BlockingIOError):
                listener.accept()  # nothing ever reached the host's listener
    finally:
        for listener, _, _ in listeners:
            listener.close()


def test_weaker_isolation_is_announced_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTR_SANDBOX_ISOLATION", "none")
    isolation_mode.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert isolation_mode() == "none"
            assert isolation_mode() == "none"
            result = run_program("print(1)")
        assert result.ok and result.isolation == "none"
        loud = [w for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(loud) == 1
        assert "falling back" in str(loud[0].message) and "'none'" in str(loud[0].message)
    finally:
        monkeypatch.delenv("RTR_SANDBOX_ISOLATION")
        isolation_mode.cache_clear()
