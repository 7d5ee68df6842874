"""Speculative decoding: several tokens checked per pass over the weights.

Decoding one token reads every weight once; checking ``k`` guessed tokens in the same pass
reads them once too, and on a CPU costs little more (the default model, two cores: one
token 23 ms, 5 tokens 38 ms, 9 tokens 49 ms, with the logits of every position). Where a
guess is right, the tokens after it come for free.

The guesses (the *draft*) come from

* **n-gram lookup** (``ngram``, the default): the reply's last few tokens are looked up in
  the prompt and the reply so far, and what followed them there is the draft. It costs
  nothing and pays where the reply repeats its context: code being edited, a quoted tool
  result or document, the user's own words.
* **a draft model** (``draft:MODEL``): a smaller model with the same vocabulary (the 0.5B
  default for the 1.5B) decodes the draft greedily (:class:`DraftModel`).

Verification is *accept by match*: the target model's sampler picks each position's token
from that position's logits, exactly as plain decoding would (same penalties, grammar and
random draws, in the same order); while its pick equals the draft's token the next
position is taken too, and the first pick that differs ends the step. With a draft that is
a fixed function of the context (both kinds here are), every token is thus drawn from the
target model's own distribution: greedy output is plain decoding's (on llama.cpp, but for a
near-tie: a batch's arithmetic differs from one token's in the last bits), sampled output keeps
its distribution (for a deterministic draft this *is* standard speculative sampling, whose
rejection step resamples from the target with the draft token removed). The rejected
positions' keys and values are dropped from the cache.

Each stream adapts (:class:`DraftPolicy`): the draft grows while whole drafts are accepted
and shrinks when they are not, and a stream whose drafts keep failing stops drafting for a
while (longer each time), so that open-ended chat, where n-grams rarely repeat, decodes as
it would without speculation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chatforge.engines.base import EngineError, GenerationStats, KVState

log = logging.getLogger(__name__)

MODES = ("off", "ngram", "draft")


@dataclass(frozen=True)
class Speculation:
    """What ``--speculative`` asked for: ``off``, ``ngram`` or ``draft`` (with ``draft_model``)."""

    mode: str = "ngram"
    draft_model: str | None = None

    @property
    def on(self) -> bool:
        return self.mode != "off"

    def __str__(self) -> str:
        return f"draft:{self.draft_model}" if self.mode == "draft" else self.mode


def parse_speculation(value: str | Speculation | None) -> Speculation:
    """``off``, ``ngram`` or ``draft:MODEL`` (a GGUF file, or a model name such as ``0.5b``);
    None means the default (``ngram``)."""
    if isinstance(value, Speculation):
        return value
    text = "ngram" if value is None else str(value).strip()
    if text in ("off", "ngram"):
        return Speculation(text)
    if text.startswith("draft:") and text[len("draft:") :].strip():
        return Speculation("draft", text[len("draft:") :].strip())
    raise ValueError(
        f"--speculative takes off, ngram or draft:MODEL (a GGUF file or a model name), not {text!r}"
    )


class NgramIndex:
    """Where each n-gram of a token sequence last occurred, kept up to date as tokens are
    added: a lookup costs a dictionary access per n-gram size, however long the context."""

    def __init__(self, ids: list[int], sizes: tuple[int, ...] = (4, 3, 2)) -> None:
        self.ids = list(ids)
        self.sizes = sizes
        self._seen: dict[tuple[int, ...], int] = {}  # n-gram -> where what followed it starts
        self._indexed = 0  # n-grams ending before this position are in _seen

    def extend(self, ids: list[int]) -> None:
        self.ids.extend(ids)

    def _catch_up(self) -> None:
        # Only n-grams that something follows: those ending before the last token.
        ids = self.ids
        for end in range(self._indexed, len(ids) - 1):
            for n in self.sizes:
                if end + 1 >= n:
                    self._seen[tuple(ids[end + 1 - n : end + 1])] = end + 1
        self._indexed = max(self._indexed, len(ids) - 1)

    def propose(self, limit: int) -> list[int]:
        """Up to ``limit`` tokens that followed the longest n-gram the sequence ends with, at
        its latest earlier occurrence (longer n-grams first)."""
        if limit <= 0:
            return []
        self._catch_up()
        ids = self.ids
        for n in self.sizes:
            if len(ids) < n:
                continue
            start = self._seen.get(tuple(ids[-n:]))
            if start is not None:
                return ids[start : start + limit]
        return []


class DraftPolicy:
    """How long one stream's next draft is, from how its earlier ones fared.

    The length doubles (up to ``longest``) after a draft accepted whole and falls to one
    more than what was accepted otherwise. After ``patience`` drafts in a row that gain
    less than one token on average, the stream stops drafting for ``pause`` steps; each
    pause that ends in failure again doubles (up to ``longest_pause``), and a good draft
    resets it."""

    def __init__(
        self,
        first: int = 4,
        longest: int = 16,
        patience: int = 3,
        pause: int = 8,
        longest_pause: int = 256,
    ) -> None:
        self.length = first
        self.first = first
        self.longest = longest
        self.patience = patience
        self.pause = pause
        self.first_pause = pause
        self.longest_pause = longest_pause
        self.slow_pause = pause  # the next rest when drafting is measured slower (Payoff)
        self.misses = 0  # drafts in a row that gained less than a token
        self.resting = 0  # steps left without drafting

    def want(self) -> int:
        """The next draft's length; 0 while the stream rests (a step goes by)."""
        if self.resting > 0:
            self.resting -= 1
            return 0
        return self.length

    def slow(self) -> None:
        """Drafting was measured slower than plain steps: rest, longer each time in a row."""
        if self.resting == 0:
            self.resting = self.slow_pause
            self.slow_pause = min(self.longest_pause, self.slow_pause * 2)

    def fast(self) -> None:
        self.slow_pause = self.first_pause

    def record(self, drafted: int, accepted: int) -> None:
        if drafted <= 0:
            return
        if accepted >= drafted:
            self.length = min(self.longest, max(self.length, drafted) * 2)
        else:
            self.length = max(1, min(self.longest, accepted + 1))
        if accepted >= 1:
            self.misses = 0
            self.pause = self.first_pause
            return
        self.misses += 1
        if self.misses >= self.patience:
            self.misses = 0
            self.resting = self.pause
            self.pause = min(self.longest_pause, self.pause * 2)
            self.length = self.first


class Payoff:
    """Whether drafting with a draft model pays on this engine and workload, measured: the
    seconds per token of decode steps with drafts and of those without, as moving averages.
    A draft model whose pass costs a large share of the model's (the 0.5B for the 1.5B on two
    cores: about 40%) makes a step with drafts slower per token than one without."""

    def __init__(self, weight: float = 0.2, samples: int = 4, margin: float = 1.02) -> None:
        self.weight = weight
        self.samples = samples
        self.margin = margin
        self.per_token = {True: 0.0, False: 0.0}
        self.count = {True: 0, False: 0}

    def add(self, drafted: bool, seconds_per_token: float) -> None:
        n = self.count[drafted]
        old = self.per_token[drafted]
        self.per_token[drafted] = seconds_per_token if n == 0 else old + self.weight * (seconds_per_token - old)
        self.count[drafted] = n + 1

    def pays(self) -> bool:
        """False once both kinds of step have been timed and drafting is the slower."""
        if min(self.count.values()) < self.samples:
            return True
        return self.per_token[True] <= self.margin * self.per_token[False]


class Speculator:
    """One request's drafting: the n-gram index of its prompt and reply, its policy, and
    (with a draft model, set by the engine) the draft model's cache of its context."""

    def __init__(self, prompt_ids: list[int]) -> None:
        self.index = NgramIndex(prompt_ids)
        self.policy = DraftPolicy()
        self.draft_state: KVState | None = None

    def observe(self, token: int) -> None:
        self.index.extend([token])

    def ngram_draft(self, limit: int) -> list[int]:
        return self.index.propose(limit)


def record(request: Any, drafted: int, accepted: int) -> None:
    """Count a verified draft in the request's stats and its speculator's policy."""
    stats: GenerationStats = request.stats
    stats.drafted_tokens += drafted
    stats.accepted_tokens += accepted
    if request.speculator is not None:
        request.speculator.policy.record(drafted, accepted)


# A draft ends before a token its model gives less than this probability: such guesses are
# mostly rejected, and each costs a draft-model step and a verified position.
DRAFT_P_MIN = 0.7
UNSURE = -1  # what ConfidentPick returns instead of an unsure token (the draft's stop id)


class ConfidentPick:
    """The draft engine's sampler: the best token, or :data:`UNSURE` (which ends the draft)
    when its probability is under ``p_min``."""

    constraint = None

    def __init__(self, p_min: float) -> None:
        self.p_min = p_min

    def __call__(self, logits: np.ndarray) -> int:
        best = int(logits.argmax())
        top = float(logits[best])
        if not np.isfinite(top):
            return UNSURE
        share = 1.0 / float(np.exp(np.asarray(logits, dtype=np.float32) - top).sum())
        return best if share >= self.p_min else UNSURE

    def observe(self, token: int) -> None:
        pass


class DraftModel:
    """A smaller model that drafts for the target with greedy decoding, through its own
    llama.cpp engine: each stream keeps a conversation state there, so that a draft
    computes only the tokens added since the last one. The drafts of all streams in a step
    are decoded together, in the draft engine's batch."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def propose(self, contexts: list[tuple[list[int], KVState]], lengths: list[int]) -> list[list[int]]:
        """Greedy continuations of each context (up to its length, ended early where the
        draft model is unsure), decoded together."""
        drafts = self.engine.decode_together(contexts, lengths, lambda: ConfidentPick(DRAFT_P_MIN), [UNSURE])
        return [[t for t in draft if t != UNSURE] for draft in drafts]

    def close(self) -> None:
        self.engine.close()


def load_draft(factory: Callable[..., Any], target: Any, source: str | None, **options: Any) -> DraftModel:
    """The draft model of ``--speculative draft:MODEL`` (a GGUF file; ``load_model`` resolves
    model names): an engine of its own made by ``factory`` with as many sequences and threads
    as ``target``, refused unless it has the target's vocabulary."""
    path = Path(str(source))
    engine = factory(
        path,
        target.tokenizer,
        context_length=target.context_length,
        n_parallel=target.max_batch,
        n_threads=target.n_threads,
        share_prefixes=False,
        speculative="off",
        **options,
    )
    try:
        check_vocabularies(target, engine, str(source))
    except BaseException:
        engine.close()
        raise
    engine.batch_wait = 0.0  # a step's drafts are handed over together
    log.info("speculative decoding with the draft model %s", path.name)
    return DraftModel(engine)


def check_vocabularies(target: Any, draft: Any, source: str) -> None:
    """Refuse a draft model whose vocabulary is not the target's: its tokens would mean
    other text. Both are llama.cpp engines; their token counts and the text of a spread of
    tokens (every special token among them) must agree."""
    if target.n_vocab != draft.n_vocab:
        raise EngineError(
            f"the draft model {source} has a vocabulary of {draft.n_vocab} tokens and the "
            f"model {target.n_vocab}: a draft model must share the model's tokenizer"
        )
    probes = list(range(0, target.n_vocab, max(1, target.n_vocab // 2000)))
    probes += list(range(max(0, target.n_vocab - 300), target.n_vocab))  # special tokens sit last
    for token in probes:
        if target.piece(token) != draft.piece(token):
            raise EngineError(
                f"the draft model {source} does not share the model's tokenizer: token {token} is "
                f"{draft.piece(token)!r} there and {target.piece(token)!r} here"
            )


FORCED_DRAFT = 16  # the most tokens a grammar's forced continuation drafts at once


class SpeculativeSteps:
    """The batching engine's side of speculative decoding: drafts added to a step's decoding
    requests, and the step's rows taken while they match (:class:`~chatforge.engines.batching.BatchingEngine`
    mixes this in; an engine whose ``_forward`` returns a draft's rows sets ``supports_speculation``)."""

    speculation: Speculation
    draft_model: DraftModel | None
    context_length: int
    drafted_tokens: int
    accepted_tokens: int
    payoff: Payoff

    def _add_drafts(self, work: list[Any], room: int) -> list[Any]:
        """Append a draft to each decoding request's one token where its speculator has one,
        within its budget, its context and the step's ``room``. Returns the items that drafted
        or asked for a draft (an empty one from a draft model cost a pass too)."""
        asks: list[tuple[Any, int]] = []
        tried: list[Any] = []
        for item in work:
            request = item.request
            speculator = request.speculator
            if speculator is None or len(item.ids) != 1 or not request.generated or request.finished:
                continue
            left = min(
                request.budget - len(request.generated) - 1,
                self.context_length - len(request.prompt_ids) - len(request.generated) - 1,
            )
            constraint = request.sampler.constraint
            forced = constraint.forced(min(left, room, FORCED_DRAFT)) if constraint is not None else []
            if forced:  # what the grammar leaves no choice about: a draft that costs nothing
                item.ids = item.ids + forced
                item.draft = len(forced)
                room -= len(forced)
                tried.append(item)
                continue
            length = min(speculator.policy.want(), left, room)
            if length > 0:
                asks.append((item, length))
                room -= length
        if not asks:
            return tried
        if self.draft_model is not None:
            tried += [item for item, _ in asks]  # a draft model's pass costs, drafts or not
            contexts = [
                (i.request.prompt_ids + i.request.generated, i.request.speculator.draft_state) for i, _ in asks
            ]
            try:
                drafts = self.draft_model.propose(contexts, [n for _, n in asks])
            except Exception as err:  # noqa: BLE001 - decoding goes on without drafts
                log.warning("speculative decoding is off: the draft model failed: %s", err)
                self.draft_model, self.speculation = None, Speculation("off")
                return tried
        else:
            drafts = [i.request.speculator.ngram_draft(n) for i, n in asks]
        for (item, length), draft in zip(asks, drafts):
            draft = draft[:length]
            if draft:
                item.ids = item.ids + draft
                item.draft = len(draft)
                if self.draft_model is None:
                    tried.append(item)
        return tried

    def _verify(self, item: Any, rows: np.ndarray) -> list[tuple[Any, int, bool] | None]:
        """Take tokens from the rows of a step with a draft, as plain decoding would from one
        row at a time, while each equals the draft's; drop the cached rest."""
        request = item.request
        draft = item.ids[len(item.ids) - item.draft :]
        taken: list[tuple[Any, int, bool] | None] = []
        for i in range(len(draft) + 1):
            got = self._take(request, rows[i])
            taken.append(got)
            if got is None:  # sampling failed: the request has ended
                return taken
            _, token, last = got
            if last or i == len(draft) or token != draft[i]:
                break
        accepted = sum(1 for i, got in enumerate(taken) if i < len(draft) and got[1] == draft[i])
        record(request, len(draft), accepted)
        self.drafted_tokens += len(draft)
        self.accepted_tokens += accepted
        # The cache holds the fed token and the whole draft; the last token taken is not in it.
        rejected = len(item.ids) - len(taken)
        if rejected > 0:
            self._rollback(request, rejected)
        return taken

    def _time_step(self, work: list[Any], drafting: list[Any], tokens: int, seconds: float) -> None:
        """Time a decode step for :class:`Payoff`; where drafting is the slower, the streams
        that drafted in it rest (an n-gram draft's acceptance alone does not show this)."""
        # Only a draft model's cost needs timing: a failed n-gram draft costs one checked
        # position, which DraftPolicy's acceptance rule already bounds (timing them made
        # streams that copy rest on a noisy step or two: 1.2-3.5x instead of 3.5x).
        if tokens <= 0 or self.draft_model is None or not any(item.request.speculator for item in work):
            return
        self.payoff.add(bool(drafting), seconds / tokens)
        if not drafting:
            return
        # Steps without drafts are needed to compare with: where none came (a draft model
        # always drafts), the streams rest a while to time some.
        pays = self.payoff.pays() and self.payoff.count[False] >= min(self.payoff.count[True], self.payoff.samples)
        for item in drafting:
            speculator = item.request.speculator
            if speculator is None:
                continue
            if pays:
                speculator.policy.fast()
            else:
                speculator.policy.slow()

    def _rollback(self, request: Any, count: int) -> None:
        """Drop the last ``count`` ids from the request's cache (a rejected draft's)."""
        raise NotImplementedError(f"the {self.name} engine does not roll its cache back")
