"""What ``--quantize`` trades: perplexity against speed for the default GGUF and its re-quantized copies.

For the shipped Q4_K_M file (on CPUs with llama.cpp's AMX path: without it, with it, and as
the lossless Q5_0 → Q8_0 copy the engine loads there) and each type given, in one run: the perplexity on local texts
(the repository's Chinese training examples, its English docs and its Python code, or files
you name), the file size, and plain llama.cpp's decode speed for one sequence and for four
sequences decoded together (the batch API, as ``chatforge bench`` measures its reference).
Lower perplexity is better; the shipped file is the reference.

    .venv/bin/python benchmarks/quality.py [--types q4_0,iq4_nl] [--text zh=FILE ...]
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TEXTS = {
    "zh": [
        "examples/advertise_sft/train.jsonl",
        "examples/advertise_sft/test.jsonl",
        "examples/tool_sft/train.jsonl",
    ],
    "en": ["README.md", "docs/engines.md", "docs/finetuning.md", "docs/serving.md"],
    "code": [
        "src/chatforge/engines/batching.py",
        "src/chatforge/chat.py",
        "src/chatforge/serve/routes/chat.py",
    ],
}
CHUNK = 512  # tokens per evaluated window
SKIP = 64  # the first tokens of each window are context only, not scored


def perplexity(llm, text: str, max_tokens: int) -> tuple[float, int]:
    """exp(mean negative log-likelihood) over non-overlapping windows of ``CHUNK`` tokens."""
    tokens = llm.tokenize(text.encode(), add_bos=False)[:max_tokens]
    nll, scored = 0.0, 0
    for start in range(0, len(tokens) - SKIP - 1, CHUNK):
        window = tokens[start : start + CHUNK]
        llm.reset()
        llm.eval(window)
        logits = np.asarray(llm.scores[: len(window) - 1], dtype=np.float64)[SKIP - 1 :]
        targets = np.asarray(window[SKIP:])
        top = logits.max(axis=1)
        log_z = np.log(np.exp(logits - top[:, None]).sum(axis=1)) + top
        nll += float((log_z - logits[np.arange(len(targets)), targets]).sum())
        scored += len(targets)
    return math.exp(nll / scored), scored


def decode_speed(path: Path, threads: int | None, streams: int, tokens: int, extra: bool | None = None) -> float:
    from chatforge.bench.subjects import PlainLlamaBatch

    batch = PlainLlamaBatch(path, threads, streams, n_ctx_per_seq=512, extra_buffers=extra)
    try:
        prompts = [[1000 + 7 * s + i for i in range(24)] for s in range(streams)]
        batch.run(prompts, 4)  # warm-up
        result = batch.run(prompts, tokens)
        return result["aggregate_tps"]
    finally:
        batch.close()


def main() -> None:
    import llama_cpp

    from chatforge.engines import amx
    from chatforge.engines.select import GGUF_QUANTIZE
    from chatforge.llama_lib import default_threads
    from chatforge.models.embedded import DEFAULT, assemble_gguf
    from chatforge.models.gguf.export import requantized
    from chatforge.models.gguf.widen import widened

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--types", default="q4_0,iq4_nl", help=f"comma-separated, from {', '.join(GGUF_QUANTIZE)}")
    p.add_argument("--text", action="append", default=[], help="NAME=FILE, instead of the repository's texts")
    p.add_argument("--max-tokens", type=int, default=2048, help="tokens scored per text at most")
    p.add_argument("--decode-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()

    texts: dict[str, str] = {}
    for item in args.text:
        name, _, file = item.partition("=")
        texts[name] = texts.get(name, "") + Path(file).read_text(encoding="utf-8")
    if not texts:
        texts = {
            name: "".join((ROOT / f).read_text(encoding="utf-8") for f in files)
            for name, files in TEXTS.items()
        }
    threads = args.threads or default_threads()
    shipped = assemble_gguf(DEFAULT)
    # (file, llama.cpp's extra buffer types: None = as the engine decides, AMX where it works)
    files: dict[str, tuple[Path, bool | None]] = {}
    if amx.enabled():
        files["q4_k_m (shipped), AMX path off"] = (shipped, False)
        files["q4_k_m (shipped), AMX path on"] = (shipped, None)
        files["q4_k_m, Q5_0 as Q8_0 (the engine's choice here)"] = (widened(shipped), None)
    else:
        files["q4_k_m (shipped)"] = (shipped, None)
    for kind in (t.strip() for t in args.types.split(",") if t.strip()):
        files[kind] = (requantized(shipped, kind), None)

    print(
        f"load average {os.getloadavg()[0]:.2f}; {threads} threads; windows of {CHUNK} tokens, {SKIP} unscored"
    )
    names = list(texts)
    head = " | ".join(f"ppl {n}" for n in names)
    print(f"| weights | MB | {head} | 1 stream tok/s | 4 streams tok/s |")
    print("| --- | ---: | " + " | ".join("---:" for _ in names) + " | ---: | ---: |")
    reference: dict[str, float] = {}
    for label, (path, extra) in files.items():
        llm = llama_cpp.Llama(
            str(path), n_ctx=CHUNK, n_batch=CHUNK, logits_all=True, n_threads=threads, verbose=False
        )
        cells = []
        for name in names:
            value, scored = perplexity(llm, texts[name], args.max_tokens)
            reference.setdefault(name, value)
            change = "" if reference[name] == value else f" ({100 * (value / reference[name] - 1):+.1f}%)"
            cells.append(f"{value:.2f}{change}")
        llm.close()
        one = decode_speed(path, threads, 1, args.decode_tokens, extra)
        four = decode_speed(path, threads, 4, args.decode_tokens, extra)
        size = path.stat().st_size / 1e6
        print(f"| {label} | {size:.0f} | {' | '.join(cells)} | {one:.1f} | {four:.1f} |", flush=True)
    print(f"scored tokens per text: at most {args.max_tokens}")


if __name__ == "__main__":
    main()
