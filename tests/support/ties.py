"""Comparing two greedy replies from llama.cpp that may part at a near-tie.

llama.cpp's arithmetic for several tokens in one pass differs in the last bits from one
token's (and a cache filled either way differs too), so two correct ways of decoding the
same prompt can pick different tokens where the two best are within a hair of each other.
:func:`assert_same_but_for_a_near_tie` accepts that and nothing else: where the replies first
differ, both tokens must score within ``bound`` logits of each other after the common part
(scored by plain ``llama_cpp.Llama`` in a child process, so that a crashing build fails the
test rather than the test run). A wrong cache or position gives confident, different tokens."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

SCORE = textwrap.dedent(
    """
    import json, sys
    import llama_cpp
    import llama_cpp.llama_cpp as low

    path, ids, tokens = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    shipped = low.llama_model_default_params
    def params():
        p = shipped()
        p.use_extra_bufts = False
        return p
    low.llama_model_default_params = params
    llm = llama_cpp.Llama(path, n_ctx=len(ids) + 16, n_threads=1, logits_all=True, verbose=False)
    llm.eval(ids)
    row = llm.scores[llm.n_tokens - 1]
    print(json.dumps([float(row[t]) for t in tokens] + [float(row.max())]))
    """
)


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def assert_same_but_for_a_near_tie(
    gguf: Path, prompt: list[int], a: list[int], b: list[int], bound: float = 1.0
) -> None:
    n = first_difference(a, b)
    if n is None:
        return
    assert n < len(a) and n < len(b), f"one reply stops where the other goes on, at token {n}"
    proc = subprocess.run(
        [sys.executable, "-c", SCORE, str(gguf), json.dumps(prompt + a[:n]), json.dumps([a[n], b[n]])],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, second, best = json.loads(proc.stdout.strip().splitlines()[-1])
    assert abs(first - second) < bound and best - max(first, second) < bound, (
        f"the replies part at token {n} ({a[n]} scores {first:.3f}, {b[n]} {second:.3f}, "
        f"the best {best:.3f}): not a near-tie"
    )
