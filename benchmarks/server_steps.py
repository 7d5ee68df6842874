"""Where the server's overhead goes: the engine's decode steps with and without the HTTP server.

Concurrent greedy streams on the hybrid engine (the default), taken three ways in turns,
round by round:

* ``direct``: one thread per stream calling the engine;
* ``served, clients in-process``: through chatforge's server on loopback, the HTTP clients
  being threads of this process;
* ``served, clients apart``: the same server, the clients in a process of their own (what
  ``chatforge bench`` does, as an application calling the server would).

For each, the engine's batch thread is timed step by step: the llama.cpp decode (both
cores computing) and the Python work around it (sampling, handing tokens over, admitting
requests), as medians over the decode steps, with the aggregate tokens/s. More Python time
per step through the server means its threads hold the interpreter lock when the batch
thread needs it; longer decodes mean they take CPU from llama.cpp's threads.

    .venv/bin/python benchmarks/server_steps.py --streams 16 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from chatforge.bench.client import run_streams, stream_chat
from chatforge.bench.options import BenchOptions
from chatforge.bench.run import STORY, engine_stream, served_streams
from chatforge.chat import load_model
from chatforge.engines.base import SamplingParams


class StepClock:
    """Times the engine's steps and the llama.cpp decodes inside them."""

    def __init__(self, engine: Any) -> None:
        self.steps: list[tuple[float, float]] = []  # (Python seconds, decode seconds) per decoding step
        self._decode = 0.0
        lib = engine._lib
        clock = self

        class TimedLib:
            def __getattr__(self, name: str) -> Any:
                return getattr(lib, name)

            def llama_decode(self, *args: Any) -> Any:
                started = time.perf_counter()
                try:
                    return lib.llama_decode(*args)
                finally:
                    clock._decode += time.perf_counter() - started

        engine._lib = TimedLib()
        step = engine._step

        def timed_step() -> bool:
            self._decode = 0.0
            started = time.perf_counter()
            result = step()
            elapsed = time.perf_counter() - started
            # Steps that computed a prompt through transformers have no decode share to compare.
            if self._decode and elapsed - self._decode < 0.5 * elapsed:
                self.steps.append((elapsed - self._decode, self._decode))
            return result

        engine._step = timed_step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--engine", default="hybrid", help="a llama.cpp-based engine: hybrid or llama.cpp")
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    model = load_model(
        args.model, engine=args.engine, context_length=4096, engine_options={"n_parallel": args.streams}
    )
    clock = StepClock(model.engine)
    params = SamplingParams(do_sample=False, max_new_tokens=args.tokens)

    opts = BenchOptions(streams=[args.streams], stream_tokens=args.tokens)
    with served_streams(model, opts) as apart:
        import httpx

        limits = httpx.Limits(max_connections=args.streams, max_keepalive_connections=args.streams)
        client = httpx.Client(timeout=600, limits=limits)

        def in_process(texts: list[str]) -> dict[str, Any]:
            return run_streams(len(texts), lambda i: stream_chat(client, apart.url, texts[i], args.tokens))

        modes = {
            "direct": lambda texts: run_streams(len(texts), lambda i: engine_stream(model, texts[i], params)),
            "served, clients in-process": in_process,
            "served, clients apart": apart,
        }
        measured: dict[str, list[tuple[float, float, float]]] = {mode: [] for mode in modes}
        tag = 0
        print(f"load average {os.getloadavg()[0]:.2f}; {args.streams} streams of {args.tokens} tokens")
        for round_ in range(args.rounds):
            order = list(modes.items())
            for mode, run in order[::-1] if round_ % 2 else order:
                tag += 1
                clock.steps.clear()
                result = run([f"[{tag}.{i}] {STORY}" for i in range(args.streams)])
                python = statistics.median(s[0] for s in clock.steps) * 1000
                decode = statistics.median(s[1] for s in clock.steps) * 1000
                measured[mode].append((python, decode, result["aggregate_tps"]))
                print(
                    f"round {round_ + 1}, {mode}: {python:.1f} ms Python, {decode:.0f} ms decode per step, "
                    f"{result['aggregate_tps']:.1f} tok/s",
                    flush=True,
                )
        client.close()
    print()
    print(
        "| path | Python ms per step | decode ms per step | tokens/s | rounds (Python ms / decode ms / tok/s) |"
    )
    print("| --- | ---: | ---: | ---: | --- |")
    for mode, rows in measured.items():
        rounds = "; ".join(f"{a:.1f} / {b:.0f} / {c:.1f}" for a, b, c in rows)
        medians = [statistics.median(r[k] for r in rows) for k in range(3)]
        print(f"| {mode} | {medians[0]:.1f} | {medians[1]:.0f} | {medians[2]:.1f} | {rounds} |")
    print(f"\nload average {os.getloadavg()[0]:.2f}")
    model.engine.close()


if __name__ == "__main__":
    main()
