"""Inject one made-up fact into the default model and measure both sides of the trade:
paraphrase hit rate (held-out questions answered with the fact) and retention (unrelated
control questions still answered as the base model answered them).

Variants: plain LoRA as in MODELS.md (r=8, lr 1e-3, fact only), and LoRA / AdaLoRA with
replay: the base model's own greedy answers to unrelated prompts are mixed into the
training data, with a lower rank and learning rate.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 \
        .venv/bin/python examples/knowledge_injection/run.py --out /tmp/ki [--variants lora_replay]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from chatforge.chat import ChatModel
from chatforge.engines.hf import TransformersEngine
from chatforge.messages import Message, Role
from chatforge.models.loader import load_weights, resolve
from chatforge.templates import get_template
from chatforge.train.config import build_config
from chatforge.train.metrics import rouge
from chatforge.train.trainer import train

HERE = Path(__file__).parent
VARIANTS = {
    # name: (method, overrides, with replay)
    "lora_plain": ("lora", {"lora.r": 8, "training.learning_rate": 1e-3, "training.max_steps": 6}, False),
    "lora_replay": ("lora", {"lora.r": 4, "training.learning_rate": 5e-4, "training.max_steps": 12}, True),
    "adalora_replay": (
        "adalora",
        {"lora.r": 4, "lora.init_r": 8, "lora.tinit": 2, "lora.tfinal": 4, "training.learning_rate": 2e-3,
         "training.max_steps": 12},
        True,
    ),
}  # fmt: skip


def chat_model(model, tokenizer) -> ChatModel:
    return ChatModel(TransformersEngine(model, tokenizer), get_template("auto", tokenizer), model=model)


def ask(chat: ChatModel, question: str, max_new_tokens: int = 60) -> str:
    message, _ = chat.reply([Message(Role.USER, question)], max_new_tokens=max_new_tokens, do_sample=False)
    return message.content.strip()


def measure(chat: ChatModel, facts: dict, base_control: list[str] | None) -> dict:
    hits = []
    for question, keys in facts["held_out"]:
        answer = ask(chat, question)
        hits.append({"q": question, "a": answer, "hit": all(k.lower() in answer.lower() for k in keys)})
    control = []
    for i, question in enumerate(facts["control"]):
        answer = ask(chat, question)
        row = {"q": question, "a": answer}
        if base_control is not None:
            leaked = any(k.lower() in answer.lower() for k in facts["keywords"] + ["Zorvian", "佐维安"])
            sim = rouge(answer, base_control[i], "char")["rouge-l"]
            row.update(rouge_l=round(sim, 1), leaked=leaked, same=answer == base_control[i])
            row["kept"] = not leaked and sim >= 80.0
        control.append(row)
    out = {"hit_rate": f"{sum(h['hit'] for h in hits)}/{len(hits)}", "held_out": hits, "control": control}
    if base_control is not None:
        out["retention"] = f"{sum(c['kept'] for c in control)}/{len(control)}"
        out["identical"] = f"{sum(c['same'] for c in control)}/{len(control)}"
    return out


def write_data(path: Path, facts: dict, replay: list[tuple[str, str]]) -> Path:
    rows = [{"prompt": q, "response": a} for q, a in facts["train"]]
    rows += [{"prompt": q, "response": a} for q, a in replay]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="runs/knowledge_injection")
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    facts = json.loads((HERE / "facts.json").read_text(encoding="utf-8"))
    source = resolve("default")

    def fresh():
        return load_weights(source, device="cpu", dtype="bfloat16")

    model, tokenizer = fresh()
    base = chat_model(model, tokenizer)
    started = time.perf_counter()
    base_control = [ask(base, q) for q in facts["control"]]
    replay = [(q, ask(base, q, max_new_tokens=80)) for q in facts["replay"]]
    report = {"base": measure(base, facts, None)}
    report["base"]["control"] = [
        {"q": q, "a": a} for q, a in zip(facts["control"], base_control, strict=True)
    ]
    report["base"]["seconds"] = round(time.perf_counter() - started, 1)
    print("base:", report["base"]["hit_rate"], flush=True)

    for name in args.variants.split(","):
        method, overrides, with_replay = VARIANTS[name]
        data = write_data(out / f"{name}.jsonl", facts, replay if with_replay else [])
        config = build_config(
            {
                "data.train_file": str(data),
                "data.max_length": 384,
                "method.name": method,
                "lora.dropout": 0.0,
                "training.output_dir": str(out / name),
                "training.batch_size": 4,
                "training.save_steps": 1000,
                "training.progress_bar": "false",
                "training.bf16": "true",
                **overrides,
            },
            name,
        )
        torch.manual_seed(0)
        model, tokenizer = fresh()
        t0 = time.perf_counter()
        result = train(config, model.train(), tokenizer, base_model="default")
        train_s = time.perf_counter() - t0
        # peft injected the adapter layers into `model` in place: it now runs base + adapter.
        tuned = chat_model(model.eval(), tokenizer)
        row = measure(tuned, facts, base_control)
        row.update(train_seconds=round(train_s, 1), losses=[round(x, 3) for x in result.losses])
        report[name] = row
        print(f"{name}: hit {row['hit_rate']}, retention {row['retention']} (identical {row['identical']}),"
              f" train {train_s:.0f} s, loss {row['losses'][0]} -> {row['losses'][-1]}", flush=True)  # fmt: skip
        (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
