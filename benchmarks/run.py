"""The full benchmark behind docs/benchmarks.md; the same as ``chatforge bench``.

.venv/bin/python benchmarks/run.py --out docs/benchmarks-latest.md --plot docs/img/benchmarks.png
"""

from __future__ import annotations

import sys

from chatforge.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
