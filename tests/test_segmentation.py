"""companion.segmentation on hand-computed cases."""

from __future__ import annotations

import doctest
import inspect
import signal
from contextlib import contextmanager

import pytest

import companion.segmentation
from companion.segmentation import max_match, segmentation_scores, words_to_spans


def test_docstring_examples():
    assert doctest.testmod(companion.segmentation).failed == 0


def test_max_match_takes_the_longest_word():
    vocab = {"研究", "研究生", "生命", "命", "起源"}
    # the classic garden path: greedy 研究生 leaves 命 alone, the right reading is 研究/生命/起源
    assert max_match("研究生命起源", vocab, max_len=3) == ["研究生", "命", "起源"]
    # max_len caps the match: 研究生 is not reachable with max_len=2
    assert max_match("研究生命起源", vocab, max_len=2) == ["研究", "生命", "起源"]


def test_max_match_falls_back_to_single_characters():
    assert max_match("我爱你", set(), max_len=4) == ["我", "爱", "你"]
    assert max_match("", {"我"}, max_len=4) == []
    assert max_match("ab", {"abc"}, max_len=3) == ["a", "b"]


@contextmanager
def time_limit(seconds: float):
    """Raise TimeoutError in the main thread after `seconds`: a hanging call fails instead of hanging."""
    def alarm(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("max_len", [0, -1])
def test_max_match_rejects_max_len_below_one_at_once(max_len):
    # max_len=0 used to loop forever: no length to try, so the position never advanced
    with time_limit(2), pytest.raises(ValueError, match=rf"max_len must be at least 1.*got {max_len}"):
        max_match("我爱你", {"我爱"}, max_len=max_len)
    assert max_match("我爱你", {"我爱"}, max_len=1) == ["我", "爱", "你"]  # 1: single characters


def test_max_match_shows_its_plain_loop():
    # the text-processing chapter prints this source: the max_len check must not change it
    source = inspect.getsource(max_match)
    assert source.startswith("def max_match(text: str, vocab: Container[str], max_len: int)")
    assert "raise" not in source and inspect.signature(max_match).parameters["max_len"].annotation == "int"


def test_words_to_spans():
    assert words_to_spans(["研究生", "命", "起源"]) == [(0, 3), (3, 4), (4, 6)]
    assert words_to_spans([]) == []


def test_scores_hand_computed():
    gold = [["研究", "生命", "起源"], ["我", "爱", "你"]]
    pred = [["研究生", "命", "起源"], ["我", "爱你"]]
    # sentence 1: only 起源 (4, 6) is right: 1 of 3 predicted, 1 of 3 gold
    # sentence 2: only 我 (0, 1) is right: 1 of 2 predicted, 1 of 3 gold
    # micro: precision 2/5, recall 2/6, F1 = 2PR/(P+R) = 4/11
    scores = segmentation_scores(pred, gold)
    assert scores["precision"] == pytest.approx(2 / 5)
    assert scores["recall"] == pytest.approx(2 / 6)
    assert scores["f1"] == pytest.approx(4 / 11)


def test_scores_perfect_and_micro_not_macro():
    gold = [["a"] * 9, ["bb"]]
    assert segmentation_scores(gold, gold) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    # 9 right of 9 words in the first sentence, 0 of 2 in the second: micro precision 9/11
    # (a macro average over sentences would give (1 + 0) / 2 = 0.5)
    scores = segmentation_scores([["a"] * 9, ["b", "b"]], gold)
    assert scores["precision"] == pytest.approx(9 / 11)
    assert scores["recall"] == pytest.approx(9 / 10)


def test_scores_reject_different_texts():
    with pytest.raises(ValueError):
        segmentation_scores([["我", "爱"]], [["我", "恨"]])
