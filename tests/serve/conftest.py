"""Fixtures for the serve tests live in support/serve_support.py (importable by the tests
under a name that does not clash with the top-level conftest)."""

from serve_support import *  # noqa: F401,F403
