"""Abuse of the code interpreter with real kernels: what is contained, checked here; what
is not (see docs/sandbox.md, "What is NOT isolated") is documented, not pretended."""

from __future__ import annotations

import os
import time

import pytest

pytest.importorskip("ipykernel")

from chatforge.agent import CodeInterpreter, InterpreterConfig  # noqa: E402


@pytest.fixture()
def interpreter(tmp_path):
    config = InterpreterConfig(timeout=4, interrupt_grace=2, memory_limit_mb=1024, max_output_chars=2000,
                               root_dir=tmp_path / "sessions")
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
    result = session.execute(
        "import subprocess\np = subprocess.Popen(['sleep', '300'])\nprint(p.pid)"
    )
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


def test_other_sessions_files_are_readable_by_absolute_path(interpreter):
    """Documented, not enforced: the session directory is only the starting directory."""
    a = interpreter.session("a")
    a.upload("secret.txt", "s3cret")
    b = interpreter.session("b")
    result = b.execute(f"print(open({str(a.workdir / 'secret.txt')!r}).read())")
    assert "s3cret" in result.text  # if this ever fails, update docs/sandbox.md: it became isolated
