"""LoRA training throughput on the embedded default model: multi-turn vs split, packed vs padded.

Generates a deterministic synthetic set of 3-5-turn Chinese/English conversations (the
reference workload of docs/models.md: 64 conversations, ~31k tokens), then trains one epoch of LoRA
(r=8 on q_proj/v_proj, batch 4, max length 512, bf16) through ``chatforge.train.train`` --
the code ``chatforge train`` runs -- for each layout:

* ``multi``: one sample per conversation, every assistant turn trained (``loss_mode: assistant``);
* ``split``: one sample per assistant turn (the conversation up to that turn, ``loss_mode: last``);

each padded (to the longest row in the batch) and packed (``data.packing: true``).
It prints a Markdown table: wall time of the training loop, tokens/s (all tokens and
trained tokens) and samples/s (conversations and rows).

    .venv/bin/python benchmarks/train_throughput.py                      # full reference (64 conversations)
    .venv/bin/python benchmarks/train_throughput.py --conversations 16   # reduced
    .venv/bin/python benchmarks/train_throughput.py --configs multi-padded,multi-packed --max-steps 4

jemalloc (Debian's libjemalloc2) is preloaded by re-executing the script with ``LD_PRELOAD``
unless ``--no-jemalloc`` is given or it is not installed. Load the model once; each run
trains a fresh copy. Checkpoint saving is off (``save_steps`` past the end); the final
adapter is still written, outside the timed loop.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from chatforge.train.allocator import jemalloc_loaded, reexec_with_jemalloc

CONFIGS = ("multi-padded", "multi-packed", "split-padded", "split-packed")

# -- synthetic data ------------------------------------------------------------------------
EN_TOPICS = [
    "sourdough bread",
    "a home network",
    "learning the violin",
    "a vegetable garden",
    "marathon training",
    "saving for retirement",
    "a used bicycle",
    "writing a cover letter",
    "a trip to Lisbon",
    "houseplants",
    "a Python script",
    "sleep habits",
    "a board game night",
    "repainting a room",
    "learning Spanish",
]
EN_ASK = [
    "Can you help me with {t}?",
    "What should I know before starting with {t}?",
    "I'm stuck on {t}. Any advice?",
    "How would you plan {t} on a small budget?",
    "What are common mistakes with {t}?",
    "Could you explain the next step for {t}?",
    "That helps. What about the timing for {t}?",
    "How do I tell if {t} is going well?",
]
EN_SAY = [
    "Start small and keep notes so you can see what changes from one attempt to the next.",
    "The most common mistake is doing too much at once; pick one thing and get it right first.",
    "Set aside a fixed time each week, because consistency matters more than intensity here.",
    "Check the basics before anything else: the materials, the schedule and what you expect.",
    "If something goes wrong, change one variable at a time so you know what made the difference.",
    "A simple checklist helps a lot, especially for the steps you only do once in a while.",
    "Ask someone who has done it before; ten minutes of their time can save you a weekend.",
    "Budget about a fifth more than you think you need, for the things nobody mentions.",
    "Write down what worked, and review it after a month to decide what to keep.",
    "It is fine to be slow at first; speed comes after the routine is familiar.",
    "Look for free local resources such as libraries, clubs and community workshops.",
    "Measure progress with one clear number so you are not guessing whether it improves.",
]
ZH_TOPICS = [
    "学习做饭",
    "准备考试",
    "整理房间",
    "开始跑步",
    "学习编程",
    "养一只猫",
    "去云南旅行",
    "写工作总结",
    "练习书法",
    "存钱买房",
    "种植多肉",
    "学习摄影",
    "改善睡眠",
    "准备面试",
]
ZH_ASK = [
    "你能帮我规划一下{t}吗？",
    "关于{t}，新手需要注意什么？",
    "我在{t}上遇到了困难，有什么建议？",
    "{t}一般需要多长时间才能看到效果？",
    "{t}最常见的错误是什么？",
    "那接下来{t}应该怎么做？",
    "如果预算有限，{t}该怎么安排？",
    "怎样判断{t}进展得好不好？",
]
ZH_SAY = [
    "先从小目标开始，每次记录下做了什么，这样更容易发现问题。",
    "最常见的错误是一开始就想做太多，建议先把一件事做好。",
    "每周固定一个时间，坚持比强度更重要。",
    "遇到问题时，一次只改变一个因素，这样才知道是什么起了作用。",
    "可以准备一张简单的清单，尤其是那些不常做的步骤。",
    "多向有经验的人请教，几分钟的交流可能帮你省下很多时间。",
    "预算最好比预想的多留两成，用来应付意外的开销。",
    "一个月后回顾一下记录，决定哪些方法值得保留。",
    "刚开始慢一点没有关系，熟悉流程以后速度自然会提高。",
    "可以利用图书馆、社区活动等免费资源。",
    "用一个清楚的指标来衡量进步，不要凭感觉判断。",
    "注意休息，保持好的状态比一时的进度更重要。",
]


def make_conversations(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """``n`` conversations of 3-5 user/assistant rounds, alternately English and Chinese."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        zh = i % 2 == 1
        topics, asks, says = (ZH_TOPICS, ZH_ASK, ZH_SAY) if zh else (EN_TOPICS, EN_ASK, EN_SAY)
        topic = rng.choice(topics)
        msgs = []
        for _ in range(rng.randint(3, 5)):
            ask = rng.choice(asks).format(t=topic)
            extra = rng.sample(says, rng.randint(0, 2))  # the user gives some context
            msgs.append({"role": "user", "content": (" " if not zh else "").join([ask, *extra])})
            answer = rng.sample(says, rng.randint(2, 5))
            msgs.append({"role": "assistant", "content": (" " if not zh else "").join(answer)})
        out.append(msgs)
    return out


def write_data(convs: list[list[dict[str, str]]], folder: Path) -> tuple[Path, Path]:
    """``multi.jsonl`` (one record per conversation) and ``split.jsonl`` (one per assistant turn)."""
    multi, split = folder / "multi.jsonl", folder / "split.jsonl"
    with multi.open("w", encoding="utf-8") as fm, split.open("w", encoding="utf-8") as fs:
        for msgs in convs:
            fm.write(json.dumps({"conversations": msgs}, ensure_ascii=False) + "\n")
            for k, m in enumerate(msgs):
                if m["role"] == "assistant":
                    fs.write(json.dumps({"conversations": msgs[: k + 1]}, ensure_ascii=False) + "\n")
    return multi, split


# -- measurement --------------------------------------------------------------------------
class Counting:
    """Counts what the model really trains on: the collator notes each batch, and a hook on the
    input embedding counts it when a forward pass consumes it (the Trainer may collate a batch
    it never trains on when ``max_steps`` stops it early)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.batches = self.rows = self.tokens = self.trained = self.padded = 0
        self.pending: list[tuple[Any, int, int, int, int]] = []

    def install(self) -> None:
        from chatforge.train import dataset

        original = dataset.Collator.__call__
        counter = self

        def call(self: Any, features: list[dict[str, list[int]]]) -> Any:
            batch = original(self, features)
            counter.pending.append(
                (
                    batch["input_ids"],
                    len(features),
                    sum(len(f["input_ids"]) for f in features),
                    int((batch["labels"] != -100).sum()),  # after packing's first-label mask
                    batch["input_ids"].numel(),
                )
            )
            return batch

        dataset.Collator.__call__ = call

    def hook(self, model: Any) -> None:
        import torch

        def pre(module: Any, inputs: tuple[Any, ...]) -> None:
            ids = inputs[0]
            for i, (seen, rows, tokens, trained, padded) in enumerate(self.pending):
                if seen.shape == ids.shape and torch.equal(seen, ids.to(seen.device)):
                    del self.pending[i]
                    self.batches += 1
                    self.rows += rows
                    self.tokens += tokens
                    self.trained += trained
                    self.padded += padded
                    return

        model.get_input_embeddings().register_forward_pre_hook(pre)


def timer_callback() -> Any:
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        start = end = 0.0
        first_step = 0.0

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, *a: Any, **k: Any) -> None:
            if state.global_step == 1:
                self.first_step = time.perf_counter() - self.start

        def on_train_end(self, *a: Any, **k: Any) -> None:
            self.end = time.perf_counter()

    return Timer()


def loadavg() -> str:
    try:
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def run_one(
    name: str,
    files: dict[str, Path],
    base: Any,
    tokenizer: Any,
    source: str,
    args: argparse.Namespace,
    counter: Counting,
    work: Path,
) -> dict[str, Any]:
    from chatforge.train.config import build_config
    from chatforge.train.trainer import train

    layout, padding = name.split("-")
    cfg = build_config(
        {
            "model.name_or_path": source,
            "data.train_file": str(files[layout]),
            "data.format": "chatglm3",
            "data.max_length": args.max_length,
            "data.loss_mode": "assistant" if layout == "multi" else "last",
            "data.packing": padding == "packed",
            "lora.r": 8,
            "lora.alpha": 16,
            "lora.target_modules": ["q_proj", "v_proj"],
            "training.output_dir": str(work / name),
            "training.batch_size": args.batch_size,
            "training.num_epochs": 1,
            "training.max_steps": args.max_steps,
            "training.bf16": args.bf16,
            "training.gradient_checkpointing": False,
            "training.save_steps": 10**9,  # no checkpoint inside the timed loop
            "training.logging_steps": 1,
            "training.plot": False,
            "training.progress_bar": False,
        },
        source="train_throughput",
    )
    model = copy.deepcopy(base)
    counter.hook(model)
    timer = timer_callback()
    counter.reset()
    load0 = loadavg()
    t0 = time.perf_counter()
    result = train(cfg, model=model, tokenizer=tokenizer, base_model=source, callbacks=[timer])
    total = time.perf_counter() - t0
    loop = timer.end - timer.start
    s = result.stats["train"]
    steps = result.global_step
    full_epoch = args.max_steps <= 0
    return {
        "config": name,
        "conversations": args.conversations,
        "samples": s["samples"],
        "rows": s["rows"],
        "steps": steps,
        "full_epoch": full_epoch,
        "loop_s": round(loop, 2),
        "first_step_s": round(timer.first_step, 2),
        "train_call_s": round(total, 2),
        "rows_seen": counter.rows,
        "tokens_seen": counter.tokens,
        "trained_seen": counter.trained,
        "padded_seen": counter.padded,
        "dataset_tokens": s["tokens"],
        "dataset_trained": s["trained_tokens"],
        "tokens_per_s": round(counter.tokens / loop, 1),
        "trained_per_s": round(counter.trained / loop, 1),
        "rows_per_s": round(counter.rows / loop, 3),
        # conversations per second: the unit the layouts share (a packed row or split sample is not one)
        "conversations_per_s": round(args.conversations * counter.tokens / max(s["tokens"], 1) / loop, 3),
        # what one epoch of this run's data takes at the measured rate
        "epoch_s": round(loop if full_epoch else loop * s["tokens"] / max(counter.tokens, 1), 1),
        "final_loss": result.losses[-1] if result.losses else None,
        "load_before": load0,
        "load_after": loadavg(),
    }


def table(rows: list[dict[str, Any]], ref_convs: int) -> str:
    head = (
        "| layout | rows (samples) | steps | epoch s | tokens/s | trained tokens/s | rows/s | "
        f"conversations/s | {ref_convs}-conv epoch s (est.) | pad overhead | load 1/5/15 min (before → after) |"
    )
    lines = [head, "|" + " --- |" * 11]
    for r in rows:
        scale = ref_convs / r["conversations"]
        epoch = f"{r['epoch_s']}" + ("" if r["full_epoch"] else " (proj.)")
        lines.append(
            f"| {r['config']} | {r['rows']} ({r['samples']}) | {r['steps']} | {epoch} | {r['tokens_per_s']} | "
            f"{r['trained_per_s']} | {r['rows_per_s']} | {r['conversations_per_s']} | "
            f"{r['epoch_s'] * scale:.0f} | {r['padded_seen'] / max(r['tokens_seen'], 1):.2f}× | "
            f"{r['load_before']} → {r['load_after']} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--conversations", type=int, default=64)
    p.add_argument("--max-steps", type=int, default=-1, help="stop each run after N steps (-1: one epoch)")
    p.add_argument(
        "--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {', '.join(CONFIGS)}"
    )
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--bf16", default="auto", choices=["auto", "true", "false"])
    p.add_argument("--dtype", default="auto", help="weights dtype (model.dtype)")
    p.add_argument("--seed", type=int, default=0, help="data seed")
    p.add_argument("--model", default="default")
    p.add_argument("--json", default="", help="also write the raw results here")
    p.add_argument("--no-jemalloc", action="store_true")
    args = p.parse_args()

    if not args.no_jemalloc:
        reexec_with_jemalloc(sys.argv)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    for n in names:
        if n not in CONFIGS:
            p.error(f"unknown config {n!r}; choose from {', '.join(CONFIGS)}")

    import logging

    import torch
    import transformers

    from chatforge.train.config import build_config
    from chatforge.train.trainer import load_for_training

    logging.basicConfig(level=logging.WARNING)
    transformers.logging.set_verbosity_error()
    counter = Counting()
    counter.install()
    jemalloc = jemalloc_loaded()
    print(
        f"# {dt.datetime.now():%Y-%m-%d %H:%M} · torch {torch.__version__} · transformers "
        f"{transformers.__version__} · {torch.get_num_threads()} threads · jemalloc {'on' if jemalloc else 'off'}"
        f" · load {loadavg()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="cf-train-bench-") as tmp:
        work = Path(tmp)
        multi, split = write_data(make_conversations(args.conversations, args.seed), work)
        probe = build_config(
            {"data.train_file": str(multi), "model.name_or_path": args.model, "model.dtype": args.dtype}
        )
        base, tokenizer, source = load_for_training(probe)
        print(f"# model {source} · {base.dtype} · data: {args.conversations} conversations", flush=True)
        rows = []
        for name in names:
            r = run_one(name, {"multi": multi, "split": split}, base, tokenizer, source, args, counter, work)
            rows.append(r)
            print("# " + json.dumps(r, ensure_ascii=False), flush=True)
        m = rows[0]
        print(
            f"\ndata: {m['dataset_tokens']} tokens ({m['dataset_trained']} trained) in {args.conversations} "
            f"conversations"
            if m["config"].startswith("multi")
            else ""
        )
        print(table(rows, 64))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2, ensure_ascii=False), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
