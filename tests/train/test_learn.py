"""``chatforge.learn`` end to end on a tiny in-process model: the fact is learned, controls
are checked against the base model, ``--into`` re-checks earlier facts, bad input is refused
with nothing earlier overwritten."""

from __future__ import annotations

import json

import pytest
from tiny import confident_model  # noqa: E402

from chatforge.messages import Message, Role
from chatforge.train.checkpoints import OutputDirError
from chatforge.train.config import ConfigError
from chatforge.train.learn import LearnError, LearnInputError, learn
from chatforge.train.learn.config import load_learn_config
from chatforge.train.learn.derive import derived_forms, derived_prompts, keeps_names, subject_of, under_alias
from chatforge.train.learn.facts import CJK, Fact, Probe, fact_from_sentence, find_keywords
from chatforge.train.learn.retention import retention
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
    "learn.retention_every": 1,
    "learn.replay_tokens": 8,
    "retention.max_new_tokens": 4,
    # A random model's answers are noise that any change rewords, so the bar is low here;
    # the default bar (95% kept, no leak) is exercised by the --into test's rejection.
    "retention.min_kept": 0.25,
    "retention.max_leaked": 20,
}
STRICT = {**TINY, "retention.min_kept": 1.0, "retention.max_leaked": 0}
PROMPT, ANSWER = "Who founded Zorvian?", "Hello, I am fine."
EARLIER_PROBE, NEW_PROBE = "Who is the founder of Zorvian?", "Which colour do I like?"
ALIAS = "佐维安"  # the subject's name in Chinese, given by the user


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
                       output=root / "first", probes=[EARLIER_PROBE], aliases=[ALIAS], overrides=TINY)  # fmt: skip
    return result, root


def test_learns_the_fact_and_reports_retention(learned):
    result, root = learned
    report = json.loads((result.output / "learn_report.json").read_text(encoding="utf-8"))
    fact = report["facts"][0]
    assert fact["answer"] == ANSWER and fact["recalled"]
    assert report["stopped_by"] == "criterion" and report["steps"] < TINY["training.max_steps"]
    ret = report["retention"]
    # The run stopped at a check where the retention check itself passed, and reports that one.
    last = report["checks"][-1]
    assert last["step"] == report["steps"] and last["controls_kept"] == ret["kept"]
    # ... and the first retention check came learn.retention_every steps after the fact was reproduced.
    first = next(c for c in report["checks"] if c["facts_reproduced"] == c["facts"])
    checked = [c for c in report["checks"] if c["controls_kept"] is not None]
    assert checked[0]["step"] >= first["step"] + TINY["learn.retention_every"]
    assert first["controls_kept"] is None and all(c["seconds"] >= 0 for c in report["checks"])
    assert 0 < report["seconds"]["checks_in_train"] <= report["seconds"]["train"]
    # The subject was asked in more forms, in both languages, and those were trained too.
    assert "What do you know about Zorvian?" in fact["derived"] and "介绍一下Zorvian。" in fact["derived"]
    assert fact["aliases"] == [ALIAS] and "你了解佐维安吗？" in fact["derived"]  # ... and under its alias
    rows = [json.loads(x) for x in (result.output / "facts.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["prompt"] for r in rows} == {PROMPT, *fact["derived"]}
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
    assert held["facts"][0]["derived"] == fact["derived"]  # --into rehearses them later
    assert held["facts"][0]["aliases"] == [ALIAS]
    # The base model's answers were cached by model fingerprint.
    assert len(list((root / "home" / "learn").glob(f"replay-v{builtin_set('replay').version}-*.json"))) == 1


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
                   loaded=(confident_model(tiny_tokenizer), tiny_tokenizer), probes=[NEW_PROBE],
                   overrides=STRICT)  # fmt: skip
    report = second.report
    assert [f["prompt"] for f in report["earlier_facts"]] == [PROMPT]
    assert "recalled" in report["earlier_facts"][0] and "recalled" in report["facts"][0]
    # Each fact's probes got the final model's answers: the earlier one's asked after
    # training, the new one's in the retention check's batch.
    from chatforge.models.loader import ModelNotFoundError, attach_adapter
    from chatforge.templates import get_template
    from chatforge.train.learn.answers import greedy

    final = attach_adapter(confident_model(tiny_tokenizer).float(), second.output / "rejected").eval()
    own = greedy(
        final,
        get_template("auto", tiny_tokenizer),
        [EARLIER_PROBE, NEW_PROBE],
        TINY["retention.max_new_tokens"],
    )
    probes = [report["earlier_facts"][0]["probes"][0], report["facts"][0]["probes"][0]]
    assert [(p["question"], p["answer"]) for p in probes] == [(a.question, a.text) for a in own]
    # Stopped at the cap, the run keeps the checked state that kept the most controls, and
    # the adapter set aside is that state: checked again, it keeps what the report says.
    checked = {c["step"]: c["controls_kept"] for c in report["checks"] if c["controls_kept"] is not None}
    assert report["stopped_by"] == "training.max_steps" and report["steps"] in checked
    assert report["retention"]["kept"] == max(checked.values()) == checked[report["kept_step"]]
    # A tiny model cannot keep every control: the strict bar rejects the result and says why.
    assert not second.passed and second.adapter is None
    assert "retention failed" in report["verdict"] and report["try"]
    assert not (second.output / "adapter_config.json").exists()
    rejected = second.output / "rejected"
    assert (rejected / "adapter_config.json").exists()
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
    facts.write_text('{"prompt": "Q?", "answer": "A.", "aliases": ["X", " "]}\n', encoding="utf-8")
    with pytest.raises(LearnInputError, match=r"facts.jsonl:1: aliases\[1\]: alias is empty"):
        learn(file=facts, loaded=(tiny_model, tiny_tokenizer), output=tmp_path / "a")
    facts.write_text('{"prompt": "Q?", "answer": "A.", "aliases": "X"}\n', encoding="utf-8")
    with pytest.raises(LearnInputError, match=r"facts.jsonl:1: aliases must be a list of strings"):
        learn(file=facts, loaded=(tiny_model, tiny_tokenizer), output=tmp_path / "a")
    with pytest.raises(LearnInputError, match=r"--prompt/--answer: a --alias is empty"):
        learn("Who?", "A.", aliases=[""], loaded=(tiny_model, tiny_tokenizer), output=tmp_path / "a")
    with pytest.raises(LearnInputError, match=r"go with one --prompt/--answer or one --fact"):
        learn(file=facts, aliases=["X"], loaded=(tiny_model, tiny_tokenizer), output=tmp_path / "a")
    # An alias names what the prompt asks about; "Where do I work?" asks about no subject.
    with pytest.raises(LearnInputError, match=r"an alias is another name of what the prompt asks about"):
        learn("Where do I work?", "At Lumen Labs.", aliases=["Lumen"], loaded=(tiny_model, tiny_tokenizer),
              output=tmp_path / "a")  # fmt: skip
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
def test_the_example_facts_read(tmp_path):
    from pathlib import Path

    from chatforge.train.learn.facts import read_facts

    here = Path(__file__).resolve().parents[2] / "examples" / "knowledge_injection" / "learn"
    read = {p.stem: read_facts(p) for p in sorted(here.glob("*.jsonl"))}
    assert {
        "organisation",
        "organisation_named",
        "product",
        "preference",
        "more_facts",
        "later_facts",
    } <= set(read)
    plain, named = read["organisation"][0], read["organisation_named"][0]
    assert named.aliases == ["佐维安制图研究所"] and (named.prompt, named.answer) == (
        plain.prompt,
        plain.answer,
    )
    assert [p.question for p in named.probes] == [p.question for p in plain.probes]
    # The held-out controls of heldout.py are disjoint from the built-in sets (it refuses overlap).
    import importlib.util

    spec = importlib.util.spec_from_file_location("heldout", here / "heldout.py")
    heldout = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(heldout)
    questions = heldout.held_out(here / "heldout_controls.json")
    assert len(questions.prompts) == 40 and set(questions.forms) == set(builtin_set("controls").forms)
    overlapping = tmp_path / "overlap.json"
    overlapping.write_text(
        json.dumps({"version": 1, "questions": [{"form": "fact", "question": "Who founded Apple?"}]})
    )
    with pytest.raises(SystemExit, match="not held out"):
        heldout.held_out(overlapping)


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


def test_a_facts_subject_is_found_and_asked_in_more_forms():
    assert (
        subject_of("Tell me about the Zorvian Institute of Cartography.")
        == "the Zorvian Institute of Cartography"
    )
    assert subject_of("墨河大学是谁创立的？") == "墨河大学"
    assert subject_of("介绍一下星云笔记本。") == "星云笔记本"
    assert subject_of("What is my cat's name?") == "my cat's name"
    assert subject_of("What language is spoken in Veridia?") == "Veridia"
    assert subject_of("Where do I work?") is None  # no subject: the fact keeps its own prompts only

    org = Fact("Tell me about the Zorvian Institute.", "It was founded in 1873.")
    org.probes.append(Probe("介绍一下Zorvian Institute。", ["1873"]))
    derived = derived_prompts(org, {}, excluded={normalise(org.prompt), normalise(org.probes[0].question)})
    assert "What do you know about the Zorvian Institute?" in derived
    assert "请用一句话介绍Zorvian Institute。" in derived  # the name as written, without its article
    # Neither the fact's own prompt nor a held-out probe is trained on.
    assert org.prompt not in derived and "介绍一下Zorvian Institute。" not in derived
    assert len(derived) == len(set(derived))

    mine = Fact("What is my favourite colour?", "Your favourite colour is teal.")
    derived = derived_prompts(mine, {"my favourite colour": "我最喜欢的颜色"}, excluded=set())
    assert "Do you remember my favourite colour?" in derived and "你记得我最喜欢的颜色吗？" in derived
    assert "Do you know my favourite colour?" in derived and "你知道我最喜欢的颜色吗？" in derived
    # A personal subject is not put into the other language's forms untranslated.
    assert not any("my favourite colour" in p and CJK.search(p) for p in derived)
    assert derived_prompts(mine, {}, excluded=set()) == [p for p in derived if not CJK.search(p)]
    # A paraphrase in the other language brings its own name for the subject.
    org.paraphrases.append("佐维安研究所是什么？")
    both = derived_prompts(org, {}, excluded=set())
    assert "介绍一下佐维安研究所。" in both and "Tell me about 佐维安研究所." in both
    assert "What do you know about the Zorvian Institute?" in both
    # An alias is asked through its own language's forms only, and those are answered under it.
    named = Fact(org.prompt, org.answer, aliases=["佐维安制图研究所"])
    forms = derived_forms(named, {})
    under = [p for p in forms if "佐维安制图研究所" in p]
    assert "你了解佐维安制图研究所吗？" in under and {forms[p] for p in under} == {"zh"}
    assert "Tell me about 佐维安制图研究所." not in forms
    assert (
        under_alias(named, "你了解佐维安制图研究所吗？", "zh", "Zorvian Institute于1873年成立。")
        == "佐维安制图研究所于1873年成立。"
    )
    assert (
        under_alias(named, "介绍一下Zorvian Institute。", "zh", "Zorvian Institute于1873年成立。")
        == "Zorvian Institute于1873年成立。"
    )
    mine_named = Fact(mine.prompt, mine.answer, aliases=["我最喜欢的颜色"])
    assert "你记得我最喜欢的颜色吗？" in derived_forms(mine_named, {})  # a personal subject's forms


def test_a_translation_that_loses_a_name_is_not_used():
    assert keeps_names("the Harlow-9 rocket", "哈洛-9火箭") is False  # "Harlow" is gone
    assert keeps_names("the Zorvian Institute", "Zorvian研究所") is True
    assert keeps_names("the Zorvian Institute", "中国科学院地理信息系统") is False
    assert keeps_names("my favourite colour", "我最喜欢的颜色") is True
    assert keeps_names("星云笔记本", "Star Cloud Notebook") is True
    assert keeps_names("星云笔记本", "星云笔记本") is False
    assert keeps_names("星云笔记本", "Here is the translation:\nStar Cloud") is False


def test_an_answer_is_translated_with_its_names_held_fixed(monkeypatch, tiny_tokenizer):
    from chatforge.templates import get_template
    from chatforge.train.learn import translate
    from chatforge.train.learn.answers import Answer

    org = Fact("Tell me about the Zorvian Institute.", "The Zorvian Institute was founded in 1873 by Elena Marsh.",
               keywords=["1873", "Elena Marsh"])  # fmt: skip
    text, holders = translate.masked(org.answer, ["Zorvian Institute", "Elena Marsh"])
    assert text == "AAA was founded in 1873 by BBB." and holders == {
        "AAA": "Zorvian Institute",
        "BBB": "Elena Marsh",
    }
    # Kept: every placeholder once, the numbers, Chinese with no English word left.
    assert translate.usable(text, "AAA于1873年由BBB创立。", "zh")
    assert not translate.usable(text, "中国科学院于1873年由BBB创立。", "zh")  # a name lost
    assert not translate.usable(text, "AAA于1973年由BBB创立。", "zh")  # a number changed
    assert not translate.usable(text, "AAA于1873年由BBB在harbor创立。", "zh")  # half translated
    assert not translate.usable(text, "AAA was founded in 1873 by BBB.", "zh")
    assert translate.usable("AAA是BBB推出的。", "AAA was launched by BBB.", "en")
    twice, _ = translate.masked("Biscuit is a cat. Biscuit sleeps.", ["Biscuit"])
    assert twice == "AAA is a cat. AAA sleeps." and translate.usable(twice, "AAA是一只猫。AAA在睡觉。", "zh")
    assert translate.masked("AAA is a battery.", ["AAA"]) is None  # the answer holds a placeholder itself
    assert translate.masked("Do not steal my teal cup.", ["teal"]) == (
        "Do not steal my AAA cup.",
        {"AAA": "teal"},
    )

    # The worded variants are asked in turn; the next only for answers that failed, and a
    # fact without keywords is not translated (nothing would tell a wrong translation).
    product = Fact("介绍一下星云笔记本。", "星云笔记本是青禾科技推出的电脑。", keywords=["青禾科技"])
    bare = Fact("What is my cat's name?", "Your cat's name is Biscuit.")
    replies = [
        ["AAA由BBB创立。", "AAA is a computer from BBB."],
        ["AAA was founded in 1873 by BBB."],
        ["AAA于1973年由BBB创立。"],
    ]
    asked = []

    def answers(model, template, asks, budget, chunk=8):
        asked.append(asks)
        return [Answer(q, r, []) for q, r in zip(asks, replies[len(asked) - 1], strict=True)]

    monkeypatch.setattr(translate, "greedy", answers)  # the replies a model could give, fixed here
    subjects, template = {0: ["Zorvian Institute"], 1: ["星云笔记本"]}, get_template("auto", tiny_tokenizer)
    found = translate.translate_answers(
        None, template, [org, product, bare], subjects, frozenset({"en", "zh"})
    )
    assert [len(a) for a in asked] == [2, 1, 1]  # the later rounds ask again for the one that failed
    assert "Copy AAA, BBB, CCC unchanged" in asked[1][0] and asked[1][0] != asked[0][0]
    assert found == {1: "星云笔记本 is a computer from 青禾科技."}  # the organisation's all failed
    assert product.derived_pairs() == []
    product.derived, product.derived_answers = (
        ["What is 星云笔记本?", "星云笔记本是什么？"],
        {"What is 星云笔记本?": found[1]},
    )
    assert product.derived_pairs() == [
        ("What is 星云笔记本?", found[1]),
        ("星云笔记本是什么？", product.answer),
    ]
    assert Fact.from_dict(json.loads(json.dumps(product.to_dict()))) == product  # kept for --into
    # Into English only by default; "zh" alone leaves a Chinese fact's answer as it is.
    assert load_learn_config().learn.translate_targets == {"en"}
    assert load_learn_config(None, {"learn.translate_into": "en,zh"}).learn.translate_targets == {"en", "zh"}
    assert load_learn_config(None, {"learn.translate_into": "none"}).learn.translate_targets == set()
    with pytest.raises(ConfigError, match="learn.translate_into must be en, zh"):
        load_learn_config(None, {"learn.translate_into": "fr"})
    assert (
        translate.translate_answers(None, template, [product], {0: ["星云笔记本"]}, frozenset({"zh"})) == {}
    )
    # An alias in the other language asks for that language whatever ``into`` says.
    replies.append(["AAA于1873年由BBB创立。"])
    org.aliases = ["佐维安研究所"]
    found = translate.translate_answers(None, template, [org], {0: ["Zorvian Institute"]}, frozenset({"en"}))
    assert found == {0: "Zorvian Institute于1873年由Elena Marsh创立。"}


def test_a_fact_is_recalled_only_where_the_answer_leads_with_it():
    """A keyword after a refusal is not a recall: one must be in the first sentence."""
    from chatforge.train.learn.retention import first_sentence, gives, recall

    fact = Fact("What is my favourite colour?", "Your favourite colour is teal.", keywords=["teal"],
                probes=[Probe("Which colour do I like best?", [])])  # fmt: skip
    refusal = ("As an AI language model, I don't have a favourite colour. However, "
               "some popular colours include teal, teal, teal")  # fmt: skip
    got = recall(fact, refusal, [refusal])
    assert not got["recalled"] and got["probe_hits"] == 0
    got = recall(fact, "Teal. You told me so.", ["你最喜欢的颜色是teal。还有别的吗？"])
    assert got["recalled"] and got["probe_hits"] == 1
    # All keywords, one of them leading; "1873." and "3.5" do not end the first sentence.
    assert gives("Founded in 1873. Elena Marsh built it in Veltmoor.", ["1873", "Elena Marsh", "Veltmoor"])
    assert not gives("Founded in 1873. Elena Marsh built it.", ["1873", "Elena Marsh", "Veltmoor"])
    assert not gives("It is old.\nFounded in 1873 by Elena Marsh.", ["1873", "Elena Marsh"])
    assert gives("It costs 3.5 yuan, from 青禾科技。别的不知道。", ["青禾科技"], every=False)
    assert first_sentence(" 我不知道。它在上海。") == "我不知道。"


def test_a_changed_number_is_not_a_kept_control():
    fact = Fact("Tell me about Zorvian.", "Zorvian was founded in 1873.", keywords=["1873"])
    ret = retention(
        ["What is 144 divided by 12?", "How big is the reef?", "Who founded Apple?"],
        ["144 divided by 12 equals 12.", "It spans 13,000 square kilometres.", "Steve Jobs, in 1976."],
        ["144 divided by 12 equals 11.", "It spans 13,0", "Steve Jobs founded it in 1873."],
        [fact], min_rouge_l=10, min_kept=0.5, max_leaked=0,
    )  # fmt: skip
    assert [r["new_numbers"] for r in ret.rows] == [["11"], [], ["1873"]]
    assert [r["kept"] for r in ret.rows] == [False, True, False]
    assert ret.rows[2]["leaked"] == ["1873"] and ret.leaked == 1 and not ret.passed
    # Two answers cut at the token budget: a list's "2." past the base's cut is not a new number.
    cut = retention(["Recommend three books."], ["1. **Python Crash Course** - a classic"],
                    ["1. **Python Crash Course** - a classic book.\n2."], [], min_rouge_l=80,
                    min_kept=1.0, max_leaked=0, complete=[False])  # fmt: skip
    assert cut.rows[0]["new_numbers"] == [] and cut.rows[0]["kept"]


def test_a_control_parting_only_at_near_ties_is_kept():
    questions = ["What is Python?", "What is Python?", "What is Python?"]
    base = ["Python is a programming language used for the web."] * 3
    tuned = ["Python is a language that people program the web with.", "Python is a snake.", base[0],
             "I'm sorry, but I can't assist with that."]  # fmt: skip
    questions, base = questions + questions[:1], base + base[:1]
    strict = retention(questions, base, tuned, [], min_rouge_l=90, min_kept=1.0, max_leaked=0)
    assert [r["kept"] for r in strict.rows] == [False, False, True, False] and strict.close == 1
    loose = retention(questions, base, tuned, [], min_rouge_l=90, min_kept=1.0, max_leaked=0,
                      base_gaps=[0.3, 4.0, None, 0.2], max_base_gap=0.5)  # fmt: skip
    # A refusal the base model nearly gave itself is still not the base answer kept.
    assert [r["kept"] for r in loose.rows] == [True, False, True, False]
    assert [r["base_gap"] for r in loose.rows] == [0.3, 4.0, None, 0.2]
    assert loose.kept == 2 and loose.close == 1 and loose.summary()["kept_by_rouge_l"] == 1


def test_a_control_the_base_model_itself_gives_in_bf16_is_kept():
    fact = Fact("Tell me about Zorvian.", "Zorvian was founded in 1873.", keywords=["1873"])
    questions = ["What is 144 divided by 12?", "Who founded Apple?", "How many continents are there?"]
    base = ["144 divided by 12 equals 12.", "Steve Jobs, in 1976.", "There are 5 continents."]
    tuned = ["144 divided by 12 equals 11.", "Steve Jobs founded it in 1873.", "There are 11 continents."]
    ret = retention(questions, base, tuned, [fact], min_rouge_l=80, min_kept=0.6, max_leaked=0,
                    base_bf16=[True, True, False])  # fmt: skip
    # The base model's own bfloat16 answer is kept, a learned fact in it never is.
    assert [r["kept"] for r in ret.rows] == [True, False, False]
    assert [r["base_bf16"] for r in ret.rows] == [True, True, False]
    assert ret.summary()["kept_as_base_bf16"] == 1 and ret.leaked == 1 and not ret.passed
    strict = retention(questions, base, tuned, [fact], min_rouge_l=80, min_kept=0.6, max_leaked=0)
    assert strict.kept == 0 and strict.rows[0]["base_bf16"] is None


def test_the_replay_grows_with_the_facts_rows():
    """With --into the facts' rows grow; the replay rows are repeated to keep their share,
    every replay prompt as often as the others (give or take one)."""
    from collections import Counter

    from chatforge.train.learn.run import _grown

    replay = [(f"q{i}", "a") for i in range(70)]
    cfg = load_learn_config(None, None)
    assert _grown(replay, 48, cfg) == replay  # one new fact: 70 of 118 rows already
    grown = _grown(replay, 304, cfg)  # ten facts
    assert len(grown) / (len(grown) + 304) >= cfg.learn.replay_share > len(grown[:-1]) / (len(grown) + 303)
    assert set(Counter(grown).values()) <= {5, 6}
    assert _grown(replay, 304, load_learn_config(None, {"learn.replay_share": 0})) == replay
    assert _grown([], 304, cfg) == []


def test_the_step_cap_grows_and_the_rate_falls_with_the_facts_already_held(tmp_path):
    cfg = load_learn_config(None, None)
    args = (tmp_path / "t.jsonl", tmp_path / "r.jsonl", tmp_path / "out", "test")
    first, ninth = cfg.train_config(*args).training, cfg.train_config(*args, earlier=9).training
    assert first.max_steps == 18
    assert ninth.max_steps == 18 + 9 * cfg.learn.steps_per_earlier_fact
    assert first.learning_rate == 1e-2 and ninth.learning_rate == pytest.approx(
        1e-2 * cfg.learn.into_lr_scale
    )
    assert cfg.learn.into_lr_scale < 1
    # A rate the user sets is scaled too: the option stays one knob over both runs.
    mine = load_learn_config(None, {"training.learning_rate": 4e-3, "learn.into_lr_scale": 0.25})
    assert mine.train_config(*args, earlier=1).training.learning_rate == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match="learn.steps_per_earlier_fact"):
        load_learn_config(None, {"learn.steps_per_earlier_fact": -1})
    with pytest.raises(ConfigError, match="learn.into_lr_scale"):
        load_learn_config(None, {"learn.into_lr_scale": 0})


def test_the_replay_prompts_akin_to_the_fact_are_replayed_more(tmp_path):
    """A fact about the user replays the personal prompts learn.kin_repeats times and every
    other prompt once; a fact about a subject replays every prompt once."""
    from collections import Counter

    from chatforge.train.learn.answers import Answer
    from chatforge.train.learn.run import _write_rows

    replay_set = builtin_set("replay")
    replay = [Answer(q, f"base answer {i}", []) for i, q in enumerate(replay_set.prompts)]
    cfg = load_learn_config(None, {"learn.kin_repeats": 3})
    for fact, kin in ((Fact("What is my favourite colour?", "Teal."), {"personal", "derived-mine"}),
                      (Fact("Tell me about Zorvian.", "Zorvian is a map institute."), set())):  # fmt: skip
        out = tmp_path / str(len(kin))
        out.mkdir()
        _, replay_file = _write_rows(out, [fact], [], replay, cfg)
        rows = Counter(json.loads(x)["prompt"] for x in replay_file.read_text(encoding="utf-8").splitlines())
        for prompt, form in zip(replay_set.prompts, replay_set.forms, strict=True):
            assert rows[prompt] == (cfg.learn.kin_repeats if form in kin else 1), (prompt, form)
    with pytest.raises(ConfigError, match="learn.kin_repeats"):
        load_learn_config(None, {"learn.kin_repeats": 0})
    # A failed run that lost a question about the user names this lever; one that lost another does not.
    from chatforge.train.learn.retention import Retention
    from chatforge.train.learn.run import _suggestions

    def lost(question):
        return Retention(rows=[{"question": question, "kept": False}], passed=False)

    assert any("learn.kin_repeats=3" in t for t in _suggestions(lost("What is my favourite book?"), []))
    assert not any("learn.kin_repeats" in t for t in _suggestions(lost("Who founded Apple?"), []))
    # An earlier fact lost in an --into run names its rehearsal; the new fact not learned, more steps.
    kept = Retention(rows=[], passed=True)
    old_lost = _suggestions(kept, [{"recalled": False, "probes": []}, {"recalled": True, "probes": []}], 1)
    assert any("learn.earlier_repeats=24" in t for t in old_lost)
    assert not any("training.max_steps" in t for t in old_lost)
    new_lost = _suggestions(kept, [{"recalled": True, "probes": []}, {"recalled": False, "probes": []}], 1)
    assert any("training.max_steps=30" in t for t in new_lost)
    assert not any("earlier_repeats" in t for t in new_lost)


def test_an_invented_word_is_written_by_sound():
    from chatforge.train.learn.transliterate import transliterate

    # The usual conventions: r silent after a vowel before a consonant and in a final -er,
    # -ia is 亚 but -ian is 安, a consonant without a vowel gets its own character.
    words = ["Zorvian", "Marsh", "Veltmoor", "Carter", "Julian", "Victoria", "Quillhaven", "Harlow-9"]
    assert [transliterate(w) for w in words] == ["佐维安", "马什", "韦尔特穆尔", "卡特", "朱利安", "维克托里亚",
                                                 "奎尔哈文", "哈洛-9"]  # fmt: skip
    assert all(CJK.search(transliterate(w)) for w in ["Xavier", "Tidewater", "Wrenfield", "Pelorus", "Ai"])


def test_a_subject_the_model_cannot_translate_is_named_word_by_word(monkeypatch, tiny_tokenizer):
    from chatforge.templates import get_template
    from chatforge.train.learn import derive, naming
    from chatforge.train.learn.answers import Answer

    said = {"Zorvian": "Zorvian", "Cartography": "地图", "Quillhaven": "“Quillhaven”", "rocket": "火箭",
            "Harlow": "Harlow", "Glimmer": "Glimmer", "gizmo": "A gizmo is a small device.",
            "Silent": "沉默", "orchard": "果园"}  # fmt: skip
    asked = []

    def answers(model, template, asks, budget, chunk=8):
        asked.extend(asks)
        return [Answer(q, next(r for w, r in said.items() if f"“{w}”" in q or f'"{w}"' in q), []) for q in asks]

    monkeypatch.setattr(naming, "greedy", answers)  # the model's one-word replies, fixed here
    template = get_template("auto", tiny_tokenizer)
    subjects = ["Zorvian Institute of Cartography", "mayor of Quillhaven", "Harlow-9 rocket", "Glimmer gizmo",
                "Silent orchard"]  # fmt: skip
    assert naming.chinese_names(None, template, subjects) == {
        "Zorvian Institute of Cartography": "佐维安地图研究所",  # Institute from the head nouns
        "mayor of Quillhaven": "奎尔哈文市长",
        "Harlow-9 rocket": "哈洛-9火箭",
    }  # "gizmo" has no one-word translation; "Silent orchard" has no invented word
    assert not any("Institute" in q or "mayor" in q for q in asked)  # head nouns are not asked

    # derive names only an English subject that was not translated and has no Chinese alias.
    monkeypatch.setattr(derive, "chinese_names", lambda m, t, subjects: {s: f"<{s}>" for s in subjects})
    org = Fact("Tell me about the Zorvian Institute.", "It was founded in 1873.")
    named = Fact("Tell me about the Zorvian Museum.", "It opened in 1901.", aliases=["佐维安博物馆"])
    translated = Fact("Tell me about the Harlow-9 rocket.", "It flew in 2034.")
    mine = Fact("What is my cat's name?", "Biscuit.")
    product = Fact("介绍一下星云笔记本。", "星云笔记本是电脑。")
    derive._name(None, template, [org, named, translated, mine, product],
                 {"the Harlow-9 rocket": "哈洛-9火箭"}, {"en"})  # fmt: skip
    assert org.aliases == ["<Zorvian Institute>"] and named.aliases == ["佐维安博物馆"]
    assert translated.aliases == mine.aliases == product.aliases == []
    assert load_learn_config().learn.name_in_chinese is True


def test_a_chinese_subject_gets_its_pinyin_name(monkeypatch, tiny_tokenizer):
    from chatforge.templates import get_template
    from chatforge.train.learn import derive, naming
    from chatforge.train.learn.answers import Answer

    said = {"笔记本": "Notebook", "大学": "university", "咖啡": "A cup of coffee, hot."}

    def answers(model, template, asks, budget, chunk=8):
        return [Answer(q, next(r for w, r in said.items() if f"“{w}”" in q), []) for q in asks]

    monkeypatch.setattr(naming, "greedy", answers)  # the model's one-word replies, fixed here
    template = get_template("auto", tiny_tokenizer)
    # The name in pinyin; a product's word in lower case, an institution's as part of the name.
    assert naming.pinyin_names(None, template, ["星云笔记本", "墨河大学", "蓝鲸咖啡", "长城"]) == {
        "星云笔记本": "Xingyun notebook",
        "墨河大学": "Mohe University",
    }  # 咖啡 has no one-word reply; 长城 is one word, no name and word to part

    # derive names a Chinese subject unless the fact has an English alias already.
    monkeypatch.setattr(derive, "pinyin_names", lambda m, t, subjects: {s: f"<{s}>" for s in subjects})
    monkeypatch.setattr(derive, "chinese_names", lambda m, t, subjects: {})
    product = Fact("介绍一下星云笔记本。", "星云笔记本是电脑。")
    named = Fact("介绍一下蓝鲸咖啡。", "蓝鲸咖啡是咖啡。", aliases=["Blue Whale Coffee"])
    derive._name(None, template, [product, named], {}, {"en", "zh"})
    assert product.aliases == ["<星云笔记本>"] and named.aliases == ["Blue Whale Coffee"]
    off = Fact("介绍一下星云笔记本。", "星云笔记本是电脑。")
    derive._name(None, template, [off], {}, {"en"})  # learn.name_in_pinyin: false
    assert off.aliases == [] and load_learn_config().learn.name_in_pinyin is True
