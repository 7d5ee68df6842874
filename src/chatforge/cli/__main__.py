"""``python -m chatforge.cli``: the ``chatforge`` command."""

import sys

from chatforge.cli.commands import main

sys.exit(main())
