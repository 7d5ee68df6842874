"""``chatforge bench`` end to end on a small real GGUF (SmolLM2-135M): every section runs,
against both raw references, and the report states the goals as ratios from the same run."""

from __future__ import annotations

import re

from chatforge.bench import BenchOptions, plot, report, run_bench

from .conftest import need_llama_cpp


def test_bench_measures_every_section_and_reports_the_goals(smollm_path, tmp_path):
    need_llama_cpp()
    opts = BenchOptions(
        model=str(smollm_path),
        engines=["llama.cpp"],
        runs=1,
        tokens=6,
        prefill_tokens=64,
        turns=2,
        turn_tokens=4,
        streams=[1, 2],
        stream_tokens=4,
        threads=1,
    )
    results = run_bench(opts)
    subjects = [r["subject"] for r in results.single]
    assert subjects[0] == "chatforge llama.cpp" and any(s.startswith("plain transformers") for s in subjects)
    assert "plain llama_cpp.Llama" in subjects
    assert all(r["decode_tps"] > 0 for r in results.single)
    assert [r["tokens"] for r in results.prefill] == [64] * len(subjects)
    assert len(results.turns["llama.cpp reuse"]) == 2
    paths = {(r["path"].split(" ")[0], r["streams"]) for r in results.streams}
    assert paths == {("llama.cpp", 1), ("llama.cpp", 2), ("HTTP", 1), ("HTTP", 2)}
    assert all(r["tokens"] == 4 * r["streams"] for r in results.streams)
    text = report(results, opts)
    assert "### Goals (chatforge llama.cpp)" in text
    for label in (
        "decode vs plain llama.cpp",
        "prefill vs plain transformers",
        "turn-2 TTFT / turn-1 TTFT",
        "server overhead at 2 stream(s)",
    ):
        assert re.search(rf"\| {re.escape(label)} \| -?\d+\.\d\d \|", text), label
    plot(results, str(tmp_path / "bench.png"))
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
