"""Single-stream decode speed of the default model: chatforge's engine next to plain
`transformers` `generate` on the same weights, prompt and machine, in one run.

    .venv/bin/python benchmarks/decode.py --runs 5 --tokens 128

Prints a Markdown table (median of the runs) for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from chatforge import load_model
from chatforge.engines.base import SamplingParams
from chatforge.messages import Message, Role

PROMPT = "Write a short story about a robot who learns to paint. 写一段关于机器人学画画的故事。"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="default")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()

    model = load_model(args.model, dtype=args.dtype)
    ids = model.template.render([Message(Role.USER, PROMPT)]).ids
    params = SamplingParams(do_sample=False, max_new_tokens=args.tokens)  # no stop: fixed length

    ours, ref = [], []
    for _ in range(args.runs):
        chunks = list(model.engine.stream(ids, params))
        stats = chunks[-1].stats
        ours.append(stats.decode_tokens_per_second)
        with torch.inference_mode():
            inputs = torch.tensor([ids])
            started = time.perf_counter()
            first = model.model.generate(inputs, max_new_tokens=1, do_sample=False)
            ttft = time.perf_counter() - started
            started = time.perf_counter()
            out = model.model.generate(inputs, max_new_tokens=args.tokens, do_sample=False, eos_token_id=None)
            total = time.perf_counter() - started
        n = out.shape[1] - len(ids)
        ref.append((n - 1) / max(total - ttft, 1e-9))
        del first
    dtype = next(model.model.parameters()).dtype
    print(
        f"model {model.name}, {dtype}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print(f"prompt {len(ids)} tokens, {args.tokens} new tokens, greedy, median of {args.runs} runs\n")
    print("| engine | decode tokens/s (median) | runs |")
    print("| --- | --- | --- |")
    print(
        f"| chatforge transformers engine | {statistics.median(ours):.1f} | {', '.join(f'{x:.1f}' for x in ours)} |"
    )
    print(
        f"| plain transformers `generate` | {statistics.median(ref):.1f} | {', '.join(f'{x:.1f}' for x in ref)} |"
    )


if __name__ == "__main__":
    main()
