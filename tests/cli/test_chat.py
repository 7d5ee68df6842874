"""`chatforge chat` as a user sees it: the User: prompt in every mode, no library logs
without -v (all of them with it, llama.cpp's own lines included), and an agent's steps
printed compactly with the answer set apart."""

from __future__ import annotations

import argparse
import io
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest
from cli_process import chatforge
from scripted import scripted_model
from smollm import need_llama_cpp
from tiny import make_model

from chatforge.agent.loop import AgentEvent, EventKind
from chatforge.agent.tools.results import ToolResult
from chatforge.cli.chat import run_agent_chat
from chatforge.cli.transcript import AgentPrinter, use_color
from chatforge.messages import ToolCall

# Lines that only a library's log or progress bar writes.
LIBRARY_LINE = re.compile(
    r"^(INFO|WARNING|DEBUG)\b|Loading weights|it/s\]|^(llama_|load_tensors|load:|print_info)", re.M
)
# llama.cpp's own log lines (model metadata, tensor loading).
NATIVE_LINE = re.compile(r"^(llama_|load_tensors|print_info)", re.M)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny random model with room for the tools' system prompt (about 1300 of its tokens)."""
    path = tmp_path_factory.mktemp("tiny-chat-model")
    model = make_model(tiny_tokenizer)
    model.config.max_position_embeddings = 4096  # rotary positions: the weights fit any length
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def on_terminal(*args: str, typed: str, stderr_path) -> tuple[int, str, str]:
    """``chatforge`` with stdin and stdout on a pseudo-terminal, as a user runs it, and stderr
    sent to a file (as a user hiding logs would): its exit status, screen and stderr."""
    master, slave = pty.openpty()
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "chatforge.cli", *args], stdin=slave, stdout=slave, stderr=err
        )
    os.close(slave)
    os.write(master, typed.encode())  # typed ahead: the terminal holds the lines until read
    screen = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1)[0]:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the program has exited and closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return proc.returncode, screen.decode(errors="replace"), stderr_path.read_text()


@pytest.mark.parametrize("mode", ["chat", "tools", "code"])
def test_every_mode_prompts_on_stdout_and_shows_no_logs(mode, tiny_dir, tmp_path):
    code, screen, stderr = on_terminal(
        "chat",
        "--model",
        str(tiny_dir),
        "--engine",
        "transformers",
        "--mode",
        mode,
        "--workdir",
        str(tmp_path / "work"),
        "--max-new-tokens",
        "3",
        typed="Hello\nstop\n",
        stderr_path=tmp_path / "stderr.txt",
    )
    assert code == 0, screen + stderr
    assert screen.count("User: ") == 2, screen  # Hello, then stop
    assert "\nAssistant: " in screen.replace("\r", "")
    assert stderr == ""  # neither the prompt nor any log line
    assert not LIBRARY_LINE.search(screen.replace("\r", "")), screen


def test_verbose_shows_the_library_logs(tiny_dir):
    quiet = chatforge("chat", "--model", str(tiny_dir), "--max-new-tokens", "2", stdin="Hi\n")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "" and not LIBRARY_LINE.search(quiet.stdout), quiet.stdout
    assert "User: Hi\n" in quiet.stdout  # piped input is echoed after the prompt
    for flags in (["-v", "chat"], ["chat", "-v"]):
        loud = chatforge(*flags, "--model", str(tiny_dir), "--max-new-tokens", "2", stdin="Hi\n")
        assert loud.returncode == 0, loud.stderr
        assert "INFO chatforge.models.loader: loading" in loud.stderr
        assert "Loading weights" in loud.stderr  # transformers' progress bar


def test_a_missing_model_is_one_line_on_stderr(tmp_path):
    result = chatforge("chat", "--model", str(tmp_path / "nothing.gguf"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("chatforge: error:")


def test_llama_cpp_keeps_its_log_to_itself_without_verbose(smollm_path, tmp_path):
    need_llama_cpp()
    args = ["--model", str(smollm_path), "--engine", "llama.cpp", "--threads", "1", "--parallel", "1"]
    args += ["--context-length", "256", "--max-new-tokens", "2"]
    quiet = chatforge("chat", *args, stdin="Hi\n")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "", quiet.stderr
    assert not NATIVE_LINE.search(quiet.stdout) and "User: Hi" in quiet.stdout
    loud = chatforge("-v", "chat", *args, stdin="Hi\n")
    assert loud.returncode == 0, loud.stderr[-2000:]
    assert NATIVE_LINE.search(loud.stderr), loud.stderr[-2000:]
    assert "llama.cpp loaded" in loud.stderr


def test_not_a_gguf_file_is_one_line_on_stderr(tmp_path):
    need_llama_cpp()
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a model")
    result = chatforge("chat", "--model", str(bad), "--engine", "llama.cpp", "--threads", "1")
    assert result.returncode == 2
    assert result.stderr.startswith(f"chatforge: error: {bad}") and "not a GGUF" in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr


# -- the agent's steps, in-process with a scripted model --------------------------------------
def agent_chat(model, mode: str, typed: str, capsys, monkeypatch, tmp_path) -> str:
    monkeypatch.setattr(sys, "stdin", io.StringIO(typed))
    args = argparse.Namespace(mode=mode, tools=[], system=None, workdir=str(tmp_path / "work"))
    assert run_agent_chat(model, args, {}) == 0
    return capsys.readouterr().out


def tool_call(name: str, **arguments) -> str:
    import json

    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def test_a_tool_step_is_two_short_lines_and_the_answer_stands_apart(
    tiny_tokenizer, capsys, monkeypatch, tmp_path
):
    model = scripted_model(
        tiny_tokenizer, [tool_call("calculator", expression="37*49+12"), "37*49+12 is 1825."]
    )
    out = agent_chat(model, "tools", "What is 37*49+12?\nstop\n", capsys, monkeypatch, tmp_path)
    assert (
        "User: What is 37*49+12?\n"
        "\n"
        '  → calculator(expression="37*49+12")\n'
        "  ← 1825\n"
        "\n"
        "Assistant: 37*49+12 is 1825.\n"
        "\n"
        "User: stop\n"
    ) in out, out
    assert "\x1b[" not in out  # no colour off a terminal


PLOT = """Let me draw it.
```python
import matplotlib.pyplot as plt
for i in range(12):
    print("line", i)
plt.plot([0, 1], [1, 0])
plt.show()
```"""


def test_a_code_step_folds_its_output_and_saves_the_image(tiny_tokenizer, capsys, monkeypatch, tmp_path):
    model = scripted_model(tiny_tokenizer, [PLOT, "Here is the line."])
    out = agent_chat(model, "code", "draw a line\n", capsys, monkeypatch, tmp_path)
    assert "\nAssistant: Let me draw it.\n\n  ▶ running code (5 lines)\n" in out, out
    assert "import matplotlib" not in out  # the step line stands for the code
    assert "    line 0\n" in out and "line 5" not in out and "more lines)" in out
    image = tmp_path / "work" / "default" / "image-1.png"
    assert re.search(rf"  \[image: \d+ KB PNG saved to {re.escape(str(image))}\]\n", out), out
    assert image.read_bytes().startswith(b"\x89PNG")
    assert out.endswith("\n\nAssistant: Here is the line.\n\nUser: \n")


def test_long_results_and_outputs_are_cut():
    out = io.StringIO()
    printer = AgentPrinter(out)
    printer.start("tools")
    call = ToolCall("search", {"query": "x" * 500})
    printer.show(AgentEvent(EventKind.TOOL_CALL, call=call))
    printer.show(AgentEvent(EventKind.TOOL_RESULT, text="a\nb " * 300, result=ToolResult("search", "")))
    printer.show(
        AgentEvent(EventKind.TOOL_RESULT, text="no such tool", result=ToolResult("x", "", is_error=True))
    )
    printer.show(AgentEvent(EventKind.FINAL, text="(stopped after 6 rounds without a final answer)"))
    lines = out.getvalue().splitlines()
    assert lines[1].startswith('  → search(query="xxx') and len(lines[1]) == 204 and lines[1].endswith("…")
    assert lines[2].startswith("  ← a b a b") and len(lines[2]) == 204
    assert lines[3] == "  ← error: no such tool"
    assert lines[-1] == "Assistant: (stopped after 6 rounds without a final answer)"


def test_an_answer_with_a_code_block_is_printed_whole():
    out = io.StringIO()
    printer = AgentPrinter(out)
    printer.start("code")
    for piece in ["Use this:\n``", "`python\nprint(1)\n", "```\n"]:
        printer.show(AgentEvent(EventKind.TEXT, text=piece))
    assert out.getvalue() == "\nAssistant: Use this:"  # the block is held while it streams
    printer.show(AgentEvent(EventKind.FINAL, text="Use this:\n```python\nprint(1)\n```"))
    assert out.getvalue() == "\nAssistant: Use this:\n```python\nprint(1)\n```\n"


def test_colour_only_on_a_terminal_without_no_color(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_color(Terminal()) and not use_color(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(Terminal())
