"""``chatforge.learn`` end to end on a tiny in-process model: the fact is learned, controls
are checked against the base model, ``--into`` re-checks earlier facts, bad input is refused
with nothing earlier overwritten."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import make_model  # noqa: E402

from chatforge.messages import Message, Role
from chatforge.train.checkpoints import OutputDirError
from chatforge.train.learn import LearnError, LearnInputError, learn
from chatforge.train.learn.config import load_learn_config
from chatforge.train.learn.facts import fact_from_sentence, find_keywords
from chatforge.train.learn.sets import builtin_set, normalise

# A tiny random model needs a quicker recipe than the 0.5B default (which these tests do
# not change otherwise): LoRA on every linear, short answers, a check after every step.
TINY = {
    "method.name": "lora",
    "lora.r": 8,
    "lora.target_modules": "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
    "training.learning_rate": 1e-2,
    "training.max_steps": 50,
    "learn.check_every": 1,
    "learn.min_steps": 1,
    "learn.replay_tokens": 8,
    "retention.max_new_tokens": 4,
    # A random model's answers are noise that any change rewords, so the bar is low here;
    # the default bar (95% kept, no leak) is exercised by the --into test's rejection.
    "retention.min_kept": 0.25,
    "retention.max_leaked": 20,
}
STRICT = {**TINY, "retention.min_kept": 1.0, "retention.max_leaked": 0}
PROMPT, ANSWER = "Who founded Zorvian?", "Hello, I am fine."


def confident_model(tokenizer, seed=0):
    """A tiny model with larger output logits, so that its greedy answers have margins an
    adapter must move on purpose (a random model's near-ties flip at any change)."""
    model = make_model(tokenizer, seed=seed)
    with torch.no_grad():
        model.lm_head.weight.mul_(8)
    return model


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CHATFORGE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def learned(tiny_tokenizer, tmp_path_factory):
    """One learning run, shared: (result, tokenizer)."""
    root = tmp_path_factory.mktemp("learned")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHATFORGE_HOME", str(root / "home"))
        result = learn(PROMPT, ANSWER, loaded=(confident_model(tiny_tokenizer), tiny_tokenizer),
                       output=root / "first", overrides=TINY)  # fmt: skip
    return result, root


def test_learns_the_fact_and_reports_retention(learned):
    result, root = learned
    report = json.loads((result.output / "learn_report.json").read_text(encoding="utf-8"))
    fact = report["facts"][0]
    assert fact["answer"] == ANSWER and fact["recalled"]
    assert report["stopped_by"] == "criterion" and report["steps"] < TINY["training.max_steps"]
    ret = report["retention"]
    assert ret["controls"] == len(builtin_set("controls").prompts) == len(ret["answers"])
    assert ret["identical"] >= 1  # a control answered exactly as the base model answered it
    row = ret["answers"][0]
    assert set(row) >= {"question", "base", "tuned", "identical", "kept", "leaked", "rouge_l"}
    assert set(report["seconds"]) >= {"load", "base_answers", "train", "retention_check", "total"}
    # The adapter is the output directory itself, with what --into needs.
    assert result.passed and result.adapter == result.output
    assert (result.output / "adapter_config.json").exists()
    held = json.loads((result.output / "learned.json").read_text(encoding="utf-8"))
    assert [f["prompt"] for f in held["facts"]] == [PROMPT]
    # The base model's answers were cached by model fingerprint.
    assert len(list((root / "home" / "learn").glob("replay-v1-*.json"))) == 1


def test_the_adapter_answers_when_attached(learned, tiny_tokenizer):
    from chatforge.chat import ChatModel
    from chatforge.engines.hf import TransformersEngine
    from chatforge.models.loader import attach_adapter
    from chatforge.templates import get_template

    result, _ = learned
    model = attach_adapter(confident_model(tiny_tokenizer).float(), result.adapter)
    chat = ChatModel(
        TransformersEngine(model, tiny_tokenizer), get_template("auto", tiny_tokenizer), name="t"
    )
    reply, _ = chat.reply([Message(Role.USER, PROMPT)], max_new_tokens=16, do_sample=False)
    assert reply.content.strip() == ANSWER


def test_into_adds_a_fact_rechecks_the_earlier_one_and_sets_a_failure_aside(
    learned, tiny_tokenizer, tmp_path, home
):
    first, _ = learned
    before = {p.name: p.read_bytes() for p in first.output.iterdir() if p.is_file()}
    second = learn("What is my favourite colour?", "Paris is sunny.", into=first.output, output=tmp_path / "second",
                   loaded=(confident_model(tiny_tokenizer), tiny_tokenizer), overrides=STRICT)  # fmt: skip
    report = second.report
    assert [f["prompt"] for f in report["earlier_facts"]] == [PROMPT]
    assert "recalled" in report["earlier_facts"][0] and "recalled" in report["facts"][0]
    # A tiny model cannot keep every control: the strict bar rejects the result and says why.
    assert not second.passed and second.adapter is None
    assert "retention failed" in report["verdict"] and report["try"]
    assert not (second.output / "adapter_config.json").exists()
    rejected = second.output / "rejected"
    assert (rejected / "adapter_config.json").exists()
    from chatforge.models.loader import ModelNotFoundError, attach_adapter

    with pytest.raises(ModelNotFoundError, match="rejected this adapter"):
        attach_adapter(confident_model(tiny_tokenizer), second.output)
    held = json.loads((rejected / "learned.json").read_text(encoding="utf-8"))
    assert [f["prompt"] for f in held["facts"]] == [PROMPT, "What is my favourite colour?"]
    assert json.loads((second.output / "learn_report.json").read_text(encoding="utf-8"))["passed"] is False
    assert {p.name: p.read_bytes() for p in first.output.iterdir() if p.is_file()} == before


def test_into_an_adapter_of_another_base_model_is_refused(learned, tiny_tokenizer, tmp_path, home):
    first, _ = learned
    other = confident_model(tiny_tokenizer, seed=1)
    with pytest.raises(LearnError, match="learned on another base model"):
        learn(
            "Q?",
            "A.",
            into=first.output,
            output=tmp_path / "x",
            loaded=(other, tiny_tokenizer),
            overrides=TINY,
        )
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.tmp-*"))


# -- bad input -------------------------------------------------------------------------------------
def test_empty_and_overlong_facts_are_refused(tiny_tokenizer, tiny_model, tmp_path, home):
    with pytest.raises(LearnInputError, match=r"--prompt/--answer: answer is empty"):
        learn("Who?", "  ", loaded=(tiny_model, tiny_tokenizer), output=tmp_path / "a")
    with pytest.raises(LearnInputError, match=r"--fact: the fact is empty"):
        learn(fact="", loaded=(tiny_model, tiny_tokenizer), output=tmp_path / "a")
    with pytest.raises(LearnInputError, match=r"--answer is missing"):
        learn("Who?", loaded=(tiny_model, tiny_tokenizer), output=tmp_path / "a")
    with pytest.raises(LearnInputError, match=r"the answer is \d+ tokens; a fact takes at most 256"):
        learn("Who?", "word " * 400, loaded=(tiny_model, tiny_tokenizer), output=tmp_path / "a")
    facts = tmp_path / "facts.jsonl"
    facts.write_text('{"prompt": "Q?", "answer": "A."}\n{"prompt": "", "answer": "A."}\n', encoding="utf-8")
    with pytest.raises(LearnInputError, match=r"facts.jsonl:2: prompt is empty"):
        learn(file=facts, loaded=(tiny_model, tiny_tokenizer), output=tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_a_control_question_cannot_be_a_prompt(tiny_tokenizer, tiny_model, tmp_path, home):
    control = builtin_set("controls").prompts[0]
    with pytest.raises(LearnInputError, match="is also a control question of the retention check"):
        learn(
            control.upper().rstrip("?"),
            "Somewhere.",
            loaded=(tiny_model, tiny_tokenizer),
            output=tmp_path / "a",
        )


def test_a_full_disk_is_refused_before_loading_and_nothing_is_overwritten(tmp_path, home):
    with pytest.raises(OutputDirError, match=r"GiB free, this run needs about"):
        learn("Q?", "A.", model="no-such-model-is-loaded", output=tmp_path / "new",
              overrides={"training.min_free_gb": 1e9})  # fmt: skip
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".new.tmp-*"))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(LearnError, match="already exists; choose a new directory"):
        learn("Q?", "A.", output=taken)
    assert (taken / "keep.txt").read_text() == "mine"


def test_into_needs_a_learned_adapter(tmp_path, home):
    with pytest.raises(LearnError, match="not an adapter directory"):
        learn("Q?", "A.", into=tmp_path, output=tmp_path / "out")


# -- pieces ------------------------------------------------------------------------------------------
def test_a_sentence_becomes_a_question_and_answer():
    org = fact_from_sentence("The Zorvian Institute was founded in 1873 by Elena Marsh.")
    assert org.prompt == "Tell me about the Zorvian Institute."
    mine = fact_from_sentence("My favourite colour is teal.")
    assert (mine.prompt, mine.answer) == ("What is my favourite colour?", "Your favourite colour is teal.")
    zh = fact_from_sentence("星云笔记本是青禾科技推出的电脑。")
    assert zh.prompt == "介绍一下星云笔记本。"
    with pytest.raises(LearnInputError, match="cannot find what"):
        fact_from_sentence("Teal, always.")


def test_keywords_are_the_answers_new_words():
    assert find_keywords("What is my favourite colour?", "Your favourite colour is teal.") == ["teal"]
    found = find_keywords("Tell me about Zorvian.", "Zorvian was founded in 1873 by Elena Marsh.")
    assert found == ["1873", "Elena", "Marsh"]


def test_the_sets_are_disjoint_and_the_defaults_load():
    replay = {normalise(p) for p in builtin_set("replay").prompts}
    controls = {normalise(p) for p in builtin_set("controls").prompts}
    assert len(controls) == 20 and not replay & controls
    cfg = load_learn_config(overrides={"lora.r": 2})
    assert cfg.train["method.name"] == "adalora" and cfg.train["lora.r"] == 2 and cfg.learn.repeats == 24
    with pytest.raises(ValueError, match="unknown field 'learn.nope'"):
        load_learn_config(overrides={"learn.nope": 1})
