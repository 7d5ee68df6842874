"""How good the agent's answers are: BFCL's function-calling categories through
``chatforge serve``, and chatforge's own agent task suite through ``Agent.run``.

BFCL part (``bfcl_support.py``, ``bfcl_run.py``): the first ``--limit`` questions of each
category in BFCL's files (``simple_python``, ``multiple``, ``parallel``,
``parallel_multiple``, ``irrelevance``) sent to a ``chatforge serve`` subprocess on a free
loopback port through the official ``openai`` client, greedy, with the functions as
``tools`` and ``tool_choice`` auto; the replies are scored by BFCL's own AST checker.
Reported per category: accuracy and the median decode speed of the replies (method in
``bfcl_run.py``). ``--constrain on|off`` is passed to the server where ``chatforge serve``
has that flag; ``both`` runs two servers side by side, the two taking turns question by
question, and reports the accuracy of each and the decode-speed ratio on/off.

Suite part: ``agent_suite.py`` beside this script, ``run_suite(model)`` on the model
loaded in this process.

    .venv/bin/python benchmarks/agent_quality.py --part bfcl [--limit 40] [--constrain both]

Needs ``bfcl-eval`` installed without its dependencies (``make test`` does it):
``pip install --no-deps bfcl-eval==2026.3.23``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bfcl_support, bfcl_run and agent_suite live beside this script

import bfcl_run  # noqa: E402
import bfcl_support  # noqa: E402

DEFAULT_OUT = HERE.parent / "runs" / "bench"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["bfcl", "suite", "all"], default="all")
    p.add_argument("--model", default="default", help="passed to chatforge serve / load_model")
    p.add_argument("--engine", default="auto", help="passed to chatforge serve / load_model")
    p.add_argument(
        "--categories",
        default=",".join(bfcl_support.CATEGORIES),
        help=f"comma-separated BFCL categories, from {', '.join(bfcl_support.CATEGORIES)}",
    )
    p.add_argument(
        "--limit", type=int, default=40, help="questions per category, the first in BFCL's file order"
    )
    p.add_argument(
        "--constrain",
        choices=["on", "off", "both"],
        default="on",
        help="constrained decoding: on the server (passed as --constrain where serve has it) and "
        "in the suite's load_model; both runs each part twice, on and off",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="chatforge serve --threads (default: its own, every core)"
    )
    p.add_argument("--max-tokens", type=int, default=512, help="max_tokens per BFCL request")
    p.add_argument("--no-speed", action="store_true", help="skip the max_tokens=1 probes (no decode speed)")
    p.add_argument("--out", type=Path, default=None, help="JSON of every sample (default: runs/bench/)")
    p.add_argument("--report", type=Path, default=None, help="also write the Markdown report here")
    args = p.parse_args(argv)
    args.categories = [c.strip() for c in args.categories.split(",") if c.strip()]
    unknown = [c for c in args.categories if c not in bfcl_support.CATEGORIES]
    if unknown:
        p.error(
            f"--categories: unknown {', '.join(unknown)}; choose from {', '.join(bfcl_support.CATEGORIES)}"
        )
    if args.limit < 1:
        p.error("--limit must be at least 1")
    return args


def constrain_modes(requested: str, available: bool) -> list[str | None]:
    """The ``--constrain`` value of each server to start (None: pass no flag)."""
    if available:
        return ["on", "off"] if requested == "both" else [requested]
    if requested == "both":
        raise SystemExit("--constrain both: this chatforge serve has no --constrain option to compare")
    print(
        f"note: chatforge serve has no --constrain option; --constrain {requested} is not passed",
        file=sys.stderr,
    )
    return [None]


def summarize(samples: list[dict[str, Any]], categories: list[str]) -> dict[str, dict[str, Any]]:
    """Per category (and "all"): passed, total, median decode tok/s and how many replies it is over."""
    summary = {}
    for category in [*categories, "all"]:
        rows = [s for s in samples if category in ("all", s["category"])]
        speeds = [s["decode_tps"] for s in rows if s["decode_tps"]]
        summary[category] = {
            "passed": sum(s["passed"] for s in rows),
            "total": len(rows),
            "decode_tps_median": statistics.median(speeds) if speeds else None,
            "speed_samples": len(speeds),
        }
    return summary


def _pct(passed: int, total: int) -> str:
    return f"{100 * passed / total:.1f}%" if total else "-"


def _tps(value: float | None) -> str:
    return f"{value:.1f}" if value else "-"


def bfcl_table(label: str, summary: dict[str, dict[str, Any]]) -> str:
    lines = [
        f"#### BFCL, {label}",
        "",
        "| category | passed | accuracy | decode tok/s (median) | replies timed |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for category, s in summary.items():
        name = "**all**" if category == "all" else category
        lines.append(
            f"| {name} | {s['passed']}/{s['total']} | {_pct(s['passed'], s['total'])} | "
            f"{_tps(s['decode_tps_median'])} | {s['speed_samples']} |"
        )
    return "\n".join(lines)


def comparison_table(on: dict[str, dict[str, Any]], off: dict[str, dict[str, Any]]) -> str:
    lines = [
        "#### BFCL, constrained decoding on against off",
        "",
        "| category | on | off | on tok/s | off tok/s | speed on/off |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for category in on:
        a, b = on[category], off[category]
        ratio = "-"
        if a["decode_tps_median"] and b["decode_tps_median"]:
            ratio = f"{a['decode_tps_median'] / b['decode_tps_median']:.2f}"
        lines.append(
            f"| {category} | {a['passed']}/{a['total']} ({_pct(a['passed'], a['total'])}) | "
            f"{b['passed']}/{b['total']} ({_pct(b['passed'], b['total'])}) | "
            f"{_tps(a['decode_tps_median'])} | {_tps(b['decode_tps_median'])} | {ratio} |"
        )
    return "\n".join(lines)


def run_bfcl(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    samples = [s for c in args.categories for s in bfcl_support.load_samples(c, args.limit)]
    modes = constrain_modes(args.constrain, bfcl_run.has_constrain_flag())
    with ExitStack() as stack:
        extra = ["--threads", str(args.threads)] if args.threads else []
        servers = [
            stack.enter_context(bfcl_run.serve(args.model, args.engine, mode, extra)) for mode in modes
        ]
        results = bfcl_run.run_samples(servers, samples, args.max_tokens, speed=not args.no_speed)
    runs = {
        label: {"samples": rows, "summary": summarize(rows, args.categories)}
        for label, rows in results.items()
    }
    sections = [bfcl_table(label, run["summary"]) for label, run in runs.items()]
    if set(runs) == {"constrain on", "constrain off"}:
        sections.append(comparison_table(runs["constrain on"]["summary"], runs["constrain off"]["summary"]))
    return runs, sections


def load_suite(directory: Path = HERE) -> Any | None:
    """``agent_suite.py`` from ``directory`` (this script's), or None when it is not there."""
    path = directory / "agent_suite.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("agent_suite", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["agent_suite"] = module  # for dataclasses and pickling, which look modules up by name
    spec.loader.exec_module(module)
    return module


def run_suite_part(
    args: argparse.Namespace, directory: Path = HERE
) -> tuple[dict[str, Any] | None, list[str]]:
    suite = load_suite(directory)
    if suite is None:
        message = (
            f"agent task suite: {directory / 'agent_suite.py'} is not there yet; the suite part did not run"
        )
        if args.part == "suite":
            raise SystemExit(message)
        print(f"note: {message}", file=sys.stderr)
        return None, [f"#### Agent task suite\n\n{message}."]
    import chatforge

    modes = ["on", "off"] if args.constrain == "both" else [args.constrain]
    results, sections = {}, []
    for mode in modes:
        model = chatforge.load_model(args.model, engine=args.engine, constrain=mode == "on")
        try:
            result = suite.run_suite(model)
        finally:
            model.engine.close()
        results[f"constrain {mode}"] = result
        sections.append(suite_table(f"constrain {mode}", result))
    return results, sections


def suite_table(label: str, result: dict[str, Any]) -> str:
    lines = [f"#### Agent task suite ({label})", "", "| mode | passed | accuracy |", "| --- | ---: | ---: |"]
    for mode, (passed, total) in result["by_mode"].items():
        lines.append(f"| {mode} | {passed}/{total} | {_pct(passed, total)} |")
    lines += ["", "| task | mode | lang | passed | seconds |", "| --- | --- | --- | :---: | ---: |"]
    for task in result["tasks"]:
        mark = "yes" if task["passed"] else "no"
        lines.append(f"| {task['id']} | {task['mode']} | {task['lang']} | {mark} | {task['seconds']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load_before = os.getloadavg()[0]
    record: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        "started": started,
        "model": args.model,
        "engine": args.engine,
        "bfcl_version": bfcl_support.BFCL_VERSION,
        "limit": args.limit,
        "categories": args.categories,
        "max_tokens": args.max_tokens,
        "threads": args.threads,
    }
    sections: list[str] = []
    if args.part in ("bfcl", "all"):
        record["bfcl"], bfcl_sections = run_bfcl(args)
        sections += bfcl_sections
    if args.part in ("suite", "all"):
        record["suite"], suite_sections = run_suite_part(args)
        sections += suite_sections
    load_after = os.getloadavg()[0]
    record["load_average"] = [load_before, load_after]
    head = (
        f"### Agent quality, {started} (model {args.model}, engine {args.engine}; "
        f"load average {load_before:.1f} before, {load_after:.1f} after)"
    )
    text = "\n\n".join([head, *sections]) + "\n"
    print(text)
    out = args.out or DEFAULT_OUT / f"agent-quality-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"every sample: {out}")
    if args.report:
        args.report.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
