"""The ``chatforge`` command line: `main` (:mod:`chatforge.cli.commands`) and one module per command.

Commands import the layers they drive; the layers never import from here.
"""

from chatforge.cli.commands import main

__all__ = ["main"]
