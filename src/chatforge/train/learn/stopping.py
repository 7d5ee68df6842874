"""When learning stops: once the facts are reproduced and the controls look kept.

Every ``check_every`` optimiser steps (from ``min_steps`` on) :class:`StopWhenLearned`
runs two teacher-forced forward passes in float32 (:func:`~.answers.reproduces` and
:func:`agreement`): does greedy decoding now give each fact's training answer, and would it
still give the base model's control answers (a control counts when its first
``min_rouge_l`` % of tokens come back unchanged)? Training
stops when both hold; ``training.max_steps`` is only the cap. The controls' pass (the larger
one) runs only once the facts are reproduced. The final verdict is the
generated retention check afterwards, not this estimate.

After the facts are first reproduced, further steps mostly shrink the KL term (the facts'
cross-entropy is already small), so continuing is how a run that reproduced the fact
early but disturbed a control gets the control back.
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import TrainerCallback

from chatforge.templates import Template
from chatforge.train.learn.answers import first_differences, reproduces

log = logging.getLogger(__name__)


def agreement(model: Any, pairs: list[tuple[list[int], list[int]]], pad: int) -> list[float]:
    """For each ``(prompt ids, answer ids)``: the share of the answer that greedy decoding
    would reproduce before its first different token (teacher forcing). After that token a
    generated answer goes its own way, so a later match says nothing about it."""
    firsts = first_differences(model, pairs, pad)
    return [first / max(1, len(answer)) for first, (_, answer) in zip(firsts, pairs, strict=True)]


class StopWhenLearned(TrainerCallback):
    def __init__(
        self,
        template: Template,
        facts: list[tuple[list[int], list[int]]],
        controls: list[tuple[list[int], list[int]]],
        check_every: int,
        min_steps: int,
        min_kept: float,
        min_agreement: float,
    ) -> None:
        self.template = template
        self.facts = facts
        self.controls = controls
        self.check_every = check_every
        self.min_steps = min_steps
        self.min_kept = min_kept
        self.min_agreement = min_agreement
        self.history: list[dict[str, Any]] = []
        self.stopped_at: int | None = None

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        step = state.global_step
        if step < self.min_steps or step % self.check_every:
            return
        # The Trainer's model has its forward wrapped in mixed-precision autocast (bf16);
        # the wrapped module inside runs in float32, as the final retention check does.
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        was_training = inner.training
        inner.eval()
        try:
            reproduced = reproduces(inner, self.template, self.facts)
            # The controls' pass is the larger one: only run it once the facts are there.
            shares = None
            if all(reproduced):
                pad = self.template.tokenizer.pad_token_id
                shares = agreement(inner, self.controls, int(pad if pad is not None else 0))
        finally:
            inner.train(was_training)
        kept = None if shares is None else sum(s >= self.min_agreement for s in shares)
        row = {"step": step, "facts_reproduced": sum(reproduced), "facts": len(reproduced),
               "controls_agreeing": kept, "controls": len(self.controls)}  # fmt: skip
        self.history.append(row)
        log.info("step %d: %d/%d facts reproduced, %s/%d controls agree with the base model", step,
                 row["facts_reproduced"], row["facts"], "?" if kept is None else kept,
                 len(self.controls))  # fmt: skip
        if kept is not None and kept >= self.min_kept * len(self.controls) - 1e-9:
            self.stopped_at = step
            control.should_training_stop = True
