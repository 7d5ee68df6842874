#!/usr/bin/env bash
# Multi-turn tool SFT, scored on held-out tool calls before and after. Run from the repository root.
set -euo pipefail
JEMALLOC=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
[ -f "$JEMALLOC" ] && export LD_PRELOAD="$JEMALLOC"
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/tool_sft}
mkdir -p "$OUT"
$PY -m chatforge.cli data check examples/tool_sft/train.jsonl --tokens 0 > "$OUT/data_check.txt"
head -20 "$OUT/data_check.txt"
EVAL="$PY -m chatforge.cli eval examples/tool_sft/test.jsonl --engine transformers --dtype bfloat16 --max-new-tokens 60"
$EVAL --output "$OUT/before.jsonl" | tee "$OUT/before.txt"
$PY -m chatforge.cli train examples/tool_sft/config.yaml --training.output_dir "$OUT"
$EVAL --adapter "$OUT/final" --output "$OUT/after.jsonl" | tee "$OUT/after.txt"
