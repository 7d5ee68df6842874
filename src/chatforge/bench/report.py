"""``chatforge bench``'s report: Markdown tables, the goals as ratios within one run, a plot.

The goals are judged on the first engine measured, against the references that ran in the
same rounds: a ratio from one run on one machine, never a figure compared across machines.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chatforge.bench.options import BenchOptions, Results


def report(results: Results, opts: BenchOptions) -> str:
    m = results.machine
    amx = ""
    if m.get("llama_amx"):
        amx = "; llama.cpp AMX path on"
        if m.get("llama_patched"):
            amx += " with chatforge's small-batch kernels (the plain llama.cpp references too)"
    lines = [
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores{amx}; load average {m.get('load_before')} "
        f"before, {m.get('load_after')} after; {m.get('when')}.",
        f"Model: {opts.model}{f' (GGUF re-quantized to {opts.quantize})' if opts.quantize else ''}; "
        f"greedy; median of {opts.runs} runs.",
        "",
    ]
    if results.single:
        lines += [
            f"### Single stream ({results.single[0]['prompt_tokens']}-token prompt, {opts.tokens} new tokens)",
            "",
            "| engine | decode tokens/s | TTFT ms | runs (tokens/s) |",
            "| --- | ---: | ---: | --- |",
        ]
        for r in results.single:
            runs = ", ".join(f"{x:.1f}" for x in r["decode_runs"])
            lines.append(f"| {r['subject']} | {r['decode_tps']:.1f} | {r['ttft_ms']:.0f} | {runs} |")
        lines.append("")
    if results.prefill:
        lines += [
            f"### Prefill ({results.prefill[0]['tokens']}-token prompt, nothing cached)",
            "",
            "| engine | tokens/s | seconds |",
            "| --- | ---: | ---: |",
        ]
        lines += [f"| {r['subject']} | {r['tps']:.0f} | {r['seconds']:.2f} |" for r in results.prefill]
        lines.append("")
    if results.turns:
        names = list(results.turns)
        counts = [
            (f"{engine}: {label}", values)
            for engine, tokens in results.turn_tokens.items()
            for label, values in (("prompt tokens", tokens["prompt"]), ("computed (reuse)", tokens["computed"]))
        ]
        header = names + [label for label, _ in counts]
        lines += [
            f"### {opts.turns}-turn conversation: TTFT per turn (ms, median of {opts.runs} conversations)",
            "",
            "| turn | " + " | ".join(header) + " |",
            "| ---: | " + " | ".join("---:" for _ in header) + " |",
        ]
        for i in range(opts.turns):
            cells = [f"{results.turns[n][i]:.0f}" for n in names] + [f"{values[i]:.0f}" for _, values in counts]
            lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
        lines.append("")
    if results.streams:
        lines += [
            f"### Concurrent streams ({opts.stream_tokens} tokens each)",
            "",
            "| path | streams | aggregate tokens/s | p50 latency s | p95 latency s "
            "| p50 TTFT ms | p95 TTFT ms | runs (tokens/s) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        lines += [
            f"| {r['path']} | {r['streams']} | {r['aggregate_tps']:.1f} | {r['p50_s']:.1f} | {r['p95_s']:.1f} "
            f"| {_ms(r.get('ttft_p50_s'))} | {_ms(r.get('ttft_p95_s'))} "
            f"| {', '.join(f'{x:.1f}' for x in r.get('runs_tps', []))} |"
            for r in results.streams
        ]
        lines.append("")
    lines += goals(results, opts)
    return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{1000 * seconds:.0f}"


def goals(results: Results, opts: BenchOptions) -> list[str]:
    """The goals as ratios within this run, for the first engine measured."""
    if not opts.engines:
        return []
    engine = opts.engines[0]
    me = f"chatforge {engine}"

    def find(rows: list[dict[str, Any]], start: str, key: str) -> Any:
        return next((r.get(key) for r in rows if r["subject"].startswith(start)), None)

    checks: list[tuple[str, float | None, str, str, str]] = []

    def ratio(
        label: str,
        a: float | None,
        b: float | None,
        goal: float,
        higher: bool = True,
        rounds: tuple[list[float] | None, list[float] | None] = (None, None),
        per_round: list[float] | None = None,
    ) -> None:
        value = a / b if a is not None and b else None
        if per_round is None:
            per_round = [x / y for x, y in zip(*rounds) if y] if all(rounds) else []
        checks.append(
            (
                label,
                value,
                f"{'≥' if higher else '≤'} {goal:g}",
                verdict(value, goal, higher, per_round),
                ", ".join(f"{r:.2f}" for r in per_round),
            )
        )

    def verdict(value: float | None, goal: float, higher: bool, per_round: list[float]) -> str:
        if value is None:
            return "—"
        if value >= goal if higher else value <= goal:
            return "yes"
        # Subjects take turns round by round: rounds on both sides of the goal mean the
        # medians differ by less than the run-to-run noise.
        if higher and any(r >= goal for r in per_round) and value >= 0.97 * goal:
            return "parity (within noise)"
        return "no"

    against = (  # (label, rows, median key, runs key, reference, goal)
        ("decode vs plain llama.cpp", results.single, "decode_tps", "decode_runs", "plain llama_cpp", 1.0),
        (
            "decode vs plain transformers generate",
            results.single,
            "decode_tps",
            "decode_runs",
            "plain transformers",
            2.0,
        ),
        ("prefill vs plain transformers", results.prefill, "tps", "tps_runs", "plain transformers", 1.0),
    )
    for label, rows, key, runs, reference, goal in against:
        ratio(
            label,
            find(rows, me, key),
            find(rows, reference, key),
            goal,
            rounds=(find(rows, me, runs), find(rows, reference, runs)),
        )
    reuse = results.turns.get(f"{engine} reuse")
    if reuse and len(reuse) >= 2:
        ratio(
            f"turn-{len(reuse)} TTFT / turn-1 TTFT",
            reuse[-1],
            reuse[0],
            1.2,
            higher=False,
            per_round=results.turn_ratios.get(engine, []),
        )
    served = {r["streams"]: r for r in results.streams if r["path"].startswith(f"HTTP server -> {engine} ")}
    direct = {r["streams"]: r for r in results.streams if r["path"] == f"{engine} engine directly"}
    if 4 in served:
        value = served[4]["aggregate_tps"]
        runs = served[4].get("runs_tps", [])
        checks.append(
            (
                "4 streams through the server, tokens/s",
                value,
                "≥ 64",
                "yes" if value >= 64 else "no",
                ", ".join(f"{r:.1f}" for r in runs),
            )
        )
    plain = {r["streams"]: r for r in results.streams if r["path"].startswith("plain llama.cpp batch")}
    if 4 in served and 4 in plain:
        pairs = zip(served[4].get("runs_tps", []), plain[4].get("runs_tps", []))
        checks.append(
            (
                "4 streams through the server / plain llama.cpp batch API",
                served[4]["aggregate_tps"] / plain[4]["aggregate_tps"],
                "(context)",
                "",
                ", ".join(f"{a / b:.2f}" for a, b in pairs if b),
            )
        )
    for n in sorted(set(served) & set(direct)):
        pairs = zip(served[n].get("runs_tps", []), direct[n].get("runs_tps", []))
        per_round = [1 - a / b for a, b in pairs if b]
        # The direct and served runs of a round are adjacent in time: the median of the
        # rounds' own ratios cancels the machine's drift between rounds.
        overhead = (
            statistics.median(per_round)
            if per_round
            else 1 - served[n]["aggregate_tps"] / direct[n]["aggregate_tps"]
        )
        checks.append(
            (
                f"server overhead at {n} stream(s)",
                overhead,
                "≤ 0.05",
                "yes" if overhead <= 0.05 else "no",
                ", ".join(f"{r:.2f}" for r in per_round),
            )
        )
    if not checks:
        return []
    lines = [
        f"### Goals ({me})",
        "",
        "| measure | value (medians) | goal | met | round by round |",
        "| --- | ---: | ---: | :---: | --- |",
    ]
    for label, value, goal, met, rounds in checks:
        digits = 1 if label.endswith("tokens/s") else 2  # a rate, not a ratio
        shown = "—" if value is None else f"{value:.{digits}f}"
        lines.append(f"| {label} | {shown} | {goal} | {met} | {rounds} |")
    lines.append("")
    if any(label.startswith("server overhead") for label, *_ in checks):
        lines += [
            "Server overhead: 1 − served / direct tokens/s, the median of the rounds' own ratios; "
            "the HTTP clients run in a process of their own, as an application's would.",
            "",
        ]
    return lines


def plot(results: Results, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in ("single", "prefill", "turns", "streams") if getattr(results, p)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "single":
            names = [r["subject"].replace("plain ", "").replace("chatforge ", "cf ") for r in results.single]
            ax.barh(names, [r["decode_tps"] for r in results.single], color="tab:blue")
            ax.set_xlabel("decode tokens/s (single stream)")
        elif panel == "prefill":
            names = [r["subject"].replace("plain ", "").replace("chatforge ", "cf ") for r in results.prefill]
            ax.barh(names, [r["tps"] for r in results.prefill], color="tab:orange")
            ax.set_xlabel(f"prefill tokens/s ({results.prefill[0]['tokens']} tokens)")
        elif panel == "turns":
            for name, values in results.turns.items():
                ax.plot(range(1, len(values) + 1), values, marker="o", label=name)
            ax.set_xlabel("turn")
            ax.set_ylabel("TTFT ms")
            ax.legend(fontsize=8)
        else:
            for path_name in dict.fromkeys(r["path"] for r in results.streams):
                rows = [r for r in results.streams if r["path"] == path_name]
                ax.plot(
                    [r["streams"] for r in rows],
                    [r["aggregate_tps"] for r in rows],
                    marker="o",
                    label=path_name.split(" (")[0],  # the path's name without its details
                )
            ax.set_xlabel("concurrent streams")
            ax.set_ylabel("aggregate tokens/s")
            ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
