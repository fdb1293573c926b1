"""companion.retrieval: knowledge passages, BM25 against bm25s and by hand, dense search, fusion, metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from companion import retrieval as R


def test_bm25_by_hand_on_three_documents():
    docs = [["a", "cat", "sat"], ["the", "dog", "sat", "sat"], ["a", "dog"]]
    k1, b, avg = 1.5, 0.75, 3.0
    idf = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))  # "dog" and "sat" are each in two documents

    def term(tf, length):
        return idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / avg))

    expected = [term(1, 3), term(1, 4) + term(2, 4), term(1, 2)]
    assert R.bm25_scores(["dog", "sat"], docs) == pytest.approx(expected)
    assert R.bm25_scores(["unknown"], docs).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="no documents"):
        R.bm25_scores(["a"], [])


@pytest.mark.parametrize("language", R.LANGUAGES)
def test_bm25s_ranks_as_the_formula_scaled_by_k1_plus_1(language):
    passages, questions = R.faq(language)
    index = R.BM25Index(passages, language)
    docs = [R.words(p.text, language) for p in passages]
    for question, _ in questions[:40]:
        ours = R.bm25_scores(R.words(question, language), docs)
        np.testing.assert_allclose(index.scores(question) * 2.5, ours, rtol=1e-5, atol=1e-5)
    assert index.scores("?!").tolist() == [0.0] * len(passages)  # a query without terms


def test_faq_passages_are_distinct_answers_and_every_question_has_gold():
    passages, questions = R.faq("english")
    texts = [p.text for p in passages]
    assert len(set(texts)) == len(texts) and [p.pid for p in passages] == list(range(len(passages)))
    assert all(gold and max(gold) < len(passages) for _, gold in questions)
    assert len({q for q, _ in questions}) == len(questions)
    with pytest.raises(ValueError, match="language"):
        R.faq("french")


def test_chunks_cover_the_text_with_overlap():
    text = " ".join(str(i) for i in range(250))
    chunks = R.chunk_words(text, max_words=100, overlap=20)
    assert [len(c.split()) for c in chunks] == [100, 100, 90]
    assert chunks[1].split()[0] == "80" and chunks[-1].split()[-1] == "249"
    assert R.chunk_words("short text", 100, 20) == ["short text"]
    with pytest.raises(ValueError):
        R.chunk_words(text, max_words=10, overlap=10)


def test_held_out_sentences_leave_their_passage():
    passages = R.python_topics()
    assert all(p.source.startswith("python:") for p in passages)
    edited, queries = R.held_out_sentence_queries(passages, 30, seed=1)
    assert len(queries) == 30 and len(edited) == len(passages)
    for sentence, gold in queries:
        assert gold == {i for i, p in enumerate(passages) if sentence in p.text}
        assert not any(sentence in edited[i].text for i in gold)
    assert any(len(gold) > 1 for _, gold in queries)  # overlapping chunks share sentences
    assert R.held_out_sentence_queries(passages, 30, seed=1)[1] == queries  # seeded


def test_chinese_terms_are_characters_and_bigrams():
    assert R.words("我喜欢Python吗", "chinese") == ["我", "喜", "欢", "我喜", "喜欢", "吗", "python"]
    assert R.words("你好，世界！ OK 2024", "chinese") == ["你", "好", "你好", "世", "界", "世界", "ok", "2024"]
    assert R.words("？！", "chinese") == []
    assert R.words("Hello, World", "english") == ["hello", "world"]
    with pytest.raises(ValueError, match="language"):
        R.words("bonjour", "french")


def test_ranking_fusion_and_metrics_by_hand():
    assert R.top_k(np.array([0.1, 0.5, 0.5, 0.2]), 3) == [1, 2, 3]
    fused = R.reciprocal_rank_fusion([[1, 2, 3], [3, 1, 4]], k=60)
    assert fused[:2] == [1, 3]  # 1: 1/61 + 1/62; 3: 1/63 + 1/61; 2: 1/62
    assert set(fused) == {1, 2, 3, 4}
    assert R.fusion_scores([[1, 2, 3], [3, 1, 4]], k=60) == pytest.approx(
        {1: 1 / 61 + 1 / 62, 2: 1 / 62, 3: 1 / 63 + 1 / 61, 4: 1 / 63})
    rankings, gold = [[3, 1, 2], [0, 4, 5], [7, 8, 9]], [{1}, {0, 5}, {2}]
    assert R.recall_at_k(rankings, gold, 1) == pytest.approx(1 / 3)
    assert R.recall_at_k(rankings, gold, 2) == pytest.approx(2 / 3)
    assert R.mean_reciprocal_rank(rankings, gold) == pytest.approx((1 / 2 + 1 + 0) / 3)
    with pytest.raises(ValueError):
        R.recall_at_k(rankings, gold[:2], 1)
    with pytest.raises(ValueError):
        R.top_k(np.zeros(3), 0)


def test_dense_search_finds_a_paraphrase():
    encoder, tokenizer = R.load_encoder()
    passages = ["The cat sleeps on the sofa.", "Stock markets fell sharply today.", "Rain is expected tomorrow."]
    vectors = R.embed(passages, encoder, tokenizer)
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    query = R.embed(["Will it rain tomorrow?", "a kitten napping on a couch"], encoder, tokenizer)
    assert R.DenseIndex(vectors).search(query, k=1) == [[2], [0]]
    with pytest.raises(ValueError, match="matrix"):
        R.DenseIndex(np.zeros(3))
