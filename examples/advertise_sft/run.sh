#!/usr/bin/env bash
# Prompt/response SFT with evaluation before and after. Run from the repository root.
set -euo pipefail
JEMALLOC=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
[ -f "$JEMALLOC" ] && export LD_PRELOAD="$JEMALLOC"   # about 1.75x faster LoRA training on CPU (docs/models.md)
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/advertise_sft}
mkdir -p "$OUT"
$PY -m chatforge.cli data check examples/advertise_sft/train.jsonl --prompt-column content --response-column summary --tokens 40
$PY -m chatforge.cli eval examples/advertise_sft/test.jsonl --prompt-column content --response-column summary \
    --engine transformers --dtype bfloat16 --max-new-tokens 80 --output "$OUT/before.jsonl" | tee "$OUT/before.txt"
/usr/bin/time -v $PY -m chatforge.cli train examples/advertise_sft/config.yaml --training.output_dir "$OUT" 2> "$OUT/time.txt"
$PY -m chatforge.cli eval examples/advertise_sft/test.jsonl --prompt-column content --response-column summary \
    --engine transformers --dtype bfloat16 --max-new-tokens 80 --adapter "$OUT/final" --output "$OUT/after.jsonl" | tee "$OUT/after.txt"
