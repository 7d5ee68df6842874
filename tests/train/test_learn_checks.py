"""``chatforge learn``'s retention check on a tiny in-process model: a changed control is
generated on from where it changed (the text of a whole generation), rated by the base
model only where ROUGE-L does not keep it (with the verdicts of rating them all), and the
probes are answered in the same batch."""

from __future__ import annotations

import torch
from tiny import confident_model, make_model  # noqa: E402

from chatforge.templates import get_template
from chatforge.train.learn.answers import (
    adapters_off,
    first_differences,
    greedy,
    largest_gaps,
    pad_id,
    prompt_ids,
)
from chatforge.train.learn.retention import check_controls, retention
from chatforge.train.learn.sets import builtin_set
from chatforge.train.precision import parameters_in_bf16


def test_the_control_check_matches_whole_generation_and_reads_the_base_model(tiny_tokenizer):
    """Generating a changed control on from its first different token gives the text that
    generating it whole gives; with the adapter switched off the model is its base again."""
    from peft import LoraConfig, get_peft_model

    template = get_template("auto", tiny_tokenizer)
    questions = builtin_set("controls").prompts[:6]
    model = confident_model(tiny_tokenizer).float().eval()
    base = greedy(model, template, questions, 12)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["down_proj"], init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # an adapter that changes answers
    tuned_model = peft.get_base_model().eval()
    whole = [a.text for a in greedy(tuned_model, template, questions, 12)]
    checked = check_controls(tuned_model, template, base, [], 80.0, 0.0, 0, 12, max_base_gap=0.5)
    assert checked.answers == whole
    assert checked.generated == sum(w != b.text for w, b in zip(whole, base, strict=True)) > 0
    pairs = [(prompt_ids(template, a.question), a.ids) for a in base]
    with adapters_off(tuned_model):
        assert largest_gaps(tuned_model, pairs, pad_id(template)) == [0.0] * len(pairs)
        assert first_differences(tuned_model, pairs, pad_id(template)) == [len(a.ids) for a in base]
    assert max(largest_gaps(tuned_model, pairs, pad_id(template))) > 0  # on again afterwards
    # Rated by the base model: the changed answers that ROUGE-L alone does not keep.
    by_rouge = [r["rouge_l"] >= 80.0 and not r["new_numbers"] for r in checked.kept.rows]
    rated = [not r["identical"] and not close for r, close in zip(checked.kept.rows, by_rouge, strict=True)]
    assert [r["base_gap"] is not None for r in checked.kept.rows] == rated and any(rated)
    # Tested against the base model in bfloat16 by teacher forcing: what it generates itself.
    served = check_controls(tuned_model, template, base, [], 80.0, 0.0, 0, 12, base_bf16=True)
    with adapters_off(tuned_model), parameters_in_bf16(tuned_model):
        own = [a.text for a in greedy(tuned_model, template, questions, 12, chunk=1)]
    expected = [w == o if r else None for w, o, r in zip(whole, own, rated, strict=True)]
    assert [r["base_bf16"] for r in served.kept.rows] == expected
    assert served.kept.as_bf16 == sum(bool(e) for e in expected)
    # Rating and testing every changed answer would give the same verdicts.
    changed = [i for i, r in enumerate(checked.kept.rows) if not r["identical"]]
    tuned_ids = [a.ids for a in greedy(tuned_model, template, [questions[i] for i in changed], 12)]
    with adapters_off(tuned_model):
        rated_all = largest_gaps(tuned_model, [(pairs[i][0], t) for i, t in zip(changed, tuned_ids, strict=True)],
                                 pad_id(template))  # fmt: skip
    gaps = [rated_all[changed.index(i)] if i in changed else None for i in range(len(base))]
    tested = [w == o if i in changed else None for i, (w, o) in enumerate(zip(whole, own, strict=True))]
    stops = set(template.stop_token_ids)
    complete = [a.ids[-1] in stops for a in base]
    full = retention(questions, [a.text for a in base], whole, [], 80.0, 0.0, 0, gaps, 0.5, complete, tested)
    both = check_controls(tuned_model, template, base, [], 80.0, 0.0, 0, 12, 0.5, True)
    assert [r["kept"] for r in both.kept.rows] == [r["kept"] for r in full.rows]
    assert both.kept.summary() == full.summary()


def test_merged_adapters_answer_alike_and_leave_the_weights_as_they_were(tiny_tokenizer):
    """Folding the adapter into the weights for a check changes no logit beyond rounding,
    and afterwards every base weight is its original tensor and the adapter trains again.
    The teacher-forced pass (rows grouped by length, output layer at answer positions only)
    gives each row's logits as a forward pass of that row alone does."""
    from peft import AdaLoraConfig, get_peft_model

    from chatforge.templates import get_template
    from chatforge.train.learn.answers import _answer_logits, merged, pad_id

    template = get_template("auto", tiny_tokenizer)
    model = confident_model(tiny_tokenizer).float()
    config = AdaLoraConfig(init_r=4, target_modules=["gate_proj", "down_proj"], total_step=10)
    peft = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.5)
    peft.eval()
    before = {n: p.detach().clone() for n, p in peft.named_parameters() if "base_layer" in n}
    questions = ["Hi", "Tell me about Zorvian, the map institute, please.", "2+2?", "1"]
    pairs = [(prompt_ids(template, q), [5, 6, 7, 8][: 1 + i]) for i, q in enumerate(questions)]
    alone = []
    with torch.no_grad():
        for p, a in pairs:
            logits = peft(input_ids=torch.tensor([p + a])).logits[0]
            alone.append(logits[len(p) - 1 : len(p) - 1 + len(a)])
        together = _answer_logits(peft, pairs, pad_id(template))
        with merged(peft):
            folded = _answer_logits(peft, pairs, pad_id(template))
            inside = {n: p for n, p in peft.named_parameters() if "base_layer" in n}
            assert all(not torch.equal(before[n], inside[n]) for n in before)  # the adapter is in them
    for a, t, f in zip(alone, together, folded, strict=True):
        assert a.shape == t.shape == f.shape
        torch.testing.assert_close(t, a, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(f, a, atol=1e-4, rtol=1e-4)
    after = {n: p for n, p in peft.named_parameters() if "base_layer" in n}
    assert before.keys() == after.keys() and all(torch.equal(before[n], after[n]) for n in before)
    adapter = [p for n, p in peft.named_parameters() if "lora_A" in n]
    assert adapter and all(p.requires_grad for p in adapter)
    with torch.no_grad():
        again = peft(input_ids=torch.tensor([pairs[1][0] + pairs[1][1]])).logits[0]
    torch.testing.assert_close(again[len(pairs[1][0]) - 1 :][: len(pairs[1][1])], alone[1])


def test_the_probes_are_answered_in_the_control_checks_batch(tiny_tokenizer):
    """Questions asked ``also`` get the greedy answers a generation of their own gives,
    beside controls that are generated on from where they changed."""
    from peft import LoraConfig, get_peft_model

    template = get_template("auto", tiny_tokenizer)
    controls = builtin_set("controls").prompts[:4]
    probes = ["Who founded Zorvian?", "佐维安制图研究所位于哪里？"]
    model = confident_model(tiny_tokenizer).float().eval()
    base = greedy(model, template, controls, 10)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["down_proj"], init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    tuned = peft.get_base_model().eval()
    checked = check_controls(tuned, template, base, [], 80.0, 0.0, 0, 10, also=probes)
    assert checked.generated > 0  # some controls changed, and were generated on with the probes
    assert checked.also == [a.text for a in greedy(tuned, template, probes, 10)]
    assert checked.answers == [a.text for a in greedy(tuned, template, controls, 10)]
    assert check_controls(tuned, template, base, [], 80.0, 0.0, 0, 10).also == []


def verdict(kept, passed=False):
    """A retention check's result over 20 controls, as a stopper's ``check`` returns it."""
    from chatforge.train.learn.retention import ControlCheck, Retention

    return ControlCheck(Retention(rows=[{}] * 20, kept=kept, passed=passed), [], 0)


def drive(stopper, model, state, last, each=None):
    """End steps 1 to ``last`` as the Trainer does (``each(step)`` first: the step's
    "training"), until ``stopper`` stops training."""
    from types import SimpleNamespace

    control = SimpleNamespace(should_training_stop=False)
    for step in range(1, last + 1):
        state.global_step = step
        if each:
            each(step)
        stopper.on_step_end(None, state, control, model=model)
        if control.should_training_stop:
            break
    return control


def test_the_retention_check_runs_after_the_facts_are_reproduced_then_repeats(tiny_tokenizer):
    """The first retention check comes ``retention_every`` steps after the facts are
    reproduced; while it fails, again every ``retention_every`` steps; training stops at
    the first that passes."""
    from types import SimpleNamespace

    from chatforge.train.learn.stopping import StopWhenLearned

    template = get_template("auto", tiny_tokenizer)
    model = confident_model(tiny_tokenizer).float().eval()
    own = greedy(model, template, ["Who founded Zorvian?"], 6)[0]  # reproduced from the start
    verdicts = iter([False, True])
    checked_at: list[int] = []
    state = SimpleNamespace(global_step=0)

    def check(m):
        checked_at.append(state.global_step)
        passed = next(verdicts)
        return verdict(20 if passed else 18, passed)

    stopper = StopWhenLearned(template, [(prompt_ids(template, own.question), own.ids)], [], check_every=2,
                              min_steps=4, check=check, retention_every=4)  # fmt: skip
    drive(stopper, model, state, 39)
    # Tested from step 4, every 2 steps: reproduced at 4, checked at 8 (fails) and 12.
    assert stopper.reproduced_at == 4 and checked_at == [8, 12] and stopper.stopped_at == 12
    rows = {r["step"]: r["controls_kept"] for r in stopper.history}
    assert list(rows) == [4, 6, 8, 10, 12] and rows == {4: None, 6: None, 8: 18, 10: None, 12: 20}


def test_at_the_cap_the_checked_state_that_kept_the_most_controls_is_kept(tiny_tokenizer):
    """A run that reaches its cap is checked there (its facts tested once) and ends in the
    state of the check that kept the most controls with its facts learned: an earlier
    one's weights come back."""
    from types import SimpleNamespace

    from peft import LoraConfig, get_peft_model

    from chatforge.train.learn.stopping import StopWhenLearned

    template = get_template("auto", tiny_tokenizer)
    own = greedy(confident_model(tiny_tokenizer).float().eval(), template, ["Who founded Zorvian?"], 6)[0]

    def run(kept_at_checks, lost_at_cap=False):
        model = get_peft_model(
            confident_model(tiny_tokenizer).float(), LoraConfig(r=4, target_modules=["down_proj"])
        )
        kept = iter(kept_at_checks)
        state = SimpleNamespace(global_step=0)
        weights = {}

        def train(step):  # the adapter moves a little at every step
            with torch.no_grad():
                for p in model.parameters():
                    if p.requires_grad:
                        p.add_((3.0 if lost_at_cap and step == 8 else 1e-4) * torch.randn_like(p))
            weights[step] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

        stopper = StopWhenLearned(template, [(prompt_ids(template, own.question), own.ids)], [], check_every=2,
                                  min_steps=2, check=lambda m: verdict(next(kept)), retention_every=4)  # fmt: skip
        control = drive(stopper, model, state, 8, train)  # the cap: 8
        stopper.on_train_end(None, state, control, model=model)
        now = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        return stopper, now, weights

    # Reproduced at 2, checked at 6 and, at the cap, 8 (tested once: one row per step).
    stopper, now, weights = run([18, 16])
    rows = [(r["step"], r["controls_kept"]) for r in stopper.history]
    assert rows == [(2, None), (4, None), (6, 18), (8, 16)]
    assert stopper.restored_step == 6 and stopper.final.kept.kept == 18
    assert all(torch.equal(now[n], w) for n, w in weights[6].items())
    stopper, now, weights = run([16, 18])
    assert stopper.restored_step is None and stopper.final.kept.kept == 18
    assert all(torch.equal(now[n], w) for n, w in weights[8].items())
    # A last state that lost the fact is not kept, however many controls it keeps.
    stopper, now, weights = run([16, 18], lost_at_cap=True)
    assert stopper.history[-1]["facts_reproduced"] == 0 and stopper.history[-1]["controls_kept"] == 18
    assert stopper.restored_step == 6 and stopper.final.kept.kept == 16
    assert all(torch.equal(now[n], w) for n, w in weights[6].items())


def test_an_earlier_fact_needs_only_its_keywords_before_the_retention_check(tiny_tokenizer):
    """A fact learned earlier (``--into``) counts once its greedy answer holds its keywords,
    worded as it may be; a new fact (no keywords given) must be reproduced, and an earlier
    one whose answer lacks a keyword holds the check back."""
    from types import SimpleNamespace

    from chatforge.train.learn.stopping import StopWhenLearned

    template = get_template("auto", tiny_tokenizer)
    model = confident_model(tiny_tokenizer).float().eval()
    new, earlier = greedy(model, template, ["Who founded Zorvian?", "Where is Veltmoor?"], 8)
    word = earlier.text.split()[0]
    assert word and len(earlier.ids) > 2
    reworded = earlier.ids[:1] + [(earlier.ids[1] + 1) % 100] + earlier.ids[2:]  # not its greedy answer
    pairs = [
        (prompt_ids(template, new.question), new.ids),
        (prompt_ids(template, earlier.question), reworded),
    ]

    def run(keywords, pairs=pairs):
        checked_at: list[int] = []
        state = SimpleNamespace(global_step=0)

        def check(m):
            checked_at.append(state.global_step)
            return verdict(20, passed=True)

        stopper = StopWhenLearned(template, pairs, [], check_every=2, min_steps=2, check=check,
                                  retention_every=2, keywords=keywords, budget=8)  # fmt: skip
        drive(stopper, model, state, 8)
        return stopper, checked_at

    lenient, checked_at = run([[], [word]])
    assert checked_at == [4] and lenient.stopped_at == 4
    assert lenient.history[0]["facts_reproduced"] == 1 and lenient.history[0]["facts_recalled"] == 1
    for keywords in ([[], []], [[], [word, "Veltmoor-founded-in-1873"]]):
        strict, checked_at = run(keywords)
        assert checked_at == [] and strict.reproduced_at is None, keywords
    new_reworded = [(pairs[0][0], new.ids[:1] + [(new.ids[1] + 1) % 100] + new.ids[2:]), pairs[1]]
    strict, checked_at = run([[], [word]], new_reworded)
    assert checked_at == [] and strict.history[0]["facts_reproduced"] == 0


def test_a_kept_adalora_state_is_saved_as_it_was_checked(tiny_tokenizer, tmp_path):
    """The state a run at its cap goes back to is an AdaLoRA adapter's weights with the
    rank pattern they were pruned to then: saved, it loads and answers as it did."""
    from peft import AdaLoraConfig, PeftModel, get_peft_model

    from chatforge.train.learn.retention import ControlCheck, Retention
    from chatforge.train.learn.stopping import _Snapshot

    config = AdaLoraConfig(
        init_r=8, target_r=2, tinit=1, tfinal=2, total_step=10, target_modules=["down_proj"]
    )
    model = get_peft_model(make_model(tiny_tokenizer), config)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])

    def step(n):
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn_like(p))
        model.base_model.update_and_allocate(n)

    for n in range(1, 5):  # the budget phase: ranks pruned step by step
        step(n)
    early = model.peft_config["default"].rank_pattern
    assert early
    kept = _Snapshot(4, ControlCheck(Retention(), [], 0), model)
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    for n in range(5, 11):  # pruned to the final pattern at step 8 (total_step - tfinal), fewer ranks
        step(n)
    late = model.peft_config["default"].rank_pattern
    assert sum(map(sum, late.values())) < sum(map(sum, early.values()))
    with torch.no_grad():
        assert not torch.equal(model(input_ids=ids).logits, expected)
    kept.restore(model)
    assert model.peft_config["default"].rank_pattern == kept.patterns["default"]
    model.save_pretrained(tmp_path / "kept")
    loaded = PeftModel.from_pretrained(make_model(tiny_tokenizer), tmp_path / "kept").eval()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(input_ids=ids).logits, expected)
        torch.testing.assert_close(loaded(input_ids=ids).logits, expected)


def test_decoding_gives_what_generate_gives_for_any_lengths_and_budgets(tiny_tokenizer):
    """Greedy decoding with prompts read one by one and rows leaving the batch as they end
    gives the tokens that ``generate`` gives each prompt alone."""
    from chatforge.train.learn.answers import continue_greedy

    template = get_template("auto", tiny_tokenizer)
    model = confident_model(tiny_tokenizer, seed=3).float().eval()
    stops = sorted(template.stop_token_ids)
    with torch.no_grad():
        model.lm_head.weight[stops[0]] += 0.3 * model.lm_head.weight.mean(0)  # some answers end early
    questions = [
        "Hi",
        "What is the capital of France?",
        "写一首关于秋天的诗。",
        "2+2?",
        "Tell me a long story.",
    ]
    prompts = [prompt_ids(template, q) for q in questions]
    prompts[2] = prompts[2] + [7, 8, 9]  # a prompt that continues an answer, as a changed control does
    budgets = [1, 24, 9, 0, 16]
    expected = []
    for p, b in zip(prompts, budgets, strict=True):
        if b == 0:
            expected.append([])
            continue
        out = model.generate(input_ids=torch.tensor([p]), max_new_tokens=b, do_sample=False,
                             eos_token_id=stops, pad_token_id=pad_id(template))[0, len(p):].tolist()  # fmt: skip
        end = next((j for j, t in enumerate(out) if t in stops), None)
        expected.append(out if end is None else out[: end + 1])
    assert continue_greedy(model, template, prompts, budgets, chunk=3) == expected
    assert continue_greedy(model, template, prompts, budgets, chunk=8) == expected
    assert {len(e) for e in expected} != {max(budgets)}  # rows of several lengths: some left early
