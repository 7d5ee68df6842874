"""``chatforge bench``: chatforge's engines side by side with the raw references, in one run.

Measured on the same model, prompts and machine:

* single-stream decode tokens/s and time to first token (TTFT), greedy, fixed length;
* prefill tokens/s for a prompt of ``--prefill-tokens`` (1,000) tokens;
* a ``--turns`` (10) turn conversation's TTFT per turn, with the conversation's KV cache
  reused (chatforge) and recomputed every turn;
* 1, 4 and 16 concurrent streams, on the engine directly and through the HTTP server
  (aggregate tokens/s, p50/p95 request latency), and the server's overhead.

References (:mod:`chatforge.bench.subjects`): plain ``transformers`` ``generate``, plain
``llama_cpp.Llama`` and, for the concurrent streams, plain llama.cpp's batch API, on the same
weights. Results are printed as Markdown (and written with ``--out``), with a PNG plot
(``--plot``). Figures on a shared machine are noisy: note the load average printed with them.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatforge import chat, llama_lib
from chatforge.bench.client import run_streams
from chatforge.bench.options import BenchOptions, Results
from chatforge.bench.subjects import (
    EngineSubject,
    PlainLlamaBatch,
    RawLlamaCpp,
    RawTransformers,
    Subject,
    uncached,
)
from chatforge.engines import amx
from chatforge.engines.base import SamplingParams
from chatforge.engines.select import llama_cpp_available, resolve_gguf
from chatforge.messages import Message, Role
from chatforge.serve.app import create_app
from chatforge.serve.in_process import serve_in_thread
from chatforge.serve.settings import ServeSettings

log = logging.getLogger(__name__)

STORY = (
    "Write a long story about a robot who learns to paint, with many details. 写一段关于机器人学画画的故事。"
)
QUESTIONS = [
    "What is a Python list comprehension?",
    "Give an example with a condition.",
    "How is it different from map and filter?",
    "What about dictionary comprehensions?",
    "And set comprehensions?",
    "Can comprehensions be nested?",
    "When should I avoid them?",
    "What is a generator expression?",
    "How much memory does it save?",
    "Summarise everything in one sentence.",
]


# -- measurements -----------------------------------------------------------------------------
def chat_prompt(model: Any, text: str) -> list[int]:
    return model.template.render([Message(Role.USER, text)], add_generation_prompt=True).ids


def long_prompt(model: Any, length: int, tag: str = "") -> list[int]:
    """A chat prompt of exactly ``length`` tokens (a long document to summarise); a ``tag``
    at its start makes prompts that share no cached prefix."""
    filler = " ".join(
        f"Paragraph {i}: chatforge runs, extends and fine-tunes a local chat model." for i in range(400)
    )
    ids = chat_prompt(model, tag + "Summarise this document:\n" + filler)
    tail = chat_prompt(model, "")[-5:]  # keep the end-of-turn and assistant header
    return ids[: length - len(tail)] + tail


def measure_single(subjects: list[Subject], ids: list[int], opts: BenchOptions) -> list[dict[str, Any]]:
    """Decode speed and TTFT; the subjects take turns run by run, so that a burst of load from
    elsewhere on a shared machine hits all of them alike."""
    for subject in subjects:
        subject.decode(ids, 8)  # warm-up
    ttfts: dict[str, list[float]] = {s.name: [] for s in subjects}
    speeds: dict[str, list[float]] = {s.name: [] for s in subjects}
    for _ in range(opts.runs):
        for subject in subjects:
            ttft, speed = subject.decode(ids, opts.tokens)
            ttfts[subject.name].append(ttft)
            speeds[subject.name].append(speed)
            log.info("%s: decode %.1f tok/s, TTFT %.0f ms", subject.name, speed, 1000 * ttft)
    return [
        {
            "subject": s.name,
            "decode_tps": statistics.median(speeds[s.name]),
            "decode_runs": speeds[s.name],
            "ttft_ms": 1000 * statistics.median(ttfts[s.name]),
            "prompt_tokens": len(ids),
        }
        for s in subjects
    ]


def measure_prefill(subjects: list[Subject], ids: list[int], opts: BenchOptions) -> list[dict[str, Any]]:
    times: dict[str, list[float]] = {s.name: [] for s in subjects}
    for _ in range(max(1, opts.runs)):
        for subject in subjects:
            times[subject.name].append(subject.prefill(ids))
            log.info("%s: prefill %d tokens in %.2f s", subject.name, len(ids), times[subject.name][-1])
    rows = []
    for s in subjects:
        seconds = statistics.median(times[s.name])
        rows.append(
            {
                "subject": s.name,
                "tokens": len(ids),
                "seconds": seconds,
                "tps": len(ids) / seconds,
                "tps_runs": [len(ids) / t for t in times[s.name]],
            }
        )
    return rows


def measure_turns(
    model: Any, opts: BenchOptions
) -> tuple[dict[str, list[float]], list[float], dict[str, list[float]]]:
    """TTFT per turn of a conversation, with its KV state kept and with none: the median of
    ``opts.runs`` conversations, each conversation's last-turn / first-turn ratio (reuse),
    and the median prompt length and tokens computed with reuse per turn.

    Each conversation's system prompt carries its run number, so that nothing a previous
    one left in the engine's caches is reused: every turn 1 computes its whole prompt."""
    engine = model.engine
    params = SamplingParams(
        do_sample=False, max_new_tokens=opts.turn_tokens, stop_token_ids=model.template.stop_token_ids
    )
    reuse: list[list[float]] = [[] for _ in range(opts.turns)]
    recompute: list[list[float]] = [[] for _ in range(opts.turns)]
    prompts: list[list[int]] = [[] for _ in range(opts.turns)]
    computed: list[list[int]] = [[] for _ in range(opts.turns)]
    ratios = []
    for run in range(opts.runs):
        state = engine.new_state()
        messages: list[Message] = [Message(Role.SYSTEM, f"[{run + 1}] You are a helpful assistant.")]
        for turn in range(opts.turns):
            messages.append(Message(Role.USER, QUESTIONS[turn % len(QUESTIONS)]))
            ids = model.template.render(messages, add_generation_prompt=True).ids
            chunks = list(engine.stream(ids, params, state=state))
            reuse[turn].append(1000 * (chunks[-1].stats.time_to_first_token or 0.0))
            prompts[turn].append(len(ids))
            computed[turn].append(chunks[-1].stats.computed_tokens)
            fresh = list(engine.stream(ids, uncached(1)))
            recompute[turn].append(1000 * (fresh[-1].stats.time_to_first_token or 0.0))
            messages.append(Message(Role.ASSISTANT, "".join(c.text for c in chunks)))
            log.info(
                "conversation %d, turn %d: %d prompt tokens (%d computed), TTFT %.0f ms (reuse) %.0f ms (recompute)",
                run + 1,
                turn + 1,
                len(ids),
                computed[turn][-1],
                reuse[turn][-1],
                recompute[turn][-1],
            )
        if reuse[0][-1]:
            ratios.append(reuse[-1][-1] / reuse[0][-1])
    medians = {
        f"{engine.name} reuse": [statistics.median(t) for t in reuse],
        f"{engine.name} recompute": [statistics.median(t) for t in recompute],
    }
    tokens = {
        "prompt": [statistics.median(t) for t in prompts],
        "computed": [statistics.median(t) for t in computed],
    }
    return medians, ratios, tokens


def engine_stream(model: Any, text: str, params: Any) -> tuple[int, float, float]:
    """One greedy chat stream on the engine directly: tokens, latency and time to the first
    token (the :func:`chatforge.bench.client.run_streams` protocol)."""
    ids = chat_prompt(model, text)
    started = time.perf_counter()
    first = None
    for chunk in model.engine.stream(ids, params):
        if first is None and chunk.token_ids:
            first = time.perf_counter() - started
    latency = time.perf_counter() - started
    return chunk.stats.completion_tokens, latency, latency if first is None else first


def measure_streams(model: Any, opts: BenchOptions, reference: Any = None) -> list[dict[str, Any]]:
    """Each stream count on the engine directly and through the HTTP server (and on
    ``reference``, plain llama.cpp's batch API, when given), taking turns run by run
    (direct, server, reference, then reference, server, direct, ...) so that all are
    measured under the same conditions; medians over ``opts.runs`` runs."""
    params = SamplingParams(do_sample=False, max_new_tokens=opts.stream_tokens)

    def direct(texts: list[str]) -> dict[str, Any]:
        return run_streams(len(texts), lambda i: engine_stream(model, texts[i], params))

    def batch_api(texts: list[str]) -> dict[str, Any]:
        return reference.run([chat_prompt(model, text) for text in texts], opts.stream_tokens)

    paths: dict[str, Callable[[list[str]], dict[str, Any]]] = {f"{model.engine.name} engine directly": direct}
    with served_streams(model, opts) as served:
        if served is not None:
            paths[f"HTTP server -> {model.engine.name} (/v1/chat/completions, streamed)"] = served
        if reference is not None:
            paths[reference.name] = batch_api
        rows = []
        fresh = itertools.count(1)
        for n in opts.streams:
            runs: dict[str, list[dict[str, Any]]] = {path: [] for path in paths}
            for round_ in range(max(1, opts.runs)):
                # Every other round in reverse (A B C, C B A, ...): a machine that speeds up
                # or slows down during a round favours no path.
                order = list(paths.items())
                for path, run in order[::-1] if round_ % 2 else order:
                    # A prompt no stream has sent before (only the template's system prompt
                    # is common, as among users of one server): a cached prefix from an
                    # earlier run must not count as speed.
                    tag = next(fresh)
                    runs[path].append(run([f"[{tag}.{i}] {STORY}" for i in range(n)]))
                    log.info("%s, %d streams: %.1f tok/s", path, n, runs[path][-1]["aggregate_tps"])
            for path, measured in runs.items():
                row = {
                    key: statistics.median(r[key] for r in measured)
                    for key in measured[0]
                    if key != "client_pid"
                }
                row.update(streams=n, path=path, runs_tps=[r["aggregate_tps"] for r in measured])
                rows.append(row)
    return rows


@contextlib.contextmanager
def served_streams(model: Any, opts: BenchOptions) -> Iterator[ServedStreams | None]:
    """chatforge's OpenAI-compatible server on loopback, and a run of streamed requests
    through it from a client process (:mod:`chatforge.bench.client`)."""
    if not opts.server:
        yield None
        return
    try:
        import httpx  # noqa: F401 - the client process needs it

    except ImportError as err:
        log.warning("skipping the server measurement: %s", err)
        yield None
        return
    workers = max(max(opts.streams), getattr(model.engine, "max_batch", 1))
    app = create_app(model, ServeSettings(max_queue=4 * workers, workers=workers, ui=False))
    with serve_in_thread(app) as base:
        yield ServedStreams(f"{base}/v1/chat/completions", opts.stream_tokens)


@dataclass
class ServedStreams:
    """Runs streamed requests through the server at ``url`` from a client process."""

    url: str
    max_tokens: int

    def __call__(self, texts: list[str]) -> dict[str, Any]:
        spec = {"url": self.url, "texts": texts, "max_tokens": self.max_tokens}
        done = subprocess.run(
            [sys.executable, "-m", "chatforge.bench.client"],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            timeout=3600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"the streams' client process failed: {done.stderr.strip()[-2000:]}")
        return json.loads(done.stdout)


# -- report -----------------------------------------------------------------------------------
def machine_info(threads: int | None) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        # llama.cpp's AMX path, used for each model whose probe passes (engines/amx.py)
        "llama_amx": llama_cpp_available() and amx.enabled(),
        # chatforge's patched llama.cpp (its references use the same library)
        "llama_patched": llama_cpp_available() and llama_lib.small_batch_kernels(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": threads,
        "load_before": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "when": time.strftime("%Y-%m-%d %H:%M"),
    }


# -- running ----------------------------------------------------------------------------------
def run_bench(opts: BenchOptions) -> Results:
    results = Results(machine=machine_info(opts.threads))
    models: dict[str, Any] = {}
    for engine in opts.engines:
        options = {"n_threads": opts.threads} if opts.threads else {}
        gguf = engine in ("llama.cpp", "hybrid")
        if gguf and opts.speculative:
            options["speculative"] = opts.speculative
        if gguf:
            # The 10-turn test needs two sequences: the conversation's, and one for the
            # recompute run between its turns (with one, that run evicted the conversation).
            options["n_parallel"] = max([*opts.streams, 2 if opts.turns else 1])
        # 4,096 tokens per sequence holds every prompt here (the default, 8,192, doubles the KV memory).
        context = 4096 if gguf else None
        models[engine] = chat.load_model(
            opts.model,
            engine=engine,
            context_length=context,
            engine_options=options or None,
            quantize=opts.quantize if gguf else None,
        )
    first = next(iter(models.values()))
    subjects: list[Subject] = [EngineSubject(m) for m in models.values()]
    if opts.references:
        subjects += _references(opts, models)
    ids = chat_prompt(first, STORY)
    results.single = measure_single(subjects, ids, opts)
    if opts.prefill_tokens:
        results.prefill = measure_prefill(subjects, long_prompt(first, opts.prefill_tokens), opts)
    if opts.turns:
        for model in models.values():
            medians, ratios, tokens = measure_turns(model, opts)
            results.turns.update(medians)
            results.turn_ratios[model.engine.name] = ratios
            results.turn_tokens[model.engine.name] = tokens
    if opts.streams:
        reference = _batch_reference(opts, models)
        try:
            for i, model in enumerate(models.values()):
                results.streams += measure_streams(model, opts, reference if i == 0 else None)
        finally:
            if reference is not None:
                reference.close()
    results.machine["load_after"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return results


def _batch_reference(opts: BenchOptions, models: dict[str, Any]) -> Any:
    """Plain llama.cpp's batch API on the same GGUF, for the concurrent streams."""
    if not opts.references or not any(name in ("llama.cpp", "hybrid") for name in models):
        return None
    try:

        return PlainLlamaBatch(resolve_gguf(opts.model, opts.quantize), opts.threads, max(opts.streams))
    except (ImportError, ValueError, RuntimeError) as err:
        log.warning("no plain llama.cpp batch reference: %s", err)
        return None


def _references(opts: BenchOptions, models: dict[str, Any]) -> list[Subject]:
    subjects: list[Subject] = []
    hf = models.get("transformers")
    if hf is not None and hf.model is not None:
        subjects.append(RawTransformers(hf.model))
    else:
        subjects.append(RawTransformers(chat.load_model(opts.model, engine="transformers").model))
    try:

        subjects.append(RawLlamaCpp(resolve_gguf(opts.model, opts.quantize), opts.threads))
    except (ImportError, ValueError) as err:
        log.warning("no plain llama.cpp reference: %s", err)
    return subjects
