"""ChatGLM2/3 conversion to transformers' GLM, checked against an independent reference, without real weights.

A tiny ChatGLM checkpoint with random weights is written in the published layout (the reference model's
own ``state_dict()``: fused ``query_key_value`` with multi-query groups, ``dense_h_to_4h`` holding both
SwiGLU halves, RMSNorm, QKV bias only, the rotary ``inv_freq`` buffer) as sharded ``.bin`` with an index,
as sharded safetensors with an index, and as a single ``.bin``. The tokenizer is a SentencePiece model
trained here, padded with unused pieces to ChatGLM's 64,789 so the special-token ids are the real ones.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from chatglm_reference import ReferenceConfig, random_reference_model  # noqa: E402
from safetensors.torch import save_file
from sentencepiece import sentencepiece_model_pb2

from chatforge.cli import convert as chatglm_cli  # noqa: E402
from chatforge.models.chatglm import convert as chatglm  # noqa: E402
from chatforge.models.chatglm.adapters import (  # noqa: E402
    convert_chatglm_adapter,
    convert_chatglm_ptuning,
    is_chatglm_layout_adapter,
)
from chatforge.models.chatglm.convert import (  # noqa: E402
    ChatGLMConversionError,
    convert_chatglm,
    detect_chatglm_variant,
    is_chatglm_checkpoint,
    load_chatglm,
)
from chatforge.models.chatglm.tokenizer import build_chatglm_tokenizer  # noqa: E402

CHATGLM3_PIECES = 64789
CHATGLM3_IDS = {
    "[MASK]": 64789,
    "[gMASK]": 64790,
    "[sMASK]": 64791,
    "sop": 64792,
    "eop": 64793,
    "<|system|>": 64794,
    "<|user|>": 64795,
    "<|assistant|>": 64796,
    "<|observation|>": 64797,
}
ATOL = 1e-5  # fp32

TEXTS = [
    "你好",
    "今天北京的天气怎么样？",
    "我们是一个模型助手，回答问题。",
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "mixed 中文 and English 123 数字 4567",
    "  leading and trailing spaces  ",
    "code:\n    def f(x):\n\treturn x * 2\n",
    "emoji 😀 and rare 龘 characters ½",
    "",
    " ",
    "isopropyl alcohol",
]
_EN = (
    "the quick brown fox jumps over lazy dog weather today city answer following questions tools need "
    "use know response details python code function call result hello world model chat assistant user"
).split()
_ZH = list(
    "你好世界今天天气北京上海我们是一个模型助手回答问题工具调用结果代码解释器中文英文很好谢谢请问怎么样的"
)


def _corpus(lines: int = 400):
    rng = random.Random(0)
    for i in range(lines):
        if i % 2:
            yield " ".join(rng.choice(_EN) for _ in range(rng.randint(3, 12))) + rng.choice(".?!,")
        else:
            yield "".join(rng.choice(_ZH) for _ in range(rng.randint(4, 16))) + rng.choice("。，？")


def _train_sentencepiece(model_type: str, **options) -> bytes:
    """A small SentencePiece model from an in-memory corpus (byte fallback, <unk>/<s>/</s> = 0/1/2)."""
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_corpus(),
        model_writer=buffer,
        model_type=model_type,
        vocab_size=420,
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
        **options,
    )
    return buffer.getvalue()


def _pad_to(model: bytes, pieces: int) -> bytes:
    """Append UNUSED pieces (never produced from text) so the vocabulary has ``pieces`` entries."""
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model)
    for i in range(pieces - len(proto.pieces)):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = f"\U000f0000unused{i}", -1e6 - i, 5
    return proto.SerializeToString()


@pytest.fixture(scope="module")
def sp_models(tmp_path_factory) -> dict[str, Path]:
    """ChatGLM-like BPE (identity normalizer, whitespace kept), padded to 64,789 pieces; and a default
    Unigram (NFKC, extra whitespace removed) to show the converter follows the model's settings."""
    root = tmp_path_factory.mktemp("sp")
    bpe = _train_sentencepiece("bpe", normalization_rule_name="identity", remove_extra_whitespaces=False)
    paths = {
        "bpe": root / "bpe.model",
        "chatglm": root / "chatglm.model",
        "unigram": root / "unigram.model",
    }
    paths["bpe"].write_bytes(bpe)
    paths["chatglm"].write_bytes(_pad_to(bpe, CHATGLM3_PIECES))
    paths["unigram"].write_bytes(_train_sentencepiece("unigram"))
    return paths


@pytest.fixture(scope="module")
def ref_config() -> ReferenceConfig:
    return ReferenceConfig(padded_vocab_size=65024, rope_ratio=2.0)


@pytest.fixture(scope="module")
def reference(ref_config):
    return random_reference_model(ref_config, seed=0)


def write_checkpoint(
    directory: Path,
    model,
    cfg: ReferenceConfig,
    tokenizer_model: Path,
    fmt: str,
    name: str = "THUDM/chatglm3-6b",
) -> Path:
    """Write ``model`` in the published ChatGLM layout: ``bin-sharded``, ``safetensors-sharded`` or ``bin``."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(cfg.config_json(name), indent=2))
    shutil.copy(tokenizer_model, directory / "tokenizer.model")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if fmt == "bin":
        torch.save(state, directory / "pytorch_model.bin")
        return directory
    keys = list(state)
    shards = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    suffix = "safetensors" if fmt == "safetensors-sharded" else "bin"
    stem = "model" if suffix == "safetensors" else "pytorch_model"
    weight_map = {}
    for i, shard_keys in enumerate(shards, start=1):
        name_i = f"{stem}-{i:05d}-of-{len(shards):05d}.{suffix}"
        tensors = {k: state[k].contiguous() for k in shard_keys}
        if suffix == "safetensors":
            save_file(tensors, str(directory / name_i), metadata={"format": "pt"})
        else:
            torch.save(tensors, directory / name_i)
        weight_map |= dict.fromkeys(shard_keys, name_i)
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (directory / f"{stem}.{suffix}.index.json").write_text(json.dumps(index))
    return directory


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, reference, ref_config, sp_models) -> Path:
    root = tmp_path_factory.mktemp("chatglm")
    return write_checkpoint(root / "chatglm3-6b", reference, ref_config, sp_models["chatglm"], "bin-sharded")


@pytest.fixture(scope="module")
def converted(tmp_path_factory, checkpoint) -> Path:
    return convert_chatglm(checkpoint, tmp_path_factory.mktemp("converted") / "glm", progress=False)


def _fresh_glm(directory: Path):
    from transformers import GlmForCausalLM

    return GlmForCausalLM.from_pretrained(directory, dtype=torch.float32, local_files_only=True).eval()


@pytest.fixture(scope="module")
def glm_model(converted):
    """Shared by the read-only tests; tests that attach adapters load their own (PEFT patches models)."""
    return _fresh_glm(converted)


def _ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 420, (batch, length), generator=generator)


# ------------------------------------------------------------------------------------------------ model


@pytest.mark.parametrize(
    "fmt, variant",
    [
        ("bin-sharded", {}),  # ChatGLM3-6B-like: MQA with 2 groups, QKV bias
        ("safetensors-sharded", {"rope_ratio": 50.0, "add_qkv_bias": False}),  # 32K-style rope_ratio
        ("bin", {"multi_query_attention": False, "hidden_size": 40}),  # per-head QKV, hidden != heads*kv
    ],
)
def test_logits_match_reference(tmp_path, sp_models, fmt, variant):
    from transformers import GlmForCausalLM

    cfg = ReferenceConfig(padded_vocab_size=512, **variant)
    ref = random_reference_model(cfg, seed=3)
    src = write_checkpoint(tmp_path / "src", ref, cfg, sp_models["bpe"], fmt)
    out = convert_chatglm(src, tmp_path / "out", progress=False)
    model = GlmForCausalLM.from_pretrained(out, dtype=torch.float32, local_files_only=True).eval()
    ids = _ids(2, 16)
    with torch.no_grad():
        expected, _ = ref(ids)
        actual = model(ids).logits
    assert expected.abs().max() > 1.0  # the random network produces non-trivial logits
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


def test_rotary_settings_are_load_bearing(glm_model, reference):
    """Negative control: the same weights with ChatGLM's rope_ratio dropped no longer match."""
    from transformers import GlmForCausalLM

    config = glm_model.config.__class__.from_dict(glm_model.config.to_dict())
    config.rope_parameters = {**config.rope_parameters, "rope_theta": 10000.0}
    wrong = GlmForCausalLM(config).eval()
    wrong.load_state_dict(glm_model.state_dict())
    ids = _ids(1, 16)
    with torch.no_grad():
        assert (wrong(ids).logits - reference(ids)[0]).abs().max() > 1e-3


def test_greedy_generation_with_kv_cache_matches_reference(glm_model, reference):
    prompt = _ids(1, 10, seed=7)
    expected_ids, expected_logits = reference.greedy(prompt, steps=8)
    out = glm_model.generate(
        prompt,
        do_sample=False,
        max_new_tokens=8,
        min_new_tokens=8,
        output_logits=True,
        return_dict_in_generate=True,
        eos_token_id=None,
        pad_token_id=0,
    )
    assert out.sequences[0, prompt.shape[1] :].tolist() == expected_ids
    for step, (actual, expected) in enumerate(zip(out.logits, expected_logits, strict=True)):
        torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0, msg=f"step {step}")


def test_past_key_values_reuse_across_turns(glm_model, reference):
    """Like ChatGLM3's stream_chat(past_key_values=...): a second turn fed on top of the first turn's cache."""
    first, second = _ids(1, 9, seed=11), _ids(1, 6, seed=12)
    with torch.no_grad():
        turn1 = glm_model(first, use_cache=True)
        turn2 = glm_model(second, past_key_values=turn1.past_key_values, use_cache=True)
        expected_full, _ = reference(torch.cat([first, second], dim=1))
        _, ref_past = reference(first)
        expected_turn2, _ = reference(second, ref_past)
    torch.testing.assert_close(turn2.logits, expected_full[:, first.shape[1] :], atol=ATOL, rtol=0)
    torch.testing.assert_close(turn2.logits, expected_turn2, atol=ATOL, rtol=0)


def test_converted_directory_is_plain_transformers(converted, checkpoint):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, GlmForCausalLM

    config = json.loads((converted / "config.json").read_text())
    assert config["model_type"] == "glm" and "auto_map" not in config
    assert config["architectures"] == ["GlmForCausalLM"]
    assert config["rope_parameters"]["partial_rotary_factor"] == 0.5
    assert config["rope_parameters"]["rope_theta"] == 20000.0  # 10000 * rope_ratio
    model = AutoModelForCausalLM.from_pretrained(converted, local_files_only=True)
    assert isinstance(model, GlmForCausalLM)
    generation = GenerationConfig.from_pretrained(converted, local_files_only=True)
    assert generation.eos_token_id == [2, CHATGLM3_IDS["<|user|>"], CHATGLM3_IDS["<|observation|>"]]
    tokenizer = AutoTokenizer.from_pretrained(converted, local_files_only=True)
    assert tokenizer.convert_tokens_to_ids(list(CHATGLM3_IDS)) == list(CHATGLM3_IDS.values())
    assert (tokenizer.eos_token, tokenizer.eos_token_id, tokenizer.pad_token_id) == ("</s>", 2, 0)
    assert set(CHATGLM3_IDS.values()) <= set(tokenizer.all_special_ids)
    assert tokenizer.chat_template
    assert is_chatglm_checkpoint(checkpoint) and not is_chatglm_checkpoint(converted)
    assert json.loads((converted / "chatforge_conversion.json").read_text())["variant"] == "chatglm3"
    # weights are shards like the source's, with an index
    index = json.loads((converted / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 2


def test_load_chatglm_converts_once_and_reuses_cache(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("CHATFORGE_HOME", str(tmp_path / "home"))
    model, tokenizer = load_chatglm(checkpoint, dtype="float32", progress=False)
    entries = list((tmp_path / "home" / "converted").iterdir())
    assert len(entries) == 1 and type(model).__name__ == "GlmForCausalLM"
    assert tokenizer.convert_tokens_to_ids("<|assistant|>") == CHATGLM3_IDS["<|assistant|>"]

    def must_not_convert(*args, **kwargs):
        raise AssertionError("the cached conversion should have been reused")

    monkeypatch.setattr(chatglm, "convert_chatglm", must_not_convert)
    load_chatglm(checkpoint, dtype=torch.float32, progress=False)
    assert list((tmp_path / "home" / "converted").iterdir()) == entries

    # a changed source is converted again, and the outdated conversion removed
    monkeypatch.undo()
    monkeypatch.setenv("CHATFORGE_HOME", str(tmp_path / "home"))
    copy = tmp_path / "src"
    shutil.copytree(checkpoint, copy)
    load_chatglm(copy, progress=False)
    first_copy = {p.name for p in (tmp_path / "home" / "converted").iterdir()}
    config = copy / "config.json"
    config.write_text(config.read_text() + "\n")
    load_chatglm(copy, progress=False)
    second_copy = {p.name for p in (tmp_path / "home" / "converted").iterdir()}
    assert len(first_copy) == len(second_copy) == 2 and first_copy != second_copy


@pytest.mark.parametrize(
    "change, message",
    [
        ({"position_encoding_2d": True}, "first-generation"),
        ({"add_bias_linear": True}, "add_bias_linear"),
        ({"rmsnorm": False}, "rmsnorm"),
        ({"quantization_bit": 4}, "quantization_bit"),
        ({"model_type": "llama"}, "model_type"),
    ],
)
def test_unsupported_configs_are_named(tmp_path, checkpoint, change, message):
    src = tmp_path / "src"
    shutil.copytree(checkpoint, src)
    config = json.loads((src / "config.json").read_text()) | change
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(ChatGLMConversionError, match=message):
        convert_chatglm(src, tmp_path / "out", progress=False)


def test_bad_weights_are_named(tmp_path, reference, ref_config, sp_models):
    src = write_checkpoint(tmp_path / "src", reference, ref_config, sp_models["chatglm"], "bin")
    state = torch.load(src / "pytorch_model.bin", weights_only=True)
    missing = "transformer.encoder.layers.1.mlp.dense_4h_to_h.weight"
    torch.save({k: v for k, v in state.items() if k != missing}, src / "pytorch_model.bin")
    with pytest.raises(ChatGLMConversionError, match=r"model\.layers\.1\.mlp\.down_proj.*dense_4h_to_h"):
        convert_chatglm(src, tmp_path / "out1", progress=False)
    torch.save(state | {"transformer.extra.weight": torch.zeros(1)}, src / "pytorch_model.bin")
    with pytest.raises(ChatGLMConversionError, match=r"pytorch_model\.bin.*transformer\.extra\.weight"):
        convert_chatglm(src, tmp_path / "out2", progress=False)
    key = "transformer.encoder.final_layernorm.weight"
    torch.save(state | {key: torch.ones(7)}, src / "pytorch_model.bin")
    with pytest.raises(ChatGLMConversionError, match=r"model\.norm\.weight has shape \(7,\)"):
        convert_chatglm(src, tmp_path / "out3", progress=False)


def test_variant_detection_reads_but_never_runs_tokenizer_code(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "tokenization_chatglm.py").write_text(
        "raise SystemExit('must not run')\nrole_special_tokens = ['<|system|>', '<|user|>', '<|observation|>']\n"
    )
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "tokenization_chatglm.py").write_text("special_tokens = ['[MASK]', '[gMASK]', 'sop']\n")
    assert detect_chatglm_variant(tmp_path / "a") == "chatglm3"
    assert detect_chatglm_variant(tmp_path / "b") == "chatglm2"
    assert detect_chatglm_variant(tmp_path, {"_name_or_path": "THUDM/chatglm2-6b-32k"}) == "chatglm2"


def test_command_line(tmp_path, checkpoint, capsys):
    import argparse

    assert chatglm_cli.main([str(checkpoint), str(tmp_path / "out"), "--no-progress", "--dtype", "bf16"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    assert chatglm_cli.main([str(tmp_path / "out"), str(tmp_path / "again"), "--no-progress"]) == 2
    assert "model_type" in capsys.readouterr().err

    parser = argparse.ArgumentParser(prog="chatforge")
    chatglm_cli.add_convert_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["convert", "chatglm", "in", "out"])
    assert args.func is chatglm_cli.convert_command and args.src == Path("in")


# -------------------------------------------------------------------------------------------- tokenizer


def test_special_token_ids_are_chatglm3s(sp_models):
    tokenizer = build_chatglm_tokenizer(sp_models["chatglm"])
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in CHATGLM3_IDS} == CHATGLM3_IDS
    assert tokenizer("[gMASK]sop<|system|><|user|><|assistant|><|observation|>").input_ids == [
        64790,
        64792,
        64794,
        64795,
        64796,
        64797,
    ]


@pytest.mark.parametrize("model", ["bpe", "unigram"])
@pytest.mark.parametrize("variant, count", [("chatglm3", 9), ("chatglm2", 5)])
def test_special_tokens_follow_the_vocabulary(sp_models, model, variant, count):
    """The rule behind the ids: ChatGLM's special tokens, in order, right after the SentencePiece pieces."""
    pieces = spm.SentencePieceProcessor(model_file=str(sp_models[model])).get_piece_size()
    tokenizer = build_chatglm_tokenizer(sp_models[model], variant)
    assert len(tokenizer) == pieces + count
    assert [tokenizer.convert_tokens_to_ids(t) for t in list(CHATGLM3_IDS)[:count]] == list(
        range(pieces, pieces + count)
    )


@pytest.mark.parametrize("model", ["chatglm", "unigram"])
def test_text_encodes_like_sentencepiece(sp_models, model):
    sp = spm.SentencePieceProcessor(model_file=str(sp_models[model]))
    tokenizer = build_chatglm_tokenizer(sp_models[model])
    for text in TEXTS:
        ids = tokenizer(text).input_ids  # no [gMASK]sop or any other token added
        assert ids == sp.encode(text), text
        assert tokenizer.decode(ids) == sp.decode(ids), text


def _piecewise_chatglm3(
    sp, conversation: list[tuple[str, str, str]], end: str | None = "<|assistant|>"
) -> list[int]:
    """ChatGLM3's own assembly: [gMASK] sop, then <|role|> + encode(metadata + "\\n") + encode(content)."""
    ids = [CHATGLM3_IDS["[gMASK]"], CHATGLM3_IDS["sop"]]
    for role, metadata, content in conversation:
        ids += [CHATGLM3_IDS[f"<|{role}|>"]] + sp.encode(metadata + "\n") + sp.encode(content)
    if end == "<|assistant|>":
        ids.append(CHATGLM3_IDS[end])
    elif end == "</s>":
        ids.append(sp.eos_id())
    return ids


def _tool_call_text(arguments: dict) -> str:
    """As ChatGLM3's fine-tuning data writes a call: keyword arguments as Python literals."""
    return "```python\ntool_call(" + ", ".join(f"{k}={v!r}" for k, v in arguments.items()) + ")\n```"


WEATHER_TOOL = {
    "name": "get_weather",
    "description": "查询城市天气",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def test_chat_template_matches_chatglm3_piecewise_encoding(sp_models):
    sp = spm.SentencePieceProcessor(model_file=str(sp_models["chatglm"]))
    tokenizer = build_chatglm_tokenizer(sp_models["chatglm"])
    arguments = {
        "city": "北京",
        "days": 3,
        "detailed": True,
        "note": "it's",
        "hours": [8, 12.5],
        "opt": {"a": None},
    }
    system = "You are a helpful assistant."
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": "今天北京的天气怎么样？"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": arguments}}],
        },
        {"role": "tool", "content": '{"weather": "晴", "temperature": 25}'},
        {"role": "assistant", "content": "北京今天晴，25度。"},
        {"role": "user", "content": "plot it in python"},
        {"role": "interpreter", "content": "```python\nprint(25)\n```"},
        {"role": "observation", "content": "25"},
        {"role": "assistant", "metadata": "interpreter", "content": "print(26)"},
    ]
    expected = _piecewise_chatglm3(
        sp,
        [
            ("system", "", system + "\n" + json.dumps([WEATHER_TOOL], indent=4, ensure_ascii=False)),
            ("user", "", "今天北京的天气怎么样？"),
            ("assistant", "get_weather", _tool_call_text(arguments)),
            ("observation", "", '{"weather": "晴", "temperature": 25}'),
            ("assistant", "", "北京今天晴，25度。"),
            ("user", "", "plot it in python"),
            ("assistant", "interpreter", "```python\nprint(25)\n```"),
            ("observation", "", "25"),
            ("assistant", "interpreter", "```python\nprint(26)\n```"),
        ],
    )
    openai_tool = {"type": "function", "function": WEATHER_TOOL}
    rendered = tokenizer.apply_chat_template(
        messages, tools=[openai_tool], add_generation_prompt=True, tokenize=False
    )
    assert rendered.startswith("[gMASK]sop<|system|>\n You are a helpful assistant.\n[\n    {")
    call = "tool_call(city='北京', days=3, detailed=True, note=\"it's\", hours=[8, 12.5], opt={'a': None})"
    assert f"<|assistant|>get_weather\n ```python\n{call}\n```<|observation|>" in rendered
    assert tokenizer(rendered).input_ids == expected


def test_chat_template_tools_from_system_message_and_closing_eos(sp_models):
    sp = spm.SentencePieceProcessor(model_file=str(sp_models["chatglm"]))
    tokenizer = build_chatglm_tokenizer(sp_models["chatglm"])
    tools_json = json.dumps([WEATHER_TOOL], indent=4, ensure_ascii=False)
    # ChatGLM3's history format: the system message carries the tools; no system text -> JSON alone.
    messages = [
        {"role": "system", "content": "", "tools": [WEATHER_TOOL]},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！"},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered.endswith("你好！</s>")
    expected = _piecewise_chatglm3(
        sp, [("system", "", tools_json), ("user", "", "你好"), ("assistant", "", "你好！")], end="</s>"
    )
    assert tokenizer(rendered).input_ids == expected
    # an empty assistant turn adds no content tokens
    plain = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": ""}]
    assert tokenizer(tokenizer.apply_chat_template(plain, tokenize=False)).input_ids == _piecewise_chatglm3(
        sp, [("user", "", "hello"), ("assistant", "", "")], end="</s>"
    )


def test_chatglm2_template(sp_models):
    sp = spm.SentencePieceProcessor(model_file=str(sp_models["chatglm"]))
    tokenizer = build_chatglm_tokenizer(sp_models["chatglm"], "chatglm2")
    messages = [
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！"},
        {"role": "user", "content": "今天天气怎么样"},
    ]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt = "[Round 1]\n\n问：你好\n\n答：你好！\n\n[Round 2]\n\n问：今天天气怎么样\n\n答："
    assert rendered == "[gMASK]sop" + prompt
    assert tokenizer(rendered).input_ids == [CHATGLM3_IDS["[gMASK]"], CHATGLM3_IDS["sop"]] + sp.encode(prompt)


def test_tokenizer_rejects_non_sentencepiece_files(tmp_path):
    vocab = tmp_path / "tokenizer.model"
    vocab.write_text("IQ== 0\nIg== 1\n")  # GLM-4 style tiktoken ranks
    with pytest.raises(ValueError, match="not a SentencePiece model.*tiktoken"):
        build_chatglm_tokenizer(vocab)


# ------------------------------------------------------------------------------------------ fine-tuning


@pytest.mark.parametrize("method", ["lora", "adalora", "prefix"])
def test_peft_methods_train_on_converted_model(converted, method):
    from peft import AdaLoraConfig, LoraConfig, PrefixTuningConfig, get_peft_model

    model = _fresh_glm(converted)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"]
    config = {
        "lora": LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=targets),
        "adalora": AdaLoraConfig(
            task_type="CAUSAL_LM", init_r=4, target_r=2, total_step=20, target_modules=targets
        ),
        "prefix": PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    }[method]
    peft_model = get_peft_model(model, config)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    assert trainable and sum(p.numel() for p in trainable) < sum(p.numel() for p in model.parameters()) / 10
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    batch = _ids(2, 12, seed=5)
    losses = []
    for _ in range(4):
        loss = peft_model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("method", ["lora", "dora", "adalora"])
def test_original_layout_adapter_maps_exactly(tmp_path, converted, reference, ref_config, method):
    """An adapter on the original modules (fused query_key_value...) == the mapped one on the GLM model."""
    from peft import AdaLoraConfig, LoraConfig, PeftModel, get_peft_model

    targets = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
    config = {
        "lora": LoraConfig(r=4, lora_alpha=8, target_modules=targets),
        "dora": LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_dora=True),
        "adalora": AdaLoraConfig(init_r=4, target_r=2, total_step=10, target_modules=targets),
    }[method]
    original = get_peft_model(random_reference_model(ref_config, seed=0), config)
    torch.manual_seed(2)
    with torch.no_grad():
        for name, param in original.named_parameters():
            if "lora_" in name:  # make the adapter do something (B starts at zero)
                param.normal_(0.0, 0.3)
    original.eval().save_pretrained(tmp_path / "original")
    assert is_chatglm_layout_adapter(tmp_path / "original")

    mapped_dir = convert_chatglm_adapter(tmp_path / "original", tmp_path / "mapped", base=converted)
    mapped_config = json.loads((mapped_dir / "adapter_config.json").read_text())
    assert set(mapped_config["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_up_proj",
        "down_proj",
    }
    assert not is_chatglm_layout_adapter(mapped_dir)

    ids = _ids(2, 12, seed=9)
    with torch.no_grad():
        expected, _ = original(ids)
        base_logits, _ = reference(ids)
        mapped = PeftModel.from_pretrained(_fresh_glm(converted), mapped_dir).eval()
        actual = mapped(input_ids=ids).logits
    assert (expected - base_logits).abs().max() > 0.1  # the adapter changes the output
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


def test_adapter_module_names_map_to_glm():
    from chatforge.models.chatglm.adapters import map_chatglm_module_names

    assert map_chatglm_module_names(["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]) == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_up_proj",
        "down_proj",
    ]
    assert map_chatglm_module_names(
        ["transformer.encoder.layers.3.self_attention.dense", "output_layer"]
    ) == [
        "model.layers.3.self_attn.o_proj",
        "lm_head",
    ]
    regex = map_chatglm_module_names(r".*\.(query_key_value|dense_h_to_4h)")
    assert regex == r".*\.((q_proj|k_proj|v_proj)|gate_up_proj)"
    assert map_chatglm_module_names("all-linear") == "all-linear"


@pytest.mark.parametrize("projection", [False, True])
def test_ptuning_v2_prefix_maps_exactly(tmp_path, converted, reference, ref_config, projection):
    """ChatGLM's P-Tuning v2 prefix (past keys/values without rotary, tokens numbered from 0) == PEFT prefix."""
    from peft import PeftModel

    prefix_len, groups, d = 5, ref_config.multi_query_group_num, ref_config.kv_channels
    width = ref_config.num_layers * 2 * groups * d
    torch.manual_seed(4)
    state = {"transformer.prefix_encoder.embedding.weight": torch.randn(prefix_len, width)}
    if projection:
        hidden = ref_config.hidden_size
        state |= {
            "transformer.prefix_encoder.trans.0.weight": torch.randn(hidden, width) / width**0.5,
            "transformer.prefix_encoder.trans.0.bias": torch.randn(hidden) * 0.1,
            "transformer.prefix_encoder.trans.2.weight": torch.randn(width, hidden) / hidden**0.5,
            "transformer.prefix_encoder.trans.2.bias": torch.randn(width) * 0.1,
        }
    (tmp_path / "pt").mkdir()
    torch.save(state, tmp_path / "pt" / "pytorch_model.bin")
    assert is_chatglm_layout_adapter(tmp_path / "pt")
    adapter = convert_chatglm_ptuning(tmp_path / "pt", tmp_path / "peft", base=converted)

    with torch.no_grad():
        prefix = state["transformer.prefix_encoder.embedding.weight"]
        if projection:
            hidden_states = torch.tanh(
                prefix @ state["transformer.prefix_encoder.trans.0.weight"].T
                + state["transformer.prefix_encoder.trans.0.bias"]
            )
            prefix = (
                hidden_states @ state["transformer.prefix_encoder.trans.2.weight"].T
                + state["transformer.prefix_encoder.trans.2.bias"]
            )
        kv = prefix.view(prefix_len, ref_config.num_layers * 2, groups, d)
        past = [(kv[None, :, 2 * i], kv[None, :, 2 * i + 1]) for i in range(ref_config.num_layers)]
        ids = _ids(1, 10, seed=13)
        expected, _ = reference(ids, past, prefix_len=prefix_len)
        model = PeftModel.from_pretrained(_fresh_glm(converted), adapter).eval()
        actual = model(input_ids=ids).logits
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)
