"""The notebook magics in a real IPython shell, with the tiny model saved to disk."""

from __future__ import annotations

import pytest

IPython = pytest.importorskip("IPython")


def test_chat_cells_keep_history(tmp_path, tiny_model, tiny_tokenizer, capsys):
    from IPython.core.interactiveshell import InteractiveShell

    tiny_model.save_pretrained(tmp_path / "tiny")
    tiny_tokenizer.save_pretrained(tmp_path / "tiny")
    shell = InteractiveShell.instance()
    try:
        shell.run_line_magic("load_ext", "chatforge.notebook")
        shell.run_line_magic("chat_model", f"{tmp_path / 'tiny'} --device cpu --dtype float32")
        shell.run_cell_magic("chat", "--max-new-tokens 4 --system 'Be brief.'", "Hello!")
        shell.run_cell_magic("chat", "--max-new-tokens 4", "你好，请介绍一下你自己。")
        history = shell.run_line_magic("chat_history", "")
        assert [m["role"] for m in history] == ["system", "user", "assistant", "user", "assistant"]
        assert history[0]["content"] == "Be brief." and history[3]["content"] == "你好，请介绍一下你自己。"
        out = capsys.readouterr().out
        assert "loaded" in out and history[2]["content"] in out
        shell.run_line_magic("chat_clear", "")
        assert [m["role"] for m in shell.run_line_magic("chat_history", "")] == ["system"]
    finally:
        InteractiveShell.clear_instance()


def test_load_ext_chatforge_registers_the_magics():
    """`%load_ext chatforge`, as the README writes it (the package re-exports the extension)."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        shell.run_line_magic("load_ext", "chatforge")
        magics = shell.magics_manager.magics
        assert {"chat_model", "chat_clear", "chat_history"} <= set(magics["line"])
        assert "chat" in magics["cell"]
    finally:
        InteractiveShell.clear_instance()
