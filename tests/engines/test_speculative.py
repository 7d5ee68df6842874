"""Speculative decoding (chatforge.engines.speculative).

The drafting parts alone; the verification inside the batching engine on a model whose
logits are a fixed function of the context (so that a token's logits are the same computed
alone or in a batch, and seeded sampling must come out identical); and the llama.cpp engine
on SmolLM2: greedy output as without speculation, the cache rolled back across turns,
cancellation in the middle of a step, several streams, a draft model, and a draft model of
another vocabulary refused."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from smollm import chat_ids, need_llama_cpp, run
from ties import assert_same_but_for_a_near_tie

from chatforge.engines.base import EngineError, SamplingParams
from chatforge.engines.batching import BatchingEngine, Request, Work
from chatforge.engines.speculative import DraftPolicy, NgramIndex, Payoff, Speculation, parse_speculation

# -- the drafting parts ------------------------------------------------------------------


def test_ngram_index_drafts_what_followed_the_latest_longest_match():
    index = NgramIndex([1, 2, 3, 4, 5, 9, 2, 3, 4, 7, 8])
    index.extend([2, 3, 4])
    # "2 3 4" occurred twice; the latest occurrence was followed by 7 8 ...
    assert index.propose(3) == [7, 8, 2]
    assert index.propose(1) == [7]
    index.extend([5])  # "3 4 5" only after the first occurrence
    assert index.propose(2) == [9, 2]
    index.extend([6])  # no n-gram ending in 6 occurred before
    assert index.propose(4) == []
    assert index.propose(0) == []


def test_ngram_index_catches_up_on_tokens_added_between_lookups():
    index = NgramIndex([])
    for token in [10, 11, 12, 13, 10, 11]:
        index.extend([token])
    assert index.propose(5) == [12, 13, 10, 11]


def test_draft_policy_grows_shrinks_and_rests():
    policy = DraftPolicy(first=4, longest=16, patience=2, pause=3)
    assert policy.want() == 4
    policy.record(4, 4)
    assert policy.want() == 8
    policy.record(8, 8)
    policy.record(16, 16)
    assert policy.want() == 16
    policy.record(16, 2)
    assert policy.want() == 3
    policy.record(3, 0)
    policy.record(1, 0)  # the second miss in a row: three steps without drafting
    assert [policy.want() for _ in range(4)] == [0, 0, 0, 4]
    policy.record(4, 0)
    policy.record(1, 0)  # failing again after the rest: twice as long
    assert [policy.want() for _ in range(7)] == [0] * 6 + [4]
    policy.record(4, 1)  # a useful draft resets the rest
    assert policy.pause == 3


def test_payoff_judges_by_seconds_per_token_once_both_kinds_were_timed():
    payoff = Payoff(samples=2)
    payoff.add(True, 0.030)
    payoff.add(True, 0.030)
    assert payoff.pays()  # nothing to compare with yet
    payoff.add(False, 0.020)
    payoff.add(False, 0.020)
    assert not payoff.pays()
    for _ in range(10):  # drafts that pay: a few milliseconds a token
        payoff.add(True, 0.004)
    assert payoff.pays()


def test_a_slow_drafting_stream_rests_longer_each_time():
    policy = DraftPolicy(pause=2, longest_pause=8)
    policy.slow()
    assert [policy.want() for _ in range(3)] == [0, 0, 4]
    policy.slow()
    assert [policy.want() for _ in range(5)] == [0, 0, 0, 0, 4]
    policy.slow()
    policy.slow()  # already resting: no longer
    assert sum(policy.want() == 0 for _ in range(12)) == 8
    policy.fast()
    policy.slow()
    assert [policy.want() for _ in range(3)] == [0, 0, 4]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("off", Speculation("off")),
        ("ngram", Speculation("ngram")),
        (None, Speculation("ngram")),
        ("draft:0.5b", Speculation("draft", "0.5b")),
        (" draft:/m/x.gguf ", Speculation("draft", "/m/x.gguf")),
    ],
)
def test_parse_speculation(text, expected):
    assert parse_speculation(text) == expected


@pytest.mark.parametrize("text", ["on", "draft:", "ngrams", "draft"])
def test_parse_speculation_names_the_accepted_values(text):
    with pytest.raises(ValueError, match="off, ngram or draft:MODEL"):
        parse_speculation(text)


# -- verification, on a model whose logits depend on the context only --------------------


class ContextModelEngine(BatchingEngine):
    """A batching engine over a fixed random function of the last two tokens (numpy): the
    same logits for a position whether it is computed alone or within a draft."""

    supports_speculation = True
    name = "context-model"

    def __init__(self, vocab: int = 30, sharpness: float = 8.0, speculative: str = "ngram") -> None:
        super().__init__(tokenizer=None, context_length=4096, max_batch=4, max_step_tokens=256)
        rng = np.random.default_rng(0)
        self.table = (sharpness * rng.standard_normal((vocab, vocab, vocab))).astype(np.float32)
        self.speculation = parse_speculation(speculative)
        self.payoff = Payoff(samples=10**9)  # no timing: these tests are about the tokens
        self.passes: list[int] = []  # tokens fed per forward pass

    def _logits(self, ids: list[int]) -> np.ndarray:
        return self.table[ids[-2] if len(ids) > 1 else 0, ids[-1]]

    def _admit(self, request: Request) -> bool:
        request.slot = []
        request.todo = list(request.prompt_ids)
        request.stats.computed_tokens = len(request.prompt_ids)
        return True

    def _forward(self, work: list[Work]) -> list[np.ndarray | None]:
        self.passes.append(sum(len(item.ids) for item in work))
        rows: list[np.ndarray | None] = []
        for item in work:
            cache: list[int] = item.request.slot
            cache.extend(item.ids)
            if not item.logits:
                rows.append(None)
            elif item.draft:
                ends = range(len(cache) - item.draft - 1, len(cache))
                rows.append(np.stack([self._logits(cache[: end + 1]) for end in ends]))
            else:
                rows.append(self._logits(cache))
        return rows

    def _rollback(self, request: Request, count: int) -> None:
        del request.slot[len(request.slot) - count :]

    def _release(self, request: Request, keep: int) -> None:
        assert request.slot is None or len(request.slot) >= keep


def generate(engine, prompt, **params):
    from chatforge.engines.base import GenerationStats

    stats = GenerationStats()
    out = list(engine.generate_ids(prompt, SamplingParams(**params), stats))
    return out, stats


@pytest.mark.parametrize(
    "params",
    [
        {"do_sample": False},
        {"temperature": 1.0, "top_p": 1.0, "seed": 7},
        {"temperature": 0.7, "top_p": 0.9, "seed": 3},
        {"temperature": 0.9, "top_k": 5, "seed": 11, "repetition_penalty": 1.3},
        {"do_sample": False, "presence_penalty": 0.5},
    ],
)
def test_speculation_gives_exactly_the_tokens_of_plain_decoding(params):
    """Accept by match keeps the sampler's draws in order: with identical logits, greedy and
    seeded sampled replies are the same tokens, and the drafts really were checked."""
    prompt = [1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6, 1, 2]
    plain_engine = ContextModelEngine(speculative="off")
    speculating = ContextModelEngine()
    plain, _ = generate(plain_engine, prompt, max_new_tokens=120, **params)
    fast, stats = generate(speculating, prompt, max_new_tokens=120, **params)
    assert fast == plain
    assert stats.drafted_tokens > 0 and stats.accepted_tokens > 0
    assert len(speculating.passes) < len(plain_engine.passes)  # fewer forward passes
    plain_engine.close()
    speculating.close()


def test_a_stop_token_inside_an_accepted_draft_ends_the_reply_there():
    engine = ContextModelEngine()
    plain, _ = generate(ContextModelEngine(speculative="off"), [3, 4], do_sample=False, max_new_tokens=60)
    stop = plain[30]
    out, _ = generate(engine, [3, 4], do_sample=False, max_new_tokens=60, stop_token_ids=[stop])
    assert out == plain[: plain.index(stop) + 1]
    out, _ = generate(engine, [3, 4], do_sample=False, max_new_tokens=17)
    assert out == plain[:17]  # the budget holds inside a draft too
    engine.close()


# -- the llama.cpp engine (SmolLM2) -------------------------------------------------------

COPY = (
    "Copy this Python code exactly, changing nothing:\n```python\ndef area(width, height):\n"
    "    result = width * height\n    return result\n\n\ndef perimeter(width, height):\n"
    "    result = 2 * (width + height)\n    return result\n```"
)
GREEDY = {"do_sample": False, "max_new_tokens": 60}


@pytest.fixture(scope="module")
def engines(smollm_path, smollm_tokenizer):
    need_llama_cpp()
    from chatforge.engines.llamacpp import LlamaCppEngine

    made = {
        mode: LlamaCppEngine(
            smollm_path, smollm_tokenizer, context_length=1024, n_parallel=3, n_threads=1, speculative=mode
        )
        for mode in ("off", "ngram")
    }
    made["ngram"].payoff = Payoff(samples=10**9)  # drafts whatever the timing (a loaded machine)
    yield made
    for engine in made.values():
        engine.close()


@pytest.mark.parametrize("question", [COPY, "List ten fruits.", "用中文写一句问候。"])
def test_llama_cpp_greedy_replies_match_but_for_near_ties(engines, smollm_tokenizer, smollm_path, question):
    ids = chat_ids(smollm_tokenizer, question)
    plain, _ = run(engines["off"], ids, SamplingParams(**GREEDY))
    fast, last = run(engines["ngram"], ids, SamplingParams(**GREEDY))
    assert_same_but_for_a_near_tie(smollm_path, ids, plain, fast)
    assert last.stats.drafted_tokens > 0
    if question == COPY:
        assert last.stats.accepted_tokens >= 10, last.stats


def test_the_cache_is_rolled_back_so_the_next_turn_computes_only_new_tokens(
    engines, smollm_tokenizer, smollm_path
):
    engine = engines["ngram"]
    state = engine.new_state()
    first = chat_ids(smollm_tokenizer, COPY)
    out1, last1 = run(engine, first, SamplingParams(**GREEDY), state)
    assert last1.stats.drafted_tokens > last1.stats.accepted_tokens > 0  # some drafts were rejected
    assert state.ids == first + out1[:-1]
    follow = first + out1 + smollm_tokenizer.encode("\nNow only the first item.", add_special_tokens=False)
    out2, last2 = run(engine, follow, SamplingParams(**GREEDY), state)
    assert last2.stats.reused_tokens == len(first) + len(out1) - 1
    assert last2.stats.computed_tokens == len(follow) - last2.stats.reused_tokens
    plain, _ = run(engines["off"], follow, SamplingParams(**GREEDY))
    assert_same_but_for_a_near_tie(smollm_path, follow, plain, out2)


def test_cancelling_in_the_middle_of_a_verified_step(engines, smollm_tokenizer, smollm_path):
    """The reader stops after the first token while the worker has already taken a whole
    draft: the conversation's cache keeps what the reader got, and the next turn is right."""
    engine = engines["ngram"]
    state = engine.new_state()
    ids = chat_ids(smollm_tokenizer, COPY)
    cancel = threading.Event()
    got = []
    for chunk in engine.stream(ids, SamplingParams(**GREEDY), state=state, cancel=cancel):
        got += chunk.token_ids
        if len(got) >= 25:
            cancel.set()
    assert chunk.finish_reason == "cancelled" and len(got) < GREEDY["max_new_tokens"]
    assert chunk.stats.accepted_tokens > 0  # the worker was taking drafts
    assert state.ids == ids + got[:-1]
    follow = ids + got + smollm_tokenizer.encode("\nContinue.", add_special_tokens=False)
    out, last = run(engine, follow, SamplingParams(**GREEDY), state)
    assert last.stats.reused_tokens == len(ids) + len(got) - 1
    assert_same_but_for_a_near_tie(smollm_path, follow, run(engines["off"], follow, SamplingParams(**GREEDY))[0], out)


def test_concurrent_speculating_streams_match_one_at_a_time(engines, smollm_tokenizer, smollm_path):
    engine = engines["ngram"]
    prompts = [chat_ids(smollm_tokenizer, q) for q in (COPY, "Count from 1 to 20.", "Say hello.")]
    alone = [run(engines["off"], p, SamplingParams(**GREEDY))[0] for p in prompts]
    results: list = [None] * len(prompts)
    barrier = threading.Barrier(len(prompts))

    def worker(i):
        barrier.wait()
        results[i] = run(engine, prompts[i], SamplingParams(**GREEDY))[0]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for prompt, plain, together in zip(prompts, alone, results):
        assert_same_but_for_a_near_tie(smollm_path, prompt, plain, together)


def test_a_draft_model_drafts_and_a_foreign_vocabulary_is_refused(smollm_path, smollm_tokenizer, engines):
    from chatforge.engines.llamacpp import LlamaCppEngine

    # The model drafting for itself: every draft token is accepted.
    engine = LlamaCppEngine(
        smollm_path,
        smollm_tokenizer,
        context_length=1024,
        n_parallel=2,
        n_threads=1,
        speculative=f"draft:{smollm_path}",
    )
    try:
        ids = chat_ids(smollm_tokenizer, "Write a sentence about the sea.")
        out, last = run(engine, ids, SamplingParams(**GREEDY))
        assert_same_but_for_a_near_tie(smollm_path, ids, run(engines["off"], ids, SamplingParams(**GREEDY))[0], out)
        assert last.stats.drafted_tokens > 0
        assert last.stats.accepted_tokens >= 0.9 * last.stats.drafted_tokens
    finally:
        engine.close()
    from chatforge.engines.select import resolve_gguf
    from chatforge.models.embedded import EmbeddedModelError

    try:
        other = resolve_gguf("default")  # Qwen's vocabulary, not SmolLM's
    except EmbeddedModelError as err:
        pytest.skip(f"embedded default model not installed: {err}")
    with pytest.raises(EngineError, match="must share the model's tokenizer"):
        LlamaCppEngine(
            smollm_path, smollm_tokenizer, context_length=512, n_parallel=1, n_threads=1,
            speculative=f"draft:{other}",
        )


def test_a_grammars_forced_tokens_are_drafted_and_the_json_holds(engines, smollm_tokenizer, smollm_path):
    """Under a JSON schema the keys are forced: drafted without a lookup (speculation on by
    default, so the n-gram policy's rests do not matter), taken, and the reply still follows
    the schema, as without speculation."""
    import json

    from chatforge.constrain.grammars import json_grammar

    schema = {
        "type": "object",
        "properties": {"favourite_programming_language": {"type": "string"}, "years_of_experience": {"type": "integer"}},
        "required": ["favourite_programming_language", "years_of_experience"],
        "additionalProperties": False,
    }
    ids = chat_ids(smollm_tokenizer, "Describe a programmer as JSON.")
    stop = [smollm_tokenizer.convert_tokens_to_ids("<|im_end|>")]
    params = dict(do_sample=False, max_new_tokens=60, stop_token_ids=stop, grammar=json_grammar(schema))
    plain, _ = run(engines["off"], ids, SamplingParams(**params))
    fast, last = run(engines["ngram"], ids, SamplingParams(**params))
    assert_same_but_for_a_near_tie(smollm_path, ids, plain, fast)
    reply = json.loads(smollm_tokenizer.decode([t for t in fast if t not in stop]))
    assert set(reply) == {"favourite_programming_language", "years_of_experience"}
    assert last.stats.accepted_tokens >= 8, last.stats  # the two keys, at least
