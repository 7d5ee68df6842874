"""Text-generation metrics: BLEU-4, ROUGE-1/2/L (Chinese word segmentation), exact match, keyword recall.

Scores are percentages (0-100), as in ChatGLM3's fine-tuning evaluation. Text is
segmented with jieba (Chinese words; English words and punctuation pass through) and
whitespace tokens are dropped, so one tokenisation serves both languages. BLEU-4 is
nltk's ``sentence_bleu`` with smoothing method 3; ROUGE is rouge-chinese's F-score on
the same tokens.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

TOKENIZATIONS = ("jieba", "char")


def tokenize(text: str, how: str = "jieba") -> list[str]:
    """``text`` as scoring tokens: jieba words or single characters, without whitespace."""
    if how == "char":
        return [c for c in text if not c.isspace()]
    if how != "jieba":
        raise ValueError(f"unknown tokenization {how!r}; use one of {', '.join(TOKENIZATIONS)}")
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return [t for t in jieba.lcut(text) if t.strip()]


def bleu4(prediction: str, reference: str, how: str = "jieba") -> float:
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    hyp, ref = tokenize(prediction, how), tokenize(reference, how)
    if not hyp or not ref:
        return 0.0
    return 100.0 * sentence_bleu([ref], hyp, smoothing_function=SmoothingFunction().method3)


def rouge(prediction: str, reference: str, how: str = "jieba") -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-scores."""
    from rouge_chinese import Rouge

    hyp, ref = tokenize(prediction, how), tokenize(reference, how)
    if not hyp or not ref:
        return {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    scores = Rouge().get_scores(" ".join(hyp), " ".join(ref))[0]
    return {k: 100.0 * v["f"] for k, v in scores.items()}


def exact_match(prediction: str, reference: str) -> float:
    return 100.0 if " ".join(prediction.split()) == " ".join(reference.split()) else 0.0


def keyword_recall(prediction: str, keywords: Sequence[str]) -> float:
    """Share of ``keywords`` that appear in the prediction (case-insensitive)."""
    if not keywords:
        return 0.0
    text = prediction.lower()
    return 100.0 * sum(1 for k in keywords if k.lower() in text) / len(keywords)


@dataclass
class Scores:
    """Per-sample scores and their means."""

    rows: list[dict[str, float]] = field(default_factory=list)

    def add(
        self, prediction: str, reference: str, keywords: Sequence[str] | None = None, how: str = "jieba"
    ) -> dict[str, float]:
        row = {"bleu-4": bleu4(prediction, reference, how), **rouge(prediction, reference, how)}
        row["exact_match"] = exact_match(prediction, reference)
        if keywords:
            row["keyword_recall"] = keyword_recall(prediction, keywords)
        self.rows.append(row)
        return row

    def means(self) -> dict[str, float]:
        keys = sorted({k for r in self.rows for k in r})
        return {k: round(statistics.fmean(r[k] for r in self.rows if k in r), 4) for k in keys}


def score(
    predictions: Sequence[str],
    references: Sequence[str],
    keywords: Sequence[Sequence[str] | None] | None = None,
    how: str = "jieba",
) -> dict[str, float]:
    """Mean scores over paired predictions and references."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    s = Scores()
    for i, (p, r) in enumerate(zip(predictions, references, strict=True)):
        s.add(p, r, keywords[i] if keywords else None, how)
    return s.means()
