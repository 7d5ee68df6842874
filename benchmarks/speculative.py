"""Speculative decoding against plain llama.cpp, side by side in one run (docs/benchmarks.md,
"Speculative decoding").

    .venv/bin/python benchmarks/speculative.py                       # every workload
    .venv/bin/python benchmarks/speculative.py --part single --runs 3
    .venv/bin/python benchmarks/speculative.py --part draft          # the 1.5B model, 0.5B draft
    .venv/bin/python benchmarks/speculative.py --part streams        # 4 streams through the server

Workloads (greedy, on the same GGUF with the same threads):

* **code edit**: a 150-line Python file, "rename function X to Y and return the whole file";
* **quote-heavy**: answering from a ~1,000-token tool result, its records quoted as they are
  (the pending orders' JSON) or reformatted (each order as a line of its own form);
* **open chat**: the decode prompt of ``chatforge bench``;
* **draft model**: the 1.5B model with the 0.5B default as its draft, open chat;
* **streams**: 4 concurrent code-edit requests through ``chatforge serve``'s HTTP API,
  with and without speculation.

The single-stream rows time chatforge's llama.cpp engine (speculation off, ``ngram`` and
where asked ``draft:MODEL``) and plain ``llama_cpp.Llama`` one after another, run by run, to
the end of the reply or ``--tokens``; decode tokens/s excludes the first token. The acceptance
rate is the share of drafted tokens the model's own choice agreed with.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from chatforge import chat
from chatforge.bench.options import BenchOptions
from chatforge.bench.run import STORY, chat_prompt, machine_info, served_streams
from chatforge.bench.subjects import RawLlamaCpp
from chatforge.engines.base import GenerationStats, SamplingParams
from chatforge.engines.select import resolve_gguf

log = logging.getLogger("speculative")
ROOT = Path(__file__).resolve().parents[1]


# -- workloads -----------------------------------------------------------------------------
def code_file(lines: int = 150) -> str:
    """A real 150-line Python file: the start of chatforge's own batching module."""
    text = (ROOT / "src/chatforge/engines/batching.py").read_text().splitlines()
    return "\n".join(text[:lines])


def code_edit_prompt() -> str:
    return (
        "Rename the class `TokenSampler` to `NextTokenPicker` everywhere in this file and "
        "return the whole file, changed, in one ```python block.\n\n```python\n" + code_file() + "\n```"
    )


def tool_result(records: int = 24) -> str:
    """About 1,000 tokens of JSON, as a tool returns it."""
    cities = ["Berlin", "Lyon", "Osaka", "Toronto", "Porto", "Leeds", "Austin", "Pune"]
    items = ["desk lamp", "office chair", "monitor arm", "USB hub", "standing desk", "keyboard"]
    rows = [
        {
            "order_id": f"ORD-{4100 + i}",
            "customer": f"Customer {chr(65 + i % 26)}{i}",
            "city": cities[i % len(cities)],
            "item": items[i % len(items)],
            "quantity": 1 + i % 4,
            "status": ["shipped", "pending", "delivered"][i % 3],
        }
        for i in range(records)
    ]
    return json.dumps({"orders": rows}, indent=1)


def reformat_prompt() -> str:
    return (
        "A tool returned these orders:\n\n" + tool_result() + "\n\nList every order as one line in the "
        "form `order_id: customer (city) - quantity x item, status`, in the order given."
    )


def quote_prompt() -> str:
    return (
        "A tool returned these orders:\n\n" + tool_result() + "\n\nWhich orders are still pending? Answer "
        "with their records exactly as the tool gave them, as a JSON list."
    )


WORKLOADS = {
    "code edit": code_edit_prompt,
    "quote-heavy: records quoted": quote_prompt,
    "quote-heavy: records reformatted": reformat_prompt,
    "open chat": lambda: STORY,
}


# -- timing ----------------------------------------------------------------------------------
def timed(tokens: Any) -> tuple[int, float, float]:
    """Tokens made, time to the first and decode tokens/s after it, for an iterator of tokens."""
    started = time.perf_counter()
    first, made = 0.0, 0
    for _ in tokens:
        made += 1
        if made == 1:
            first = time.perf_counter() - started
    total = time.perf_counter() - started
    return made, first, (made - 1) / max(total - first, 1e-9)


def engine_run(model: Any, ids: list[int], n: int) -> dict[str, Any]:
    stats = GenerationStats()
    params = SamplingParams(do_sample=False, max_new_tokens=n, stop_token_ids=list(model.template.stop_token_ids))
    made, first, tps = timed(model.engine.generate_ids(ids, params, stats))
    rate = stats.accepted_tokens / stats.drafted_tokens if stats.drafted_tokens else None
    return {"tokens": made, "ttft": first, "tps": tps, "acceptance": rate, "drafted": stats.drafted_tokens}


def plain_run(llm: Any, ids: list[int], n: int, stops: set[int]) -> dict[str, Any]:
    def tokens():
        for made, token in enumerate(llm.generate(ids, temp=0.0, top_k=1, reset=True), 1):
            yield token
            if token in stops or made >= n:
                return

    llm.reset()
    made, first, tps = timed(tokens())
    return {"tokens": made, "ttft": first, "tps": tps, "acceptance": None, "drafted": 0}


def draft_memory_mb(engine: Any) -> float | None:
    """What a draft model adds: its GGUF weights and its KV cache (f16 keys and values for
    every position of every sequence)."""
    draft = getattr(engine, "draft_model", None)
    if draft is None:
        return None
    import llama_cpp

    e = draft.engine
    layers = llama_cpp.llama_model_n_layer(e._model)
    width = llama_cpp.llama_model_n_embd(e._model) // llama_cpp.llama_model_n_head(e._model)
    kv = 2 * 2 * layers * llama_cpp.llama_model_n_head_kv(e._model) * width * e.context_length * e.max_batch
    return (Path(e.model_path).stat().st_size + kv) / 2**20


def load(model: str, speculative: str, threads: int | None) -> tuple[Any, float | None]:
    options: dict[str, Any] = {"speculative": speculative, "n_parallel": 1}
    if threads:
        options["n_threads"] = threads
    loaded = chat.load_model(model, engine="llama.cpp", context_length=4096, engine_options=options)
    return loaded, draft_memory_mb(loaded.engine)


def single(model_name: str, modes: list[str], workloads: list[str], opts: argparse.Namespace) -> list[dict]:
    """Each workload on plain llama.cpp and on chatforge's engine in each mode, taking turns."""
    models = {}
    memory = {}
    for mode in modes:
        models[mode], memory[mode] = load(model_name, mode, opts.threads)
    first = models[modes[0]]
    plain = RawLlamaCpp(resolve_gguf(model_name), opts.threads)
    stops = set(first.template.stop_token_ids)
    rows = []
    for workload in workloads:
        ids = chat_prompt(first, WORKLOADS[workload]())
        runs: dict[str, list[dict]] = {"plain llama_cpp.Llama": []} | {f"chatforge {m}": [] for m in modes}
        for round_ in range(opts.runs):
            order = list(runs)
            for name in order[::-1] if round_ % 2 else order:
                if name == "plain llama_cpp.Llama":
                    result = plain_run(plain.llm, ids, opts.tokens, stops)
                else:
                    result = engine_run(models[name.removeprefix("chatforge ")], ids, opts.tokens)
                runs[name].append(result)
                log.info("%s / %s: %.1f tok/s (%d tokens)", workload, name, result["tps"], result["tokens"])
        base = statistics.median(r["tps"] for r in runs["plain llama_cpp.Llama"])
        for name, measured in runs.items():
            tps = statistics.median(r["tps"] for r in measured)
            rates = [r["acceptance"] for r in measured if r["acceptance"] is not None]
            rows.append(
                {
                    "model": model_name,
                    "workload": workload,
                    "subject": name,
                    "prompt_tokens": len(ids),
                    "tokens": statistics.median(r["tokens"] for r in measured),
                    "tps": tps,
                    "ratio": tps / base,
                    "acceptance": statistics.median(rates) if rates else None,
                    "memory_mb": memory.get(name.removeprefix("chatforge ")),
                }
            )
    for model in models.values():
        model.engine.close()
    return rows


def streams(opts: argparse.Namespace, n: int = 4) -> list[dict]:
    """``n`` concurrent code-edit requests through the HTTP server, with and without speculation."""
    rows = []
    text = code_edit_prompt()
    served = {}
    for mode in ("off", "ngram"):
        options: dict[str, Any] = {"speculative": mode, "n_parallel": n}
        if opts.threads:
            options["n_threads"] = opts.threads
        served[mode] = chat.load_model("default", engine="llama.cpp", context_length=4096, engine_options=options)
    bench = BenchOptions(streams=[n], stream_tokens=opts.stream_tokens, server=True)
    results: dict[str, list[float]] = {mode: [] for mode in served}
    with contextlib.ExitStack() as stack:
        runners = {mode: stack.enter_context(served_streams(model, bench)) for mode, model in served.items()}
        for round_ in range(opts.runs):
            for mode in list(served)[::-1] if round_ % 2 else list(served):
                # A tag per request and run: no cached prefix beyond the system prompt.
                got = runners[mode]([f"[{mode}.{round_}.{i}] {text}" for i in range(n)])
                results[mode].append(got["aggregate_tps"])
                log.info("%d streams, speculation %s: %.1f tok/s", n, mode, got["aggregate_tps"])
    base = statistics.median(results["off"])
    for mode, measured in results.items():
        engine = served[mode].engine
        rows.append(
            {
                "workload": f"{n} streams through the server, code edit",
                "subject": f"chatforge {mode}",
                "prompt_tokens": len(chat_prompt(served[mode], text)),
                "tokens": opts.stream_tokens,
                "tps": statistics.median(measured),
                "ratio": statistics.median(measured) / base,
                "acceptance": engine.accepted_tokens / engine.drafted_tokens if engine.drafted_tokens else None,
                "runs": measured,
            }
        )
    for model in served.values():
        model.engine.close()
    return rows


def markdown(rows: list[dict], command: str, machine: dict) -> str:
    out = [
        f"Measured {machine['when']} on {machine['cpu']}, {machine['cores']} cores, "
        f"threads {machine['threads'] or 'all'}, load before {machine['load_before']:.2f}. Command: `{command}`",
        "",
        "| model | workload | subject | prompt tokens | reply tokens | decode tok/s | vs plain | acceptance | draft model memory (MB) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        acceptance = "" if r.get("acceptance") is None else f"{100 * r['acceptance']:.0f}%"
        memory = "" if r.get("memory_mb") is None else f"{r['memory_mb']:.0f}"
        out.append(
            f"| {r.get('model', 'default')} | {r['workload']} | {r['subject']} | {r.get('prompt_tokens', '')} | "
            f"{r.get('tokens', '')} | {r['tps']:.1f} | {r['ratio']:.2f}x | {acceptance} | {memory} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", default="all", choices=["all", "single", "draft", "streams"])
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--tokens", type=int, default=400, help="longest reply timed")
    p.add_argument("--stream-tokens", type=int, default=200)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--draft-target", default="1.5b", help="the model the draft model drafts for")
    p.add_argument("--draft", default="0.5b", help="the draft model")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated single-stream workloads")
    p.add_argument("--json", default=None, help="write the rows as JSON here")
    opts = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    machine = machine_info(opts.threads)
    rows: list[dict] = []
    if opts.part in ("all", "single"):
        rows += single("default", ["off", "ngram"], [w.strip() for w in opts.workloads.split(",")], opts)
    if opts.part in ("all", "draft"):
        rows += single(opts.draft_target, ["off", f"draft:{opts.draft}"], ["open chat", "code edit"], opts)
    if opts.part in ("all", "streams"):
        rows += streams(opts)
    machine["load_after"] = os.getloadavg()[0]
    command = "python benchmarks/speculative.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = markdown(rows, command.strip(), machine)
    print(text)
    if opts.json:
        Path(opts.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
