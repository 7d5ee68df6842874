"""Config: YAML + command-line overrides, coercion, and validation messages that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatforge.train.config import ConfigError, load_config


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides(tmp_path):
    path = write(
        tmp_path, "data:\n  train_file: t.jsonl\nlora:\n  r: 4\n  target_modules: [q_proj, v_proj]\n"
    )
    config = load_config(path, {"lora.r": "16", "training.learning_rate": "1e-4", "data.packing": "true"})
    assert config.lora.r == 16 and config.lora.target_modules == ["q_proj", "v_proj"]
    assert config.training.learning_rate == 1e-4 and config.data.packing is True
    assert load_config(path, {"lora.target_modules": "q_proj,k_proj"}).lora.target_modules == [
        "q_proj",
        "k_proj",
    ]


def test_integer_lists_from_yaml_and_command_line(tmp_path):
    path = write(tmp_path, "data:\n  train_file: t.jsonl\nlora:\n  layers: [12, 13]\n")
    assert load_config(path).lora.layers == [12, 13]
    assert load_config(path, {"lora.layers": "20, 21,22"}).lora.layers == [20, 21, 22]
    assert load_config(path, {"lora.layers": ""}).lora.layers == []
    with pytest.raises(ConfigError, match="lora.layers must be a int, got 'x'"):
        load_config(path, {"lora.layers": "1,x"})
    with pytest.raises(ConfigError, match="lora.layers must be layer indices >= 0"):
        load_config(path, {"lora.layers": "-1"})


@pytest.mark.parametrize(
    ("yaml_text", "overrides", "message"),
    [
        ("training:\n  learning_rate: -1\n", {}, "config.yaml: training.learning_rate must be > 0, got -1.0"),
        (
            "training:\n  learning_rate: fast\n",
            {},
            "config.yaml: training.learning_rate must be a float, got 'fast'",
        ),
        ("lora:\n  rank: 8\n", {}, "config.yaml: unknown field 'lora.rank'"),
        ("optimizer:\n  lr: 1\n", {}, "config.yaml: unknown group 'optimizer'"),
        ("", {"method.name": "prompt"}, "config.yaml: method.name must be one of lora, adalora"),
        ("", {"data.packing": "maybe"}, "config.yaml: data.packing must be a bool, got 'maybe'"),
        ("", {"lora.dropout": "1.5"}, "config.yaml: lora.dropout must be in [0, 1), got 1.5"),
        (
            "",
            {"training.early_stopping_patience": "2"},
            "training.early_stopping_patience needs data.eval_file",
        ),
        (
            "",
            {"data.packing": "true", "method.name": "ptuning_v2"},
            "data.packing cannot be combined with method ptuning_v2",
        ),
        (
            "",
            {"data.eval_file": "e.jsonl", "training.eval_steps": "2", "training.save_steps": "3"},
            "training.save_steps must be a multiple of training.eval_steps (2)",
        ),
    ],
)
def test_validation_names_file_and_field(tmp_path, yaml_text, overrides, message):
    path = write(tmp_path, "data:\n  train_file: t.jsonl\n" + yaml_text)
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides)
    assert message in str(err.value)


def test_train_file_required():
    with pytest.raises(ConfigError, match="command line: data.train_file is required"):
        load_config(None, {})


@pytest.mark.parametrize(
    "path",
    sorted(
        p
        for p in (Path(__file__).parents[2] / "examples").rglob("*.yaml")
        if "accelerate" not in p.name and "deepspeed" not in p.name and "fsdp" not in p.name
    ),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_example_configs_are_valid(path):
    load_config(path)
