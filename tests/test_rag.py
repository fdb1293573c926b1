"""companion.rag: questions and labels from the sources, answer scoring by hand, choices on validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from companion import rag
from companion import retrieval as R


def test_questions_are_labelled_by_their_sources_and_split_in_half():
    asked = rag.questions({"english": 10, "chinese": 6})
    kb = rag.passages("english")
    python = [q for q in asked if q.text.endswith("statement do in Python?")]
    assert len(python) == len(rag.STATEMENTS)
    for q in python:
        name = q.text.split()[3]
        assert q.gold and all(kb[p].source == f"python:{name}" for p in q.gold)
    outside = [q for q in asked if not q.answerable]
    assert len(outside) == sum(len(t) * len(rag.CITIES[language]) for language, t in rag.OUT_OF_SCOPE.items())
    for language in rag.OUT_OF_SCOPE:
        mine = [q for q in asked if q.language == language]
        val, test = [q for q in mine if q.split == "validation"], [q for q in mine if q.split == "test"]
        assert abs(len(val) - len(test)) <= 3 and not {q.text for q in val} & {q.text for q in test}
    assert rag.questions({"english": 10, "chinese": 6}) == asked  # seeded


def test_knowledge_base_ids_are_positions():
    for language in R.LANGUAGES:
        kb = rag.passages(language)
        assert [p.pid for p in kb] == list(range(len(kb)))
    assert any(p.source.startswith("python:") for p in rag.passages("english"))
    assert not any(p.source.startswith("python:") for p in rag.passages("chinese"))


def test_answer_helpers_by_hand():
    assert rag.refused("I don't know.") and rag.refused("Sorry, I do not know that")
    assert rag.refused("我不知道。") and not rag.refused("I know: it is Paris.")
    assert rag.citations("It is Paris [2], see also [10].") == [2, 10]
    assert rag.contains("The answer is SURREALISM!", "Surrealism") and not rag.contains("abc", "")
    assert rag.contains("答案是：ＡＢＣ。", "abc")  # full-width letters fold to ASCII
    kb = [R.Passage(0, "x", "Surrealism"), R.Passage(1, "x", "Glass"), R.Passage(2, "x", "Paris")]
    question = rag.Question("Which movement?", "english", frozenset({0}))
    row = rag.answer_scores("Surrealism [1]", question, kb, shown=[2, 0, 1])  # [1] is passage 2
    assert row["contains"] == 1.0 and row["cites_gold"] == 0.0 and row["refused"] == 0.0
    assert rag.answer_scores("It is [2]", question, kb, shown=[2, 0, 1])["cites_gold"] == 1.0
    assert rag.answer_scores("[9]", question, kb, shown=[2, 0, 1])["cites_gold"] == 0.0  # not shown
    outside = rag.answer_scores("I don't know.", rag.Question("Weather?", "english"), kb)
    assert outside == {"refused": 1.0}


def test_messages_number_the_passages():
    (message,) = rag.rag_messages("Who?", ["first", "second"], "english")
    assert "[1] first\n[2] second" in message["content"] and message["content"].endswith("User: Who?")


def test_threshold_and_fusion_by_hand():
    threshold, accuracy = rag.best_threshold([0.9, 0.8, 0.3, 0.2], [True, True, False, False])
    assert threshold == pytest.approx(0.55) and accuracy == 1.0
    threshold, accuracy = rag.best_threshold([0.9, 0.5, 0.6], [True, True, False])
    assert accuracy == pytest.approx(2 / 3)



def test_hybrid_scores_are_reciprocal_rank_fusion_of_both_rankings():
    passages = [R.Passage(i, "x", t) for i, t in enumerate(
        ["the cat sat on the mat", "a dog barked", "cats and dogs", "the weather is fine"])]
    rng = np.random.default_rng(0)
    dense = R.DenseIndex(rng.standard_normal((4, 8)).astype(np.float32))
    kb = rag.KnowledgeBase("english", passages, R.BM25Index(passages), dense)

    class Encoder:  # embed() replaced: the query vectors come from the dense index itself
        pass

    question_vectors = rng.standard_normal((2, 8)).astype(np.float32)
    original = R.embed
    R.embed = lambda texts, encoder, tokenizer: question_vectors
    try:
        hybrid = kb.scores(["cat on a mat", "dogs"], "hybrid", Encoder(), None)
    finally:
        R.embed = original
    for row, text, vector in zip(hybrid, ["cat on a mat", "dogs"], question_vectors):
        sparse, dense_row = kb.bm25.scores(text), dense.scores(vector)[0]
        expected = {pid: 0.0 for pid in range(4)}
        for ranking in (R.top_k(sparse, 4), R.top_k(dense_row, 4)):
            for rank, pid in enumerate(ranking, start=1):
                expected[pid] += 1 / (60 + rank)
        assert row.tolist() == pytest.approx([expected[pid] for pid in range(4)])
        best = R.reciprocal_rank_fusion([R.top_k(sparse, 4), R.top_k(dense_row, 4)])[0]
        assert row[best] == row.max()


def test_the_recipe_chooses_on_validation_and_writes_every_answer(tmp_path):
    # Chinese only: its knowledge base is the smaller one (English adds 678 Python passages to embed)
    results = rag.run_recipe(tmp_path, per_language={"chinese": 4}, max_new_tokens=8, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "answers.jsonl").read_text(encoding="utf-8").splitlines()]
    for language, r in results["languages"].items():
        assert r["retriever"] == max(rag.RETRIEVERS, key=lambda n: r["retrieval_validation"][n]["mrr"])
        assert set(r["systems"]) == {"model alone", "top passage", "rag + refusal rule", "rag"}
        assert sum(row["language"] == language for row in rows) == 4 * r["test"]
    # the rule refuses the same questions for the FAQ bot and for the RAG assistant
    top = [row["answer"] in rag.REFUSAL.values() for row in rows if row["system"] == "top passage"]
    ruled = [row["answer"] in rag.REFUSAL.values() for row in rows if row["system"] == "rag + refusal rule"]
    assert top == ruled
    assert rag.shipped_results(tmp_path)["artifacts"].keys() == {"answers.jsonl"}
