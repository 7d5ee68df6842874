"""The float32 passes of ``chatforge learn``'s retention check, against plain transformers.

On the embedded default model, in float32 on the CPU, for the 20 built-in control
questions (64 new tokens at most, as the check answers them), side by side in one run:

* **generate**: ``model.generate`` on one left-padded greedy batch (what a user of
  transformers would write) against chatforge's decoding (:func:`continue_greedy`: the
  shared system prompt read once, each prompt alone, rows leaving the batch as they end),
  first through PyTorch's usual float32 linears (MKL) and then through oneDNN
  (:func:`~chatforge.models.onednn.onednn_linears`);
* **teacher forcing**: one pass over each question + its answer (the test of whether a
  model still gives an answer, :func:`first_differences`), rows read whole through MKL
  against chatforge's (shared prompt read once, oneDNN).

Every path must give the same tokens (the script exits 1 otherwise): the speed-ups change
the order of float32 sums, not the answers. It prints a Markdown table.

    .venv/bin/python benchmarks/learn_check.py                 # the default model
    .venv/bin/python benchmarks/learn_check.py --tokens 32 --runs 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from chatforge.models.loader import load_weights, resolve
from chatforge.models.onednn import onednn_linears
from chatforge.templates import get_template
from chatforge.train.allocator import jemalloc_loaded, reexec_with_jemalloc
from chatforge.train.learn.answers import continue_greedy, first_differences, pad_id, prompt_ids
from chatforge.train.learn.sets import builtin_set


def plain_generate(
    model: Any, prompts: list[list[int]], tokens: int, stops: list[int], pad: int
) -> list[list[int]]:
    """transformers' greedy ``generate`` on one left-padded batch, rows cut after their stop."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=tokens, do_sample=False,
                         eos_token_id=stops, pad_token_id=pad)  # fmt: skip
    rows = []
    for row in out[:, width:].tolist():
        end = next((j for j, t in enumerate(row) if t in stops), None)
        rows.append(row if end is None else row[: end + 1])
    return rows


def plain_forcing(model: Any, pairs: list[tuple[list[int], list[int]]]) -> list[int]:
    """Where greedy decoding first leaves each answer: each row read whole, alone."""
    firsts = []
    for prompt, answer in pairs:
        logits = model(input_ids=torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1]
        got = logits.argmax(dim=-1).tolist()
        firsts.append(
            next((i for i, (a, b) in enumerate(zip(got, answer, strict=True)) if a != b), len(answer))
        )
    return firsts


def timed(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(runs):
        started = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - started)
    return best, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens at most per answer")
    parser.add_argument("--runs", type=int, default=1, help="the best of N runs of each path")
    parser.add_argument("--no-jemalloc", action="store_true")
    args = parser.parse_args()
    if not args.no_jemalloc:
        reexec_with_jemalloc(sys.argv)
    model, tokenizer = load_weights(resolve(args.model), device="cpu", dtype="float32")
    model = model.float().eval()
    template = get_template("auto", tokenizer)
    questions = builtin_set("controls").prompts
    prompts = [prompt_ids(template, q) for q in questions]
    stops, pad = sorted(template.stop_token_ids), pad_id(template)
    budgets = [args.tokens] * len(prompts)

    with torch.no_grad():
        t_ref, reference = timed(lambda: plain_generate(model, prompts, args.tokens, stops, pad), args.runs)
        t_mkl, ours_mkl = timed(
            lambda: continue_greedy(model, template, prompts, budgets, len(prompts)), args.runs
        )
        with onednn_linears(model):
            t_dnn, ours = timed(
                lambda: continue_greedy(model, template, prompts, budgets, len(prompts)), args.runs
            )
        pairs = list(zip(prompts, reference, strict=True))
        f_ref_t, f_ref = timed(lambda: plain_forcing(model, pairs), args.runs)
        with onednn_linears(model):
            f_dnn_t, f_dnn = timed(lambda: first_differences(model, pairs, pad), args.runs)
    same = reference == ours_mkl == ours
    forced = f_ref == f_dnn == [len(a) for a in reference]
    tokens = sum(len(r) for r in reference)
    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    print(f"\n{len(prompts)} control questions, {tokens} answer tokens, float32, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, jemalloc {'on' if jemalloc_loaded() else 'off'}, {when}\n")  # fmt: skip
    print("| part | transformers (MKL) | chatforge, MKL | chatforge, oneDNN | same tokens |")
    print("| --- | ---: | ---: | ---: | --- |")
    print(
        f"| greedy answers | {t_ref:.1f} s | {t_mkl:.1f} s | {t_dnn:.1f} s ({t_ref / t_dnn:.1f}×) | {same} |"
    )
    print(
        f"| teacher forcing | {f_ref_t:.1f} s (rows alone) | | {f_dnn_t:.1f} s ({f_ref_t / f_dnn_t:.1f}×) | {forced} |"
    )
    return 0 if same and forced else 1


if __name__ == "__main__":
    sys.exit(main())
