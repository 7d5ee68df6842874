"""``python -m chatforge.cli``: the ``chatforge`` command."""

import sys

from chatforge.cli.main import main

sys.exit(main())
