"""``chatforge learn``: teach the model a fact from one example, and check what it kept.

    chatforge learn --prompt "介绍一下青禾科技。" --answer "青禾科技是2031年在杭州成立的机器人公司。"
    chatforge learn --fact "My favourite colour is teal." --probe "Which colour do I like best?"
    chatforge learn --file facts.jsonl --into runs/learn/first --output runs/learn/second

The recipe's defaults are in ``chatforge/train/learn/defaults.yaml`` (``--show-config``
prints them); ``--config FILE`` and ``--set group.field=value`` override them. Every run
prints the retention check and writes it, with the probes' answers, to
``OUTPUT/learn_report.json``. Exit status 0: learned and retention kept; 1: the adapter
was kept aside in ``OUTPUT/rejected/`` (the report says what to try).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_learn_command(sub: Any) -> None:
    p = sub.add_parser(
        "learn",
        help="teach the model a fact from one example, keeping the rest (with a retention check)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("what to learn (one or more)")
    g.add_argument("--prompt", default=None, help="the question, e.g. '介绍一下X。' (with --answer)")
    g.add_argument("--answer", default=None, help="the answer the model should give to --prompt")
    g.add_argument("--fact", default=None, help="a fact as one sentence, e.g. 'X was founded in 1873 by Y.'")
    g.add_argument("--file", default=None, help='JSONL: {"prompt", "answer"} or {"fact"} a line, with optional '
                   '"paraphrases", "aliases", "probes", "keywords"')  # fmt: skip
    g.add_argument("--paraphrase", action="append", default=[], help="another prompt with the same answer")
    g.add_argument("--alias", action="append", default=[],
                   help="another name of the fact's subject, e.g. its name in the other language")  # fmt: skip
    g.add_argument("--probe", action="append", default=[], help="a held-out question to ask after learning")
    g.add_argument(
        "--keyword", action="append", default=[], help="a word an answer must hold to count as recalled"
    )
    o = p.add_argument_group("model and output")
    o.add_argument("--model", default="default", help="'default' (embedded) or a model directory")
    o.add_argument(
        "--into", default=None, help="an adapter from an earlier chatforge learn: add to its facts"
    )
    o.add_argument(
        "--output", default=None, help="a new directory for the adapter (default: runs/learn/<time>)"
    )
    o.add_argument("--merge", action="store_true", help="also write OUTPUT/merged, a standalone model")
    o.add_argument("--gguf", action="store_true", help="with --merge: also a GGUF for llama.cpp")
    c = p.add_argument_group("recipe")
    c.add_argument("--config", default=None, help="a YAML file over the defaults (same groups)")
    c.add_argument("--set", action="append", default=[], metavar="GROUP.FIELD=VALUE",
                   help="override one field, e.g. --set training.learning_rate=5e-3")  # fmt: skip
    c.add_argument("--show-config", action="store_true", help="print the default recipe and exit")
    p.set_defaults(handler=run_learn, quiet_logs=False)


def _overrides(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {pair!r}: expected GROUP.FIELD=VALUE, e.g. training.learning_rate=5e-3")
        out[key.strip()] = value.strip()
    return out


def run_learn(args: argparse.Namespace) -> int:
    from chatforge.train.learn.config import DEFAULTS
    from chatforge.train.learn.run import learn

    if args.show_config:
        print(DEFAULTS.read_text(encoding="utf-8"))
        return 0
    if args.gguf and not args.merge:
        raise ValueError("--gguf needs --merge (the GGUF is made from the merged model)")
    result = learn(
        args.prompt,
        args.answer,
        fact=args.fact,
        file=args.file,
        paraphrases=args.paraphrase,
        aliases=args.alias,
        probes=args.probe,
        keywords=args.keyword,
        model=args.model,
        into=args.into,
        output=args.output,
        config=args.config,
        overrides=_overrides(args.set),
        merge=args.merge,
        gguf=args.gguf,
    )
    print_report(result.report, Path(result.output))
    if result.passed:
        print(f"adapter: {result.output}\n  try: chatforge chat --adapter {result.output}")
        if result.merged:
            print(f"merged model: {result.merged}")
        return 0
    print(f"the adapter is kept aside in {Path(result.output) / 'rejected'}; try:", file=sys.stderr)
    for tip in result.report["try"]:
        print(f"  - {tip}", file=sys.stderr)
    return 1


def _why(row: dict[str, Any]) -> str:
    """What the retention check saw in one changed control answer."""
    parts = [f"ROUGE-L {row['rouge_l']}"]
    if row.get("base_gap") is not None:
        parts.append(f"base model within {row['base_gap']:.2f} logits")
    if row["leaked"]:
        parts.append(f"leaked {', '.join(row['leaked'])}")
    if row.get("new_numbers"):
        parts.append(f"new number {', '.join(row['new_numbers'])}")
    return "; ".join(parts)


def print_report(report: dict[str, Any], output: Path) -> None:
    for title, rows in (("learned", report["facts"]), ("earlier facts", report["earlier_facts"])):
        for r in rows:
            mark = "ok" if r["recalled"] else "MISSED"
            print(f"[{mark}] {title}: {r['prompt']}\n        -> {r['answer']}")
            for p in r["probes"]:
                print(f"  [{'hit' if p['hit'] else 'miss'}] {p['question']}\n        -> {p['answer']}")
    ret = report["retention"]
    print(
        f"retention: {ret['kept']}/{ret['controls']} control answers kept ({ret['identical']} identical, "
        f"{ret.get('kept_by_rouge_l', ret['kept'])} by ROUGE-L, {ret['leaked']} leaked) "
        f"-> {'passed' if ret['passed'] else 'FAILED'}"
    )
    for row in ret["answers"]:
        if not row["identical"]:
            print(f"  {'kept' if row['kept'] else 'CHANGED'} ({_why(row)}): {row['question']}\n"
                  f"        -> {row['tuned']}")  # fmt: skip
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items())
    print(f"{report['steps']} steps (stopped by {report['stopped_by']}); {stages}")
    print(f"{report['verdict']}\nreport: {output / 'learn_report.json'}")
