"""What ``chatforge chat`` prints: the ``User:`` prompt, the streamed ``Assistant:`` reply,
and an agent's steps (``--mode tools|code``) as short indented lines::

    User: What is 37*49+12?

      → calculator(expression="37*49+12")
      ← 1825

    Assistant: 37*49+12 is 1825.

Tool results are cut to one line, code output to its first lines, images are saved next to
the code session's files; the full text stays in the conversation the model sees. Plain
text, the step lines dimmed on a terminal unless ``NO_COLOR`` is set.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, TextIO

from chatforge import env
from chatforge.agent.loop import AgentEvent, EventKind
from chatforge.messages import ToolCall

USER_PROMPT = "User: "
ASSISTANT = "Assistant: "
LINE_CHARS = 200  # a step line's text at most: about two lines of a terminal
OUTPUT_LINES = 5  # code output shown, before "… (N more lines)"

# The start of a block the agent runs in code mode (as chatforge.agent.loop finds them).
_FENCE = re.compile(r"```(?:python|py|python3)[ \t]*(?:\n|$)")


def read_user_line(out: TextIO | None = None) -> str:
    """The user's next line, after a blank line and the ``User:`` prompt on stdout.

    The prompt is written here rather than by ``input(prompt)``: without the readline
    module, Python writes that prompt to stderr when stdin is a terminal, and it vanished
    for anyone who sent stderr elsewhere. Input that does not come from a terminal is
    echoed, so a piped session's transcript reads like a typed one. Raises ``EOFError``
    at the end of the input.
    """
    out = out or sys.stdout
    out.write("\n" + USER_PROMPT)
    out.flush()
    line = input()
    if not _isatty(sys.stdin):
        out.write(line + "\n")
        out.flush()
    return line


def one_line(text: str, limit: int = LINE_CHARS) -> str:
    """``text`` on one line (runs of whitespace as one space), cut to ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def call_line(call: ToolCall) -> str:
    """``name(key="value", n=3)``, its arguments as JSON values, on one line."""
    arguments = ", ".join(
        f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in call.arguments.items()
    )
    return one_line(f"{call.name}({arguments})")


def folded(text: str, lines: int = OUTPUT_LINES) -> list[str]:
    """The first ``lines`` lines of ``text`` (each cut to one step line), then how many more."""
    rows = text.rstrip("\n").splitlines() or [""]
    shown = [one_line(row) if len(row) > LINE_CHARS else row.rstrip() for row in rows[:lines]]
    if len(rows) > lines:
        shown.append(f"… ({len(rows) - lines} more lines)")
    return shown


def image_line(size: int, path: Path | None) -> str:
    kb = max(1, round(size / 1024))
    return f"[image: {kb} KB PNG saved to {path}]" if path else f"[image: {size} bytes of PNG]"


def save_image(png: bytes, folder: Path) -> Path | None:
    """``png`` as the first free ``image-N.png`` in ``folder``; None where it cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(1, 10_000):
            path = folder / f"image-{n}.png"
            try:
                with path.open("xb") as f:  # never over a file of the session's
                    f.write(png)
                return path
            except FileExistsError:
                continue
    except OSError:
        return None
    return None


def use_color(stream: TextIO) -> bool:
    """Colour only on a terminal, and not where ``NO_COLOR`` asks for none (no-color.org)."""
    return _isatty(stream) and not env.no_color()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class AgentPrinter:
    """Prints one agent's events (:meth:`show`) as they arrive.

    The reply streams after ``Assistant:``; a round that ends in a step prints the step's
    lines indented under it. In code mode the text from a code block's opening fence on is
    held back (the step line stands for it) and printed after all if the round turns out to
    be the answer. Images go to ``image_dir`` when there is one.
    """

    def __init__(
        self, out: TextIO | None = None, *, image_dir: Path | None = None, color: bool | None = None
    ) -> None:
        self.out = out or sys.stdout
        self.image_dir = image_dir
        self.color = use_color(self.out) if color is None else color
        self._round = ""  # the reply text of the current round
        self._shown = 0  # how much of it is printed
        self._hold_code = False
        self._in_text = False  # a line of reply text is open
        self._steps = False  # the last thing printed was a step

    def start(self, mode: str) -> None:
        """A new query: in code mode, code blocks are held back from the streamed text."""
        self._hold_code = mode == "code"
        self._new_round()

    def show(self, event: AgentEvent) -> None:
        kind = event.kind
        if kind is EventKind.TEXT:
            self._round += event.text
            self._print_text(self._visible())
        elif kind is EventKind.TOOL_CALL and event.call is not None:
            self._step(f"→ {call_line(event.call)}")
        elif kind is EventKind.TOOL_RESULT:
            failed = event.result is not None and event.result.is_error
            self._step(f"← {'error: ' if failed else ''}{one_line(event.text)}")
        elif kind is EventKind.CODE:
            n = len(event.text.strip("\n").splitlines())
            self._step(f"▶ running code ({n} line{'s' if n != 1 else ''})")
        elif kind is EventKind.OUTPUT:
            for row in folded(event.text):
                self._step(f"  {row}")
        elif kind is EventKind.IMAGE:
            png = event.image or b""
            path = save_image(png, self.image_dir) if self.image_dir is not None and png else None
            self._step(image_line(len(png), path))
        elif kind is EventKind.FINAL:
            if not self._round.strip():  # no reply text: the round limit's note, or nothing
                self._round = event.text
            self._print_text(self._round)  # with a code block held back, if the answer has one
            if not self._in_text:  # the answer is set apart even when it is empty
                self.out.write("\n" + ASSISTANT)
                self._in_text = True
            self._end_line()
            self._new_round()
        self.out.flush()

    # -- printing ---------------------------------------------------------------------
    def _visible(self) -> str:
        """The part of this round's text that may be printed now."""
        text = self._round
        if not self._hold_code:
            return text
        fence = _FENCE.search(text)
        if fence is not None:
            return text[: fence.start()]
        # A fence may be arriving: hold back a partial one at the end.
        tail = text.rfind("```")
        if tail != -1 and "\n" not in text[tail:]:
            return text[:tail]
        stripped = text.rstrip("`")
        return stripped if len(text) - len(stripped) < 3 else text

    def _print_text(self, visible: str) -> None:
        # Trailing whitespace waits for the text after it: before a step or at the end of
        # the reply it would only add blank lines.
        visible = visible.rstrip()
        new = visible[self._shown :]
        if not new:
            return
        if not self._in_text:
            new = new.lstrip()  # the reply starts at its first visible character
            if not new:
                return
            self.out.write("\n" + ASSISTANT)
            self._in_text = True
        self.out.write(new)
        self._shown = len(visible)

    def _step(self, text: str) -> None:
        if self._in_text or not self._steps:
            self._end_line()
            self.out.write("\n")  # the steps set apart from what came before
        self._new_round()
        line = f"  {text}"
        self.out.write((f"\x1b[2m{line}\x1b[0m" if self.color else line) + "\n")
        self._steps = True

    def _end_line(self) -> None:
        if self._in_text:
            self.out.write("\n")
            self._in_text = False

    def _new_round(self) -> None:
        self._round, self._shown, self._in_text, self._steps = "", 0, False, False
