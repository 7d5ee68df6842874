"""What one code execution produced: typed output items, the `ExecutionResult` that holds
them in order, and the `OutputCollector` that turns a kernel's iopub messages into them
while enforcing the output limits (characters, images, traceback length)."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field, replace
from typing import Any

from chatforge.agent.tools.results import truncation_marker

__all__ = [
    "ErrorOutput",
    "ExecutionResult",
    "FileInfo",
    "ImageOutput",
    "NoticeOutput",
    "Output",
    "OutputCollector",
    "StreamOutput",
    "TextOutput",
    "is_png",
    "strip_ansi",
]

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def strip_ansi(text: str) -> str:
    """Remove terminal colour and cursor escape sequences."""
    return _ANSI_ESCAPE.sub("", text)


def is_png(data: bytes) -> bool:
    """True if ``data`` starts with the PNG signature."""
    return data.startswith(_PNG_SIGNATURE)


@dataclass(frozen=True)
class StreamOutput:
    """Text the code wrote to ``stdout`` or ``stderr`` (``name``)."""

    name: str
    text: str


@dataclass(frozen=True)
class TextOutput:
    """The ``text/plain`` form of a cell's value (``execute_result``) or of displayed data."""

    text: str
    source: str = "execute_result"


@dataclass(frozen=True)
class ImageOutput:
    """A PNG image the code displayed (e.g. a matplotlib figure); ``alt_text`` is its text/plain form."""

    png: bytes
    alt_text: str = ""


@dataclass(frozen=True)
class ErrorOutput:
    """An exception raised by the code, or a timeout / kernel failure reported by the interpreter."""

    ename: str
    evalue: str
    traceback: str = ""

    def __str__(self) -> str:
        return f"{self.ename}: {self.evalue}" if self.evalue else self.ename


@dataclass(frozen=True)
class NoticeOutput:
    """A note from the interpreter itself (truncation, restarts)."""

    text: str


Output = StreamOutput | TextOutput | ImageOutput | ErrorOutput | NoticeOutput


@dataclass
class ExecutionResult:
    """Everything one `InterpreterSession.execute` call produced, in order.

    timed_out: the code ran past the timeout and was interrupted.
    restarted: the kernel was restarted during this call (after a timeout it would not
        recover from, or because it died); variables and imports are gone, files stay.
    truncated: some output was left out to respect the output limits.
    """

    outputs: list[Output] = field(default_factory=list)
    timed_out: bool = False
    restarted: bool = False
    truncated: bool = False
    elapsed: float = 0.0
    execution_count: int | None = None

    @property
    def text(self) -> str:
        """All text in order; images appear as ``[Image]``."""
        parts: list[str] = []
        for item in self.outputs:
            match item:
                case StreamOutput(text=text) | TextOutput(text=text) | NoticeOutput(text=text):
                    parts.append(text)
                case ImageOutput():
                    parts.append("[Image]")
                case ErrorOutput():
                    parts.append(item.traceback or str(item))
            if parts and not parts[-1].endswith("\n"):
                parts[-1] += "\n"
        return "".join(parts).rstrip("\n")

    @property
    def images(self) -> list[bytes]:
        """PNG bytes of every image, in order."""
        return [item.png for item in self.outputs if isinstance(item, ImageOutput)]

    @property
    def error(self) -> ErrorOutput | None:
        """The last error (exception, timeout or kernel failure), or None if the code ran cleanly."""
        errors = [item for item in self.outputs if isinstance(item, ErrorOutput)]
        return errors[-1] if errors else None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class FileInfo:
    """A file in a session's working directory: path relative to it (POSIX form) and size in bytes."""

    name: str
    size: int


class OutputCollector:
    """Turns iopub messages into `Output` items while enforcing the output limits."""

    def __init__(self, max_output_chars: int, max_images: int) -> None:
        self.max_output_chars = max_output_chars
        self.max_images = max_images
        self.outputs: list[Output] = []
        self.chars = 0
        self.dropped_chars = 0
        self.dropped_images = 0
        self.notice_index: int | None = None
        self.traceback_cut = False
        self.execution_count: int | None = None

    def add(self, msg: dict[str, Any]) -> None:
        kind = msg["msg_type"]
        content = msg["content"]
        if kind == "stream":
            self._add_text(StreamOutput(content.get("name", "stdout"), strip_ansi(content.get("text", ""))))
        elif kind in ("execute_result", "display_data", "update_display_data"):
            if kind == "execute_result":
                self.execution_count = content.get("execution_count")
            self._add_data(
                content.get("data", {}), "execute_result" if kind == "execute_result" else "display_data"
            )
        elif kind == "error":
            self.add_error(
                ErrorOutput(
                    ename=content.get("ename", "Error"),
                    evalue=strip_ansi(content.get("evalue", "")),
                    traceback=strip_ansi("\n".join(content.get("traceback", []))),
                )
            )
        elif kind == "clear_output":
            # Notebook semantics: what the code cleared is not part of the result.
            self.outputs = [item for item in self.outputs if isinstance(item, ErrorOutput)]
            self.chars = 0

    def _add_data(self, data: dict[str, Any], source: str) -> None:
        text = strip_ansi(str(data.get("text/plain", "")))
        if "image/png" in data:
            if len([o for o in self.outputs if isinstance(o, ImageOutput)]) >= self.max_images:
                self.dropped_images += 1
                self._mark_truncated()
                return
            png = base64.b64decode(data["image/png"])
            self.outputs.append(ImageOutput(png=png, alt_text=text))
            return
        if not text:
            text = f"[display data: {', '.join(sorted(data)) or 'empty'}]"
        self._add_text(TextOutput(text, source))

    def _add_text(self, item: StreamOutput | TextOutput) -> None:
        room = self.max_output_chars - self.chars
        overflow = len(item.text) - max(room, 0)
        if overflow > 0:
            self.dropped_chars += overflow
            if room <= 0:
                self._mark_truncated()
                return
            item = replace(item, text=item.text[:room])
        self.chars += len(item.text)
        last = self.outputs[-1] if self.outputs else None
        # The kernel flushes stdout in arbitrary chunks; consecutive chunks read better as one.
        if isinstance(item, StreamOutput) and isinstance(last, StreamOutput) and last.name == item.name:
            self.outputs[-1] = StreamOutput(item.name, last.text + item.text)
        else:
            self.outputs.append(item)
        if overflow > 0:
            self._mark_truncated()

    def add_error(self, error: ErrorOutput) -> None:
        # Errors are always kept (the model needs them), but a runaway traceback is cut
        # from the top: its last lines say what went wrong.
        limit = max(self.max_output_chars // 2, 1000)
        if len(error.traceback) > limit:
            cut = len(error.traceback) - limit
            error = ErrorOutput(
                error.ename, error.evalue, truncation_marker(cut) + "\n" + error.traceback[cut:]
            )
            self.traceback_cut = True
        self.outputs.append(error)

    def _mark_truncated(self) -> None:
        if self.notice_index is None:
            self.notice_index = len(self.outputs)

    @property
    def truncated(self) -> bool:
        return self.notice_index is not None or self.traceback_cut

    def finish(self) -> list[Output]:
        if self.notice_index is None:
            return self.outputs
        parts = []
        if self.dropped_chars:
            parts.append(truncation_marker(self.dropped_chars))
        if self.dropped_images:
            parts.append(truncation_marker(self.dropped_images, "images"))
        notice = NoticeOutput(" ".join(parts) + " (output limit reached)")
        index = min(self.notice_index, len(self.outputs))
        return [*self.outputs[:index], notice, *self.outputs[index:]]
