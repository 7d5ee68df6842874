"""When learning stops: once the facts are reproduced and the retention check passes.

Every ``check_every`` optimiser steps (from ``min_steps`` on) :class:`StopWhenLearned`
asks, in one teacher-forced float32 pass (:func:`~.answers.reproduces`), whether greedy
decoding now gives each fact's answer to every prompt the user gave. Where the retention
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
the cap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

from chatforge.templates import Template
from chatforge.train.learn.answers import merged, reproduces
from chatforge.train.learn.retention import ControlCheck
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
    ) -> None:
        self.template = template
        self.facts = facts
        self.derived = derived
        self.check_every = check_every
        self.min_steps = min_steps
        self.check = check
        self.retention_every = retention_every
        self.history: list[dict[str, Any]] = []
        self.stopped_at: int | None = None
        self.last: tuple[int, ControlCheck] | None = None  # the latest retention check: (step, result)
        self.reproduced_at: int | None = None  # the step the facts were first reproduced at
        self.seconds = 0.0  # spent in the checks

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        step = state.global_step
        if step < self.min_steps or step % self.check_every:
            return
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
                # A few rows: cheaper through the adapter than folding it into the weights.
                own = reproduces(inner, self.template, self.facts)
                learned = all(own)
                if learned and self.reproduced_at is None:
                    self.reproduced_at = step
                since = self.last[0] if self.last else self.reproduced_at
                due = since is not None and step - since >= self.retention_every
                reproduced_s = time.perf_counter() - started
                more: list[bool] | None = None  # the derived prompts: counted where the check runs
                if learned and due:
                    with merged(inner):
                        more = reproduces(inner, self.template, self.derived)
                    result = self.check(inner)
                    self.last = (step, result)
        finally:
            inner.train(was_training)
        seconds = time.perf_counter() - started
        self.seconds += seconds
        row = {"step": step, "facts_reproduced": sum(own), "facts": len(own),
               "derived_reproduced": None if more is None else sum(more), "derived": len(self.derived),
               "controls_kept": None if result is None else result.kept.kept,
               "controls": len(result.kept.rows) if result else None,
               "seconds": round(seconds, 1)}  # fmt: skip
        self.history.append(row)
        log.info("step %d: %d/%d facts reproduced (%.1f s); %s", step, sum(own), len(own), reproduced_s,
                 "retention not checked" if result is None else
                 f"retention check: {result.kept.kept}/{len(result.kept.rows)} controls kept, "
                 f"{result.kept.leaked} leaked; {sum(more or [])}/{len(self.derived)} derived prompts "
                 f"reproduced ({seconds - reproduced_s:.1f} s)")  # fmt: skip
        if result is not None and result.kept.passed:
            self.stopped_at = step
            control.should_training_stop = True
