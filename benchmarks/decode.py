"""Single-stream decode speed only: chatforge's engines next to plain transformers
``generate`` and plain ``llama_cpp.Llama`` (folded into ``chatforge bench``).

    .venv/bin/python benchmarks/decode.py --runs 5 --tokens 128

is ``chatforge bench --prefill-tokens 0 --turns 0 --streams ''`` plus any extra arguments.
"""

from __future__ import annotations

import sys

from chatforge.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--prefill-tokens", "0", "--turns", "0", "--streams", "", *sys.argv[1:]]))
