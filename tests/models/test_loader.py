import pytest

from chatforge.chat import load_model
from chatforge.models.device import resolve_device, resolve_dtype
from chatforge.models.loader import ModelNotFoundError, resolve


def test_local_directory_loads_and_chats(tmp_path, tiny_model, tiny_tokenizer):
    tiny_model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    model = load_model(tmp_path, dtype="float32")
    response, history = model.chat("Hello", do_sample=False, max_new_tokens=4)
    assert history[-1]["content"] == response
    assert model.template.name == "hf"


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p / "missing", "no model at"),
        (lambda p: (p / "weights.bin").write_bytes(b"x") and p / "weights.bin", "not a .gguf model"),
        (lambda p: p, "has no config.json"),
        (lambda p: (p / "config.json").write_text("{oops") and p, "not valid JSON"),
        (lambda p: (p / "config.json").write_text('{"model_type": "qwen2"}') and p, "no weights"),
    ],
)
def test_bad_references_say_what_is_wrong(tmp_path, setup, message):
    with pytest.raises(ModelNotFoundError, match=message):
        resolve(setup(tmp_path))


def test_hub_ids_are_never_downloaded():
    with pytest.raises(ModelNotFoundError, match="never downloads"):
        resolve("THUDM/chatglm3-6b")


def test_device_and_dtype_choices():
    assert resolve_device("cpu").type == "cpu"
    assert str(resolve_dtype("bf16", resolve_device("cpu"))) == "torch.bfloat16"
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int3", resolve_device("cpu"))
    with pytest.raises(ValueError):
        resolve_device("tpu")


def test_an_embedded_name_loads_its_converted_weights(tmp_path, monkeypatch, tiny_model, tiny_tokenizer):
    """`load_model("qwen2.5-coder-1.5b-instruct")` through the real resolution: a tiny model
    stands in for the converted weights in an empty cache."""
    from chatforge.models.embedded import QWEN_CODER_1_5B, hf_dir

    monkeypatch.setenv("CHATFORGE_HOME", str(tmp_path))
    tiny_model.save_pretrained(hf_dir(QWEN_CODER_1_5B))
    tiny_tokenizer.save_pretrained(hf_dir(QWEN_CODER_1_5B))
    source = resolve("1.5b")
    assert (source.kind, source.path, source.name) == ("hf", hf_dir(QWEN_CODER_1_5B), QWEN_CODER_1_5B.name)
    model = load_model("qwen2.5-coder-1.5b-instruct", engine="transformers", dtype="float32")
    assert model.name == QWEN_CODER_1_5B.name
    response, _ = model.chat("Hello", do_sample=False, max_new_tokens=3)
    assert isinstance(response, str)
