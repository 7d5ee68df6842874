"""What ``--batch-wait-ms`` buys and costs: requests sent together, and a request alone,
through chatforge's server, side by side for several waits in one run.

An idle batching engine that gets a request waits until none has arrived for the wait
before its first forward pass (``chatforge.engines.batching.BATCH_WAIT``). Two measures,
the waits taking turns round by round (reversed every other round):

* ``--streams`` requests sent together through the server (the same client process as
  ``chatforge bench``, fresh prompts each run): aggregate tokens/s, prompts included, and
  the p95 time to first token (for four streams, the last one's);
* one request alone, ``max_tokens`` 1: its latency, the time to its first token, which
  is what the wait costs a lone request.

    .venv/bin/python benchmarks/batch_wait.py --waits 0,5 --rounds 8
"""

from __future__ import annotations

import argparse
import itertools
import statistics

from chatforge.bench.options import BenchOptions
from chatforge.bench.run import STORY, ServedStreams, served_streams
from chatforge.chat import load_model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--engine", default="auto")
    p.add_argument("--waits", default="0,5", help="milliseconds, comma-separated")
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--tokens", type=int, default=64, help="new tokens per stream")
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args(argv)

    model = load_model(args.model, engine=args.engine)
    if not hasattr(model.engine, "batch_wait"):
        raise SystemExit(f"the {model.engine.name} engine does not batch requests")
    waits = [float(w) for w in args.waits.split(",")]
    together: dict[float, list[float]] = {w: [] for w in waits}
    last_first: dict[float, list[float]] = {w: [] for w in waits}
    alone: dict[float, list[float]] = {w: [] for w in waits}
    fresh = itertools.count(1)
    opts = BenchOptions(streams=[args.streams], stream_tokens=args.tokens)
    with served_streams(model, opts) as served:
        if served is None:
            raise SystemExit("the server could not start (is chatforge[serve] installed?)")
        first_token = ServedStreams(served.url, 1)
        for round_ in range(args.rounds):
            for wait in waits if round_ % 2 == 0 else waits[::-1]:
                model.engine.batch_wait = wait / 1000
                tag = next(fresh)
                got = served([f"[{tag}.{i}] {STORY}" for i in range(args.streams)])
                together[wait].append(got["aggregate_tps"])
                last_first[wait].append(1000 * got["ttft_p95_s"])
                alone[wait].append(1000 * first_token([f"[{next(fresh)}] {STORY}"])["p50_s"])
            print(
                f"round {round_ + 1}: "
                + ", ".join(
                    f"{w:g} ms: {together[w][-1]:.1f} tok/s, TTFT p95 {last_first[w][-1]:.0f} ms, "
                    f"alone {alone[w][-1]:.0f} ms"
                    for w in waits
                ),
                flush=True,
            )
    base = waits[0]
    print(
        f"\n{args.streams} streams sent together through the server ({args.tokens} tokens each) "
        f"and one request alone (max_tokens 1); medians of {args.rounds} rounds, rounds listed\n"
    )
    print(
        f"| wait | {args.streams} streams, tok/s | / {base:g} ms, by round "
        f"| {args.streams} streams, p95 TTFT ms | one request, ms to first token |"
    )
    print("| ---: | ---: | --- | ---: | ---: |")

    def cell(values: list[float], digits: int) -> str:
        return f"{statistics.median(values):.{digits}f} ({', '.join(f'{x:.{digits}f}' for x in values)})"

    for w in waits:
        ratios = [a / b for a, b in zip(together[w], together[base])]
        print(
            f"| {w:g} ms | {cell(together[w], 1)} | {cell(ratios, 2)} "
            f"| {cell(last_first[w], 0)} | {cell(alone[w], 0)} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
