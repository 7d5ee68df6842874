"""KL-to-base regularisation: keep an adapter from changing what the base model says elsewhere.

Replay samples (``data.replay_file``, typically the base model's own answers to unrelated
prompts) carry a ``kl_mask`` over their response tokens. :class:`KLTrainer` adds
``training.kl_to_base`` × KL(base ‖ tuned) over those tokens to the usual cross-entropy.
With PEFT the base model is the model being trained with its adapter disabled, so no
second copy is held in memory; it costs one extra forward pass (no gradient) of the rows
that hold replay tokens.

Replay rows are spread evenly over the batches (:class:`EvenReplay`): every batch holds
the training rows' share of rows, so no step is all replay (pulling a fact back out) or
all new rows (pushing everything else away).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer

from chatforge.templates import IGNORE_INDEX
from chatforge.train.lean_adalora import orthogonality_penalty


def kl_divergence(logits: torch.Tensor, base_logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """KL(softmax(base_logits) ‖ softmax(logits)) per position, in float32, averaged over
    positions (``reduction="mean"``) or summed (``"sum"``).

    Both are ``(positions, vocab)``; zero exactly when the two distributions agree.
    """
    if logits.shape != base_logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and base logits {tuple(base_logits.shape)} differ")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if logits.shape[0] == 0:
        return logits.sum() * 0.0  # keeps the graph: a batch without replay tokens adds nothing
    log_q = F.log_softmax(logits.float(), dim=-1)
    log_p = F.log_softmax(base_logits.float(), dim=-1)
    total = F.kl_div(log_q, log_p, log_target=True, reduction="sum")
    return total / logits.shape[0] if reduction == "mean" else total


def masked_kl(
    logits: torch.Tensor, base_logits: torch.Tensor, kl_mask: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """KL over the positions that predict the tokens ``kl_mask`` marks.

    ``logits``/``base_logits`` are ``(batch, seq, vocab)``; ``kl_mask`` is ``(batch, seq)`` over
    the *target* tokens, so position ``t`` of the logits is used when ``kl_mask[:, t + 1]`` is set
    (the same shift as the causal-LM loss).
    """
    target = kl_mask[:, 1:].bool()
    return kl_divergence(logits[:, :-1][target], base_logits[:, :-1][target], reduction)


class EvenReplay(torch.utils.data.Sampler[int]):
    """Row order in which each batch of ``batch_size`` holds training and replay rows in
    the proportion of the whole data set (rounded so that the shares add up over the
    batches), each kind in a fresh random order every epoch."""

    def __init__(self, replay: list[bool], batch_size: int, seed: int) -> None:
        self.replay = replay
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.replay)

    def set_epoch(self, epoch: int) -> None:
        """The Trainer sets the epoch (a resumed run too), so that epoch ``e``'s order is
        always the same."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        own = [i for i, r in enumerate(self.replay) if not r]
        rep = [i for i, r in enumerate(self.replay) if r]
        own = [own[i] for i in torch.randperm(len(own), generator=g).tolist()]
        rep = [rep[i] for i in torch.randperm(len(rep), generator=g).tolist()]
        total, share = len(self.replay), len(own) / max(len(self.replay), 1)
        taken_own = taken_rep = 0
        while taken_own + taken_rep < total:
            size = min(self.batch_size, total - taken_own - taken_rep)
            want = round((taken_own + taken_rep + size) * share) - taken_own
            want = max(size - (len(rep) - taken_rep), min(want, size, len(own) - taken_own), 0)
            yield from own[taken_own : taken_own + want]
            yield from rep[taken_rep : taken_rep + size - want]
            taken_own, taken_rep = taken_own + want, taken_rep + size - want


class KLTrainer(Trainer):
    """A ``Trainer`` whose loss is cross-entropy + ``kl_weight`` × KL(base ‖ tuned) on replay tokens.

    The model must be a PEFT model: ``disable_adapter()`` gives the base model's logits.
    The mean KL since the last log is logged as ``kl_to_base``; ``loss`` includes it.
    """

    def __init__(self, *args: Any, kl_weight: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kl_weight = kl_weight
        self._kl_values: list[float] = []
        self._kl_tokens = 0
        self._lean: bool | None = None  # see _logits_where_needed

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        data = self.train_dataset if train_dataset is None else train_dataset
        items = getattr(data, "items", None)
        if items is None or self.args.world_size > 1 or self.args.train_sampling_strategy != "random":
            return super()._get_train_sampler(train_dataset)
        replay = [any(item.kl_mask) for item in items]
        if all(replay) or not any(replay):
            return super()._get_train_sampler(train_dataset)
        return EvenReplay(replay, self.args.per_device_train_batch_size, self.args.seed)

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list, Any]:
        # The KL is a mean over the replay tokens of the whole accumulated batch, like the
        # cross-entropy over its trained tokens; count them before the micro-batches run.
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._kl_tokens = sum(int(b["kl_mask"][:, 1:].sum()) for b in batch_samples if "kl_mask" in b)
        return batch_samples, num_items

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        kl_mask = inputs.pop("kl_mask", None)
        if model.training and self._logits_where_needed(model):
            loss = self._lean_loss(model, inputs, kl_mask, num_items_in_batch)
            return (loss, None) if return_outputs else loss
        labels = inputs.get("labels")
        if labels is not None and not bool((labels[:, 1:] != IGNORE_INDEX).any()):
            # Only KL-trained replay rows: no cross-entropy (its mean over no tokens is NaN).
            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
            loss = outputs.logits.sum() * 0.0
        else:
            loss, outputs = super().compute_loss(
                model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
            )
        if kl_mask is not None and model.training and bool(kl_mask[:, 1:].any()):
            tokens = int(kl_mask[:, 1:].sum())
            kl_sum = self._kl(model, inputs, outputs.logits, kl_mask)
            loss = loss + self._kl_term(kl_sum, tokens, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def _logits_where_needed(self, model: Any) -> bool:
        """Whether a training step may compute logits only where the loss reads them: one
        process, an adapter that does not add virtual tokens, and a model whose forward
        takes a ``logits_to_keep`` mask."""
        if self._lean is None:
            peft_model = self.accelerator.unwrap_model(model)
            config = getattr(peft_model, "active_peft_config", None)
            base = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else None
            self._lean = (
                self.args.world_size == 1
                and config is not None
                and not config.is_prompt_learning
                and base is not None
                and "logits_to_keep" in inspect.signature(base.forward).parameters
            )
        return self._lean

    def _lean_loss(
        self, model: Any, inputs: dict[str, Any], kl_mask: Any, num_items_in_batch: Any
    ) -> torch.Tensor:
        """Cross-entropy + the KL term with the output layer applied only at the positions
        that predict a trained or a replayed token (the rest of a row is prompt). The same
        loss as the full pass: the output layer and the softmax over a 150k vocabulary are
        a large part of a small model's step."""
        labels = inputs["labels"]
        ce_at = labels[:, 1:] != IGNORE_INDEX  # position t predicts token t + 1
        kl_at = kl_mask[:, 1:].bool() if kl_mask is not None else torch.zeros_like(ce_at)
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = ce_at | kl_at
        model_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "num_items_in_batch")}
        logits = model(**model_inputs, logits_to_keep=keep).logits  # (kept positions, vocab), row by row
        if logits.shape[0] != int(keep.sum()):
            raise RuntimeError(f"logits_to_keep gave {tuple(logits.shape)} for {int(keep.sum())} positions")
        ce_rows = ce_at[keep[:, :-1]]
        count = int(ce_rows.sum())
        if count:
            targets = labels[:, 1:][keep[:, :-1]][ce_rows]
            ce_sum = F.cross_entropy(logits[ce_rows].float(), targets, reduction="sum")
            scaled = self._loss_scaled_for_accumulation(num_items_in_batch)
            loss = ce_sum / (num_items_in_batch if scaled else count)
        else:
            loss = logits.sum() * 0.0  # replay rows only
        peft_model = self.accelerator.unwrap_model(model)
        if count and (penalty := orthogonality_penalty(peft_model)) is not None:
            loss = loss + penalty  # what peft adds to a loss the model computes itself
        tokens = int(kl_at.sum())
        if tokens:
            rows = kl_at.any(dim=1)
            base_keep = torch.zeros_like(keep[rows])
            base_keep[:, :-1] = kl_at[rows]
            base_inputs = {k: v[rows] for k, v in model_inputs.items()}
            with torch.no_grad(), peft_model.disable_adapter():
                base_logits = peft_model(**base_inputs, logits_to_keep=base_keep).logits
            kl_sum = kl_divergence(logits[kl_at[keep[:, :-1]]], base_logits, reduction="sum")
            loss = loss + self._kl_term(kl_sum, tokens, num_items_in_batch)
        return loss

    def _kl_term(self, kl_sum: torch.Tensor, tokens: int, num_items_in_batch: Any) -> torch.Tensor:
        self._kl_values.append(float(kl_sum.detach()) / tokens)
        # This micro-batch's share of the mean over the accumulated batch's replay tokens.
        term = self.kl_weight * kl_sum / max(getattr(self, "_kl_tokens", 0), tokens)
        if not self._loss_scaled_for_accumulation(num_items_in_batch):
            term = term * self.current_gradient_accumulation_steps  # the Trainer divides by it
        return term

    def _kl(
        self, model: Any, inputs: dict[str, Any], logits: torch.Tensor, kl_mask: torch.Tensor
    ) -> torch.Tensor:
        rows = kl_mask.any(dim=1)
        peft_model = self.accelerator.unwrap_model(model)
        base_inputs = {k: v[rows] for k, v in inputs.items() if k not in ("labels", "num_items_in_batch")}
        with torch.no_grad(), peft_model.disable_adapter():
            base_logits = peft_model(**base_inputs).logits
        return masked_kl(logits[rows], base_logits, kl_mask[rows], reduction="sum")

    def _loss_scaled_for_accumulation(self, num_items_in_batch: Any) -> bool:
        # Mirrors Trainer.training_step: when the loss is normalised by the tokens of the
        # whole accumulated batch, the Trainer does not divide it by the accumulation steps.
        if self.loss_is_scaled_for_ga is not None:
            return bool(self.loss_is_scaled_for_ga)
        return (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
            self.compute_loss_func is not None
        )

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self._kl_values and "loss" in logs:
            logs["kl_to_base"] = sum(self._kl_values) / len(self._kl_values)
            self._kl_values = []
        super().log(logs, *args, **kwargs)
