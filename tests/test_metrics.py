"""companion.metrics on hand-computed cases, a conlleval reference and the real MiniLM tokenizer."""

from __future__ import annotations

import doctest
import random

import pytest
import torch

import companion  # noqa: F401  (first: switches Hugging Face to the offline cache)
import companion.metrics
from companion.metrics import (IGNORE_INDEX, accuracy, align_labels_with_tokens, bio_spans, entity_scores,
                               mean_std)


def test_docstring_examples():
    assert doctest.testmod(companion.metrics).failed == 0


# --- bio_spans ---------------------------------------------------------------------------------

def test_bio_spans_basic():
    assert bio_spans(["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-LOC"]) == [("PER", 0, 2), ("LOC", 3, 6)]
    assert bio_spans(["B-PER", "B-PER", "I-PER"]) == [("PER", 0, 1), ("PER", 1, 3)]  # B always starts anew
    assert bio_spans(["O", "O"]) == []
    assert bio_spans([]) == []
    assert bio_spans(["B-GPE-LOC", "I-GPE-LOC"]) == [("GPE-LOC", 0, 2)]  # the type is all after the first '-'


def test_bio_spans_i_without_b_starts_an_entity():
    # conlleval / seqeval default: an I-X that does not continue an X entity begins one
    assert bio_spans(["I-PER"]) == [("PER", 0, 1)]
    assert bio_spans(["O", "I-PER", "I-PER", "O"]) == [("PER", 1, 3)]
    assert bio_spans(["B-PER", "I-LOC", "I-LOC"]) == [("PER", 0, 1), ("LOC", 1, 3)]
    assert bio_spans(["I-PER", "I-LOC"]) == [("PER", 0, 1), ("LOC", 1, 2)]
    # so IOB1 (B only between two adjacent entities of one type) is read right too
    assert bio_spans(["I-ORG", "I-ORG", "B-ORG", "O"]) == [("ORG", 0, 2), ("ORG", 2, 3)]


def _conlleval_chunks(tags):
    """Reference: conlleval's end-of-chunk / start-of-chunk rules (BIO subset), tag by tag."""
    chunks, start = [], 0
    prev_prefix, prev_type = "O", ""
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, kind = tag.partition("-")
        ended = prev_prefix != "O" and (prefix in ("B", "O") or prev_type != kind)
        started = prefix == "B" or (prefix == "I" and (prev_prefix == "O" or prev_type != kind))
        if ended:
            chunks.append((prev_type, start, i))
        if started:
            start = i
        prev_prefix, prev_type = prefix, kind
    return chunks


def test_bio_spans_matches_conlleval_rules_on_random_tags():
    rng = random.Random(0)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    for _ in range(2000):
        sentence = [rng.choice(tags) for _ in range(rng.randrange(9))]
        assert bio_spans(sentence) == _conlleval_chunks(sentence), sentence


@pytest.mark.parametrize("bad", ["PER", "B-", "E-PER", "b-per", "", 3, -100])
def test_bio_spans_rejects_non_bio_tags(bad):
    with pytest.raises(ValueError, match="position 1"):
        bio_spans(["O", bad])


# --- entity_scores -----------------------------------------------------------------------------

GOLD = [
    ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-LOC", "O"],  # Pierre Vinken visited New York City .
    ["B-ORG", "O", "B-PER", "O", "B-LOC", "O", "O"],          # Acme hired Mary in Paris on Monday
    ["O", "O"],                                               # Thank you
]
PRED = [
    ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "O"],      # PER right; LOC ends one word early
    ["B-LOC", "O", "O", "O", "B-LOC", "O", "B-MISC"],         # ORG typed LOC; Mary missed; Paris right; Monday spurious
    ["B-PER", "I-PER"],                                       # spurious, same span as sentence 0's PER
]


def test_entity_scores_hand_computed():
    # gold: PER(0,0-2) LOC(0,3-6) ORG(1,0-1) PER(1,2-3) LOC(1,4-5)             -> 5
    # pred: PER(0,0-2) LOC(0,3-5) LOC(1,0-1) LOC(1,4-5) MISC(1,6-7) PER(2,0-2) -> 6
    # correct: PER(0,0-2), LOC(1,4-5) -> 2; PER(2,0-2) is not PER(0,0-2): sentences count
    # P = 2/6, R = 2/5, F1 = 2PR/(P+R) = 2*2/(6+5) = 4/11
    scores = entity_scores(GOLD, PRED)
    assert (scores.n_gold, scores.n_pred, scores.n_correct) == (5, 6, 2)
    assert scores.precision == pytest.approx(2 / 6)
    assert scores.recall == pytest.approx(2 / 5)
    assert scores.f1 == pytest.approx(4 / 11)


def test_entity_scores_per_type_table():
    table = entity_scores(GOLD, PRED).per_type
    assert list(table.index) == ["LOC", "MISC", "ORG", "PER"]  # sorted, predicted-only types included
    assert list(table.columns) == ["precision", "recall", "f1", "support"]
    assert table["support"].to_dict() == {"LOC": 2, "MISC": 0, "ORG": 1, "PER": 2}
    expected = {
        # type:  (precision, recall, f1)    correct / predicted, correct / gold
        "LOC": (1 / 3, 1 / 2, 2 / 5),    # 1/3 predicted, 1/2 gold
        "MISC": (0.0, 0.0, 0.0),         # 0/1 predicted, no gold: recall 0.0 by convention
        "ORG": (0.0, 0.0, 0.0),          # never predicted: precision 0.0 by convention
        "PER": (1 / 2, 1 / 2, 1 / 2),    # 1/2 predicted, 1/2 gold
    }
    for kind, (p, r, f) in expected.items():
        assert table.loc[kind, ["precision", "recall", "f1"]].tolist() == pytest.approx([p, r, f]), kind
    assert table["support"].sum() == entity_scores(GOLD, PRED).n_gold


def test_entity_scores_perfect_and_micro():
    scores = entity_scores(GOLD, GOLD)
    assert (scores.precision, scores.recall, scores.f1) == (1.0, 1.0, 1.0)
    # micro, not macro: 9 right persons and 1 missed place give recall 9/10 (macro would be 0.5)
    gold = [["B-PER"]] * 9 + [["B-LOC"]]
    pred = [["B-PER"]] * 9 + [["O"]]
    scores = entity_scores(gold, pred)
    assert (scores.precision, scores.recall) == (1.0, pytest.approx(9 / 10))


def test_entity_scores_empty_cases():
    nothing_predicted = entity_scores([["B-PER", "O"]], [["O", "O"]])
    assert (nothing_predicted.precision, nothing_predicted.recall, nothing_predicted.f1) == (0.0, 0.0, 0.0)
    nothing_to_find = entity_scores([["O", "O"]], [["B-PER", "O"]])
    assert (nothing_to_find.precision, nothing_to_find.recall, nothing_to_find.f1) == (0.0, 0.0, 0.0)
    both_empty = entity_scores([["O"]], [["O"]])
    assert (both_empty.precision, both_empty.recall, both_empty.f1) == (0.0, 0.0, 0.0)
    assert both_empty.per_type.empty and both_empty.per_type["support"].dtype == int
    no_sentences = entity_scores([], [])
    assert (no_sentences.n_gold, no_sentences.f1) == (0, 0.0)


def test_entity_scores_rejects_bad_input():
    with pytest.raises(ValueError, match="gold has 2 sentences but pred has 1"):
        entity_scores([["O"], ["O"]], [["O"]])
    with pytest.raises(ValueError, match="sentence 1: gold has 2 tags but pred has 1"):
        entity_scores([["O"], ["O", "O"]], [["O"], ["O"]])
    with pytest.raises(ValueError, match="flat list"):
        entity_scores(["B-PER", "O"], ["B-PER", "O"])
    with pytest.raises(ValueError, match="map label ids"):
        entity_scores([["B-PER"]], [[1]])


def test_entity_scores_match_seqeval():
    metrics = pytest.importorskip("seqeval.metrics")  # not a dependency: checked where it is installed
    scores = entity_scores(GOLD, PRED)
    assert scores.precision == pytest.approx(metrics.precision_score(GOLD, PRED))
    assert scores.recall == pytest.approx(metrics.recall_score(GOLD, PRED))
    assert scores.f1 == pytest.approx(metrics.f1_score(GOLD, PRED))


# --- align_labels_with_tokens ------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer
    companion.resources.require("minilm")
    return AutoTokenizer.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")


def test_align_labels_on_minilm(tokenizer):
    words = ["Pierre", "Vinken", "visited", "Xianggang"]
    labels = [1, 2, 0, 3]  # B-PER I-PER O B-LOC as ids
    encoding = tokenizer(words, is_split_into_words=True)
    assert encoding.tokens() == ["[CLS]", "pierre", "vin", "##ken", "visited", "xiang", "##gang", "[SEP]"]
    assert encoding.word_ids() == [None, 0, 1, 1, 2, 3, 3, None]
    assert align_labels_with_tokens(encoding.word_ids(), labels) == [-100, 1, 2, -100, 0, 3, -100, -100]
    assert align_labels_with_tokens(encoding.word_ids(), labels, label_all_subwords=True) == \
        [-100, 1, 2, 2, 0, 3, 3, -100]


def test_align_labels_keeps_one_label_per_word(tokenizer):
    # what compute_metrics relies on: dropping the -100 positions gives back the word labels
    # (自然语言 becomes four [UNK] tokens: MiniLM's English vocabulary lacks most Chinese characters)
    sentences = [(["我", "爱", "自然语言", "处理"], [0, 0, 1, 2]),
                 (["Acme", "Corporation", "hired", "Mary"], [3, 4, 0, 1])]
    encodings = tokenizer([words for words, _ in sentences], is_split_into_words=True)
    for i, (words, labels) in enumerate(sentences):
        aligned = align_labels_with_tokens(encodings.word_ids(i), labels)
        assert len(aligned) == len(encodings["input_ids"][i])
        assert [label for label in aligned if label != IGNORE_INDEX] == labels


def test_align_labels_edge_cases():
    assert align_labels_with_tokens([None, None], []) == [-100, -100]  # an empty sentence
    assert align_labels_with_tokens([None, 0, 0, None], [5], label_all_subwords=True) == [-100, 5, 5, -100]
    with pytest.raises(ValueError, match="word id 2 but only 2 word labels"):
        align_labels_with_tokens([None, 0, 1, 2, None], [1, 0])


# --- accuracy and mean_std ---------------------------------------------------------------------

def test_accuracy():
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    assert accuracy(torch.tensor([2, 2, 2]), torch.tensor([2, 2, 1])) == pytest.approx(2 / 3)
    assert accuracy(["NN", "VB"], ["NN", "VB"]) == 1.0
    with pytest.raises(ValueError, match="shape"):
        accuracy([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="no examples"):
        accuracy([], [])


def test_mean_std():
    # mean 0.82; sample std sqrt((0.02^2 + 0 + 0.02^2) / (3 - 1)) = 0.02
    assert mean_std([0.80, 0.82, 0.84]) == "0.8200 ± 0.0200"
    assert mean_std([1.0, 2.0], digits=2) == "1.50 ± 0.71"  # ddof=1: sqrt(0.5), not the population 0.5
    assert mean_std([0.8123]) == "0.8123"  # one run has no spread to report
    with pytest.raises(ValueError, match="non-empty"):
        mean_std([])


# --- distinct_n, repetition_rate ---------------------------------------------------------------

def test_distinct_n_by_hand():
    from companion.metrics import distinct_n

    texts = ["the cat sat", "the cat ran"]
    assert distinct_n(texts, 1) == 4 / 6
    assert distinct_n(texts, 2) == 3 / 4  # (the, cat) twice
    assert distinct_n(texts, 3) == 1.0
    assert distinct_n(texts, 4) == 0.0  # no 4-grams at all
    assert distinct_n([["a", "b"], ["a", "b"]], 2) == 0.5  # token lists work too
    assert distinct_n([[1, 2, 1, 2]], 2) == 2 / 3


def test_distinct_n_matches_a_brute_force_count():
    from companion.metrics import distinct_n

    rng = random.Random(0)
    for _ in range(20):
        texts = [" ".join(rng.choice("abc") for _ in range(rng.randint(0, 8))) for _ in range(3)]
        grams = [tuple(t.split()[i:i + 2]) for t in texts for i in range(len(t.split()) - 1)]
        assert distinct_n(texts, 2) == (len(set(grams)) / len(grams) if grams else 0.0)


def test_repetition_rate():
    from companion.metrics import repetition_rate

    assert repetition_rate("a b c d e", n=2) == 0.0
    assert repetition_rate("a a a a a", n=1) == 0.8  # four of five words repeat the first
    assert repetition_rate("a b a b a b", n=2) == 1 - 2 / 5
    assert repetition_rate("short", n=4) == 0.0
    assert repetition_rate("", n=1) == 0.0


def test_bad_input_for_text_metrics():
    from companion.metrics import distinct_n, repetition_rate

    with pytest.raises(ValueError, match="n must be"):
        distinct_n(["a b"], 0)
    with pytest.raises(TypeError, match="list of texts"):
        distinct_n("a b c", 1)
    with pytest.raises(TypeError, match="string or a list"):
        repetition_rate([1.5, 2.5], n=1)


def test_prf_from_counts_calls_an_empty_ratio_zero():
    from companion.metrics import prf

    assert prf(2, 4, 8) == (0.5, 0.25, pytest.approx(1 / 3))
    assert prf(0, 0, 5) == (0.0, 0.0, 0.0)
    assert prf(0, 3, 0) == (0.0, 0.0, 0.0)


def test_micro_scores_count_set_items_over_a_corpus():
    from companion.metrics import micro_scores

    scores = micro_scores([{"a", "b"}, {"c"}], [{"a"}, {"c", "d"}])
    assert (scores.n_gold, scores.n_pred, scores.n_correct) == (3, 3, 2)
    assert scores.precision == scores.recall == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        micro_scores([{"a"}], [])
