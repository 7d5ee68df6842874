"""Tests for chatforge.agent.interpreter against real ipykernel processes (no mocks)."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import pytest

from chatforge.agent import (
    CodeInterpreter,
    ErrorOutput,
    ImageOutput,
    InterpreterConfig,
    InterpreterError,
    StreamOutput,
    TextOutput,
)
from chatforge.agent.interpreter.outputs import is_png

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="kernel limits use Linux rlimits and process groups"
)

TIMEOUT = 2.0
GRACE = 1.5


@pytest.fixture(scope="module")
def interpreter(tmp_path_factory):
    config = InterpreterConfig(
        root_dir=tmp_path_factory.mktemp("interpreter"),
        timeout=TIMEOUT,
        interrupt_grace=GRACE,
        memory_limit_mb=512,
        max_threads=2,  # numeric thread pools count against the memory limit
        file_size_limit_mb=1,
        max_output_chars=2000,
        idle_timeout=600,
    )
    with CodeInterpreter(config) as manager:
        yield manager


@pytest.fixture(scope="module")
def session(interpreter):
    return interpreter.session("main")


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still "exists"; treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pid: int, seconds: float = 5.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not _process_exists(pid):
            return True
        time.sleep(0.05)
    return False


def test_prints_and_plot_come_back_in_order(session):
    result = session.execute(
        "import matplotlib.pyplot as plt\n"
        "print('before plot')\n"
        "print('still before')\n"
        "plt.plot([1, 2, 3], [1, 4, 9])\n"
        "plt.show()\n"
        "print('after plot')\n"
        "6 * 7\n"
    )
    assert result.ok, result.text
    kinds = [type(item) for item in result.outputs]
    assert kinds == [StreamOutput, ImageOutput, StreamOutput, TextOutput]
    assert result.outputs[0].text == "before plot\nstill before\n"
    assert result.outputs[2].text == "after plot\n"
    assert result.outputs[3].text == "42"
    assert len(result.images) == 1 and is_png(result.images[0])
    assert result.images[0].startswith(b"\x89PNG\r\n\x1a\n")
    assert result.text == "before plot\nstill before\n[Image]\nafter plot\n42"
    assert result.execution_count is not None


def test_figure_left_open_is_shown_at_end_of_cell(session):
    result = session.execute("import matplotlib.pyplot as plt\nfig = plt.figure()\nplt.bar(['a'], [1]);")
    assert len(result.images) == 1 and is_png(result.images[0])


def test_infinite_loop_is_interrupted_and_state_is_kept(session):
    session.execute("kept = 'still here'")
    started = time.monotonic()
    result = session.execute("while True:\n    pass")
    elapsed = time.monotonic() - started
    assert result.timed_out and not result.restarted
    assert elapsed < TIMEOUT + GRACE
    assert isinstance(result.error, ErrorOutput) and result.error.ename == "TimeoutError"
    assert "was interrupted" in result.text and "KeyboardInterrupt" not in result.text
    assert session.execute("print(kept)").text == "still here"


def test_code_that_ignores_interrupts_gets_a_restart(interpreter):
    stubborn = interpreter.session("stubborn")
    stubborn.execute("lost = 1")
    code = "import time\nwhile True:\n    try:\n        time.sleep(5)\n    except KeyboardInterrupt:\n        pass\n"
    started = time.monotonic()
    result = stubborn.execute(code, timeout=1.0)
    assert time.monotonic() - started < 1.0 + GRACE + 5
    assert result.timed_out and result.restarted
    assert "kernel was restarted" in result.text and "variables and imports were lost" in result.text
    after = stubborn.execute("print('alive'); lost")
    assert after.outputs[0] == StreamOutput("stdout", "alive\n")
    assert after.error is not None and after.error.ename == "NameError"


def test_kernel_death_is_reported_and_session_recovers(interpreter):
    fragile = interpreter.session("stubborn")
    result = fragile.execute("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert result.restarted
    assert result.error is not None and result.error.ename == "KernelDied"
    assert "SIGKILL" in result.error.evalue and "restarted" in result.error.evalue
    assert fragile.execute("1 + 1").text == "2"


def test_memory_hog_is_stopped_with_clear_error(session):
    result = session.execute("hog = bytearray(4 * 1024 ** 3)")
    assert result.error is not None
    assert result.error.ename == "MemoryError"
    assert "at most 512 MB" in result.text
    assert session.execute("print('usable')").text == "usable"


def test_huge_output_is_truncated_with_marker(session):
    result = session.execute("print('x' * 100_000)\nprint('tail')")
    assert result.truncated
    assert "…[truncated 98006 characters]" in result.text
    assert len(result.text) < 2000 + 200
    assert result.text.startswith("x" * 100)


def test_traceback_comes_back_without_ansi_codes(session):
    result = session.execute("def inner():\n    return 1 / 0\ninner()")
    assert result.error is not None and result.error.ename == "ZeroDivisionError"
    assert "\x1b" not in result.text
    assert "ZeroDivisionError: division by zero" in result.text
    assert "return 1 / 0" in result.error.traceback


def test_sessions_are_isolated(interpreter, session):
    other = interpreter.session("other")
    session.execute("secret = 'main only'")
    result = other.execute("secret")
    assert result.error is not None and result.error.ename == "NameError"
    assert session.workdir != other.workdir
    assert session.execute("import os; os.getcwd()").text == repr(str(session.workdir))
    assert other.execute("import os; os.getcwd()").text == repr(str(other.workdir))
    assert interpreter.session("other") is other
    assert set(interpreter.sessions()) >= {"main", "other"}


def test_kernel_has_its_own_process_group(session):
    result = session.execute("import os; os.getpgid(0) == os.getpid() != os.getppid()")
    assert result.text == "True"
    assert session.execute("import os; os.getpid()").text == str(session.kernel_pid)


def test_kernel_environment_is_filtered(interpreter, monkeypatch):
    monkeypatch.setenv("CHATFORGE_TEST_SECRET", "sk-do-not-leak")
    fresh = interpreter.session("env-check")  # started after the variable was set
    result = fresh.execute(
        "import os\n"
        "print(os.environ.get('CHATFORGE_TEST_SECRET'), os.environ.get('OPENBLAS_NUM_THREADS'),"
        " os.environ.get('MPLBACKEND'))"
    )
    assert result.text == "None 2 module://matplotlib_inline.backend_inline"
    interpreter.close_session("env-check")


def test_upload_and_listing(session):
    session.upload("data/table.csv", b"a,b\n1,2\n")
    session.upload("notes.txt", "héllo")
    names = {info.name: info.size for info in session.files()}
    assert names["data/table.csv"] == 8
    assert names["notes.txt"] == len("héllo".encode())
    assert "data/table.csv (8 B)" in session.describe_files()
    result = session.execute("print(open('data/table.csv').read().splitlines()[1])")
    assert result.text == "1,2"
    session.execute("open('made_by_code.txt', 'w').write('out')")
    assert session.read_file("made_by_code.txt") == b"out"


@pytest.mark.parametrize("bad_name", ["../escape.txt", "/etc/passwd", "a/../../b", "", "."])
def test_upload_rejects_path_traversal(session, bad_name):
    with pytest.raises(ValueError):
        session.upload(bad_name, b"x")


def test_file_size_limit(session):
    result = session.execute("open('big.bin', 'wb').write(b'0' * 2 * 1024 * 1024)")
    assert result.error is not None and "File too large" in result.text


def test_aexecute(session):
    result = asyncio.run(session.aexecute("sum(range(10))"))
    assert result.text == "45"


def test_idle_sessions_are_reaped_by_background_thread():
    config = InterpreterConfig(idle_timeout=1.0, reap_interval=0.2, memory_limit_mb=None)
    with CodeInterpreter(config) as own:
        idle = own.session("idle")
        idle.execute("x = 1")
        pid = idle.kernel_pid
        assert own.reap_idle() == []  # just used
        assert _wait_gone(pid, seconds=5.0), "the reaper did not stop the idle kernel"
        assert not idle.started and not idle.closed
        # The same session object keeps working, on a fresh kernel, and says so.
        assert own.session("idle") is idle
        result = idle.execute("'x' in dir()")
        assert result.restarted
        assert "idle for more than 1 s" in result.text
        assert result.outputs[-1] == TextOutput("False")


def test_closed_session_refuses_work(interpreter):
    doomed = interpreter.session("doomed")
    interpreter.close_session("doomed")
    assert doomed.closed
    with pytest.raises(InterpreterError, match="closed"):
        doomed.execute("1")
    assert interpreter.session("doomed") is not doomed


def test_close_shuts_down_kernels_and_their_children(tmp_path):
    with CodeInterpreter(InterpreterConfig(timeout=5, memory_limit_mb=None)) as own:
        session = own.session("child-test")
        child = int(session.execute("import subprocess\nsubprocess.Popen(['sleep', '60']).pid").text)
        kernel = session.kernel_pid
        root = own.root
        assert _process_exists(child) and _process_exists(kernel)
    assert own.closed
    assert _wait_gone(kernel) and _wait_gone(child)
    assert not root.exists()  # temporary root removed
    with pytest.raises(InterpreterError, match="closed"):
        own.session("again")


def test_config_is_validated():
    with pytest.raises(ValueError, match="timeout"):
        InterpreterConfig(timeout=0)
    with pytest.raises(ValueError, match="memory_mb"):
        InterpreterConfig(memory_limit_mb=-1)


def test_missing_landlock_protections_are_logged_once(caplog):
    from chatforge.agent.interpreter import launch as kernel_launch
    from chatforge.agent.interpreter.landlock import LandlockReport

    report = LandlockReport(abi=3, filesystem=True, notes=("TCP restrictions need Landlock ABI 4",))
    config = InterpreterConfig()
    kernel_launch._WARNED_UNCONFINED.discard(("abstract_unix_sockets", "signals", "tcp_connect"))
    with caplog.at_level("WARNING", logger="chatforge.agent.interpreter"):
        kernel_launch.warn_if_unconfined(report, config)
        kernel_launch.warn_if_unconfined(report, config)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "signals, tcp_connect" in warnings[0] and "os.kill(os.getppid(), 9)" in warnings[0]
    assert "Landlock ABI 3" in warnings[0] and "landlock=False" in warnings[0]
