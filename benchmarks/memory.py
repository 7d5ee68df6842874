"""Memory of each engine mode on the default model: one fresh process per mode.

Each mode runs in its own child process, which loads the model, serves a 1,000-token
prompt plus 32 new tokens, and reports its resident memory (RSS) after loading and its
peak (``ru_maxrss``) at the end. Modes that need CUDA (bitsandbytes int8/int4) are listed
as not measured when there is no GPU. On CPUs where llama.cpp's AMX path runs, the
"AMX off" modes show what its buffer of repacked weights costs.

    .venv/bin/python benchmarks/memory.py [--modes llama.cpp,hybrid,transformers-bf16,transformers-fp32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

AMX_OFF = {"CHATFORGE_LLAMA_AMX": "0"}  # llama.cpp without its AMX buffer (engines/amx.py)
MODES = {
    "llama.cpp": {"engine": "llama.cpp", "context_length": 4096},
    "llama.cpp AMX off": {"engine": "llama.cpp", "context_length": 4096, "env": AMX_OFF},
    "hybrid": {"engine": "hybrid", "context_length": 4096},
    "hybrid AMX off": {"engine": "hybrid", "context_length": 4096, "env": AMX_OFF},
    "llama.cpp iq4_nl": {"engine": "llama.cpp", "context_length": 4096, "quantize": "iq4_nl"},
    "hybrid iq4_nl": {"engine": "hybrid", "context_length": 4096, "quantize": "iq4_nl"},
    "transformers-bf16": {"engine": "transformers", "dtype": "bfloat16"},
    "transformers-fp32": {"engine": "transformers", "dtype": "float32"},
    "transformers-int8 (CUDA)": {"engine": "transformers", "quantize": "int8", "device": "cuda"},
    "transformers-int4 (CUDA)": {"engine": "transformers", "quantize": "int4", "device": "cuda"},
}

CHILD = """
import json, resource, sys
from chatforge.bench.run import long_prompt
from chatforge.chat import load_model
from chatforge.engines.base import SamplingParams

def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

kwargs = json.loads(sys.argv[1])
model = load_model("default", **kwargs)
loaded = rss_mib()
ids = long_prompt(model, 1000)
list(model.engine.stream(ids, SamplingParams(do_sample=False, max_new_tokens=32)))
print(json.dumps({"engine": model.engine.name, "loaded_mib": loaded, "after_mib": rss_mib(),
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", default=",".join(MODES))
    args = p.parse_args()
    import torch

    print(
        "| mode | engine | RSS after load MiB | RSS after a 1,000-token prompt + 32 tokens MiB | peak MiB |"
    )
    print("| --- | --- | ---: | ---: | ---: |")
    for mode in (m.strip() for m in args.modes.split(",") if m.strip()):
        kwargs = dict(MODES[mode])
        env = {**os.environ, **kwargs.pop("env", {})}
        if kwargs.get("device") == "cuda" and not torch.cuda.is_available():
            print(f"| {mode} | — | not measured: no CUDA GPU here | | |", flush=True)
            continue
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(kwargs)],
            capture_output=True,
            text=True,
            timeout=900,
            env=env,
        )
        if proc.returncode != 0:
            print(f"| {mode} | failed: {proc.stderr.strip().splitlines()[-1][:120]} | | | |", flush=True)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(
            f"| {mode} | {r['engine']} | {r['loaded_mib']:.0f} | {r['after_mib']:.0f} | {r['peak_mib']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
