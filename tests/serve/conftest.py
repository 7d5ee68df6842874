"""Fixtures for the serve tests live in serve_support.py (importable by the tests under a
name that does not clash with the top-level conftest)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from serve_support import *  # noqa: E402,F401,F403
