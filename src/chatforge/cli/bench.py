"""``chatforge bench``: chatforge's engines side by side with the raw references, in one run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from chatforge.bench.options import BenchOptions
from chatforge.bench.report import plot, report
from chatforge.bench.run import run_bench
from chatforge.cli.args import speculative_value
from chatforge.engines.select import GGUF_QUANTIZE


def add_bench_command(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmark engines against plain transformers and llama.cpp")
    defaults = BenchOptions()
    p.add_argument(
        "--model",
        default=defaults.model,
        help="'default', another embedded model's name (e.g. qwen2.5-coder-1.5b-instruct), or a path",
    )
    p.add_argument(
        "--quantize", default=None, choices=GGUF_QUANTIZE, help="re-quantize the GGUF for llama.cpp"
    )
    p.add_argument("--engines", default=",".join(defaults.engines), help="comma-separated chatforge engines")
    p.add_argument("--no-references", action="store_true", help="skip plain transformers / llama.cpp")
    p.add_argument("--runs", type=int, default=defaults.runs)
    p.add_argument("--tokens", type=int, default=defaults.tokens)
    p.add_argument("--prefill-tokens", type=int, default=defaults.prefill_tokens)
    p.add_argument("--turns", type=int, default=defaults.turns)
    p.add_argument("--turn-tokens", type=int, default=defaults.turn_tokens)
    p.add_argument(
        "--streams", default="1,4,16", help="comma-separated concurrent stream counts ('' to skip)"
    )
    p.add_argument("--stream-tokens", type=int, default=defaults.stream_tokens)
    p.add_argument("--no-server", action="store_true", help="skip the HTTP server measurement")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--speculative",
        default=None,
        type=speculative_value,
        metavar="off|ngram|draft:MODEL",
        help="speculative decoding on the llama.cpp engines (default: ngram; benchmarks/speculative.py "
        "compares the modes)",
    )
    p.add_argument("--out", default=None, help="write the Markdown report here")
    p.add_argument("--plot", default=None, help="write a PNG plot here")
    p.add_argument("--json", dest="json_out", default=None, help="write raw results as JSON here")
    p.set_defaults(handler=run_bench_command)


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    return BenchOptions(
        model=args.model,
        quantize=args.quantize,
        engines=[e.strip() for e in args.engines.split(",") if e.strip()],
        references=not args.no_references,
        runs=args.runs,
        tokens=args.tokens,
        prefill_tokens=args.prefill_tokens,
        turns=args.turns,
        turn_tokens=args.turn_tokens,
        streams=[int(s) for s in args.streams.split(",") if s.strip()],
        stream_tokens=args.stream_tokens,
        server=not args.no_server,
        threads=args.threads,
        speculative=args.speculative,
        out=args.out,
        plot=args.plot,
        json_out=args.json_out,
    )


def run_bench_command(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    results = run_bench(opts)
    text = report(results, opts)
    print(text)
    if opts.out:
        Path(opts.out).write_text(text + "\n")
    if opts.plot:
        plot(results, opts.plot)
    if opts.json_out:
        Path(opts.json_out).write_text(json.dumps(results.__dict__, indent=1))
    return 0
