"""Float32 linears through oneDNN: the same logits and answers as the usual path, only
while no gradient is recorded, and never with a weight that changed after packing."""

from __future__ import annotations

import pytest
import torch
from tiny import make_model  # noqa: E402

from chatforge.models.onednn import available, onednn_linears
from chatforge.templates import get_template
from chatforge.train.learn.answers import greedy
from chatforge.train.precision import parameters_in_bf16

pytestmark = pytest.mark.skipif(not available(), reason="this torch build has no oneDNN")

IDS = torch.tensor([[5, 9, 13, 2, 7, 11, 4, 3], [8, 6, 12, 10, 1, 14, 15, 16]])


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_the_same_logits_and_greedy_answers_and_the_layers_put_back(tiny_tokenizer):
    model = make_model(tiny_tokenizer).float()
    with torch.no_grad():
        model.lm_head.weight.mul_(8)  # margins, so that greedy answers cannot flip at a last bit
    template = get_template("auto", tiny_tokenizer)
    questions = ["What is the capital of France?", "Hi", "写一首关于秋天的诗。"]
    before, answers = logits(model), greedy(model, template, questions, 16)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with onednn_linears(model) as packed:
        assert packed == len(linears)  # every float32 linear of the tiny model
        inside = logits(model)
        assert [a.ids for a in greedy(model, template, questions, 16)] == [a.ids for a in answers]
    torch.testing.assert_close(inside, before, atol=1e-4, rtol=1e-4)  # sums in another order
    assert all("forward" not in m.__dict__ for m in linears)
    assert torch.equal(logits(model), before)


def test_gradients_and_changed_weights_take_the_usual_path(tiny_tokenizer):
    model = make_model(tiny_tokenizer).float()
    with parameters_in_bf16(model):
        served = logits(model)
    with onednn_linears(model):
        out = model(input_ids=IDS).logits  # gradients recorded: the usual, differentiable path
        out.sum().backward()
        assert model.lm_head.weight.grad is not None
        with parameters_in_bf16(model):
            cast = logits(model)  # every weight cast after packing
        with torch.no_grad():
            model.lm_head.weight.mul_(2)  # one weight changed in place after packing
        doubled = logits(model)
    assert torch.equal(cast, served)
    torch.testing.assert_close(doubled, logits(model), atol=1e-4, rtol=1e-4)


def test_nothing_is_packed_without_the_memory_for_it(tiny_tokenizer, monkeypatch):
    from chatforge.models import onednn

    model = make_model(tiny_tokenizer).float()
    before = logits(model)
    monkeypatch.setattr(onednn, "_available_bytes", lambda: 512 << 20)  # less than the 1 GiB kept free
    with onednn_linears(model) as packed:
        assert packed == 0
        assert torch.equal(logits(model), before)
    monkeypatch.setattr(onednn, "_available_bytes", lambda: None)  # unknown: packed
    with onednn_linears(model) as packed:
        assert packed > 0
