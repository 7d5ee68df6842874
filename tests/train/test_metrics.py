"""Metric values pinned on fixed Chinese and English strings."""

from __future__ import annotations

import math

import pytest

from chatforge.train.metrics import bleu4, exact_match, keyword_recall, rouge, score, tokenize

EN = ("the cat sat on the mat", "the cat is on the mat")
ZH = ("今天北京天气晴朗，气温二十度。", "北京今天天气晴朗，气温二十度。")


def test_english_bleu4_by_hand():
    # n-gram precisions 5/6, 3/5, 1/4 and 0/3 (smoothed by method 3 to 1/6); brevity penalty 1.
    expected = 100 * math.exp(sum(map(math.log, [5 / 6, 3 / 5, 1 / 4, 1 / 6])) / 4)
    assert bleu4(*EN) == pytest.approx(expected, abs=1e-9)
    assert bleu4(*EN) == pytest.approx(37.9918, abs=1e-4)


def test_english_rouge_by_hand():
    # rouge-chinese counts distinct n-grams: 4 of 5 unigrams, 3 of 5 bigrams; the LCS is 5 of 6 tokens.
    scores = rouge(*EN)
    assert scores["rouge-1"] == pytest.approx(80.0, abs=1e-4)
    assert scores["rouge-2"] == pytest.approx(60.0, abs=1e-4)
    assert scores["rouge-l"] == pytest.approx(100 * 5 / 6, abs=1e-4)


def test_chinese_is_segmented_into_words():
    assert tokenize("这款连衣裙采用雪纺面料，清新优雅。") == [
        "这",
        "款",
        "连衣裙",
        "采用",
        "雪纺",
        "面料",
        "，",
        "清新",
        "优雅",
        "。",
    ]
    assert tokenize("北京 天气", "char") == ["北", "京", "天", "气"]


def test_chinese_values_are_pinned():
    assert bleu4(*ZH) == pytest.approx(66.8740, abs=1e-4)
    assert bleu4(*ZH, how="char") == pytest.approx(79.3077, abs=1e-4)
    assert {k: round(v, 4) for k, v in rouge(*ZH).items()} == {
        "rouge-1": 100.0,
        "rouge-2": 66.6667,
        "rouge-l": 85.7143,
    }


def test_identical_and_empty_texts():
    assert bleu4(ZH[1], ZH[1]) == pytest.approx(100.0)
    assert rouge("", "北京")["rouge-1"] == 0.0 and bleu4("", "北京") == 0.0


def test_exact_match_and_keyword_recall():
    assert exact_match(" It is  sunny ", "It is sunny") == 100.0
    assert exact_match("It is sunny.", "It is sunny") == 0.0
    assert keyword_recall("It is Sunny in Paris", ["sunny", "Paris", "rain"]) == pytest.approx(200 / 3)


def test_mean_scores():
    means = score([EN[0], ZH[0]], [EN[1], ZH[1]], keywords=[["cat"], None])
    assert means["bleu-4"] == pytest.approx((37.9918 + 66.8740) / 2, abs=1e-3)
    assert means["keyword_recall"] == 100.0 and means["exact_match"] == 0.0
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        score(["a", "b"], ["a"])
