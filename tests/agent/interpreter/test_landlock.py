"""Tests for chatforge.agent.interpreter.landlock: each one confines a fresh child Python process
(Landlock cannot be undone, so never this one) and checks what it can still do."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from chatforge.agent.interpreter.landlock import LandlockPolicy, LandlockReport, abi_version

ABI = abi_version()


def needs_abi(version: int) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        ABI < version, reason=f"needs Landlock ABI {version}; this kernel offers {ABI or 'none'}"
    )


def run_confined(policy: LandlockPolicy, body: str) -> dict:
    """Run ``body`` in a child process after ``restrict_self(policy)``.

    ``body`` records outcomes with ``attempt(name, callable)``: the callable's result, or the
    name of the exception it raised. Returns ``{"report": ..., "outcomes": {...}}``.
    """
    script = (
        textwrap.dedent(
            """
        import json, os, socket, sys
        from chatforge.agent.interpreter.landlock import LandlockPolicy, restrict_self
        report = restrict_self(LandlockPolicy.from_json(sys.argv[1]))
        outcomes = {}
        def attempt(name, action):
            try:
                outcomes[name] = action()
            except Exception as exc:
                outcomes[name] = type(exc).__name__
        """
        )
        + textwrap.dedent(body)
        + "\nprint(json.dumps({'report': report.to_json(), 'outcomes': outcomes}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, policy.to_json()], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["report"] = LandlockReport.from_json(result["report"])
    return result


@pytest.fixture()
def tree(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "sessions"
    mine, other = root / "mine", root / "other"
    for directory in (mine, other):
        directory.mkdir(parents=True)
    (other / "secret.txt").write_text("s3cret")
    (mine / "own.txt").write_text("mine")
    return {"tmp": tmp_path, "root": root, "mine": mine, "other": other}


def test_policy_round_trips_through_json():
    policy = LandlockPolicy(read_paths=("/data",), write_paths=("/w",), private_paths=("/p",), max_abi=3)
    assert LandlockPolicy.from_json(policy.to_json()) == policy
    report = LandlockReport(abi=7, filesystem=True, signals=True, notes=("x",))
    assert LandlockReport.from_json(report.to_json()) == report
    assert report.protections == ("filesystem", "signals")


@needs_abi(1)
def test_writes_only_in_write_paths_and_private_paths_stay_closed(tree):
    policy = LandlockPolicy(write_paths=(str(tree["mine"]),), private_paths=(str(tree["root"]),))
    result = run_confined(
        policy,
        f"""
        attempt("write inside", lambda: open({str(tree["mine"] / "new.txt")!r}, "w").write("ok"))
        attempt("read inside", lambda: open({str(tree["mine"] / "own.txt")!r}).read())
        attempt("write next to it", lambda: open({str(tree["other"] / "x.txt")!r}, "w").write("x"))
        attempt("write in tmp", lambda: open({str(tree["tmp"] / "x.txt")!r}, "w").write("x"))
        attempt("read other", lambda: open({str(tree["other"] / "secret.txt")!r}).read())
        attempt("list root", lambda: os.listdir({str(tree["root"])!r}))
        attempt("read /etc/hosts", lambda: len(open("/etc/hosts").read()) >= 0)
        attempt("dev null", lambda: open("/dev/null", "w").write("x"))
        attempt("proc self", lambda: "Name:" in open("/proc/self/status").read())
        attempt("run ls", lambda: __import__("subprocess").run(["ls", "/usr"], capture_output=True).returncode)
        """,
    )
    assert result["report"].filesystem and result["report"].abi == ABI
    assert result["outcomes"] == {
        "write inside": 2,
        "read inside": "mine",
        "write next to it": "PermissionError",
        "write in tmp": "PermissionError",
        "read other": "PermissionError",
        "list root": "PermissionError",
        "read /etc/hosts": True,
        "dev null": 1,
        "proc self": True,
        "run ls": 0,
    }
    assert not (tree["other"] / "x.txt").exists() and (tree["mine"] / "new.txt").read_text() == "ok"


@needs_abi(1)
def test_paths_containing_a_private_path_are_dropped(tree):
    policy = LandlockPolicy(
        read_paths=(str(tree["tmp"]),), write_paths=(str(tree["root"]),), private_paths=(str(tree["other"]),)
    )
    result = run_confined(
        policy, f'attempt("read other", lambda: open({str(tree["other"] / "secret.txt")!r}).read())'
    )
    assert result["outcomes"]["read other"] == "PermissionError"
    notes = " ".join(result["report"].notes)
    assert (
        f"not readable: {tree['tmp'].resolve()}" in notes
        and f"not writable: {tree['root'].resolve()}" in notes
    )


@pytest.fixture()
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    yield server.getsockname()[1]
    server.close()


@pytest.fixture()
def bystander():
    """A process outside any sandbox, for the confined one to try to signal."""
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


SIGNAL_AND_CONNECT = """
attempt("connect", lambda: socket.create_connection(("127.0.0.1", {port}), timeout=5).close())
attempt("signal", lambda: os.kill({pid}, {sig}))
"""


@needs_abi(6)
def test_tcp_and_signals_to_the_outside_are_refused(tree, listener, bystander):
    policy = LandlockPolicy(write_paths=(str(tree["mine"]),))
    body = SIGNAL_AND_CONNECT.format(port=listener, pid=bystander.pid, sig=int(signal.SIGTERM))
    result = run_confined(policy, body)
    report = result["report"]
    assert report.protections == ("filesystem", "tcp_connect", "signals", "abstract_unix_sockets")
    assert result["outcomes"] == {"connect": "PermissionError", "signal": "PermissionError"}
    assert bystander.poll() is None


@needs_abi(6)
def test_older_abi_enforces_less_and_says_so(tree, listener, bystander):
    policy = LandlockPolicy(write_paths=(str(tree["mine"]),), max_abi=3)
    body = SIGNAL_AND_CONNECT.format(port=listener, pid=bystander.pid, sig=int(signal.SIGTERM))
    body += f'attempt("read other", lambda: open({str(tree["other"] / "secret.txt")!r}).read())\n'
    result = run_confined(policy, body)
    report = result["report"]
    assert report.abi == 3 and report.protections == ("filesystem",)
    assert any("ABI 4" in note for note in report.notes) and any("ABI 6" in note for note in report.notes)
    assert result["outcomes"] == {"connect": None, "signal": None, "read other": "PermissionError"}
    deadline = time.monotonic() + 5
    while bystander.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert bystander.returncode == -signal.SIGTERM


def test_without_landlock_nothing_is_restricted_and_the_report_says_why(tree):
    result = run_confined(
        LandlockPolicy(max_abi=0),
        f'attempt("read other", lambda: open({str(tree["other"] / "secret.txt")!r}).read())',
    )
    assert result["report"].protections == () and result["report"].abi == 0
    assert "not available" in result["report"].notes[0]
    assert result["outcomes"] == {"read other": "s3cret"}
