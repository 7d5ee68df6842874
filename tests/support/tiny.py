"""Tiny random models and tokenizers built in-process, for fast tests with no downloads."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from chatforge.templates.hf import CHATML_TEMPLATE

CORPUS = [
    "Hello, how are you? I am fine, thank you.",
    "What is the weather like in Paris today? It is sunny and warm.",
    "你好，请介绍一下你自己。我是一个人工智能助手。",
    "北京今天的天气怎么样？晴天，气温二十度。",
    "def add(a, b):\n    return a + b\n",
    'Call get_weather with {"city_name": "Beijing"} and report the result.',
    "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ( ) [ ] { } < > | _ \" ' : ; , .",
]
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def make_tokenizer(
    specials: list[str] = CHATML_SPECIALS, chat_template: str | None = CHATML_TEMPLATE, vocab_size: int = 600
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a small bilingual corpus."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=specials[-1], pad_token=specials[0])
    fast.add_special_tokens({"additional_special_tokens": specials})
    if chat_template:
        fast.chat_template = chat_template
    return fast


def make_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0, **overrides: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **overrides,
    )
    return Qwen2ForCausalLM(config).eval()


def confident_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Qwen2ForCausalLM:
    """A tiny model with larger output logits, so that its greedy answers have margins an
    adapter must move on purpose (a random model's near-ties flip at any change)."""
    model = make_model(tokenizer, seed=seed)
    with torch.no_grad():
        model.lm_head.weight.mul_(8)
    return model


def step_sizes(engine, monkeypatch) -> list[int]:
    """A list that gets the number of requests in each of a batching engine's forward
    passes, as they happen."""
    sizes: list[int] = []
    forward = engine._forward

    def counted(work):
        sizes.append(len(work))
        return forward(work)

    monkeypatch.setattr(engine, "_forward", counted)
    return sizes
