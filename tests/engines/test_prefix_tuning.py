"""P-Tuning v2 (peft prefix tuning) served by the transformers engine: the same tokens as
peft's own generate, and KV reuse across turns still exact."""

import torch
from peft import PrefixTuningConfig, get_peft_model
from tiny import make_model

from chatforge.engines.base import SamplingParams
from chatforge.engines.hf import TransformersEngine

GREEDY = SamplingParams(do_sample=False, max_new_tokens=10)


def tokens(engine, ids, state=None):
    chunks = list(engine.stream(ids, GREEDY, state=state))
    return [t for c in chunks for t in c.token_ids], chunks[-1].stats


def test_prefix_adapter_generates_like_peft(tiny_tokenizer):
    torch.manual_seed(3)
    model = get_peft_model(
        make_model(tiny_tokenizer, seed=5), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    )
    with torch.no_grad():  # a prefix strong enough to change the output
        for p in model.prompt_encoder.parameters():
            p.normal_(0, 2.0)
    model.eval()
    ids = tiny_tokenizer.encode("Hello, how are you?", add_special_tokens=False)
    with torch.no_grad():
        ref = model.generate(
            input_ids=torch.tensor([ids]),
            max_new_tokens=10,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
        plain = model.get_base_model().generate(
            input_ids=torch.tensor([ids]),
            max_new_tokens=10,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    expected = ref[0, -10:].tolist()
    assert expected != plain[0, -10:].tolist(), "the prefix should change the output"
    engine = TransformersEngine(model, tiny_tokenizer)
    state = engine.new_state()
    out, stats = tokens(engine, ids, state)
    assert out == expected
    follow = ids + out + tiny_tokenizer.encode(" And you?", add_special_tokens=False)
    again, stats2 = tokens(engine, follow, state)
    assert stats2.reused_tokens == len(ids) + len(out) - 1
    assert again == tokens(engine, follow)[0]
