"""The agent task suite: questions a user would put to ``chatforge chat --mode code`` or
``--mode tools``, each with one checkable answer, run through `Agent.run` greedily.

Half of the tasks need the code interpreter (arithmetic, dates, strings, statistics, a plot
saved to a file), half the built-in tools (calculator, unit conversion, current time);
about half are in Chinese. A task passes when its checker accepts the final answer: the
exact number (or a number within the stated rounding) appears in it, the right weekday or
date, or, for a plot, the file exists in the session's directory and is a real image.
Answers about the current time are checked against the clock while the task ran.

    .venv/bin/python benchmarks/agent_suite.py --model default [--engine auto]
        [--threads N] [--mode code|tools] [--only ID,ID] [--out suite.json]

`run_suite(model, tasks=None)` is the entry point for other benchmarks.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from chatforge.agent import Agent, CodeInterpreter, InterpreterConfig, builtin_tools
from chatforge.chat import ChatModel

# ----------------------------------------------------------------------------- checkers


@dataclass
class Run:
    """What a checker sees: the final answer, the task's time window and its session directory."""

    answer: str
    started: datetime  # UTC
    finished: datetime  # UTC
    workdir: Path | None


Checker = Callable[[Run], bool]

_NUMBER = re.compile(r"(?<![\d.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d)")


def numbers_in(text: str) -> list[Decimal]:
    """Every number written in ``text`` (thousands separators allowed), in order."""
    text = text.replace("，", ",").replace("−", "-")
    found = []
    for match in _NUMBER.finditer(text):
        try:
            found.append(Decimal(match.group(0).replace(",", "")))
        except InvalidOperation:
            continue
    return found


def number(expected: str, tolerance: str = "0") -> Checker:
    """The answer contains ``expected`` exactly, or within ``tolerance`` (for stated rounding)."""
    target, slack = Decimal(expected), Decimal(tolerance)
    return lambda run: any(abs(n - target) <= slack for n in numbers_in(run.answer))


def text(*accepted: str) -> Checker:
    """The answer contains one of ``accepted`` (case-insensitive)."""
    return lambda run: any(a.lower() in run.answer.lower() for a in accepted)


_WEEKDAYS_EN = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WEEKDAYS_ZH = ("一", "二", "三", "四", "五", "六", "[日天]")


def weekdays_in(answer: str) -> set[int]:
    """The weekdays (0 = Monday) named in ``answer``, in English or Chinese."""
    lower = answer.lower()
    found = {i for i, name in enumerate(_WEEKDAYS_EN) if name in lower}
    for i, char in enumerate(_WEEKDAYS_ZH):
        if re.search(f"(?:星期|周|礼拜){char}", answer):
            found.add(i)
    return found


def weekday(expected: int | Callable[[Run], int]) -> Checker:
    """Names exactly one weekday, the expected one (0 = Monday; or computed from the run)."""

    def check(run: Run) -> bool:
        day = expected(run) if callable(expected) else expected
        return weekdays_in(run.answer) == {day}

    return check


def _date_forms(day: date) -> list[str]:
    month = day.strftime("%B")
    return [
        day.isoformat(),
        f"{day.year}/{day.month:02d}/{day.day:02d}",
        f"{day.year}/{day.month}/{day.day}",
        f"{day.year}年{day.month}月{day.day}日",
        f"{month} {day.day}, {day.year}",
        f"{month} {day.day} {day.year}",
        f"{day.day} {month} {day.year}",
        f"{month[:3]} {day.day}, {day.year}",
    ]


def today(zone: str | None = None) -> Checker:
    """Today's date, as the clock had it while the task ran (a run over midnight accepts both days)."""

    def check(run: Run) -> bool:
        days = {_local(run.started, zone).date(), _local(run.finished, zone).date()}
        return any(form.lower() in run.answer.lower() for d in days for form in _date_forms(d))

    return check


_CLOCK = re.compile(r"(\d{1,2})\s*(?::|点|時|时)\s*(\d{1,2})")


def clock(zone: str | None = None, slack_minutes: int = 2) -> Checker:
    """A time of day (``14:05``, ``2:05 PM``, ``14点05分``) within the task's window, in ``zone``."""

    def check(run: Run) -> bool:
        low = _local(run.started, zone) - timedelta(minutes=slack_minutes)
        span = (run.finished - run.started).total_seconds() / 60 + 2 * slack_minutes
        start = low.hour * 60 + low.minute
        for hour, minute in _CLOCK.findall(run.answer):
            stated = int(hour) * 60 + int(minute)
            # Twelve-hour clocks: 2:05 stands for 14:05 as well.
            for candidate in (stated, stated + 720):
                if (candidate - start) % 1440 <= span:
                    return True
        return False

    return check


def _local(moment: datetime, zone: str | None) -> datetime:
    return moment.astimezone(ZoneInfo(zone)) if zone else moment.astimezone()


def image_file(name: str) -> Checker:
    """``name`` exists in the session's directory and opens as an image of some size."""

    def check(run: Run) -> bool:
        from PIL import Image, UnidentifiedImageError

        path = (run.workdir / name) if run.workdir else None
        if path is None or not path.is_file():
            return False
        try:
            with Image.open(path) as image:
                image.load()
                return image.width >= 16 and image.height >= 16
        except (OSError, UnidentifiedImageError):
            return False

    return check


def today_weekday(zone: str | None = None) -> Callable[[Run], int]:
    return lambda run: _local(run.finished, zone).weekday()


# ----------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class Task:
    id: str
    mode: str  # "code" or "tools"
    lang: str  # "en" or "zh"
    prompt: str
    check: Checker
    expected: str  # what the checker looks for, for the report


TASKS: list[Task] = [
    # -- code interpreter: arithmetic, dates, strings, statistics, plots
    Task(
        "fib30",
        "code",
        "en",
        "What is the 30th Fibonacci number, with F(1) = F(2) = 1?",
        number("832040"),
        "832040",
    ),
    Task(
        "pow2_64",
        "code",
        "en",
        "What is 2 to the power of 64, exactly?",
        number("18446744073709551616"),
        "18446744073709551616",
    ),
    Task("primes_sum", "code", "zh", "100 以内所有质数的和是多少？", number("1060"), "1060"),
    Task("weekday_2023", "code", "zh", "2023年10月1日是星期几？", weekday(6), "星期日 / Sunday"),
    Task(
        "days_between",
        "code",
        "en",
        "How many days are there from 2024-01-15 to 2024-12-25?",
        number("345"),
        "345",
    ),
    Task(
        "date_plus_100",
        "code",
        "zh",
        "从2024年3月1日起往后100天是哪一天？",
        text("2024-06-09", "2024年6月9日", "6月9日"),
        "2024-06-09",
    ),
    Task(
        "reverse_word", "code", "zh", "把字符串 'chatforge' 倒过来写是什么？", text("egroftahc"), "egroftahc"
    ),
    Task(
        "count_r",
        "code",
        "en",
        "How many times does the letter 'r' appear in 'strawberry raspberry'?",
        number("6"),
        "6",
    ),
    Task("median", "code", "zh", "数据 12, 7, 3, 21, 9, 14 的中位数是多少？", number("10.5"), "10.5"),
    Task(
        "mean",
        "code",
        "en",
        "What is the mean of 4.5, 8.2, 15.1, 16.3 and 23.9?",
        number("13.6", "0.005"),
        "13.6",
    ),
    Task("digit_sum", "code", "zh", "2 的 100 次方的各位数字之和是多少？", number("115"), "115"),
    Task(
        "plot_parabola",
        "code",
        "en",
        "Plot y = x^2 for x from -5 to 5 and save the figure as parabola.png.",
        image_file("parabola.png"),
        "parabola.png, an image",
    ),
    Task(
        "plot_bar",
        "code",
        "zh",
        "画一个柱状图：A、B、C 三类的数值分别是 3、7、5，保存为 bar.png。",
        image_file("bar.png"),
        "bar.png, an image",
    ),
    # -- built-in tools: calculator, unit conversion, current time
    Task(
        "calc_mul_add",
        "tools",
        "en",
        "What is 37 times 49 plus 12? Use the calculator.",
        number("1825"),
        "1825",
    ),
    Task("calc_percent", "tools", "en", "What is 17.5% of 2480?", number("434"), "434"),
    Task("calc_product", "tools", "zh", "1234 乘以 5678 等于多少？", number("7006652"), "7006652"),
    Task("calc_mixed", "tools", "zh", "计算 (15.5 + 4.5) × 3 − 8 ÷ 2 的结果。", number("56"), "56"),
    Task("miles_km", "tools", "en", "How many kilometers is 26.2 miles?", number("42.16", "0.01"), "42.16"),
    Task("pounds_kg", "tools", "en", "Convert 5 pounds to kilograms.", number("2.27", "0.005"), "2.27"),
    Task("fahrenheit", "tools", "zh", "100 华氏度等于多少摄氏度？", number("37.78", "0.01"), "37.78"),
    Task("kg_jin", "tools", "zh", "3.5 公斤是多少斤？", number("7"), "7"),
    Task("today_date", "tools", "en", "What is today's date?", today(), "today's date"),
    Task(
        "tokyo_time",
        "tools",
        "en",
        "What time is it in Tokyo right now?",
        clock("Asia/Tokyo"),
        "Tokyo time, HH:MM",
    ),
    Task("time_now_zh", "tools", "zh", "现在几点了？", clock(), "local time, HH:MM"),
    Task("weekday_today", "tools", "zh", "今天星期几？", weekday(today_weekday()), "today's weekday"),
]


# ----------------------------------------------------------------------------- running


def run_task(model: ChatModel, task: Task, interpreter: CodeInterpreter, **params: Any) -> dict[str, Any]:
    """One task through a fresh `Agent` (its own kernel session for code tasks)."""
    tools = builtin_tools() if task.mode == "tools" else None
    agent = Agent(
        model,
        tools,
        mode=task.mode,
        interpreter=interpreter if task.mode == "code" else None,
        session_id=task.id,
        **params,
    )
    started = datetime.now().astimezone()
    clock_start = time.perf_counter()
    error = None
    try:
        result = agent.run(task.prompt)
        answer, rounds, limited = result.answer, result.rounds, result.stopped_by_limit
        steps = [_step(e) for e in result.events if e.kind in ("tool_call", "tool_result", "code", "output")]
    except Exception as exc:  # noqa: BLE001 - one broken task must not end the suite
        answer, rounds, limited, steps, error = "", agent.rounds, False, [], f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - clock_start
    finished = datetime.now().astimezone()
    workdir = agent.code_session.workdir if task.mode == "code" else None
    passed = error is None and not limited and task.check(Run(answer, started, finished, workdir))
    return {
        "id": task.id,
        "mode": task.mode,
        "lang": task.lang,
        "prompt": task.prompt,
        "passed": passed,
        "answer": answer,
        "expected": task.expected,
        "rounds": rounds,
        "seconds": round(seconds, 2),
        "stopped_by_limit": limited,
        "steps": steps,
        "error": error,
    }


def _step(event: Any) -> dict[str, str]:
    if event.call is not None and event.kind == "tool_call":
        return {
            "kind": "tool_call",
            "text": f"{event.call.name}({json.dumps(event.call.arguments, ensure_ascii=False)})",
        }
    return {"kind": str(event.kind), "text": event.text}


def run_suite(
    model: ChatModel,
    tasks: list[Task] | None = None,
    on_task: Callable[[dict[str, Any]], None] | None = None,
    **params: Any,
) -> dict[str, Any]:
    """Run ``tasks`` (default: all of `TASKS`) greedily; per-task results and passes per mode.

    Returns ``{"tasks": [...], "by_mode": {"code": [passed, total], "tools": [passed, total]}}``.
    ``on_task`` sees each task's result as it is done; ``params`` override the generation
    parameters (greedy, 512 new tokens at most).
    """
    tasks = TASKS if tasks is None else tasks
    params = {"do_sample": False, "temperature": 0.0, "max_new_tokens": 512, **params}
    results = []
    with tempfile.TemporaryDirectory(prefix="agent-suite-") as root:
        with CodeInterpreter(InterpreterConfig(root_dir=root)) as interpreter:
            for task in tasks:
                results.append(run_task(model, task, interpreter, **params))
                if on_task is not None:
                    on_task(results[-1])
    by_mode: dict[str, list[int]] = {"code": [0, 0], "tools": [0, 0]}
    for row in results:
        by_mode[row["mode"]][0] += int(row["passed"])
        by_mode[row["mode"]][1] += 1
    return {"tasks": results, "by_mode": by_mode}


# ----------------------------------------------------------------------------- command line


def print_table(report: dict[str, Any]) -> None:
    print(f"{'task':<15} {'mode':<5} {'lang':<4} {'pass':<4} {'rounds':>6} {'s':>6}  answer")
    for row in report["tasks"]:
        answer = " ".join(row["answer"].split())
        answer = answer if len(answer) <= 70 else answer[:69] + "…"
        mark = "yes" if row["passed"] else "NO"
        print(
            f"{row['id']:<15} {row['mode']:<5} {row['lang']:<4} {mark:<4} {row['rounds']:>6} {row['seconds']:>6.1f}  {answer}"
        )
    parts = [f"{mode} {p}/{n}" for mode, (p, n) in report["by_mode"].items() if n]
    passed = sum(p for p, _ in report["by_mode"].values())
    total = sum(n for _, n in report["by_mode"].values())
    print(f"passed: {', '.join(parts)}; all {passed}/{total}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model",
        default="default",
        help="model reference, as for chatforge chat (default: the embedded one)",
    )
    p.add_argument("--engine", default="auto", help="engine: auto, llama.cpp, transformers, hybrid")
    p.add_argument("--threads", type=int, help="llama.cpp threads (fewer suit a busy machine)")
    p.add_argument("--mode", choices=("code", "tools"), help="only the tasks of this mode")
    p.add_argument("--only", help="comma-separated task ids")
    p.add_argument("--out", type=Path, help="write the full report (answers, steps) as JSON here")
    args = p.parse_args(argv)

    from chatforge.chat import load_model

    tasks = [t for t in TASKS if args.mode in (None, t.mode)]
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {t.id for t in TASKS}
        if unknown:
            p.error(f"--only: unknown task ids {', '.join(sorted(unknown))}")
        tasks = [t for t in tasks if t.id in wanted]
    options = {"n_threads": args.threads} if args.threads else None
    model = load_model(args.model, engine=args.engine, engine_options=options)

    def progress(row: dict[str, Any]) -> None:
        status = "pass" if row["passed"] else "FAIL"
        print(f"  {row['id']}: {status} ({row['seconds']:.0f} s)", file=sys.stderr, flush=True)

    report = run_suite(model, tasks, on_task=progress)
    report["model"], report["engine"] = args.model, model.engine.name
    print_table(report)
    if args.out:
        args.out.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
