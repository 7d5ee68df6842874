"""The `chatforge` command run as a user runs it: a real process, with stdin and captured output."""

from __future__ import annotations

import subprocess
import sys


def chatforge(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatforge.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
