"""The ``chatforge`` command line: `main` (:mod:`chatforge.cli.main`) and one module per command.

Commands import the layers they drive; the layers never import from here.
"""

from chatforge.cli.main import main

__all__ = ["main"]
