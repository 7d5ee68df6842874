"""Abuse of the code interpreter with real kernels: what is contained, checked here; what
is not (see docs/sandbox.md, "What is NOT isolated") is documented, not pretended.

The Landlock checks (parent kill, files, network) need the ABI they use and are skipped,
saying which, on kernels without it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("ipykernel")

from chatforge.agent import CodeInterpreter, InterpreterConfig  # noqa: E402
from chatforge.agent.interpreter.landlock import abi_version  # noqa: E402
from chatforge.agent.loop import CODE_PRELUDE  # noqa: E402

ABI = abi_version()


def needs_abi(version: int, what: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        ABI < version, reason=f"{what} needs Landlock ABI {version}; this kernel offers {ABI or 'none'}"
    )


@pytest.fixture()
def interpreter(tmp_path):
    config = InterpreterConfig(
        timeout=4,
        interrupt_grace=2,
        memory_limit_mb=1024,
        max_output_chars=2000,
        root_dir=tmp_path / "sessions",
    )
    with CodeInterpreter(config) as it:
        yield it


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_infinite_loop_is_interrupted_and_the_session_lives_on(interpreter):
    session = interpreter.session("loop")
    started = time.monotonic()
    result = session.execute("x = 1\nwhile True:\n    pass", timeout=2)
    assert result.timed_out and time.monotonic() - started < 10
    assert session.execute("print(x)").text.strip() == "1"


def test_memory_bomb_is_a_memory_error(interpreter):
    result = interpreter.session("mem").execute("b = bytearray(4 * 1024**3)")
    assert result.error is not None and "MemoryError" in result.error.ename


def test_output_flood_is_truncated(interpreter):
    result = interpreter.session("flood").execute("for i in range(200000):\n    print('x' * 50)", timeout=20)
    assert result.truncated and len(result.text) < 4000


def test_background_process_dies_with_the_session(interpreter):
    session = interpreter.session("bg")
    result = session.execute("import subprocess\np = subprocess.Popen(['sleep', '300'])\nprint(p.pid)")
    pid = int(result.text.strip().splitlines()[-1])
    assert alive(pid)
    interpreter.close_session("bg")
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid)


def test_fork_bomb_is_bounded_by_the_timeout(interpreter):
    # Bounded on purpose: 30 children that each sleep. RLIMIT_NPROC is not applied (it counts
    # all the user's processes and root ignores it); the process-group kill is what contains it.
    session = interpreter.session("forks")
    result = session.execute(
        "import os, time\npids = []\nfor _ in range(30):\n    pid = os.fork()\n    if pid == 0:\n"
        "        time.sleep(300); os._exit(0)\n    pids.append(pid)\nprint(pids)"
    )
    pids = [int(p) for p in result.text.strip().splitlines()[-1].strip("[]").split(",")]
    interpreter.close_session("forks")
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids)


# ----------------------------------------------------------------------------- Landlock

# The "server" is a child process here, so that if containment breaks, the kill hits it
# (and this test fails) instead of the test run. It runs in its own session so that a
# process-group kill cannot reach pytest either.
SERVER = textwrap.dedent(
    """
    import json, os, sys
    from chatforge.agent import CodeInterpreter, InterpreterConfig
    config = InterpreterConfig(root_dir=sys.argv[1], timeout=10, memory_limit_mb=1024, max_threads=2)
    with CodeInterpreter(config) as interpreter:
        victim, attacker = interpreter.session("victim"), interpreter.session("attacker")
        victim.execute("x = 'victim alive'")
        attacks = {
            "kill parent": "import os; os.kill(os.getppid(), 9)",
            "kill parent group": "import os; os.killpg(os.getpgid(os.getppid()), 9)",
            "stop parent": "import os, signal; os.kill(os.getppid(), signal.SIGSTOP)",
            "kill other kernel": f"import os; os.kill({victim.kernel_pid}, 9)",
        }
        results = {}
        for name, code in attacks.items():
            error = attacker.execute(code).error
            results[name] = error.ename if error else None
        results["attacker after"] = attacker.execute("print('still here')").text
        results["victim after"] = victim.execute("print(x)").text
        results["protections"] = list(attacker.sandbox_report().protections)
        print(json.dumps(results))
    """
)


@needs_abi(6, "signal scoping")
def test_kernel_cannot_signal_the_server_or_other_kernels(tmp_path):
    server = subprocess.run(
        [sys.executable, "-c", SERVER, str(tmp_path / "sessions")],
        capture_output=True,
        text=True,
        timeout=180,
        start_new_session=True,
    )
    assert server.returncode == 0, (
        f"the server process died (status {server.returncode}): {server.stderr[-2000:]}"
    )
    results = json.loads(server.stdout.strip().splitlines()[-1])
    assert "signals" in results.pop("protections")
    assert results == {
        "kill parent": "PermissionError",
        "kill parent group": "PermissionError",
        "stop parent": "PermissionError",
        "kill other kernel": "PermissionError",
        "attacker after": "still here",
        "victim after": "victim alive",
    }


@pytest.fixture()
def confined(tmp_path):
    config = InterpreterConfig(
        timeout=20, memory_limit_mb=1024, max_threads=2, root_dir=tmp_path / "sessions", idle_timeout=None
    )
    with CodeInterpreter(config) as it:
        yield it


def outcome(session, code: str) -> str:
    """What ``code`` printed, or the name of the exception it raised."""
    result = session.execute(code)
    return result.error.ename if result.error else result.text


@needs_abi(3, "the filesystem sandbox")
def test_writes_outside_the_session_directory_are_refused(confined, tmp_path):
    session = confined.session("writer")
    neighbour = confined.session("neighbour")
    neighbour.upload("keep.txt", "x")
    targets = {
        "home": Path.home() / "chatforge-sandbox-escape.txt",
        "repo": Path(__file__).resolve().parent / "chatforge-sandbox-escape.txt",
        "other session": neighbour.workdir / "planted.txt",
        "sessions root": confined.root / "planted.txt",
        "test tmp": tmp_path / "planted.txt",
    }
    try:
        for where, target in targets.items():
            assert outcome(session, f"open({str(target)!r}, 'w').write('x')") == "PermissionError", where
            assert not target.exists(), where
    finally:  # should the sandbox fail, leave no litter in the home directory or the repo
        for target in targets.values():
            target.unlink(missing_ok=True)
    assert (
        outcome(session, f"import os; os.remove({str(neighbour.workdir / 'keep.txt')!r})")
        == "PermissionError"
    )
    # Inside: the working directory, subdirectories, renames, temporary files, /dev/null.
    code = (
        "import os, shutil, tempfile\n"
        "os.makedirs('out/deep', exist_ok=True)\n"
        "open('out/deep/a.txt', 'w').write('inside')\n"
        "shutil.move('out/deep/a.txt', 'moved.txt')\n"
        "with tempfile.NamedTemporaryFile('w', delete=False) as f:\n"
        "    f.write('tmp')\n"
        "shutil.move(f.name, 'from_tmp.txt')\n"
        "open('/dev/null', 'w').write('x')\n"
        "print(os.environ['TMPDIR'] != os.getcwd(), sorted(os.listdir('.')))"
    )
    assert outcome(session, code) == "True ['from_tmp.txt', 'moved.txt', 'out']"
    assert session.read_file("moved.txt") == b"inside" and session.read_file("from_tmp.txt") == b"tmp"


@needs_abi(1, "the filesystem sandbox")
def test_other_sessions_files_cannot_be_read(confined):
    a = confined.session("a")
    a.upload("secret.txt", "s3cret")
    b = confined.session("b")
    assert outcome(b, f"print(open({str(a.workdir / 'secret.txt')!r}).read())") == "PermissionError"
    assert outcome(b, f"import os; print(os.listdir({str(confined.root)!r}))") == "PermissionError"
    assert outcome(b, f"import os; print(os.listdir({str(a.workdir)!r}))") == "PermissionError"
    # The server's environment of a process outside the sandbox: closed by Landlock's ptrace scoping.
    assert outcome(b, "import os; print(open(f'/proc/{os.getppid()}/environ').read())") == "PermissionError"
    assert outcome(a, "print(open('secret.txt').read())") == "s3cret"


@needs_abi(1, "the filesystem sandbox")
def test_extra_read_paths_open_a_data_directory(tmp_path):
    data = tmp_path / "dataset"
    data.mkdir()
    (data / "table.csv").write_text("a,b\n1,2\n")
    read = f"print(open({str(data / 'table.csv')!r}).read().splitlines()[1])"
    for extra, expected in (((), "PermissionError"), ((data,), "1,2")):
        config = InterpreterConfig(timeout=20, max_threads=2, root_dir=tmp_path / "s", extra_read_paths=extra)
        with CodeInterpreter(config) as it:
            session = it.session("data")
            assert outcome(session, read) == expected
            assert outcome(session, f"open({str(data / 'new.csv')!r}, 'w')") == "PermissionError"


@needs_abi(4, "TCP restriction")
def test_outbound_tcp_is_refused(confined, tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    connect = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5).close()\nprint('connected')"
    try:
        session = confined.session("net")
        session.start()
        assert "tcp_connect" in session.sandbox_report().protections
        assert outcome(session, connect) == "PermissionError"
        assert outcome(session, "import socket; socket.socket().bind(('127.0.0.1', 0))") == "PermissionError"
        # Control: the same code connects when the network is allowed, so the refusal above is the sandbox's.
        config = InterpreterConfig(timeout=20, max_threads=2, root_dir=tmp_path / "open", allow_network=True)
        with CodeInterpreter(config) as open_interpreter:
            assert outcome(open_interpreter.session("net"), connect) == "connected"
    finally:
        listener.close()


@needs_abi(6, "the full Landlock sandbox")
def test_plots_prelude_and_processes_work_in_the_sandbox(confined):
    session = confined.session("plots")
    session.start()
    report = session.sandbox_report().landlock
    assert report.protections == ("filesystem", "tcp_connect", "tcp_bind", "signals", "abstract_unix_sockets")
    assert str(session.workdir) in report.write_paths and report.abi == ABI
    assert session.execute(CODE_PRELUDE).ok
    result = session.execute(
        "x = np.linspace(0, 6, 50)\nplt.plot(x, np.sin(x))\nplt.title('正弦')\nplt.savefig('sin.png')\nplt.show()"
    )
    assert result.ok, result.text
    assert len(result.images) == 1 and session.read_file("sin.png").startswith(b"\x89PNG")
    # Output of subprocesses and of forked children still comes back (the latter over a Unix socket).
    assert outcome(session, "import subprocess\nsubprocess.run(['echo', 'from echo']);") == "from echo"
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    print('from fork', flush=True); os._exit(0)\n"
        "os.wait(); time.sleep(0.5)\n"
        "print(open('/proc/self/status').read().split()[0])"
    )
    assert outcome(session, code).splitlines() == ["from fork", "Name:"]


def test_landlock_switch_off_leaves_files_open(tmp_path):
    config = InterpreterConfig(timeout=20, max_threads=2, root_dir=tmp_path / "sessions", landlock=False)
    with CodeInterpreter(config) as open_interpreter:
        a = open_interpreter.session("a")
        a.upload("secret.txt", "s3cret")
        b = open_interpreter.session("b")
        assert outcome(b, f"print(open({str(a.workdir / 'secret.txt')!r}).read())") == "s3cret"
        report = b.sandbox_report().landlock
        assert report.protections == () and report.notes == ("Landlock switched off",)


@pytest.mark.skipif(
    os.geteuid() != 0, reason="only a server run as root gives its kernels capabilities to drop"
)
def test_kernels_of_a_root_server_drop_their_capabilities(confined):
    session = confined.session("root")
    code = (
        "import resource\n"
        "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_DATA)\n"
        "resource.setrlimit(resource.RLIMIT_DATA, (hard * 2, hard * 2))"
    )
    result = session.execute(code)
    assert result.text.splitlines()[0] == "0000000000000000"
    assert result.error is not None and result.error.ename == "ValueError"  # not allowed to raise the limit
    assert "no_capabilities" in session.sandbox_report().protections
