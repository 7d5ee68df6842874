"""Time llama.cpp's decode steps of 1, 2, 4... sequences, side by side for several llama.cpp builds.

What a decode step costs is what several concurrent streams can make: four streams at 48 ms a
step make 83 tokens/s at most. Each build is a directory holding a ``llama_cpp`` package (a
``pip install --target DIR`` of llama-cpp-python), or ``installed`` for the one in this
environment; every measurement runs in a child process with that directory first on the path,
the builds taking turns round by round. The model is loaded as the engine loads it (the
widened default GGUF and llama.cpp's AMX path where it works), with one cache per sequence.

    # chatforge's patched build (installed) against the plain source release, same flags:
    CMAKE_ARGS="-DGGML_OPENMP=OFF -DCMAKE_CXX_FLAGS=-fno-tree-dse\\ -fno-dse" .venv/bin/pip install \\
        --no-deps --no-cache-dir --target /tmp/plain-llama llama-cpp-python==0.3.36
    .venv/bin/python benchmarks/decode_steps.py --builds patched=installed,plain=/tmp/plain-llama
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, statistics, sys, time
import llama_cpp as lib
from chatforge.llama_lib import small_batch_kernels
from chatforge.engines.amx import extra_buffers_default
path, counts, steps = sys.argv[1], [int(n) for n in sys.argv[2].split(",")], int(sys.argv[3])
lib.llama_backend_init()
params = lib.llama_model_default_params()
params.use_extra_bufts = extra_buffers_default(path)
model = lib.llama_model_load_from_file(path.encode(), params)
n_seq = max(counts)
cparams = lib.llama_context_default_params()
cparams.n_ctx, cparams.n_batch, cparams.n_ubatch, cparams.n_seq_max = 1024 * n_seq, 512, 512, n_seq
cparams.kv_unified = False
cparams.n_threads = cparams.n_threads_batch = int(sys.argv[4])
cparams.no_perf = True
ctx = lib.llama_init_from_model(model, cparams)
memory = lib.llama_get_memory(ctx)
batch = lib.llama_batch_init(512, 0, 1)

def decode(items):
    for j, (token, pos, seq) in enumerate(items):
        batch.token[j], batch.pos[j], batch.n_seq_id[j] = token, pos, 1
        batch.seq_id[j][0], batch.logits[j] = seq, 1
    batch.n_tokens = len(items)
    assert lib.llama_decode(ctx, batch) == 0

start = 60
for seq in range(n_seq):  # a 60-token prompt each
    decode([(100 + (7 * i + seq) % 1000, i, seq) for i in range(start)])
result = {"patched": small_batch_kernels(), "ms": {}}
for n in counts:
    times = []
    for step in range(steps):
        began = time.perf_counter()
        decode([(500 + step, start + step, seq) for seq in range(n)])
        times.append(1000 * (time.perf_counter() - began))
    for seq in range(n_seq):
        lib.llama_memory_seq_rm(memory, seq, start, -1)
    result["ms"][str(n)] = statistics.median(times)
print(json.dumps(result))
"""


def measure(directory: str, path: str, counts: str, steps: int, threads: int) -> dict:
    env = dict(os.environ)
    if directory != "installed":
        env["PYTHONPATH"] = os.pathsep.join(p for p in (directory, env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, path, counts, str(steps), str(threads)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if done.returncode != 0:
        raise SystemExit(f"the measurement with {directory} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="GGUF path or 'default' (as the engine resolves it)")
    p.add_argument(
        "--builds", default="installed", help="LABEL=DIR,... (DIR holds llama_cpp, or 'installed')"
    )
    p.add_argument("--sequences", default="1,2,4")
    p.add_argument("--steps", type=int, default=30, help="steps timed per sequence count (median)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: the engine's)")
    args = p.parse_args(argv)

    from chatforge.engines.select import resolve_gguf
    from chatforge.llama_lib import default_threads

    threads = args.threads or default_threads()
    path = str(resolve_gguf(args.model))
    builds = dict(item.split("=", 1) if "=" in item else (item, item) for item in args.builds.split(","))
    counts = [n.strip() for n in args.sequences.split(",")]
    runs: dict[str, dict[str, list[float]]] = {label: {n: [] for n in counts} for label in builds}
    patched: dict[str, bool] = {}
    for round_ in range(args.rounds):
        order = list(builds) if round_ % 2 == 0 else list(reversed(builds))
        for label in order:
            got = measure(builds[label], path, ",".join(counts), args.steps, threads)
            patched[label] = got["patched"]
            for n in counts:
                runs[label][n].append(got["ms"][n])
            print(
                f"round {round_ + 1}, {label}: " + ", ".join(f"{n}: {got['ms'][n]:.1f} ms" for n in counts),
                file=sys.stderr,
                flush=True,
            )
    print(
        f"llama_decode per step, ms (median of {args.steps} steps; median of {args.rounds} rounds, rounds listed)\n"
    )
    print("| build | chatforge patch | " + " | ".join(f"{n} sequence(s)" for n in counts) + " |")
    print("| --- | --- | " + " | ".join("---:" for _ in counts) + " |")
    for label in builds:
        cells = [
            f"{statistics.median(runs[label][n]):.1f} ({', '.join(f'{x:.1f}' for x in runs[label][n])})"
            for n in counts
        ]
        print(f"| {label} | {'yes' if patched[label] else 'no'} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
