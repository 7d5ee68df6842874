"""When learning stops: once the facts are reproduced and the retention check passes.

Every ``check_every`` optimiser steps (from ``min_steps`` on) :class:`StopWhenLearned`
asks, in one teacher-forced float32 pass (:func:`~.answers.reproduces`), whether greedy
decoding now gives each fact's answer to every prompt the user gave. A fact an adapter
learned earlier (``--into``) needs only to be *recalled*, as the run's verdict asks: where
its answer is not given word for word, it is generated (a few rows) and must give the fact's
keywords (:func:`~.retention.gives`). Waiting for the exact wording of every fact kept
three of the nine steps of the ten-fact chain (eighth session) from any retention check
before their cap, while the controls moved. Where the retention
check runs, it also counts, for the report, the prompts derived from the fact by
:mod:`.derive` that it gives exactly (a derived prompt may well be answered with the fact
in other words, so they do not gate).
``retention_every`` steps after the facts were first reproduced (right then the controls
were still off in every measured run: 12–17 of 20 kept), the retention check itself runs
on the model as it is (the controls answered and judged, as at the end of the run:
:func:`~.retention.check_controls`), at a step the facts are reproduced at; training
stops when that passes, and the check is kept so that the run does not repeat it. When
it fails, training goes on (further steps mostly shrink the KL term, which is how a
control comes back) and the retention check runs again ``retention_every`` steps later
(it generates, so it costs several training steps' time). ``training.max_steps`` is only
the cap; a run that reaches it ends in the checked state that kept the most controls
(:meth:`StopWhenLearned.on_train_end`).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import TrainerCallback

from chatforge.templates import Template
from chatforge.train.learn.answers import answer_text, continue_greedy, merged, reproduces
from chatforge.train.learn.retention import ControlCheck, gives
from chatforge.train.precision import full_precision

log = logging.getLogger(__name__)

Pairs = list[tuple[list[int], list[int]]]  # (prompt ids, answer ids)


class StopWhenLearned(TrainerCallback):
    def __init__(
        self,
        template: Template,
        facts: Pairs,
        derived: Pairs,
        check_every: int,
        min_steps: int,
        check: Callable[[Any], ControlCheck],
        retention_every: int = 1,
        keywords: list[list[str]] | None = None,
        budget: int = 64,
    ) -> None:
        """``keywords``: for each of ``facts``, the words whose presence in the greedy answer
        (at most ``budget`` tokens) is enough; empty: its answer must be reproduced."""
        self.template = template
        self.facts = facts
        self.derived = derived
        self.check_every = check_every
        self.min_steps = min_steps
        self.check = check
        self.retention_every = retention_every
        self.keywords = keywords or [[] for _ in facts]
        self.budget = budget
        self.history: list[dict[str, Any]] = []
        self.stopped_at: int | None = None
        self.last: tuple[int, ControlCheck] | None = None  # the latest retention check: (step, result)
        self.reproduced_at: int | None = None  # the step the facts were first reproduced at
        self.best: _Snapshot | None = None  # the check that kept the most controls, facts learned
        self.final: ControlCheck | None = None  # the retention check of the state the run ends with
        self.restored_step: int | None = None  # the step of that state where it is not the last one
        self.seconds = 0.0  # spent in the checks
        # The facts at the latest step tested: which were reproduced, which recalled.
        self._tested: tuple[list[bool], list[bool]] = ([], [])

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        step = state.global_step
        if step < self.min_steps or step % self.check_every:
            return
        result = self._test(model, step)
        if result is not None and result.kept.passed:
            self.stopped_at = step
            self.final = result
            control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        """At the cap, the state the run ends with is the checked one with its facts learned
        that kept the most controls: the last step's (checked now if it was not) unless an
        earlier check kept more, or the last step lost a fact; that check's adapter weights
        are then put back. Training on past the facts moves controls and facts too: in the
        ten-fact chain the seventh fact kept 18 of 20 controls at step 22 and 17 at its cap of
        30, and the fourth recalled every fact at step 14 and had lost the colour by its cap."""
        if self.stopped_at is not None or self.best is None:
            return
        step = state.global_step
        last = self.last[1] if self.last and self.last[0] == step else self._test(model, step, always=True)
        assert last is not None
        self.final = last
        if self.best.step != step and (not self._learned() or self.best.result.kept.kept > last.kept.kept):
            self.best.restore(model)
            self.final, self.restored_step = self.best.result, self.best.step
            log.info("step %d: %d/%d controls kept, %s; the adapter of step %d is kept (%d kept)",
                     step, last.kept.kept, len(last.kept.rows),
                     "facts learned" if self._learned() else "a fact not recalled",
                     self.best.step, self.best.result.kept.kept)  # fmt: skip

    def _learned(self) -> bool:
        """Whether every fact was reproduced or recalled at the latest step tested."""
        own, recalled = self._tested
        return all(o or r for o, r in zip(own, recalled, strict=True))

    def _test(self, model: Any, step: int, always: bool = False) -> ControlCheck | None:
        """The criterion at ``step``: the facts, then (when due, or ``always``) the retention
        check, whose result it returns; one row of ``history``."""
        started = time.perf_counter()
        # The Trainer's model has its forward wrapped in mixed-precision autocast (bf16);
        # the wrapped module inside runs in float32, as the final retention check does.
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        was_training = inner.training
        inner.eval()
        result = None
        try:
            # The trainer holds the frozen base weights in bf16 (under autocast that changes
            # nothing); the checks are float32 passes over the original weights.
            with full_precision(inner):
                if self.history and self.history[-1]["step"] == step:  # the cap, tested at its step end
                    own, recalled = self._tested
                    self.history.pop()
                else:
                    # A few rows: cheaper through the adapter than folding it into the weights.
                    own = reproduces(inner, self.template, self.facts)
                    recalled = self._recalled(inner, own)
                self._tested = own, recalled
                learned = self._learned()
                if learned and self.reproduced_at is None:
                    self.reproduced_at = step
                since = self.last[0] if self.last else self.reproduced_at
                due = since is not None and step - since >= self.retention_every
                reproduced_s = time.perf_counter() - started
                more: list[bool] | None = None  # the derived prompts: counted where the check runs
                if (learned and due) or always:
                    with merged(inner):
                        more = reproduces(inner, self.template, self.derived)
                    result = self.check(inner)
                    self.last = (step, result)
                    if learned and (self.best is None or result.kept.kept > self.best.result.kept.kept):
                        self.best = _Snapshot(step, result, model)
        finally:
            inner.train(was_training)
        seconds = time.perf_counter() - started
        self.seconds += seconds
        row = {"step": step, "facts_reproduced": sum(own), "facts_recalled": sum(recalled), "facts": len(own),
               "derived_reproduced": None if more is None else sum(more), "derived": len(self.derived),
               "controls_kept": None if result is None else result.kept.kept,
               "controls": len(result.kept.rows) if result else None,
               "seconds": round(seconds, 1)}  # fmt: skip
        self.history.append(row)
        log.info("step %d: %d/%d facts reproduced%s (%.1f s); %s", step, sum(own), len(own),
                 f", {sum(recalled)} more recalled" if any(recalled) else "", reproduced_s,
                 "retention not checked" if result is None else
                 f"retention check: {result.kept.kept}/{len(result.kept.rows)} controls kept, "
                 f"{result.kept.leaked} leaked; {sum(more or [])}/{len(self.derived)} derived prompts "
                 f"reproduced ({seconds - reproduced_s:.1f} s)")  # fmt: skip
        return result

    def _recalled(self, model: Any, own: list[bool]) -> list[bool]:
        """Which facts not reproduced are still recalled (asked only where that decides the
        step: every fact not reproduced may be recalled instead)."""
        missed = [i for i, ok in enumerate(own) if not ok]
        recalled = [False] * len(own)
        if not missed or any(not self.keywords[i] for i in missed):
            return recalled
        prompts = [self.facts[i][0] for i in missed]
        for i, row in zip(
            missed, continue_greedy(model, self.template, prompts, [self.budget] * len(missed)), strict=True
        ):
            recalled[i] = gives(answer_text(self.template, row), self.keywords[i])
        return recalled


class _Snapshot:
    """The trainable weights (and an AdaLoRA adapter's rank pattern, which says how they
    are saved) of ``model`` at ``step``, with that state's retention check."""

    def __init__(self, step: int, result: ControlCheck, model: Any) -> None:
        self.step, self.result = step, result
        self.weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        configs = getattr(model, "peft_config", {})
        self.patterns = {name: copy.deepcopy(getattr(c, "rank_pattern", None)) for name, c in configs.items()}

    def restore(self, model: Any) -> None:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in self.weights:
                    p.copy_(self.weights[n])
        for name, c in getattr(model, "peft_config", {}).items():
            if hasattr(c, "rank_pattern"):
                c.rank_pattern = copy.deepcopy(self.patterns.get(name))
