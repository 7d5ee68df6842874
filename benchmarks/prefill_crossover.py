"""Where the hybrid engine's bf16 prefill starts to pay: prompt lengths side by side.

For each length, the time to the first token of a fresh prompt with the hybrid engine
prefilling through transformers and with llama.cpp computing the prompt itself (the same
engine with ``min_prefill`` set out of reach), taking turns run by run. The crossover is
where ``DEFAULT_MIN_PREFILL`` in ``chatforge.engines.hybrid`` comes from.

    .venv/bin/python benchmarks/prefill_crossover.py --lengths 16,32,48,64,128,256,1000
"""

from __future__ import annotations

import argparse
import os
import statistics

from chatforge.bench.run import long_prompt
from chatforge.chat import load_model
from chatforge.engines.base import SamplingParams


def ttft(engine, ids: list[int]) -> float:
    chunks = list(engine.stream(ids, SamplingParams(do_sample=False, max_new_tokens=1)))
    return chunks[-1].stats.time_to_first_token or 0.0


def prompt(model, length: int, tag: str) -> list[int]:
    """``length`` prompt ids that begin with ``tag``."""
    if length >= 64:
        return long_prompt(model, length, tag)
    # Short: the tag, then the end of a chat prompt (end of turn, assistant header).
    head = model.tokenizer(tag, add_special_tokens=False)["input_ids"]
    if length <= len(head):
        raise SystemExit(f"--lengths: {length} tokens leave no room after the run's tag ({len(head)} tokens)")
    return head + long_prompt(model, 64)[len(head) - length :]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="16,32,48,64,128,256,1000")
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    model = load_model("default", engine="hybrid", context_length=4096)
    engine = model.engine
    hybrid_threshold = engine.min_prefill
    print(f"load average {os.getloadavg()[0]:.2f}")
    print("| prompt tokens | hybrid TTFT ms | llama.cpp TTFT ms | speed-up |")
    print("| ---: | ---: | ---: | ---: |")
    for length in (int(x) for x in args.lengths.split(",")):
        times: dict[str, list[float]] = {"hybrid": [], "llama.cpp": []}
        for run in range(args.runs):
            for name, threshold in (("hybrid", 2), ("llama.cpp", 10**9)):
                # A prompt of its own each time: the engine would reuse a cached one.
                ids = prompt(model, length, f"[{length}.{run}.{name}] ")
                engine.min_prefill = threshold
                times[name].append(ttft(engine, ids))
        h, ll = (1000 * statistics.median(times[k]) for k in ("hybrid", "llama.cpp"))
        print(f"| {len(ids)} | {h:.0f} | {ll:.0f} | {ll / h:.2f}x |", flush=True)
    engine.min_prefill = hybrid_threshold
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
