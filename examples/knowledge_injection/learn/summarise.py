"""Print the tables of ../README.md ("chatforge learn") from the reports measure.sh wrote.

python examples/knowledge_injection/learn/summarise.py runs/learn
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def report(path: Path) -> dict:
    return json.loads((path / "learn_report.json").read_text(encoding="utf-8"))


def hits(facts: list[dict]) -> tuple[int, int]:
    return sum(f["probe_hits"] for f in facts), sum(len(f["probes"]) for f in facts)


def controls(r: dict) -> str:
    ret = r["retention"]
    return f"{ret['kept']}/{ret['controls']} / {ret['identical']} / {ret['leaked']}"


def steps(r: dict) -> str:
    """The steps trained, and the step whose checked state the run kept where it is another."""
    kept = r.get("kept_step", r["steps"])
    return f"{r['steps']}" + (f" (kept {kept})" if kept != r["steps"] else "")


def main(root: Path) -> None:
    print(
        "| fact | recalled | probes hit | controls kept / identical / leaked | steps | seconds: train + check = total |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for kind in ("organisation", "product", "preference"):
        if not (root / kind / "learn_report.json").exists():
            continue
        r = report(root / kind)
        h, n = hits(r["facts"])
        s = r["seconds"]
        print(
            f"| {kind} | {all(f['recalled'] for f in r['facts'])} | {h}/{n} | {controls(r)} | {r['steps']} "
            f"({r['stopped_by']}) | {s['train']:.0f} + {s['retention_check']:.0f} = {s['total']:.0f} |"
        )
    runs = sorted(p for p in root.glob("acc-fact-*") if (p / "learn_report.json").exists())
    if not runs:
        return
    print()
    print(
        "| after fact | passed | this fact: recalled, probes | earlier facts recalled | earlier probes hit "
        "| controls kept / identical / leaked | steps | total s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for run in runs:
        r = report(run)
        new, old = r["facts"], r["earlier_facts"]
        h, n = hits(new)
        oh, on = hits(old)
        recalled = sum(f["recalled"] for f in old)
        print(
            f"| {run.name.removeprefix('acc-fact-')} | {r['passed']} | {all(f['recalled'] for f in new)}, {h}/{n} "
            f"| {recalled}/{len(old)} | {oh}/{on} | {controls(r)} | {steps(r)} | {r['seconds']['total']:.0f} |"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/learn"))
