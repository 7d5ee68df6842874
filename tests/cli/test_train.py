"""`chatforge data check`, `eval` and `train --help` through the real entry point."""

from __future__ import annotations

import json

import pytest
from tiny import make_model  # noqa: E402

from chatforge.cli import main


@pytest.fixture()
def model_dir(tiny_tokenizer, tmp_path):
    path = tmp_path / "tiny"
    make_model(tiny_tokenizer).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


GOOD = {"conversations": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"}]}


def test_data_check_prints_stats_and_sanity_table(model_dir, tmp_path, capsys):
    data = write(tmp_path / "train.jsonl", [GOOD, GOOD, '{"conversations": ['])
    assert main(["data", "check", str(data), "--model", str(model_dir), "--skip-invalid"]) == 0
    out = capsys.readouterr().out
    stats, _ = json.JSONDecoder().raw_decode(out)
    assert (stats["records"], stats["valid"], stats["invalid_skipped"], stats["samples"]) == (3, 2, 1, 2)
    assert stats["length_min"] == stats["length_max"] > 0 and stats["trained_tokens"] > 0
    assert "skipped 1 × truncated JSON" in out
    assert "'<|im_start|>':" in out and "-> -100" in out.replace("    ", " ").replace("  ", " ")
    # Without --skip-invalid the command fails and names the line.
    assert main(["data", "check", str(data), "--model", str(model_dir)]) == 2
    assert "train.jsonl:3: truncated JSON" in capsys.readouterr().err


def test_eval_command(model_dir, tmp_path, capsys):
    data = write(tmp_path / "test.jsonl", [{"prompt": "Hello", "response": "Hi"}])
    out = tmp_path / "pred.jsonl"
    code = main(
        [
            "eval",
            str(data),
            "--model",
            str(model_dir),
            "--dtype",
            "float32",
            "--max-new-tokens",
            "3",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    assert json.loads(out.read_text())["reference"] == "Hi"
    assert '"bleu-4"' in capsys.readouterr().out


def test_train_help_lists_every_field(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--lora.r" in out and "--training.learning_rate" in out and "rank (AdaLoRA" in out


def test_train_config_error_is_reported(tmp_path, capsys):
    assert main(["train", "--data.train_file", "x.jsonl", "--training.learning_rate", "-1"]) == 2
    assert "command line: training.learning_rate must be > 0, got -1.0" in capsys.readouterr().err
