"""Training data: files (JSON, JSONL, CSV) and record formats, turned into conversations.

Every record becomes a :class:`Sample`: a list of :class:`~chatforge.messages.Message`
plus tools. Formats: ChatGLM3 multi-turn (``tools`` + ``conversations`` with
``role``/``content``/``loss``, where a ``tool`` entry expands into an assistant tool
call and its observation), prompt/response pairs, OpenAI ``messages``, ShareGPT
(``from``/``value``) and Alpaca (``instruction``/``input``/``output``).

Every record is checked; a bad one yields an error naming file, line and field, e.g.
``train.jsonl:17: conversations[2].role: unknown role 'bot'``. Nothing is dropped
silently: invalid records either stop the load or, with ``skip_invalid``, are counted
and listed in the :class:`DataReport`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatforge.messages import Message, MessageError, Role, ToolCall, from_openai

log = logging.getLogger(__name__)


class DataError(ValueError):
    """The data cannot be used; the text lists the bad records (file:line: field: reason)."""


class RecordError(ValueError):
    """One record is invalid; ``str`` is ``field: reason``."""


@dataclass
class Sample:
    """One training conversation, with where it came from."""

    messages: list[Message]
    tools: list[dict[str, Any]] | None = None
    source: str = ""
    line: int = 0
    plain: bool = False  # prompt/response without the chat template
    keywords: list[str] | None = None  # for evaluation: words a good answer contains

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass
class DataReport:
    """What a load found: how many records, which were skipped and why."""

    records: int = 0
    errors: list[str] = field(default_factory=list)
    formats: Counter = field(default_factory=Counter)

    @property
    def skipped(self) -> int:
        return len(self.errors)

    def reasons(self) -> Counter:
        """Skipped records per reason (the text after ``file:line: ``)."""
        return Counter(e.split(": ", 1)[-1] for e in self.errors)


@dataclass
class FormatOptions:
    format: str = "auto"
    prompt_column: str = "prompt"
    response_column: str = "response"
    system_column: str = "system"
    plain: bool = False


# -- reading files -------------------------------------------------------------
def read_records(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line, record)`` for every record; a record that cannot be read is ``(line, RecordError)``."""
    suffix = path.suffix.lower()
    raw = path.read_bytes()
    if suffix == ".jsonl":
        yield from _read_jsonl(raw)
    elif suffix == ".json":
        yield from _read_json(raw)
    elif suffix == ".csv":
        yield from _read_csv(raw)
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .json, .jsonl or .csv")


def _decode(raw: bytes) -> str | tuple[int, str]:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        return (
            line,
            f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at byte {err.start}); re-save the file as UTF-8",
        )


def _read_jsonl(raw: bytes) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            yield (
                number,
                RecordError(
                    f"not valid UTF-8 (byte 0x{line[err.start]:02x} at column {err.start + 1}); re-save as UTF-8"
                ),
            )
            continue
        try:
            yield number, json.loads(text)
        except json.JSONDecodeError as err:
            kind = "truncated JSON" if err.pos >= len(text.rstrip()) - 1 else "invalid JSON"
            yield number, RecordError(f"{kind}: {err.msg} at column {err.colno}")


def _read_json(raw: bytes) -> Iterator[tuple[int, Any]]:
    text = _decode(raw)
    if isinstance(text, tuple):
        yield text[0], RecordError(text[1])
        return
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if pos < len(text) and text[pos] == "{":
        # A single object, or {"data": [...]} / {"train": [...]}: parse it whole.
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            yield err.lineno, RecordError(f"invalid JSON: {err.msg} at column {err.colno}")
            return
        records = next((v for v in obj.values() if isinstance(v, list)), None) if len(obj) == 1 else None
        for rec in records if records is not None else [obj]:
            yield 1, rec
        return
    if pos >= len(text) or text[pos] != "[":
        yield 1, RecordError("expected a JSON array of records (or use .jsonl, one record per line)")
        return
    pos = _skip_ws(text, pos + 1)
    while pos < len(text) and text[pos] != "]":
        line = text.count("\n", 0, pos) + 1
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            yield err.lineno, RecordError(f"invalid JSON: {err.msg} at column {err.colno}")
            return
        yield line, record
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
        elif pos >= len(text) or text[pos] != "]":
            yield (
                text.count("\n", 0, pos) + 1,
                RecordError("invalid JSON: expected ',' or ']' (truncated file?)"),
            )
            return


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _read_csv(raw: bytes) -> Iterator[tuple[int, Any]]:
    text = _decode(raw)
    if isinstance(text, tuple):
        yield text[0], RecordError(text[1])
        return
    reader = csv.DictReader(io.StringIO(text))
    for row in reader:
        yield reader.line_num, {k: v for k, v in row.items() if k is not None}


# -- record formats -------------------------------------------------------------
def detect_format(record: dict[str, Any], options: FormatOptions) -> str:
    if options.format != "auto":
        return options.format
    if "conversations" in record:
        conv = record["conversations"]
        if isinstance(conv, list) and conv and isinstance(conv[0], dict) and "from" in conv[0]:
            return "sharegpt"
        return "chatglm3"
    if "messages" in record:
        return "openai"
    if "instruction" in record:
        return "alpaca"
    if options.prompt_column in record:
        return "prompt_response"
    keys = ", ".join(sorted(record)) or "none"
    raise RecordError(
        "cannot tell the record format: expected 'conversations' (ChatGLM3/ShareGPT), 'messages' "
        f"(OpenAI), 'instruction' (Alpaca) or '{options.prompt_column}' (prompt/response); keys: {keys}"
    )


def to_sample(record: Any, options: FormatOptions) -> tuple[str, Sample]:
    """The record as a checked conversation, or a :class:`RecordError` naming the field."""
    if not isinstance(record, dict):
        raise RecordError(f"expected a JSON object, got {type(record).__name__}")
    fmt = detect_format(record, options)
    convert = {
        "chatglm3": _chatglm3,
        "openai": _openai,
        "sharegpt": _sharegpt,
        "alpaca": _alpaca,
        "prompt_response": lambda r: _prompt_response(r, options),
    }[fmt]
    try:
        messages, tools = convert(record)
    except MessageError as err:
        raise RecordError(str(err)) from None
    check_messages(messages)
    tools = _check_tools(tools)
    keywords = record.get("keywords")
    if isinstance(keywords, str):  # a CSV column: comma-separated
        keywords = [k.strip() for k in keywords.split(",") if k.strip()] or None
    if keywords is not None and not (
        isinstance(keywords, list) and all(isinstance(k, str) for k in keywords)
    ):
        raise RecordError("keywords: expected a list of strings")
    return fmt, Sample(messages, tools, plain=fmt == "prompt_response" and options.plain, keywords=keywords)


def _check_tools(tools: Any) -> list[dict[str, Any]] | None:
    if tools in (None, "", []):
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            raise RecordError("tools: a string must hold a JSON list of function schemas") from None
    if not isinstance(tools, list):
        raise RecordError(f"tools: expected a list of function schemas, got {type(tools).__name__}")
    for i, t in enumerate(tools):
        fn = t.get("function", t) if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise RecordError(f"tools[{i}]: expected a function schema object with a 'name'")
    return tools


def check_messages(messages: list[Message]) -> None:
    """Rules every conversation must meet to train on."""
    if not messages:
        raise RecordError("conversation is empty")
    systems = [i for i, m in enumerate(messages) if m.role is Role.SYSTEM]
    if len(systems) > 1:
        raise RecordError(f"messages[{systems[1]}]: only one system message is allowed")
    if systems and systems[0] != 0:
        raise RecordError(f"messages[{systems[0]}]: the system message must come first")
    if not any(m.role is Role.ASSISTANT for m in messages):
        raise RecordError("no assistant turn: nothing to train on")
    for i, m in enumerate(messages):
        if m.loss is not None and not isinstance(m.loss, bool):
            raise RecordError(f"messages[{i}].loss: expected true or false, got {m.loss!r}")
        if m.role is Role.ASSISTANT and not m.content and not m.tool_calls:
            raise RecordError(f"messages[{i}]: assistant turn has no content")


def _list_field(record: dict[str, Any], name: str) -> list[Any]:
    value = record.get(name)
    if not isinstance(value, list):
        got = "missing" if value is None else type(value).__name__
        raise RecordError(f"{name}: expected a list of turns, got {got}")
    if not value:
        raise RecordError(f"{name}: conversation is empty")
    return value


def _loss(turn: dict[str, Any], where: str) -> bool | None:
    loss = turn.get("loss")
    if loss is not None and not isinstance(loss, bool):
        raise RecordError(f"{where}.loss: expected true or false, got {loss!r}")
    return loss


def _text(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RecordError(f"{where}: expected a string, got {type(value).__name__}")
    return value


def _chatglm3(record: dict[str, Any]) -> tuple[list[Message], Any]:
    messages: list[Message] = []
    seen_user = False
    for i, turn in enumerate(_list_field(record, "conversations")):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise RecordError(f"{where}: expected an object with 'role' and 'content'")
        if "role" not in turn:
            raise RecordError(f"{where}.role: field required")
        role_text = turn["role"]
        loss = _loss(turn, where)
        if role_text == "tool":
            name = turn.get("name")
            if not isinstance(name, str) or not name:
                raise RecordError(f"{where}.name: a tool turn needs the tool's name")
            params = turn.get("parameters", {})
            if not isinstance(params, dict):
                raise RecordError(f"{where}.parameters: expected an object, got {type(params).__name__}")
            if "observation" not in turn:
                raise RecordError(f"{where}.observation: field required (the tool's result)")
            obs = turn["observation"]
            obs_text = obs if isinstance(obs, str) else json.dumps(obs, ensure_ascii=False)
            call = ToolCall(name=name, arguments=params, id=f"call_{i}")
            messages.append(Message(Role.ASSISTANT, "", tool_calls=[call], loss=loss))
            messages.append(Message(Role.OBSERVATION, obs_text, name=name, tool_call_id=call.id))
            continue
        try:
            role = Role.parse(role_text) if isinstance(role_text, str) else None
        except MessageError:
            role = None
        if role is None:
            raise RecordError(
                f"{where}.role: unknown role {role_text!r}; expected system, user, assistant, tool or observation"
            )
        if role is Role.SYSTEM and (seen_user or messages):
            raise RecordError(f"{where}: the system turn must come first and only once")
        seen_user = seen_user or role is Role.USER
        try:
            msg = Message.from_history({**turn, "role": role.value}, where)
        except MessageError as err:
            raise RecordError(str(err)) from None
        msg.loss = loss
        messages.append(msg)
    return messages, record.get("tools")


def _openai(record: dict[str, Any]) -> tuple[list[Message], Any]:
    turns = _list_field(record, "messages")
    messages = from_openai(turns)
    return messages, record.get("tools")


_SHAREGPT_ROLES = {
    "human": Role.USER,
    "user": Role.USER,
    "gpt": Role.ASSISTANT,
    "assistant": Role.ASSISTANT,
    "system": Role.SYSTEM,
    "observation": Role.OBSERVATION,
    "tool": Role.OBSERVATION,
    "function_call": Role.ASSISTANT,
}


def _sharegpt(record: dict[str, Any]) -> tuple[list[Message], Any]:
    messages: list[Message] = []
    system = _text(record.get("system"), "system")
    if system:
        messages.append(Message(Role.SYSTEM, system))
    for i, turn in enumerate(_list_field(record, "conversations")):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict) or "from" not in turn:
            raise RecordError(f"{where}.from: field required")
        who = turn["from"]
        role = _SHAREGPT_ROLES.get(who) if isinstance(who, str) else None
        if role is None:
            raise RecordError(f"{where}.from: unknown speaker {who!r}; expected {', '.join(_SHAREGPT_ROLES)}")
        value = _text(turn.get("value"), f"{where}.value")
        if who == "function_call":
            try:
                call = json.loads(value)
            except json.JSONDecodeError:
                raise RecordError(
                    f"{where}.value: a function_call must be JSON {{name, arguments}}"
                ) from None
            messages.append(
                Message(
                    Role.ASSISTANT, tool_calls=[ToolCall.from_openai(call, where)], loss=_loss(turn, where)
                )
            )
        else:
            messages.append(Message(role, value, loss=_loss(turn, where)))
    return messages, record.get("tools")


def _alpaca(record: dict[str, Any]) -> tuple[list[Message], Any]:
    instruction = _text(record.get("instruction"), "instruction")
    extra = _text(record.get("input"), "input")
    output = _text(record.get("output"), "output")
    if not instruction.strip():
        raise RecordError("instruction: must not be empty")
    if not output.strip():
        raise RecordError("output: must not be empty (nothing to train on)")
    messages: list[Message] = []
    system = _text(record.get("system"), "system")
    if system:
        messages.append(Message(Role.SYSTEM, system))
    history = record.get("history") or []
    if not isinstance(history, list):
        raise RecordError("history: expected a list of [query, answer] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise RecordError(f"history[{i}]: expected a [query, answer] pair of strings")
        messages += [Message(Role.USER, pair[0]), Message(Role.ASSISTANT, pair[1])]
    prompt = f"{instruction}\n{extra}" if extra.strip() else instruction
    messages += [Message(Role.USER, prompt), Message(Role.ASSISTANT, output)]
    return messages, None


def _prompt_response(record: dict[str, Any], options: FormatOptions) -> tuple[list[Message], Any]:
    for col in (options.prompt_column, options.response_column):
        if col not in record:
            raise RecordError(f"{col}: field required")
    prompt = _text(record[options.prompt_column], options.prompt_column)
    response = _text(record[options.response_column], options.response_column)
    if not response.strip():
        raise RecordError(f"{options.response_column}: must not be empty (nothing to train on)")
    messages = []
    system = _text(record.get(options.system_column), options.system_column)
    if system:
        messages.append(Message(Role.SYSTEM, system))
    messages += [Message(Role.USER, prompt), Message(Role.ASSISTANT, response)]
    return messages, None


# -- loading -----------------------------------------------------------------------
def load_samples(
    path: str | Path,
    options: FormatOptions | None = None,
    skip_invalid: bool = False,
    max_errors: int = 20,
) -> tuple[list[Sample], DataReport]:
    """Every valid sample of a file, and a report of what was skipped.

    Without ``skip_invalid`` any invalid record raises :class:`DataError` listing up
    to ``max_errors`` of them (all are checked first, so one run shows them together).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} not found")
    options = options or FormatOptions()
    report = DataReport()
    samples: list[Sample] = []
    for line, record in read_records(path):
        report.records += 1
        try:
            if isinstance(record, RecordError):
                raise record
            fmt, sample = to_sample(record, options)
        except RecordError as err:
            report.errors.append(f"{path.name}:{line}: {err}")
            continue
        sample.source, sample.line = path.name, line
        report.formats[fmt] += 1
        samples.append(sample)
    if report.errors and not skip_invalid:
        shown = report.errors[:max_errors]
        more = len(report.errors) - len(shown)
        text = "\n".join(shown) + (f"\n... and {more} more" if more else "")
        raise DataError(
            f"{len(report.errors)} invalid record(s) of {report.records} in {path}:\n{text}\n"
            "Fix them, or skip them (they are counted and reported): data.skip_invalid in a train config, "
            "--skip-invalid for chatforge data check."
        )
    if report.errors:
        log.warning("%s: skipped %d invalid record(s) of %d", path.name, report.skipped, report.records)
        for reason, count in report.reasons().most_common():
            log.warning("  %d × %s", count, reason)
    if not samples:
        raise DataError(f"{path}: no usable records ({report.records} read)")
    return samples, report
