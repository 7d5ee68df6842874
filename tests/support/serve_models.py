"""Model directories for the server tests, built in-process from tests/tiny.py.

* ``save_tiny``: the random tiny Qwen2 model and its tokenizer.
* ``save_adapter``: a LoRA adapter for it (peft), with non-zero weights so it changes
  the output.
* ``save_scripted``: a real tiny model whose weights are set so that greedy decoding
  writes one fixed tool call, whatever the conversation; ``save_code_scripted``: the
  same for a fixed ```python block that plots (the web UI's Code mode). How: the text is
  added to the tokenizer as a few plain (non-special) added tokens, each used once; the
  attention and MLP blocks' output projections are zeroed, so the last hidden state is
  (a norm of) the embedding of the last token; and each row of ``lm_head`` for a token
  of the script is aligned with the embedding of the token before it. The model is
  then a bigram chain ``<prompt's last token> → piece 1 → … → <|im_end|>``. Nothing
  about the server is mocked: it renders, generates, decodes and parses as usual.
* ``get_weather``: the tool the scripted model calls, for ``--tools models:get_weather``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tiny import make_model, make_tokenizer
from tokenizers import AddedToken

from chatforge.messages import Message, Role
from chatforge.templates import get_template

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city_name": {"type": "string"},
                "unit": {"type": "string"},
                "note": {"type": "string"},
            },
            "required": ["city_name"],
        },
    },
}
TOOL_ARGUMENTS = {"city_name": "Beijing", "unit": "celsius", "note": "北京 today"}
SCRIPT = [
    "<tool_call>",
    '\n{"name": "get_weather", ',
    '"arguments": {"city_name": "Beijing", ',
    '"unit": "celsius", "note": "北京 today"}}',
    "\n</tool_call>",
]
CODE_SCRIPT = [
    "```python\n",
    "import matplotlib.pyplot as plt\n",
    "plt.plot([1, 4, 2, 3])\n",
    "plt.show()\n",
    "```",
]


def get_weather(city_name: str, unit: str = "celsius", note: str = "") -> str:
    """Current weather in a city.

    Args:
        city_name: the city.
        unit: celsius or fahrenheit.
        note: free text, ignored.
    """
    return f"Sunny, 21 degrees {unit} in {city_name}"


def save_tiny(path: Path) -> Path:
    tok = make_tokenizer()
    model = make_model(tok)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def save_adapter(model_dir: Path, path: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # B starts at zero (a no-op adapter); make it matter
    peft_model.save_pretrained(path)
    return path


def save_scripted(path: Path, script: list[str] = SCRIPT) -> Path:
    tok = make_tokenizer()
    tok.add_tokens([AddedToken(piece, normalized=False, special=False) for piece in script])
    model = make_model(tok)
    # Attention is zeroed, so positions do not matter: room for the UI's Tool mode prompt
    # (the built-in tools' schemas alone take ~1,000 tokens of this tiny vocabulary).
    model.config.max_position_embeddings = 4096
    template = get_template("hf", tok)
    prompt = template.render([Message(Role.USER, "hi")], [TOOL], add_generation_prompt=True).ids
    chain = [prompt[-1], *tok.convert_tokens_to_ids(script), tok.convert_tokens_to_ids("<|im_end|>")]
    assert len(set(chain)) == len(chain), "the script's tokens must each appear once"
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        model.lm_head.weight.zero_()
        for source, target in zip(chain, chain[1:]):
            model.lm_head.weight[target] = 50.0 * emb[source] / emb[source].norm()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def save_code_scripted(path: Path) -> Path:
    return save_scripted(path, CODE_SCRIPT)


def expected_arguments_json() -> str:
    return json.dumps(TOOL_ARGUMENTS, ensure_ascii=False)
