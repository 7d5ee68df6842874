"""The whole path: tiny base model on disk → `chatforge train` → `chatforge export` → load and chat."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from tiny import make_model  # noqa: E402

from chatforge.cli import main
from chatforge.messages import Message, Role
from chatforge.train.export import ExportError, export

QUESTION, ANSWER = "What is the weather like in Paris today?", "It is sunny and warm."


@pytest.fixture()
def base_dir(tiny_tokenizer, tmp_path):
    path = tmp_path / "base"
    make_model(tiny_tokenizer).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def test_train_export_load_and_chat(base_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from chatforge import load_model
    from chatforge.models.loader import attach_adapter

    data = tmp_path / "train.jsonl"
    row = {"conversations": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]}
    data.write_text("\n".join([json.dumps(row)] * 8) + "\n")
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"name_or_path": str(base_dir), "dtype": "float32", "device": "cpu"},
                "data": {"train_file": str(data), "max_length": 128},
                # lm_head too: a tiny random model's output layer is too weak to memorise without it.
                "lora": {
                    "r": 16,
                    "alpha": 32,
                    "dropout": 0.0,
                    "target_modules": ["q_proj", "v_proj", "down_proj", "lm_head"],
                },
                "training": {
                    "output_dir": str(tmp_path / "run"),
                    "batch_size": 8,
                    "bf16": "false",
                    "plot": False,
                },
            }
        )
    )
    assert main(["train", str(config), "--training.max_steps", "30", "--training.learning_rate", "1e-2"]) == 0
    assert main(["export", str(tmp_path / "run"), "--output", str(tmp_path / "merged")]) == 0
    merged_dir = tmp_path / "merged"
    assert (merged_dir / "model.safetensors").exists() and (merged_dir / "chat_template.jinja").exists()
    assert (merged_dir / "generation_config.json").exists()

    chat = load_model(merged_dir, device="cpu", dtype="float32")
    response, history = chat.chat(QUESTION, do_sample=False, max_new_tokens=16)
    assert response == ANSWER  # the tiny model learned its one answer
    assert history[-1] == {"role": "assistant", "content": ANSWER, "metadata": ""}

    # The merged weights give the same logits as base + adapter, and plain transformers loads them.
    plain = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    adapted = attach_adapter(base, tmp_path / "run" / "final")
    ids = torch.tensor([chat.template.render([Message(Role.USER, QUESTION)]).ids])
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, adapted(ids).logits, atol=1e-4, rtol=1e-4)


def test_export_refuses_existing_output_and_gguf_without_a_template(base_dir, tmp_path):
    # A Hugging Face base has no GGUF to take the tokenizer and metadata from.
    with pytest.raises(ExportError, match="--gguf-template"):
        export(base_dir, tmp_path / "x", base_model=str(base_dir), gguf=True)
    with pytest.raises(ExportError, match="--gguf-type"):
        export(base_dir, tmp_path / "x", gguf=True, gguf_type="q2")
    assert not (tmp_path / "x").exists()
    (tmp_path / "taken").mkdir()
    with pytest.raises(ExportError, match="already exists"):
        export(base_dir, tmp_path / "taken")
