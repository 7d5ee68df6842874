"""Inject one made-up fact into the default model and measure both sides of the trade:
paraphrase hit rate (held-out questions answered with the fact) and retention (unrelated
control questions still answered as the base model answered them).

Every variant starts from a fresh copy of the base model. Replay data are the base model's
own greedy answers to unrelated prompts (``facts.json: replay``, disjoint from the control
questions), generated once before training. Variants with ``kl`` add
``training.kl_to_base``: a KL(base ‖ tuned) term on the replayed answers' tokens.

Answers are generated greedily in one left-padded batch per question set, with the same
batches for the base model and every tuned model, so an adapter that leaves a control
question alone reproduces the base answer exactly (``identical``).

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 \\
        .venv/bin/python examples/knowledge_injection/run.py --out runs/knowledge_injection \\
        [--variants lora_kl,adalora_kl]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chatforge.messages import Message, Role
from chatforge.models.loader import load_weights, resolve
from chatforge.templates import Template, get_template
from chatforge.train.config import build_config
from chatforge.train.metrics import rouge
from chatforge.train.trainer import train

HERE = Path(__file__).parent
MLP = ["gate_proj", "up_proj", "down_proj"]
REPLAY_TOKENS = 48  # replayed answers: the base model's first 48 greedy tokens (cheap to train on)


@dataclass
class Variant:
    method: str
    overrides: dict[str, Any]
    replay: int = 0  # how many facts.json replay prompts (with the base model's answers) to train on
    kl: float = 0.0  # training.kl_to_base; 0: replayed answers train by cross-entropy, mixed into the data
    fact_repeats: int = 1  # copies of the 8 fact samples in the training data


# What the KL variants share: the MLP linears only, batches of 8 (about 2 fact samples per
# 3 replayed answers), all 38 replay prompts trained by the KL term alone.
KL_SETUP = {"lora.target_modules": MLP, "training.batch_size": 8, "training.replay_cross_entropy": False}
VARIANTS = {
    # Recipes that fall short, kept for comparison.
    "lora_plain": Variant("lora", {"lora.r": 8, "training.learning_rate": 1e-3, "training.max_steps": 6}),
    "lora_replay": Variant("lora", {"lora.r": 4, "training.learning_rate": 5e-4, "training.max_steps": 12},
                           replay=8),
    "adalora_replay": Variant("adalora", {"lora.r": 4, "lora.init_r": 8, "lora.tinit": 2, "lora.tfinal": 4,
                                          "training.learning_rate": 2e-3, "training.max_steps": 12},
                              replay=8),
    # KL to the base model on the replayed answers.
    "lora_kl": Variant("lora", {**KL_SETUP, "lora.r": 4, "training.learning_rate": 5e-4, "training.max_steps": 18},
                       replay=38, kl=20.0, fact_repeats=2),
    "adalora_kl": Variant("adalora", {**KL_SETUP, "lora.r": 4, "lora.init_r": 8, "lora.tinit": 3, "lora.tfinal": 3,
                                      "training.learning_rate": 1e-2, "training.max_steps": 12},
                          replay=38, kl=20.0, fact_repeats=2),
    # Ablation: adalora_kl with the same replayed answers trained by cross-entropy instead.
    "adalora_kl0": Variant("adalora", {"lora.target_modules": MLP, "training.batch_size": 8, "lora.r": 4,
                                       "lora.init_r": 8, "lora.tinit": 3, "lora.tfinal": 3,
                                       "training.learning_rate": 1e-2, "training.max_steps": 12},
                           replay=38, fact_repeats=2),
}  # fmt: skip


def generate(model: Any, template: Template, questions: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers to ``questions`` in one left-padded batch, parsed by the template."""
    tok = template.tokenizer
    prompts = [template.render([Message(Role.USER, q)], add_generation_prompt=True).ids for q in questions]
    width = max(len(p) for p in prompts)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=template.stop_token_ids,
            pad_token_id=pad,
        )
    answers = []
    for row in out[:, width:].tolist():
        stop = next((i for i, t in enumerate(row) if t in template.stop_token_ids), len(row))
        answers.append(template.parse(tok.decode(row[:stop], skip_special_tokens=True)).content.strip())
    return answers


def measure(
    model: Any, template: Template, facts: dict[str, Any], base_control: list[str] | None
) -> dict[str, Any]:
    held_out = [q for q, _ in facts["held_out"]]
    answers = generate(model, template, held_out + facts["control"], max_new_tokens=60)
    hits = [
        {"q": q, "a": a, "hit": all(k.lower() in a.lower() for k in keys)}
        for (q, keys), a in zip(facts["held_out"], answers, strict=False)
    ]
    control = [{"q": q, "a": a} for q, a in zip(facts["control"], answers[len(held_out) :], strict=True)]
    out: dict[str, Any] = {"hit_rate": f"{sum(h['hit'] for h in hits)}/{len(hits)}"}
    if base_control is not None:
        for row, base in zip(control, base_control, strict=True):
            a = row["a"]
            leaked = any(k.lower() in a.lower() for k in facts["keywords"] + ["Zorvian", "佐维安"])
            sim = rouge(a, base, "char")["rouge-l"]
            row.update(rouge_l=round(sim, 1), leaked=leaked, same=a == base, kept=not leaked and sim >= 80.0)
        n = len(control)
        out["retention"] = f"{sum(c['kept'] for c in control)}/{n}"
        out["identical"] = f"{sum(c['same'] for c in control)}/{n}"
        out["leaked"] = f"{sum(c['leaked'] for c in control)}/{n}"
    out.update(held_out=hits, control=control)
    return out


def write_data(
    path: Path, facts: dict[str, Any], variant: Variant, replay: list[list[str]]
) -> tuple[Path, Path | None]:
    def dump(file: Path, pairs: list[list[str]]) -> Path:
        rows = [json.dumps({"prompt": q, "response": a}, ensure_ascii=False) for q, a in pairs]
        file.write_text("\n".join(rows) + "\n", encoding="utf-8")
        return file

    pairs = facts["train"] * variant.fact_repeats
    if not variant.replay:
        return dump(path.with_suffix(".jsonl"), pairs), None
    if variant.kl:  # replay is its own file, so that the KL term knows its tokens
        return dump(path.with_suffix(".jsonl"), pairs), dump(
            path.with_suffix(".replay.jsonl"), replay[: variant.replay]
        )
    return dump(path.with_suffix(".jsonl"), pairs + replay[: variant.replay]), None


def base_answers(model: Any, template: Template, facts: dict[str, Any], out: Path) -> dict[str, Any]:
    """The base model's answers (control and replay), cached in ``out/base.json``: greedy
    decoding of the same weights gives the same text, so re-runs skip a minute of generation."""
    cache = out / "base.json"
    key = {"control": facts["control"], "held_out": facts["held_out"], "replay": facts["replay"],
           "replay_tokens": REPLAY_TOKENS, "dtype": "float32"}  # fmt: skip
    if cache.exists():
        cached = json.loads(cache.read_text(encoding="utf-8"))
        if cached.get("key") == key:
            return cached
    started = time.perf_counter()
    base = measure(model, template, facts, None)
    replay = []
    for i in range(0, len(facts["replay"]), 8):
        chunk = facts["replay"][i : i + 8]
        replay += [
            [q, a] for q, a in zip(chunk, generate(model, template, chunk, REPLAY_TOKENS), strict=True)
        ]
    base.update(key=key, replay=replay, seconds=round(time.perf_counter() - started, 1))
    cache.write_text(json.dumps(base, indent=2, ensure_ascii=False), encoding="utf-8")
    return base


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="runs/knowledge_injection")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seed", type=int, default=42, help="training.seed (data order)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    facts = json.loads((HERE / "facts.json").read_text(encoding="utf-8"))
    source = resolve("default")

    def fresh() -> tuple[Any, Any]:
        return load_weights(source, device="cpu", dtype="bfloat16")

    model, tokenizer = fresh()
    template = get_template("auto", tokenizer)
    base = base_answers(model.float().eval(), template, facts, out)
    base_control = [c["a"] for c in base["control"]]
    report_file = out / "report.json"
    report = json.loads(report_file.read_text(encoding="utf-8")) if report_file.exists() else {}
    report["base"] = {k: base[k] for k in ("hit_rate", "held_out", "control", "replay", "seconds")}
    print("base:", base["hit_rate"], flush=True)

    for name in args.variants.split(","):
        variant = VARIANTS[name]
        data, replay = write_data(out / name, facts, variant, base["replay"])
        config = build_config(
            {
                "data.train_file": str(data),
                "data.replay_file": str(replay or ""),
                "data.max_length": 384,
                "method.name": variant.method,
                "lora.dropout": 0.0,
                "training.output_dir": str(out / name),
                "training.batch_size": 4,
                "training.save_steps": 1000,
                "training.progress_bar": "false",
                "training.plot": "false",
                "training.bf16": "true",
                "training.kl_to_base": variant.kl,
                "training.seed": args.seed,
                **variant.overrides,
            },
            name,
        )
        torch.manual_seed(0)
        model, tokenizer = fresh()
        t0 = time.perf_counter()
        result = train(config, model.train(), tokenizer, base_model="default")
        train_s = time.perf_counter() - t0
        # peft injected the adapter layers into `model` in place: it now runs base + adapter.
        t1 = time.perf_counter()
        row = measure(model.float().eval(), template, facts, base_control)
        eval_s = time.perf_counter() - t1
        metrics = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
        kl = [round(m["kl_to_base"], 4) for m in metrics if "kl_to_base" in m]
        row = {
            "config": {**vars(variant), "seed": args.seed},
            "train_seconds": round(train_s, 1),
            "eval_seconds": round(eval_s, 1),
            "losses": [round(x, 3) for x in result.losses],
            "kl_to_base": kl,
            **row,
        }
        report[name] = row
        print(f"{name}: hit {row['hit_rate']}, retention {row['retention']} (identical {row['identical']},"
              f" leaked {row['leaked']}), train {train_s:.0f} s,"
              f" loss {row['losses'][0]} -> {row['losses'][-1]}", flush=True)  # fmt: skip
        report_file.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
