"""Samples to training tensors: tokenisation through the template, truncation, packing, collation.

Tokens and labels come only from :meth:`Template.render`, the code that also builds
prompts when serving, so what is trained is exactly what is served. Samples longer
than ``max_length`` lose whole oldest turns (the system prompt stays) until they fit,
or else are cut; both are counted. Packing puts several samples in one row with
positions restarting at each sample, which transformers turns into a block-diagonal
causal mask (no attention across samples) when no 2D attention mask is passed.
"""

from __future__ import annotations

import logging
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from chatforge.messages import Message, Role
from chatforge.templates import IGNORE_INDEX, LossMode, Segment, StreamParser, Template
from chatforge.train.data import Sample

log = logging.getLogger(__name__)


class PlainTemplate(Template):
    """Prompt/response with no chat markup: prompt text, then response text and EOS (trained).

    For data in ChatGLM3's input/output format, which joins no role markers. Serve a
    model trained this way with this template too (``chatforge eval --template plain``).
    """

    name = "plain"

    def segments(
        self, messages: Sequence[Message], tools: list[dict[str, Any]] | None, add_generation_prompt: bool
    ) -> list[Segment]:
        out = []
        eos = self.tokenizer.eos_token or ""
        for i, m in enumerate(messages):
            if m.role is Role.ASSISTANT:
                out += [Segment(m.content, i, output=True, literal=True), Segment(eos, i, output=True)]
            else:
                out.append(Segment(m.content, i, literal=True))
        return out

    def parse(self, text: str, tools: list[dict[str, Any]] | None = None) -> Message:
        return Message(Role.ASSISTANT, text)

    def stream_parser(self, tools: list[dict[str, Any]] | None = None) -> StreamParser:
        return _PlainStream(self)

    @property
    def stop_strings(self) -> list[str]:
        return [self.tokenizer.eos_token] if self.tokenizer.eos_token else []


class _PlainStream(StreamParser):
    def __init__(self, template: PlainTemplate) -> None:
        super().__init__()
        self.template = template

    def visible(self, text: str, final: bool) -> str:
        return text

    def parse_final(self, text: str) -> Message:
        return self.template.parse(text)


@dataclass
class Example:
    """One tokenised sample."""

    input_ids: list[int]
    labels: list[int]
    where: str = ""
    kl_mask: list[int] = field(default_factory=list)  # 1 where the KL-to-base term applies; empty: nowhere

    @property
    def trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)

    def as_replay(self, cross_entropy: bool = True) -> Example:
        """This sample's response tokens under the KL-to-base term; without ``cross_entropy``
        they are trained by that term alone (labels masked)."""
        mask = [int(x != IGNORE_INDEX) for x in self.labels]
        labels = self.labels if cross_entropy else [IGNORE_INDEX] * len(self.labels)
        return Example(self.input_ids, labels, self.where, mask)


@dataclass
class TokenStats:
    """What tokenisation did: lengths, trained tokens, truncations and drops (with reasons)."""

    samples: int = 0
    turns: int = 0
    lengths: list[int] = field(default_factory=list)
    trained_tokens: int = 0
    turns_dropped: int = 0  # whole oldest turns removed to fit max_length
    samples_with_dropped_turns: int = 0
    samples_cut: int = 0  # truncated inside a turn
    dropped: Counter = field(default_factory=Counter)  # reason -> samples not used

    def summary(self) -> dict[str, Any]:
        lengths = self.lengths or [0]
        return {
            "samples": self.samples,
            "turns": self.turns,
            "tokens": sum(self.lengths),
            "length_min": min(lengths),
            "length_mean": round(statistics.fmean(lengths), 1),
            "length_max": max(lengths),
            "trained_tokens": self.trained_tokens,
            "samples_with_dropped_turns": self.samples_with_dropped_turns,
            "turns_dropped": self.turns_dropped,
            "samples_cut": self.samples_cut,
            "samples_dropped": dict(self.dropped),
        }


class TruncationError(ValueError):
    """A sample does not fit and truncation is 'error'."""


def render_sample(sample: Sample, template: Template, loss_mode: str = "assistant") -> Example:
    tpl = PlainTemplate(template.tokenizer) if sample.plain else template
    r = tpl.render(sample.messages, sample.tools, add_generation_prompt=False, loss_mode=LossMode(loss_mode))
    return Example(list(r.ids), r.labels, sample.where)


def _drop_oldest_round(messages: list[Message]) -> list[Message] | None:
    """Messages without their first user-led round (system kept); None when one round is left."""
    start = 1 if messages and messages[0].role is Role.SYSTEM else 0
    users = [i for i in range(start, len(messages)) if messages[i].role is Role.USER]
    later = [i for i in users if i > start]
    if not later:
        return None
    return messages[:start] + messages[later[0] :]


def encode_sample(
    sample: Sample,
    template: Template,
    max_length: int,
    loss_mode: str = "assistant",
    truncation: str = "drop_oldest",
    stats: TokenStats | None = None,
) -> Example | None:
    """The sample as ids and labels within ``max_length``; None (counted in stats) if nothing is left to train."""
    stats = stats if stats is not None else TokenStats()
    ex = render_sample(sample, template, loss_mode)
    messages = sample.messages
    dropped_turns = 0
    if len(ex.input_ids) > max_length and truncation == "error":
        raise TruncationError(
            f"{sample.where}: {len(ex.input_ids)} tokens > data.max_length {max_length}; "
            "raise max_length or set data.truncation to drop_oldest or truncate"
        )
    while len(ex.input_ids) > max_length and truncation == "drop_oldest":
        shorter = _drop_oldest_round(messages)
        if shorter is None:
            break
        dropped_turns += len(messages) - len(shorter)
        messages = shorter
        ex = render_sample(
            Sample(messages, sample.tools, sample.source, sample.line, sample.plain), template, loss_mode
        )
    if dropped_turns:
        stats.turns_dropped += dropped_turns
        stats.samples_with_dropped_turns += 1
    if len(ex.input_ids) > max_length:
        ex = Example(ex.input_ids[:max_length], ex.labels[:max_length], ex.where)
        stats.samples_cut += 1
    if ex.trained == 0:
        stats.dropped["no trained tokens (all masked, or cut off by max_length)"] += 1
        log.warning("%s: no trained tokens left; sample not used", sample.where)
        return None
    stats.samples += 1
    stats.turns += len(messages)
    stats.lengths.append(len(ex.input_ids))
    stats.trained_tokens += ex.trained
    return ex


def encode_samples(
    samples: Sequence[Sample],
    template: Template,
    max_length: int,
    loss_mode: str = "assistant",
    truncation: str = "drop_oldest",
) -> tuple[list[Example], TokenStats]:
    stats = TokenStats()
    out = [encode_sample(s, template, max_length, loss_mode, truncation, stats) for s in samples]
    examples = [e for e in out if e is not None]
    if stats.dropped:
        log.warning("samples not used: %s", dict(stats.dropped))
    return examples, stats


# -- packing ------------------------------------------------------------------------
@dataclass
class PackedRow:
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    kl_mask: list[int] = field(default_factory=list)


def pack(examples: Sequence[Example], max_length: int) -> list[PackedRow]:
    """Greedy packing in order: samples fill a row until the next one would overflow it.

    The first label of each sample is masked: in a packed row it would be predicted
    from the previous sample's last token, which an unpacked run never does.
    """
    rows: list[PackedRow] = []
    cur = PackedRow([], [], [])
    for ex in examples:
        if cur.input_ids and len(cur.input_ids) + len(ex.input_ids) > max_length:
            rows.append(cur)
            cur = PackedRow([], [], [])
        cur.input_ids += ex.input_ids
        cur.labels += [IGNORE_INDEX, *ex.labels[1:]]
        cur.position_ids += list(range(len(ex.input_ids)))
        cur.kl_mask += [0, *ex.kl_mask[1:]] if ex.kl_mask else [0] * len(ex.input_ids)
    if cur.input_ids:
        rows.append(cur)
    return rows


class TrainDataset(torch.utils.data.Dataset):
    """Examples or packed rows as dicts the collator understands; rows holding replay
    tokens also carry their ``kl_mask``."""

    def __init__(self, items: Sequence[Example | PackedRow]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        item = self.items[i]
        out = {"input_ids": item.input_ids, "labels": item.labels}
        if isinstance(item, PackedRow):
            out["position_ids"] = item.position_ids
        if any(item.kl_mask):
            out["kl_mask"] = item.kl_mask
        return out


@dataclass
class Collator:
    """Right-pads a batch: ``pad_id`` for inputs, -100 for labels.

    Unpacked batches get a 2D attention mask. Packed rows get restarting
    ``position_ids`` instead (padding forms its own segment) and no attention mask,
    so transformers builds the block-diagonal causal mask. When any row has a
    ``kl_mask`` (replay tokens), the batch gets one for every row, zero elsewhere.
    """

    pad_id: int

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        packed = "position_ids" in features[0]
        with_kl = any("kl_mask" in f for f in features)
        ids, labels, extra, kl = [], [], [], []
        for f in features:
            n = len(f["input_ids"])
            pad = width - n
            ids.append(f["input_ids"] + [self.pad_id] * pad)
            labels.append(f["labels"] + [IGNORE_INDEX] * pad)
            if packed:
                extra.append(f["position_ids"] + list(range(pad)))
            else:
                extra.append([1] * n + [0] * pad)
            if with_kl:
                kl.append(f.get("kl_mask", [0] * n) + [0] * pad)
        batch = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}
        batch["position_ids" if packed else "attention_mask"] = torch.tensor(extra)
        if with_kl:
            batch["kl_mask"] = torch.tensor(kl, dtype=torch.bool)
        return batch


# -- sanity check ---------------------------------------------------------------------
def sanity_table(example: Example, tokenizer: Any, limit: int | None = None) -> str:
    """One line per token: the token text, its id and its label (-100 where masked)."""
    lines = ["Sanity check >>>"]
    pairs = list(zip(example.input_ids, example.labels, strict=True))
    for tid, label in pairs[:limit] if limit else pairs:
        text = tokenizer.decode([tid], skip_special_tokens=False)
        lines.append(f"{text!r:>24}: {tid:>7} -> {label:>7}")
    if limit and len(pairs) > limit:
        lines.append(f"{'...':>24}  ({len(pairs) - limit} more tokens)")
    lines.append("<<< Sanity check")
    return "\n".join(lines)
