"""The `chatforge` command, run as a user runs it (a real process, stdin and stdout)."""

import subprocess
import sys

import pytest
from cli_process import chatforge


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_model, tiny_tokenizer):
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def test_chat_streams_and_understands_its_commands(tiny_dir):
    result = chatforge(
        "chat",
        "--model",
        str(tiny_dir),
        "--max-new-tokens",
        "5",
        "--temperature",
        "0",
        stdin="Hello\n/system Be brief.\nclear\n你好\nstop\nnever read\n",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("Assistant: ") == 2
    assert "(system prompt set)" in out and "(history cleared)" in out


def test_chat_exits_on_end_of_input(tiny_dir):
    result = chatforge("chat", "--model", str(tiny_dir), "--max-new-tokens", "3", stdin="Hello\n")
    assert result.returncode == 0, result.stderr


def test_missing_model_is_a_clear_error():
    result = chatforge("chat", "--model", "Qwen/Qwen2.5-7B-Instruct")
    assert result.returncode == 2
    assert "looks like a model-hub id" in result.stderr and "never downloads" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_the_commands():
    result = chatforge("--help")
    assert result.returncode == 0 and "chat" in result.stdout and "model" in result.stdout


def test_train_command_restarts_under_jemalloc(tmp_path):
    """`chatforge train` re-executes itself with jemalloc preloaded when it is installed (one
    epoch of LoRA: 85 s instead of 149 s in docs/models.md), and says so; CHATFORGE_JEMALLOC=0 keeps glibc."""
    import os

    from chatforge.train.allocator import JEMALLOC

    if not JEMALLOC.exists():
        pytest.skip("libjemalloc2 is not installed")
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    command = [sys.executable, "-m", "chatforge.cli", "train", str(tmp_path / "missing.yaml")]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert "memory allocator: jemalloc" in proc.stderr, proc.stderr
    assert "missing.yaml" in proc.stderr and proc.returncode != 0
    off = dict(env, CHATFORGE_JEMALLOC="0")
    proc = subprocess.run(command, capture_output=True, text=True, env=off, timeout=120)
    assert "jemalloc" not in proc.stderr and "missing.yaml" in proc.stderr


def test_speculative_decoding_from_the_command_line(smollm_path):
    """``--speculative draft:MODEL`` loads the draft model beside the model (here SmolLM2
    drafting for itself) and chats; a value it does not know is an argument error."""
    result = chatforge(
        "chat",
        "--model",
        str(smollm_path),
        "--engine",
        "llama.cpp",
        "--threads",
        "1",
        "--speculative",
        f"draft:{smollm_path}",
        "--max-new-tokens",
        "24",
        "--temperature",
        "0",
        stdin="Repeat after me: one two three four five six.\n",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("Assistant: ") == 1
    bad = chatforge("chat", "--model", str(smollm_path), "--speculative", "draft")
    assert bad.returncode == 2 and "--speculative takes off, ngram or draft:MODEL" in bad.stderr
