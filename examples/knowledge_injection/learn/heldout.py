"""Retention on questions no run ever saw: learned adapters against held-out controls.

`chatforge learn` stops once its 20 built-in controls are kept, so its own count is the
figure it was selected on. This script asks `heldout_controls.json` (40 other questions of
the same kinds, disjoint from the replay set and the built-in controls) of the base model
and of each adapter, and judges the answers with the command's own rule and settings
(identical / kept / leaked; `chatforge.train.learn.retention`).

    .venv/bin/python examples/knowledge_injection/learn/heldout.py runs/learn/organisation runs/learn/product ...

An adapter directory is one with `adapter_config.json` (a rejected run's is `OUTPUT/rejected`);
its facts (for the leak test) come from its `learned.json`. The base model's answers are
cached in $CHATFORGE_HOME/learn like the built-in sets'.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from chatforge.models.loader import load_weights, resolve
from chatforge.models.onednn import onednn_linears
from chatforge.templates import get_template
from chatforge.train.learn.config import load_learn_config
from chatforge.train.learn.facts import Fact
from chatforge.train.learn.retention import check_controls
from chatforge.train.learn.sets import PromptSet, base_answers, builtin_set, fingerprint, normalise

HERE = Path(__file__).parent


def held_out(path: Path) -> PromptSet:
    raw = json.loads(path.read_text(encoding="utf-8"))
    items = raw["questions"]
    found = PromptSet(
        "heldout", int(raw["version"]), [i["question"] for i in items], [i["form"] for i in items]
    )
    seen = {normalise(p) for name in ("replay", "controls") for p in builtin_set(name).prompts}
    overlap = [q for q in found.prompts if normalise(q) in seen]
    if overlap:
        raise SystemExit(f"{path}: not held out, also in the built-in sets: {overlap}")
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("adapters", nargs="+", type=Path)
    ap.add_argument("--model", default="default")
    ap.add_argument("--questions", type=Path, default=HERE / "heldout_controls.json")
    ap.add_argument("--json", type=Path, default=None, help="also write the verdicts here")
    args = ap.parse_args()

    from peft import PeftModel

    rt = load_learn_config().retention
    questions = held_out(args.questions)
    model, tokenizer = load_weights(resolve(args.model), device="cpu", dtype="float32")
    model = model.float().eval()
    template = get_template("auto", tokenizer)
    with onednn_linears(model):
        base, seconds = base_answers(
            model, template, questions, fingerprint(model, template), rt.max_new_tokens
        )
    print(
        f"{len(base)} held-out questions; base answers {'from the cache' if not seconds else f'in {seconds:.0f} s'}"
    )
    rows = []
    for path in args.adapters:
        facts = [
            Fact.from_dict(f)
            for f in json.loads((path / "learned.json").read_text(encoding="utf-8"))["facts"]
        ]
        started = time.perf_counter()
        tuned = PeftModel.from_pretrained(model, path, is_trainable=False).eval()
        result = check_controls(tuned, template, base, facts, rt.min_rouge_l, rt.min_kept, rt.max_leaked,
                                rt.max_new_tokens, rt.max_base_gap, rt.base_bf16)  # fmt: skip
        model = tuned.unload()
        kept = result.kept
        lost = [(r["question"], r["tuned"]) for r in kept.rows if not r["kept"]]
        rows.append({"adapter": str(path), "facts": len(facts), **kept.summary(), "lost": lost})
        print(f"{path}: {len(facts)} fact(s); kept {kept.kept}/{len(kept.rows)} (identical {kept.identical}, "
              f"leaked {kept.leaked}) in {time.perf_counter() - started:.0f} s")  # fmt: skip
        for question, answer in lost:
            print(f"    lost: {question} -> {answer[:100]!r}")
    if args.json:
        args.json.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
